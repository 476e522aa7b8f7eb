"""CUDA kernels of softmax, log_softmax, their gradient (softmax_backward) and logsumexp.

All are max-shifted like the CPU: a row's max, then the sum of ``exp(x - max)``, then the outputs. Rows are
read as (outer, R, inner) with ``reduce_kernels``' helpers (logsumexp over several dims gathers first when they
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
from .launch import TPB, blocks, cast, device_fn, full, result_dtype
from .reduce_launch import add, block_size, dim_layout, dmax, layout, out_shape, per_thread, tree_of

_tree_max, _tree_add = tree_of(dmax), tree_of(add)


# ---- softmax / log_softmax ----------------------------------------------------------------------------
@cuda.jit
def _softmax_rows(x, out, n_rows, r_len, inner, ninf, zero, log):
    t = cuda.grid(1)
    if t < n_rows:
        o = t // inner
        base = o * r_len * inner + (t - o * inner)
        m = ninf
        for r in range(r_len):
            m = dmax(m, x[base + r * inner])
        s = zero
        for r in range(r_len):
            s += math.exp(x[base + r * inner] - m)
        if log:
            lse = m + math.log(s)  # s >= 1, or NaN for a row with NaN / +inf / only -inf
            for r in range(r_len):
                out[base + r * inner] = x[base + r * inner] - lse
        else:
            for r in range(r_len):
                out[base + r * inner] = math.exp(x[base + r * inner] - m) / s


@cuda.jit
def _softmax_block(x, out, r_len, inner, ninf, zero, log):
    sh = cuda.shared.array(TPB, out.dtype)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    o = t // inner
    base = o * r_len * inner + (t - o * inner)
    m = ninf
    for r in range(tid, r_len, nt):
        m = dmax(m, x[base + r * inner])
    sh[tid] = m
    m = _tree_max(sh, tid, nt)
    s = zero
    for r in range(tid, r_len, nt):
        s += math.exp(x[base + r * inner] - m)
    sh[tid] = s
    s = _tree_add(sh, tid, nt)
    if log:
        lse = m + math.log(s)
        for r in range(tid, r_len, nt):
            out[base + r * inner] = x[base + r * inner] - lse
    else:
        for r in range(tid, r_len, nt):
            out[base + r * inner] = math.exp(x[base + r * inner] - m) / s


def _softmax(x, dim, log):
    if x.ndim == 0:
        return full((), 0.0 if log else 1.0, x.dtype)
    out = empty(x.shape, x.dtype)
    outer, r_len, inner = dim_layout(x.shape, int(dim) % x.ndim)
    n_rows = outer * inner
    if x.size:
        T = x.dtype.type
        args = (r_len, inner, T(-math.inf), T(0), bool(log))
        if per_thread(r_len, inner, n_rows):
            _softmax_rows[blocks(n_rows), TPB](x.d, out.d, n_rows, *args)
        else:
            _softmax_block[n_rows, block_size(r_len)](x.d, out.d, *args)
    return out


kernel("softmax", "cuda")(lambda x, dim=-1: _softmax(x, dim, False))
kernel("log_softmax", "cuda")(lambda x, dim=-1: _softmax(x, dim, True))


# ---- the gradient from the saved output y: g - exp(y) * sum(g) (log), y * (g - sum(g * y)) --------------
@cuda.jit
def _softmax_bw_rows(g, y, out, n_rows, r_len, inner, zero, log):
    t = cuda.grid(1)
    if t < n_rows:
        o = t // inner
        base = o * r_len * inner + (t - o * inner)
        s = zero
        for r in range(r_len):
            k = base + r * inner
            s += g[k] if log else g[k] * y[k]
        for r in range(r_len):
            k = base + r * inner
            out[k] = g[k] - math.exp(y[k]) * s if log else y[k] * (g[k] - s)


@cuda.jit
def _softmax_bw_block(g, y, out, r_len, inner, zero, log):
    sh = cuda.shared.array(TPB, out.dtype)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    o = t // inner
    base = o * r_len * inner + (t - o * inner)
    s = zero
    for r in range(tid, r_len, nt):
        k = base + r * inner
        s += g[k] if log else g[k] * y[k]
    sh[tid] = s
    s = _tree_add(sh, tid, nt)
    for r in range(tid, r_len, nt):
        k = base + r * inner
        out[k] = g[k] - math.exp(y[k]) * s if log else y[k] * (g[k] - s)


@kernel("softmax_backward", "cuda")
def _softmax_bw(g, y, dim=-1, log=False):
    dt = result_dtype("softmax_backward", (g.dtype, y.dtype), {"log": bool(log)})
    if y.ndim == 0:
        return full((), 0, dt)
    g = g if g.dtype == dt else cast(g, dt)
    y = y if y.dtype == dt else cast(y, dt)
    out = empty(y.shape, dt)
    outer, r_len, inner = dim_layout(y.shape, int(dim) % y.ndim)
    n_rows = outer * inner
    if y.size:
        args = (r_len, inner, dt.type(0), bool(log))
        if per_thread(r_len, inner, n_rows):
            _softmax_bw_rows[blocks(n_rows), TPB](g.d, y.d, out.d, n_rows, *args)
        else:
            _softmax_bw_block[n_rows, block_size(r_len)](g.d, y.d, out.d, *args)
    return out


# ---- logsumexp over any dims ------------------------------------------------------------------------
@device_fn
def _lse_finish(m, s, ninf):
    return ninf if s == 0 else m + math.log(s)  # all -inf: log(0) = -inf


@cuda.jit
def _lse_rows(x, out, n_out, r_len, inner, ninf, zero):
    t = cuda.grid(1)
    if t < n_out:
        o = t // inner
        base = o * r_len * inner + (t - o * inner)
        m = ninf
        for r in range(r_len):
            m = dmax(m, x[base + r * inner])
        if m != m or m == ninf or m == -ninf:
            m = zero
        s = zero
        for r in range(r_len):
            s += math.exp(x[base + r * inner] - m)
        out[t] = _lse_finish(m, s, ninf)


@cuda.jit
def _lse_block(x, out, r_len, inner, ninf, zero):
    sh = cuda.shared.array(TPB, out.dtype)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    o = t // inner
    base = o * r_len * inner + (t - o * inner)
    m = ninf
    for r in range(tid, r_len, nt):
        m = dmax(m, x[base + r * inner])
    sh[tid] = m
    m = _tree_max(sh, tid, nt)
    if m != m or m == ninf or m == -ninf:
        m = zero
    s = zero
    for r in range(tid, r_len, nt):
        s += math.exp(x[base + r * inner] - m)
    sh[tid] = s
    s = _tree_add(sh, tid, nt)
    if tid == 0:
        out[t] = _lse_finish(m, s, ninf)


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
    n_out = outer * inner
    T = x.dtype.type
    args = (r_len, inner, T(-math.inf), T(0))
    if per_thread(r_len, inner, n_out):
        _lse_rows[blocks(n_out), TPB](src.d, out.d, n_out, *args)
    else:
        _lse_block[n_out, block_size(r_len)](src.d, out.d, *args)
    return out
