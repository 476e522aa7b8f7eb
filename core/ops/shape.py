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
