"""``linear_relu``: a Linear layer and the ReLU after it as one op, for training (``nn.Sequential`` runs such a
pair through it, as it runs Conv2d -> MaxPool2d through ``conv2d_maxpool``).

Forward: linear's GEMM, then the bias and the ReLU in one in-place pass over the GEMM's fresh output (unfused:
an add pass, then relu's pass into a new array). Backward: one pass over the output gradient masks it where the
output is not positive and sums its columns (the bias gradient), then linear's two GEMMs (unfused: relu_backward's
pass into a new array, then a column sum, each an op of its own). The values are relu(linear(x, w, b))'s: the
same float operations in the same order.
"""
from __future__ import annotations

import numpy as np

from ..backends.cpu import blas
from ..backends.cpu.jit import njit
from ..tensor import Tensor
from .linalg import _linear_cpu, _linear_gw_cpu, _linear_rule
from .registry import apply, backward, kernel, register_op

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_linear_relu = register_op("linear_relu", shape=_linear_rule, save_inputs=(0, 1), save_outputs=True,
                           doc="relu(x @ weight^T + bias): a Linear and its ReLU in one op (training; 2-d float "
                               "x on the CPU)")


@njit
def _bias_relu_(out, b):
    """out = relu(out + b) in place, row by row (b: (n,), or (0,) for no bias; NaN stays NaN, as torch's relu)."""
    m, n = out.shape
    for r in range(m):
        row = out[r]
        if b.size:
            for c in range(n):
                v = row[c] + b[c]
                row[c] = 0.0 if v <= 0 else v
        else:
            for c in range(n):
                v = row[c]
                row[c] = 0.0 if v <= 0 else v


@njit
def _mask_colsum(g, y, gm, gb):
    """gm = 0 where y <= 0 else g (torch's threshold_backward: 0 at 0, passed where y is NaN), gb = gm's column sums
    (rows in order)."""
    m, n = g.shape
    zero = g.dtype.type(0)  # (a float64 0.0 made v float64 for float32 g: a scalar loop, 2.5x slower)
    for c in range(n):
        gb[c] = zero
    for r in range(m):
        grow, yrow, mrow = g[r], y[r], gm[r]
        for c in range(n):
            v = zero if yrow[c] <= 0 else grow[c]
            mrow[c] = v
            gb[c] += v


@kernel("linear_relu")
def _linear_relu_cpu(x, w, b=None):
    if x.ndim != 2 or x.dtype not in _KERNEL_DTYPES or x.dtype != w.dtype or (b is not None and b.dtype != w.dtype):
        raise RuntimeError(f"linear_relu: expects 2-d float32 or float64 input, weight and bias of one dtype, got "
                           f"input {x.dtype} {x.shape}, weight {w.dtype}" + ("" if b is None else f", bias {b.dtype}"))
    out = _linear_cpu(x, w)
    _bias_relu_(out, np.ascontiguousarray(b).reshape(-1) if b is not None else np.empty(0, out.dtype))
    return out


@backward("linear_relu")
def _linear_relu_bw(ctx, g):
    x, w = ctx.inputs[0], ctx.inputs[1]
    y = ctx.outputs[0]
    needs = ctx.needs_input_grad
    has_bias = len(needs) > 2
    # The op runs on the CPU only: gradients are numpy arrays, and the backward calls the kernels directly (it runs
    # without recording; an op dispatch each would cost more than the small products' arithmetic).
    ga = np.ascontiguousarray(g._data)
    gma, gba = np.empty(ga.shape, ga.dtype), np.empty(ga.shape[1], ga.dtype)
    _mask_colsum(ga, y._data, gma, gba)
    gx = Tensor._wrap(blas.matmul(gma, w._data)) if needs[0] else None
    gw = Tensor._wrap(_linear_gw_cpu(gma, x._data)) if needs[1] else None
    if not has_bias:
        return gx, gw
    bshape = ctx.input_shapes[2]  # (a view would be copied before it becomes .grad)
    return gx, gw, (Tensor._wrap(gba if gba.shape == bshape else gba.reshape(bshape)) if needs[2] else None)


def fusable(x, weight, bias) -> bool:
    """Whether ``linear_relu`` runs this Linear (2-d float32/float64 input on the CPU, one dtype throughout)."""
    d = x._data
    return (d.__class__ is np.ndarray and d.ndim == 2 and d.dtype in _KERNEL_DTYPES and weight._data.dtype == d.dtype
            and weight._data.__class__ is np.ndarray and (bias is None or bias._data.dtype == d.dtype))


def linear_relu(x, weight, bias=None):
    """relu(x @ weight^T + bias) as one op; needs ``fusable(x, weight, bias)``."""
    if bias is None:
        return apply(_linear_relu, x, weight)
    return apply(_linear_relu, x, weight, bias)
