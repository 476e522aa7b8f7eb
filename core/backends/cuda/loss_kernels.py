"""CUDA kernels of the class-index and class-probability losses: cross_entropy (fused log-softmax + NLL),
cross_entropy_prob, nll_loss and their backwards; the pointwise losses live in pointwise_loss_kernels.py.

Cross-entropy runs one block per row: block reductions (``norm_kernels.block_max`` / ``block_sum``) give
the row's max and sum of exponentials, and the row's threads then write its loss or its gradient row.
A 'mean' or 'sum' reduction sums the per-row losses in one more block, which also sums the weight of
the kept targets for 'mean' (torch's denominator), so nothing returns to the host. Targets are not
range-checked on the host (that would sync): an out-of-range target gives a NaN loss and NaN gradients.
The kernels are built per float dtype so exponentials run in the input's precision, and values are
rounded where the CPU kernels round them.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import CudaArray, empty, from_host
from .kernel import jit
from .launch import TPB, blocks, device_fn
from .norm_kernels import block_max, block_sum, float_kernels, threads_for

F64 = numba.float64


def dev(a):
    """A 0-d host array (a python-scalar gradient) as a device array; device arrays pass through."""
    return a if isinstance(a, CudaArray) else from_host(a)


@device_fn
def safe_div(a, b):
    """a / b with IEEE results for b == 0 (no ZeroDivisionError on the simulator): nan for 0 / 0."""
    if b != 0:
        return a / b
    if a == 0 or a != a:
        return math.nan
    return math.inf if a > 0 else -math.inf


@jit
def total(vals, n, denom, out):
    """out[0] = sum(vals[:n]) / denom, in one block."""
    sh = cuda.shared.array(TPB, F64)
    acc = 0.0
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        acc += vals[i]
    acc = block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        out[0] = safe_div(acc, denom)


@device_fn
def _kept_weight(sh, t, w, has_w, ignore, nc, n):
    """Summed weight of the in-range targets that are not ``ignore`` (torch's 'mean' denominator)."""
    ws = 0.0
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        ti = t[i]
        if ti != ignore and ti >= 0 and ti < nc:
            ws += w[ti] if has_w else 1.0
    return block_sum(sh, ws)


@jit
def _class_total(rows, t, w, has_w, ignore, nc, n, mean, out):
    sh = cuda.shared.array(TPB, F64)
    acc = 0.0
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        acc += rows[i]
    acc = block_sum(sh, acc)
    ws = _kept_weight(sh, t, w, has_w, ignore, nc, n)
    if cuda.threadIdx.x == 0:
        out[0] = safe_div(acc, ws) if mean else acc


@jit
def _weight_sum(t, w, has_w, ignore, nc, n, out):
    sh = cuda.shared.array(TPB, F64)
    ws = _kept_weight(sh, t, w, has_w, ignore, nc, n)
    if cuda.threadIdx.x == 0:
        out[0] = ws


def _ce_kernels(T):
    """Cross-entropy kernels computing exponentials in numba float type ``T``."""

    @device_fn
    def row_max_sum(sh, x, row, nc):
        """(row max as T, sum of exp(x - max) as float64) of one row, reduced over the block."""
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        mx = T(-math.inf)
        for c in range(t, nc, nt):
            v = x[row + c]
            if v > mx:
                mx = v
        mx = T(block_max(sh, mx))
        se = 0.0
        for c in range(t, nc, nt):
            se += math.exp(x[row + c] - mx)
        return mx, block_sum(sh, se)

    @jit
    def ce_rows(x, t, w, has_w, ignore, smoothing, out, nc):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        sh = cuda.shared.array(TPB, F64)
        ti = t[i]
        if ti == ignore or ti < 0 or ti >= nc:  # the whole block takes this branch: no barrier is skipped
            if tid == 0:
                out[i] = 0.0 if ti == ignore else math.nan
            return
        row = i * nc
        mx, se = row_max_sum(sh, x, row, nc)
        lse = mx + math.log(se)
        wt = F64(w[ti]) if has_w else 1.0
        loss = wt * (lse - x[row + ti])
        if smoothing != 0.0:
            sm = 0.0
            for c in range(tid, nc, cuda.blockDim.x):
                sm += (w[c] if has_w else 1.0) * (lse - x[row + c])
            loss = (1.0 - smoothing) * loss + smoothing / nc * block_sum(sh, sm)
        if tid == 0:
            out[i] = loss

    @jit
    def ce_backward(x, t, w, has_w, ignore, smoothing, g, g_stride, mean, ws, gx, nc):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh = cuda.shared.array(TPB, F64)
        row = i * nc
        ti = t[i]
        if ti == ignore or ti < 0 or ti >= nc:
            fill = 0.0 if ti == ignore else math.nan
            for c in range(tid, nc, nt):
                gx[row + c] = fill
            return
        s = F64(g[i * g_stride])
        if mean:
            s *= safe_div(1.0, ws[0])
        mx, se = row_max_sum(sh, x, row, nc)
        inv = 1.0 / se
        wt = F64(w[ti]) if has_w else 1.0
        a = T(s * (1.0 - smoothing) * wt * inv)
        b = T(0.0)
        k = 0.0
        if smoothing != 0.0:
            wall = 0.0
            for c in range(tid, nc, nt):
                wall += w[c] if has_w else 1.0
            k = s * smoothing / nc
            b = T(k * block_sum(sh, wall) * inv)
        sub = T(s * (1.0 - smoothing) * wt)
        for c in range(tid, nc, nt):
            e = math.exp(x[row + c] - mx)
            v = a * e if smoothing == 0.0 else (a + b) * e - T(k * (w[c] if has_w else 1.0))
            gx[row + c] = v - sub if c == ti else v

    @jit
    def prob_rows(x, tg, w, has_w, smoothing, out, nc):
        i = cuda.blockIdx.x
        sh = cuda.shared.array(TPB, F64)
        row = i * nc
        mx, se = row_max_sum(sh, x, row, nc)
        lse = mx + math.log(se)
        acc = 0.0
        for c in range(cuda.threadIdx.x, nc, cuda.blockDim.x):
            tp = tg[row + c] * (1.0 - smoothing) + smoothing / nc if smoothing != 0.0 else F64(tg[row + c])
            acc += (tp * w[c] if has_w else tp) * (x[row + c] - lse)
        acc = block_sum(sh, acc)
        if cuda.threadIdx.x == 0:
            out[i] = -acc

    @jit
    def prob_backward(x, tg, w, has_w, smoothing, g, g_stride, g_scale, gx, gt, nc):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh = cuda.shared.array(TPB, F64)
        row = i * nc
        s = g[i * g_stride] * g_scale
        mx, se = row_max_sum(sh, x, row, nc)
        lse = mx + math.log(se)
        acc = 0.0
        for c in range(tid, nc, nt):
            tp = tg[row + c] * (1.0 - smoothing) + smoothing / nc if smoothing != 0.0 else F64(tg[row + c])
            acc += tp * w[c] if has_w else tp
        wsum = block_sum(sh, acc)
        for c in range(tid, nc, nt):
            tp = tg[row + c] * (1.0 - smoothing) + smoothing / nc if smoothing != 0.0 else F64(tg[row + c])
            wc = F64(w[c]) if has_w else 1.0
            logp = x[row + c] - lse
            gx[row + c] = s * (math.exp(logp) * wsum - tp * wc)
            gt[row + c] = -s * (1.0 - smoothing) * logp * wc

    return ce_rows, ce_backward, prob_rows, prob_backward


_ce_for = float_kernels(_ce_kernels, "cross_entropy on CUDA supports float32 and float64 logits")


def _weight(w, x):
    """(weight buffer, has_w): an absent weight is never read, so x's buffer stands in for it."""
    return (x.d, False) if w is None else (w.d, True)


def _reduce_rows(rows, reduction, x, t, wd, has_w, ignore_index):
    """'sum' / 'mean' (over the kept targets' weight) of float64 per-row losses, as a 0-d array of x's dtype."""
    out = empty((), x.dtype)
    n = x.shape[0]
    _class_total[1, threads_for(n)](rows.d, t.d, wd, has_w, ignore_index, x.shape[1], n, reduction == "mean", out.d)
    return out


# ---- cross_entropy with class indices ----------------------------------------------------------------

@kernel("cross_entropy", "cuda")
def _cross_entropy(x, t, w=None, *, ignore_index, reduction, label_smoothing):
    ce_rows = _ce_for(x)[0]
    n, nc = x.shape
    wd, has_w = _weight(w, x)
    rows = empty((n,), x.dtype if reduction == "none" else np.float64)
    if n:
        ce_rows[n, threads_for(nc)](x.d, t.d, wd, has_w, ignore_index, float(label_smoothing), rows.d, nc)
    return rows if reduction == "none" else _reduce_rows(rows, reduction, x, t, wd, has_w, ignore_index)


@kernel("cross_entropy_backward", "cuda")
def _cross_entropy_backward(g, x, t, w=None, *, ignore_index, reduction, label_smoothing):
    ce_backward = _ce_for(x)[1]
    n, nc = x.shape
    g = dev(g)
    wd, has_w = _weight(w, x)
    gx = empty(x.shape, x.dtype)
    if n:
        ws = empty((1,), np.float64)
        if reduction == "mean":
            _weight_sum[1, threads_for(n)](t.d, wd, has_w, ignore_index, nc, n, ws.d)
        ce_backward[n, threads_for(nc)](x.d, t.d, wd, has_w, ignore_index, float(label_smoothing), g.d,
                                        1 if reduction == "none" else 0, reduction == "mean", ws.d, gx.d, nc)
    return gx


# ---- cross_entropy with class probabilities ------------------------------------------------------------

@kernel("cross_entropy_prob", "cuda")
def _cross_entropy_prob(x, t, w=None, *, reduction, label_smoothing):
    prob_rows = _ce_for(x)[2]
    n, nc = x.shape
    wd, has_w = _weight(w, x)
    rows = empty((n,), x.dtype)
    if n:
        prob_rows[n, threads_for(nc)](x.d, t.d, wd, has_w, float(label_smoothing), rows.d, nc)
    if reduction == "none":
        return rows
    out = empty((), x.dtype)
    total[1, threads_for(n)](rows.d, n, float(n) if reduction == "mean" else 1.0, out.d)
    return out


@kernel("cross_entropy_prob_backward", "cuda")
def _cross_entropy_prob_backward(g, x, t, w=None, *, reduction, label_smoothing):
    prob_backward = _ce_for(x)[3]
    n, nc = x.shape
    g = dev(g)
    wd, has_w = _weight(w, x)
    gx, gt = empty(x.shape, x.dtype), empty(t.shape, t.dtype)
    if n:
        scale = 1.0 / n if reduction == "mean" else 1.0
        prob_backward[n, threads_for(nc)](x.d, t.d, wd, has_w, float(label_smoothing), g.d,
                                          1 if reduction == "none" else 0, scale, gx.d, gt.d, nc)
    return gx, gt


# ---- nll_loss ---------------------------------------------------------------------------------------------

@jit
def _nll_rows(x, t, w, has_w, ignore, out, n, nc):
    i = cuda.grid(1)
    if i < n:
        ti = t[i]
        if ti == ignore:  # as the CPU kernel: class 0 with weight 0 (so -inf * 0 still gives nan)
            out[i] = -x[i * nc] * 0.0
        elif ti < 0 or ti >= nc:
            out[i] = math.nan
        else:
            out[i] = -x[i * nc + ti] * (w[ti] if has_w else 1.0)


@jit
def _nll_backward(g, g_stride, t, w, has_w, ignore, mean, ws, gx, n, nc):
    j = cuda.grid(1)
    if j < n * nc:
        i = j // nc
        c = j - i * nc
        ti = t[i]
        v = 0.0
        if ti != ignore:
            if ti < 0 or ti >= nc:
                v = math.nan
            elif c == ti:
                wt = F64(w[ti]) if has_w else 1.0
                if wt != 0:  # a zero weight gives 0 even when the 'mean' scale is inf
                    s = F64(g[i * g_stride])
                    if mean:
                        s *= safe_div(1.0, ws[0])
                    v = -wt * s
        gx[j] = v


@kernel("nll_loss", "cuda")
def _nll_loss(x, t, w=None, *, ignore_index, reduction):
    n, nc = x.shape
    wd, has_w = _weight(w, x)
    rows = empty((n,), x.dtype if reduction == "none" else np.float64)
    if n:
        _nll_rows[blocks(n), TPB](x.d, t.d, wd, has_w, ignore_index, rows.d, n, nc)
    return rows if reduction == "none" else _reduce_rows(rows, reduction, x, t, wd, has_w, ignore_index)


@kernel("nll_loss_backward", "cuda")
def _nll_loss_backward(g, x, t, w=None, *, ignore_index, reduction):
    n, nc = x.shape
    g = dev(g)
    wd, has_w = _weight(w, x)
    gx = empty(x.shape, x.dtype)
    if gx.size:
        ws = empty((1,), np.float64)
        if reduction == "mean":
            _weight_sum[1, threads_for(n)](t.d, wd, has_w, ignore_index, nc, n, ws.d)
        _nll_backward[blocks(gx.size), TPB](g.d, 1 if reduction == "none" else 0, t.d, wd, has_w, ignore_index,
                                           reduction == "mean", ws.d, gx.d, n, nc)
    return gx

