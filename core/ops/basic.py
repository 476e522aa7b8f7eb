"""Basic ops every tensor needs: dtype cast and copy."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op
from .util import same_shape

_cast = register_op("cast", attrs={"dtype": "float32"}, shape=same_shape, save_inputs=False, doc="convert elements to another dtype")


@kernel("cast")
def _cast_cpu(x, dtype):
    return x.astype(_dt.as_dtype(dtype).np)


@backward("cast")
def _cast_bw(ctx, g):
    src = ctx.input_dtypes[0]
    return (g.to(src) if src.is_floating_point else None,)


def cast(x: Tensor, dtype) -> Tensor:
    return apply(_cast, x, dtype=_dt.as_dtype(dtype).name)


_clone = register_op("clone", shape=same_shape, save_inputs=False, doc="copy into fresh contiguous storage")


@kernel("clone")
def _clone_cpu(x):
    return np.array(x, copy=True, order="C")


@backward("clone")
def _clone_bw(ctx, g):
    return (g,)


def clone(x: Tensor) -> Tensor:
    return apply(_clone, x)


Tensor.clone = clone
