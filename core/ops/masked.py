"""Mask ops: masked_fill (+ in place), masked_select, nonzero / argwhere."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..tensor import Tensor
from .index import _value_tensor, getitem, select
from .registry import apply, backward, kernel, register_op
from .shape import expand
from .util import broadcast_shapes, unbroadcast


def _masked_fill_rule(x_shape, m_shape, v_shape):
    if len(v_shape):
        raise RuntimeError(
            f"masked_fill: only supports a 0-dimensional value tensor, but got tensor with {len(v_shape)} "
            f"dimension(s) (shape {tuple(v_shape)})"
        )
    return broadcast_shapes("masked_fill", x_shape, m_shape)


_masked_fill = register_op("masked_fill", shape=_masked_fill_rule,
                           doc="value where mask is True, x elsewhere (mask and x broadcast)")


@kernel("masked_fill")
def _masked_fill_cpu(x, mask, value):
    return np.where(mask, value, x)


@backward("masked_fill")
def _masked_fill_bw(ctx, g):
    _, mask, _ = ctx.inputs
    gx = gv = None
    if ctx.needs_input_grad[0]:
        zero = Tensor._wrap(np.zeros((), dtype=g._data.dtype))
        gx = unbroadcast(apply(_masked_fill, g, mask, zero), ctx.input_shapes[0])
    if ctx.needs_input_grad[2]:
        gv = getitem(g, expand(mask, g.shape)).sum()
    return gx, None, gv


def masked_fill(x: Tensor, mask: Tensor, value) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype is not _dt.bool_:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise RuntimeError(f"masked_fill: only supports boolean masks, but got mask with dtype {got}")
    v = _value_tensor(value, x.dtype, "masked_fill")
    if v.dtype != x.dtype:
        v = v.to(x.dtype)
    return apply(_masked_fill, x, mask, v)


def masked_fill_(x: Tensor, mask: Tensor, value) -> Tensor:
    return x._inplace(lambda src: masked_fill(src, mask, value))


def masked_select(x: Tensor, mask: Tensor) -> Tensor:
    """The elements of x where mask (broadcast together) is True, as a 1-D tensor."""
    if not isinstance(mask, Tensor) or mask.dtype is not _dt.bool_:
        raise RuntimeError(f"masked_select: expected a boolean mask, got {getattr(mask, 'dtype', type(mask))}")
    shape = broadcast_shapes("masked_select", x.shape, mask.shape)
    return getitem(expand(x, shape), expand(mask, shape))


# No shape rule on purpose: the row count is data, so a traced graph cannot know it and the tracer must
# refuse this op (x[mask] and masked_select reach it: index_rules.masks_to_positions).
_nonzero = register_op("nonzero", shape=None, doc="indices of nonzero elements, shape (count, ndim), int64")


@kernel("nonzero")
def _nonzero_cpu(x):
    return np.argwhere(x).astype(np.int64)


def nonzero(x: Tensor, *, as_tuple: bool = False):
    if as_tuple:
        out = apply(_nonzero, x.reshape(1) if x.ndim == 0 else x)
        return tuple(select(out, 1, d) for d in range(out.shape[1]))
    return apply(_nonzero, x)


def argwhere(x: Tensor) -> Tensor:
    return nonzero(x)


Tensor.masked_fill = masked_fill
Tensor.masked_fill_ = masked_fill_
Tensor.masked_select = masked_select
Tensor.nonzero = nonzero
Tensor.argwhere = argwhere

__all__ = ["masked_fill", "masked_select", "nonzero", "argwhere"]
