"""Triangular masks and ordering: tril/triu, sort/argsort, topk (torch semantics, NaN sorts as the largest).

sort and topk return (values, indices) named tuples like ``torch.return_types``; the gradient of the
values goes back to the places the indices name (the ``gather_backward`` op of gather.py).
"""
from __future__ import annotations

import collections

import numpy as np

from ..tensor import Tensor
from . import gather as _gather  # noqa: F401  (registers gather_backward, used by the backwards here)
from .registry import apply, backward, kernel, register_op
from .util import as_size, norm_dim

sort_result = collections.namedtuple("sort", ["values", "indices"])
topk_result = collections.namedtuple("topk", ["values", "indices"])


# ---- tril / triu ----------------------------------------------------------------------------------

def _tri_rule(name):
    def rule(x_shape, diagonal=0):
        if len(x_shape) < 2:
            raise RuntimeError(f"{name}: input tensor must have at least 2 dimensions, got shape {tuple(x_shape)}")
        return tuple(x_shape)

    return rule


_tril = register_op("tril", attrs={"diagonal": 0}, shape=_tri_rule("tril"), save_inputs=False,
                    doc="zero the elements above the diagonal-th diagonal of the last two dims")
_triu = register_op("triu", attrs={"diagonal": 0}, shape=_tri_rule("triu"), save_inputs=False,
                    doc="zero the elements below the diagonal-th diagonal of the last two dims")


@kernel("tril")
def _tril_cpu(x, diagonal=0):
    return np.tril(x, diagonal)  # numpy masks the last two axes of a stack


@kernel("triu")
def _triu_cpu(x, diagonal=0):
    return np.triu(x, diagonal)


@backward("tril")
def _tril_bw(ctx, g):
    return (apply(_tril, g, diagonal=ctx.attrs["diagonal"]),)


@backward("triu")
def _triu_bw(ctx, g):
    return (apply(_triu, g, diagonal=ctx.attrs["diagonal"]),)


def tril(input: Tensor, diagonal: int = 0) -> Tensor:
    """Lower triangle of the last two dims (``diagonal`` > 0 keeps diagonals above the main one)."""
    return apply(_tril, input, diagonal=int(diagonal))


def triu(input: Tensor, diagonal: int = 0) -> Tensor:
    """Upper triangle of the last two dims (``diagonal`` > 0 drops diagonals above the main one too)."""
    return apply(_triu, input, diagonal=int(diagonal))


# ---- sort / argsort / topk ------------------------------------------------------------------------

def _order(x, dim, descending):
    """Stable order along ``dim``; NaN is the largest value, as in torch."""
    if not descending:
        return np.argsort(x, axis=dim, kind="stable")
    # Sorting the reversed array ascending and reversing the result keeps equal elements in their
    # original order (stable) and puts NaN first; negating would break both.
    n = x.shape[dim]
    rev = np.argsort(np.flip(x, dim), axis=dim, kind="stable")
    return np.flip(n - 1 - rev, dim)


def _sort_rule(x_shape, dim=0, descending=False):
    return tuple(x_shape), tuple(x_shape)


_sort = register_op("sort", attrs={"dim": 0, "descending": False}, shape=_sort_rule, n_outputs=2,
                    save_inputs=False, save_outputs=(1,), doc="(values, indices) sorted along dim (stable)")


@kernel("sort")
def _sort_cpu(x, dim=0, descending=False):
    idx = _order(x, dim, descending).astype(np.int64, copy=False)
    return np.take_along_axis(x, idx, axis=dim), np.ascontiguousarray(idx)


def _values_bw(ctx, g, _):
    """The values are x gathered at the indices: scatter their gradient back there."""
    if g is None:
        return (None,)
    return (apply("gather_backward", g, ctx.outputs[1], dim=ctx.attrs["dim"], shape=ctx.input_shapes[0]),)


backward("sort")(_values_bw)


def _topk_rule(x_shape, k=1, dim=0, largest=True, sorted=True):
    n = x_shape[dim]
    if not 0 <= k <= n:
        raise RuntimeError(
            f"topk: k ({k}) is out of range for dimension {dim} of size {n} (input shape {tuple(x_shape)}); "
            f"expected 0 <= k <= {n}"
        )
    out = tuple(x_shape[:dim]) + (k,) + tuple(x_shape[dim + 1:])
    return out, out


_topk = register_op("topk", attrs={"k": 1, "dim": 0, "largest": True, "sorted": True}, shape=_topk_rule,
                    n_outputs=2, save_inputs=False, save_outputs=(1,),
                    doc="(values, indices) of the k largest (or smallest) elements along dim")


@kernel("topk")
def _topk_cpu(x, k=1, dim=0, largest=True, sorted=True):
    # A full sort, then the first k: O(n log n), but exact about NaN and ties. Always sorted, which
    # sorted=False allows (torch leaves that order unspecified).
    idx = _order(x, dim, largest)
    idx = np.ascontiguousarray(idx[(slice(None),) * dim + (slice(0, k),)]).astype(np.int64, copy=False)
    return np.take_along_axis(x, idx, axis=dim), idx


backward("topk")(_values_bw)


def sort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False):
    """(values, indices) along ``dim``; always stable (``stable=False`` lets torch pick any tie order)."""
    if input.ndim == 0:
        values, indices = sort(input.reshape(1), 0, descending, stable)
        return sort_result(values.reshape(()), indices.reshape(()))
    d = norm_dim(dim, input.ndim, "sort")
    return sort_result(*apply(_sort, input, dim=d, descending=bool(descending)))


def argsort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
    """Indices that sort ``input`` along ``dim`` (int64; not differentiable)."""
    return sort(input.detach(), dim, descending, stable).indices


def topk(input: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
    """(values, indices) of the ``k`` largest (``largest=False``: smallest) elements along ``dim``."""
    if input.ndim == 0:
        values, indices = topk(input.reshape(1), k, 0, largest, sorted)
        return topk_result(values.reshape(()), indices.reshape(()))
    d = norm_dim(dim, input.ndim, "topk")
    return topk_result(*apply(_topk, input, k=as_size(k), dim=d, largest=bool(largest), sorted=bool(sorted)))


def _msort(input: Tensor) -> Tensor:
    return sort(input, 0).values


def _inplace(fn):
    def method(x, *args, **kw):
        return x._inplace(lambda src: fn(src, *args, **kw))

    method.__name__ = fn.__name__ + "_"
    return method


Tensor.tril = tril
Tensor.triu = triu
Tensor.tril_ = _inplace(tril)
Tensor.triu_ = _inplace(triu)
Tensor.sort = sort
Tensor.argsort = argsort
Tensor.topk = topk
Tensor.msort = _msort
msort = _msort

__all__ = ["tril", "triu", "sort", "argsort", "topk", "msort"]
