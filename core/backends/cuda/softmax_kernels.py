"""CUDA kernels of softmax, log_softmax, their gradient (softmax_backward) and logsumexp.

All are max-shifted like the CPU: a row's max, then the sum of ``exp(x - max)``, then the outputs. Rows are
read as (outer, R, inner) with ``reduce_launch``'s helpers (logsumexp over several dims gathers first when they
are not one run); a short row runs one thread per row, a long one a block per row whose threads meet in
shared-memory trees for the max and the sum. NaN and infinities come out as on the CPU: a row holding NaN or
+inf, or only -inf, gives NaN (softmax); logsumexp shifts by 0 when the max is not finite (all -inf -> -inf,
any +inf -> +inf).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import empty
from .kernel import jit
from .launch import TPB, cast, device_fn, full, result_dtype
from .reduce_launch import block_sum, dim_layout, dmax, launch_rows, layout, out_shape, row_base, tree_of

_tree_max = tree_of(dmax)


# ---- row passes: a thread's whole row (lo, step = 0, 1) or a block thread's share (threadIdx, blockDim) -----
@device_fn
def _max_of(x, base, inner, lo, r_len, step, m):
    for r in range(lo, r_len, step):
        m = dmax(m, x[base + r * inner])
    return m


@device_fn
def _sum_exp(x, base, inner, lo, r_len, step, m, s):
    for r in range(lo, r_len, step):
        s += math.exp(x[base + r * inner] - m)
    return s


@device_fn
def _write_softmax(x, out, base, inner, lo, r_len, step, m, s, log):
    if log:
        lse = m + math.log(s)  # s >= 1, or NaN for a row with NaN / +inf / only -inf
        for r in range(lo, r_len, step):
            out[base + r * inner] = x[base + r * inner] - lse
    else:
        for r in range(lo, r_len, step):
            out[base + r * inner] = math.exp(x[base + r * inner] - m) / s


@device_fn
def _dot_bw(g, y, base, inner, lo, r_len, step, s, log):
    for r in range(lo, r_len, step):
        k = base + r * inner
        s += g[k] if log else g[k] * y[k]
    return s


@device_fn
def _write_bw(g, y, out, base, inner, lo, r_len, step, s, log):
    for r in range(lo, r_len, step):
        k = base + r * inner
        out[k] = g[k] - math.exp(y[k]) * s if log else y[k] * (g[k] - s)


@device_fn
def _lse_shift(m, ninf, zero):
    """The max to shift by: 0 when it is not finite."""
    return zero if (m != m or m == ninf or m == -ninf) else m


@device_fn
def _lse_finish(m, s, ninf):
    return ninf if s == 0 else m + math.log(s)  # all -inf: log(0) = -inf


# ---- softmax / log_softmax ----------------------------------------------------------------------------
@jit
def _softmax_rows(x, out, n_rows, r_len, inner, ninf, zero, log):
    t = cuda.grid(1)
    if t < n_rows:
        base = row_base(t, r_len, inner)
        m = _max_of(x, base, inner, 0, r_len, 1, ninf)
        s = _sum_exp(x, base, inner, 0, r_len, 1, m, zero)
        _write_softmax(x, out, base, inner, 0, r_len, 1, m, s, log)


@jit
def _softmax_block(x, out, r_len, inner, ninf, zero, log):
    sh = cuda.shared.array(TPB, out.dtype)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    base = row_base(cuda.blockIdx.x, r_len, inner)
    m = _tree_max(sh, _max_of(x, base, inner, tid, r_len, nt, ninf))
    s = block_sum(sh, _sum_exp(x, base, inner, tid, r_len, nt, m, zero))
    _write_softmax(x, out, base, inner, tid, r_len, nt, m, s, log)


def _softmax(x, dim, log):
    if x.ndim == 0:
        return full((), 0.0 if log else 1.0, x.dtype)
    out = empty(x.shape, x.dtype)
    outer, r_len, inner = dim_layout(x.shape, int(dim) % x.ndim)
    if x.size:
        T = x.dtype.type
        launch_rows(_softmax_rows, _softmax_block, outer * inner, r_len, inner, (x.d, out.d),
                    (T(-math.inf), T(0), bool(log)))
    return out


kernel("softmax", "cuda")(lambda x, dim=-1: _softmax(x, dim, False))
kernel("log_softmax", "cuda")(lambda x, dim=-1: _softmax(x, dim, True))


# ---- the gradient from the saved output y: g - exp(y) * sum(g) (log), y * (g - sum(g * y)) --------------
@jit
def _softmax_bw_rows(g, y, out, n_rows, r_len, inner, zero, log):
    t = cuda.grid(1)
    if t < n_rows:
        base = row_base(t, r_len, inner)
        s = _dot_bw(g, y, base, inner, 0, r_len, 1, zero, log)
        _write_bw(g, y, out, base, inner, 0, r_len, 1, s, log)


@jit
def _softmax_bw_block(g, y, out, r_len, inner, zero, log):
    sh = cuda.shared.array(TPB, out.dtype)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    base = row_base(cuda.blockIdx.x, r_len, inner)
    s = block_sum(sh, _dot_bw(g, y, base, inner, tid, r_len, nt, zero, log))
    _write_bw(g, y, out, base, inner, tid, r_len, nt, s, log)


@kernel("softmax_backward", "cuda")
def _softmax_bw(g, y, dim=-1, log=False):
    dt = result_dtype("softmax_backward", (g.dtype, y.dtype), {"log": bool(log)})
    if y.ndim == 0:
        return full((), 0, dt)
    g = g if g.dtype == dt else cast(g, dt)
    y = y if y.dtype == dt else cast(y, dt)
    out = empty(y.shape, dt)
    outer, r_len, inner = dim_layout(y.shape, int(dim) % y.ndim)
    if y.size:
        launch_rows(_softmax_bw_rows, _softmax_bw_block, outer * inner, r_len, inner, (g.d, y.d, out.d),
                    (dt.type(0), bool(log)))
    return out


# ---- logsumexp over any dims ------------------------------------------------------------------------
@jit
def _lse_rows(x, out, n_out, r_len, inner, ninf, zero):
    t = cuda.grid(1)
    if t < n_out:
        base = row_base(t, r_len, inner)
        m = _lse_shift(_max_of(x, base, inner, 0, r_len, 1, ninf), ninf, zero)
        out[t] = _lse_finish(m, _sum_exp(x, base, inner, 0, r_len, 1, m, zero), ninf)


@jit
def _lse_block(x, out, r_len, inner, ninf, zero):
    sh = cuda.shared.array(TPB, out.dtype)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    base = row_base(cuda.blockIdx.x, r_len, inner)
    m = _lse_shift(_tree_max(sh, _max_of(x, base, inner, tid, r_len, nt, ninf)), ninf, zero)
    s = block_sum(sh, _sum_exp(x, base, inner, tid, r_len, nt, m, zero))
    if tid == 0:
        out[cuda.blockIdx.x] = _lse_finish(m, s, ninf)


@kernel("logsumexp", "cuda")
def _logsumexp(x, dims=(), keepdim=False):
    if x.dtype.kind != "f":
        x = cast(x, np.float32)
    dims = tuple(int(d) % max(x.ndim, 1) for d in dims)
    shape = out_shape(x.shape, dims, keepdim)
    if x.size == 0:
        return full(shape, -math.inf, x.dtype)
    src, outer, r_len, inner = layout(x, dims)
    out = empty(shape, x.dtype)
    T = x.dtype.type
    launch_rows(_lse_rows, _lse_block, outer * inner, r_len, inner, (src.d, out.d), (T(-math.inf), T(0)))
    return out
