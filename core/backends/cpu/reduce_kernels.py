"""Row kernels for softmax / log_softmax over the last dim (rows of a C-contiguous 2-D array).

One pass per row for the max, one for the exp-sum (accumulated in float64), one to write: numpy
needs ~6 full-array temporaries for the same. All functions return fresh arrays.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import prange_kernel

# (a high parallel threshold: see elementwise_kernels.py on numba threads next to BLAS threads)


@prange_kernel(1 << 20)
def _softmax_k(x, out, log):
    n, m = x.shape
    for r in prange(n):
        mx = -np.inf
        for j in range(m):
            if x[r, j] > mx:
                mx = x[r, j]
        s = 0.0
        for j in range(m):
            s += math.exp(x[r, j] - mx)
        # s >= 1, or nan when the row holds nan, +inf or only -inf (torch's nan too): never the 1/0 or
        # log(0) that would raise when the kernel runs as plain Python (NUMBA_DISABLE_JIT)
        if log:
            lse = mx + math.log(s)
            for j in range(m):
                out[r, j] = x[r, j] - lse
        else:
            inv = 1.0 / s
            for j in range(m):
                out[r, j] = math.exp(x[r, j] - mx) * inv


@prange_kernel(1 << 20)
def _softmax_bw_k(g, y, out, log):
    n, m = g.shape
    for r in prange(n):
        s = 0.0
        if log:
            for j in range(m):
                s += g[r, j]
            for j in range(m):
                out[r, j] = g[r, j] - math.exp(y[r, j]) * s
        else:
            for j in range(m):
                s += g[r, j] * y[r, j]
            for j in range(m):
                out[r, j] = y[r, j] * (g[r, j] - s)


def _rows(a):
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def softmax_lastdim(x, log=False):
    """softmax (or log_softmax) over the last dim of a C-contiguous float array."""
    out = np.empty_like(x)
    x2 = _rows(x)
    _softmax_k(x.size, x2, _rows(out), log)
    return out


def softmax_backward_lastdim(g, y, log=False):
    """Gradient of softmax (log_softmax) over the last dim from the saved output ``y``."""
    out = np.empty_like(y)
    _softmax_bw_k(y.size, _rows(g), _rows(y), _rows(out), log)
    return out
