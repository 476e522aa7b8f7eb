"""numba kernels for batch and layer normalisation: fused forward (statistics + affine in one call)
and fused backward (input, weight and bias gradients in one call), float32 C-contiguous.

Batch-norm kernels see the input as (N, C, S) with S the flattened spatial size (1 for (N, C)),
and run one channel per parallel iteration. Statistics accumulate in float64, so a large batch
does not lose the mean to float32 round-off; the elementwise passes stay in float32.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .jit import PARALLEL_THRESHOLD, prange_kernel


@prange_kernel()
def bn_train_forward(x, w, b, eps, y, mean, var):
    """Batch statistics per channel (biased variance) and y = (x - mean) * invstd * w + b."""
    n_batch, n_ch, n_sp = x.shape
    count = n_batch * n_sp
    for c in prange(n_ch):
        acc = 0.0
        for n in range(n_batch):
            for s in range(n_sp):
                acc += x[n, c, s]
        m = acc / count
        acc2 = 0.0
        for n in range(n_batch):
            for s in range(n_sp):
                d = x[n, c, s] - m
                acc2 += d * d
        mean[c] = m
        var[c] = acc2 / count
        # invstd from the stored float32 variance, exactly as the backward recomputes it
        inv = 1.0 / np.sqrt(np.float64(var[c]) + eps)
        scale = np.float32(w[c] * inv)
        shift = np.float32(b[c] - m * w[c] * inv)
        for n in range(n_batch):
            for s in range(n_sp):
                y[n, c, s] = x[n, c, s] * scale + shift


@prange_kernel()
def channel_affine(x, scale, shift, y):
    """y[n, c, s] = x[n, c, s] * scale[c] + shift[c] (batch norm with fixed statistics)."""
    n_batch, n_ch, n_sp = x.shape
    for c in prange(n_ch):
        a = scale[c]
        t = shift[c]
        for n in range(n_batch):
            for s in range(n_sp):
                y[n, c, s] = x[n, c, s] * a + t


@prange_kernel()
def bn_backward(g, x, mean, var, w, eps, training, gx, gw, gb):
    """Gradients of batch norm. With ``training`` the statistics depend on x (the two mean terms);
    without it they are constants (running statistics) and gx is just g * w * invstd."""
    n_batch, n_ch, n_sp = x.shape
    count = n_batch * n_sp
    for c in prange(n_ch):
        m = mean[c]
        inv = 1.0 / np.sqrt(np.float64(var[c]) + eps)
        sg = 0.0
        sgx = 0.0
        for n in range(n_batch):
            for s in range(n_sp):
                gg = g[n, c, s]
                sg += gg
                sgx += gg * (x[n, c, s] - m)
        gb[c] = sg
        gw[c] = sgx * inv
        k1 = np.float32(w[c] * inv)
        if training:
            mg = np.float32(sg / count)
            k2 = np.float32(sgx * inv * inv / count)
            mf = np.float32(m)
            for n in range(n_batch):
                for s in range(n_sp):
                    gx[n, c, s] = k1 * (g[n, c, s] - mg - (x[n, c, s] - mf) * k2)
        else:
            for n in range(n_batch):
                for s in range(n_sp):
                    gx[n, c, s] = g[n, c, s] * k1


@prange_kernel()
def ln_forward(x, w, b, eps, y, mean, rstd):
    """Per row of (M, K): mean, 1/std and y = (x - mean) * rstd * w + b."""
    n_rows, k_dim = x.shape
    for i in prange(n_rows):
        acc = 0.0
        for k in range(k_dim):
            acc += x[i, k]
        m = acc / k_dim
        acc2 = 0.0
        for k in range(k_dim):
            d = x[i, k] - m
            acc2 += d * d
        r = 1.0 / np.sqrt(acc2 / k_dim + eps)
        mean[i] = m
        rstd[i] = r
        mf = np.float32(m)
        rf = np.float32(r)
        for k in range(k_dim):
            y[i, k] = (x[i, k] - mf) * rf * w[k] + b[k]


@prange_kernel()
def ln_backward(g, x, mean, rstd, w, gx, gw_part, gb_part):
    """Layer-norm gradients; rows are split into ``gw_part.shape[0]`` blocks, each accumulating
    its own partial weight/bias gradient (summed by the caller), so blocks run in parallel."""
    n_rows, k_dim = x.shape
    n_parts = gw_part.shape[0]
    for p in prange(n_parts):
        lo = p * n_rows // n_parts
        hi = (p + 1) * n_rows // n_parts
        for i in range(lo, hi):
            m = np.float32(mean[i])
            r = np.float32(rstd[i])
            s1 = 0.0
            s2 = 0.0
            for k in range(k_dim):
                xh = (x[i, k] - m) * r
                gwk = g[i, k] * w[k]
                s1 += gwk
                s2 += gwk * xh
                gw_part[p, k] += g[i, k] * xh
                gb_part[p, k] += g[i, k]
            a = np.float32(s1 / k_dim)
            c = np.float32(s2 / k_dim)
            for k in range(k_dim):
                xh = (x[i, k] - m) * r
                gx[i, k] = r * (g[i, k] * w[k] - a - xh * c)


def ln_backward_parts(n_rows: int, work: int) -> int:
    """How many row blocks ln_backward should use: one on the serial path, a few per thread above."""
    if work < PARALLEL_THRESHOLD or numba.config.NUMBA_NUM_THREADS <= 1:
        return 1
    return max(1, min(n_rows, 4 * numba.config.NUMBA_NUM_THREADS))
