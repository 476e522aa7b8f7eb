"""Shape ops: reshape/view (more are added below by the shape-op family)."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op


def _infer_shape(shape, numel, op_name, in_shape):
    shape = list(shape)
    neg = [i for i, s in enumerate(shape) if s == -1]
    if len(neg) > 1:
        raise RuntimeError(f"{op_name}: only one dimension can be inferred (-1), got shape {tuple(shape)}")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise RuntimeError(f"{op_name}: invalid shape dimension {s} in {tuple(shape)}")
            known *= s
    if neg:
        if known == 0 or numel % known:
            raise RuntimeError(f"{op_name}: shape {tuple(shape)} is invalid for input of size {numel} (shape {in_shape})")
        shape[neg[0]] = numel // known
    elif known != numel:
        raise RuntimeError(f"{op_name}: shape {tuple(shape)} is invalid for input of size {numel} (shape {in_shape})")
    return tuple(shape)


def _reshape_rule(x_shape, shape):
    return _infer_shape(shape, int(np.prod(x_shape, dtype=np.int64)), "reshape", tuple(x_shape))


_reshape = register_op("reshape", attrs={"shape": ()}, shape=_reshape_rule, save_inputs=False,
                       doc="same elements, new shape (a view when the layout allows)")


@kernel("reshape")
def _reshape_cpu(x, shape):
    return x.reshape(shape)


@backward("reshape")
def _reshape_bw(ctx, g):
    return (g.reshape(ctx.input_shapes[0]),)


def reshape(x: Tensor, *shape) -> Tensor:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = tuple(int(s) for s in shape)
    if shape == x.shape:
        return x
    return apply(_reshape, x, shape=_reshape_rule(x.shape, shape))


def view(x: Tensor, *shape) -> Tensor:
    """Like reshape; ember does not distinguish views that need a copy (numpy copies when it must)."""
    return reshape(x, *shape)


Tensor.reshape = reshape
Tensor.view = view


def _permute_rule(x_shape, dims):
    if sorted(dims) != list(range(len(x_shape))):
        raise RuntimeError(f"permute: dims {tuple(dims)} is not a permutation of the {len(x_shape)} dims of shape {tuple(x_shape)}")
    return tuple(x_shape[d] for d in dims)


_permute = register_op("permute", attrs={"dims": ()}, shape=_permute_rule, save_inputs=False,
                       doc="reorder dimensions (a view)")


@kernel("permute")
def _permute_cpu(x, dims):
    return x.transpose(dims)


@backward("permute")
def _permute_bw(ctx, g):
    dims = ctx.attrs["dims"]
    inv = [0] * len(dims)
    for i, d in enumerate(dims):
        inv[d] = i
    return (permute(g, *inv),)


def permute(x: Tensor, *dims) -> Tensor:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    n = x.ndim
    dims = tuple(int(d) % n if n else 0 for d in dims)
    if len(dims) != n:
        raise RuntimeError(f"permute: number of dims {len(dims)} doesn't match the tensor's {n} dims (shape {x.shape})")
    if dims == tuple(range(n)):
        return x
    return apply(_permute, x, dims=dims)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    n = x.ndim
    if n == 0:
        return x
    for d in (dim0, dim1):
        if not -n <= d < n:
            raise IndexError(f"transpose: dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    dims = list(range(n))
    a, b = dim0 % n, dim1 % n
    dims[a], dims[b] = dims[b], dims[a]
    return permute(x, *dims)


def _expand_rule(x_shape, shape):
    lead = len(shape) - len(x_shape)
    if lead < 0:
        raise RuntimeError(f"expand: the target shape {tuple(shape)} has fewer dims than the tensor's shape {tuple(x_shape)}")
    for i, s in enumerate(x_shape):
        if s != 1 and s != shape[lead + i]:
            raise RuntimeError(
                f"expand: the expanded size {shape[lead + i]} must match the existing size {s} at non-singleton "
                f"dimension {lead + i}; target shape {tuple(shape)}, tensor shape {tuple(x_shape)}"
            )
    return tuple(shape)


_expand = register_op("expand", attrs={"shape": ()}, shape=_expand_rule, save_inputs=False,
                      doc="broadcast to a larger shape without copying (a read-only view)")


@kernel("expand")
def _expand_cpu(x, shape):
    return np.broadcast_to(x, shape)


@backward("expand")
def _expand_bw(ctx, g):
    from .util import unbroadcast

    return (unbroadcast(g, ctx.input_shapes[0]),)


def expand(x: Tensor, *shape) -> Tensor:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 and i >= lead else int(s) for i, s in enumerate(shape))
    if shape == x.shape:
        return x
    return apply(_expand, x, shape=_expand_rule(x.shape, shape))


def broadcast_to(x: Tensor, shape) -> Tensor:
    return expand(x, tuple(shape))


Tensor.permute = permute
Tensor.transpose = transpose
Tensor.expand = expand
Tensor.T = property(lambda self: permute(self, *reversed(range(self.ndim))))
Tensor.mT = property(lambda self: transpose(self, -2, -1))

__all__ = ["reshape", "permute", "transpose", "broadcast_to"]
