"""CUDA kernels of the normalisation ops (batch_norm with running or batch statistics, their fused
backward, layer_norm and its backward) and of dropout, plus the block reductions the loss kernels share.

Reductions run one block per channel (batch norm) or per row (layer norm): each thread accumulates a
strided slice in float64 (as the CPU kernels accumulate), then ``block_sum`` (from ``reduce_launch``)
combines the block with a shared-memory tree. The kernels are built per float dtype by small factories
(``float_kernels``) so the elementwise passes run in the input's precision with the scale/shift rounded to it,
exactly as the CPU kernels round them.
Layer norm's weight/bias gradients are column sums over rows: partial sums over row chunks, then a sum
of the chunks, so the work spreads over many blocks.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ... import random as _random
from ...ops.registry import kernel
from .array import empty, from_host
from .kernel import jit
from .launch import SIM, TPB, blocks, device_fn, full
from .reduce_launch import block_sum, tree_of

F64 = numba.float64
ROW_CHUNKS = 4 if SIM else 128  # layer_norm_backward: row chunks of the weight/bias gradient partial sums


def threads_for(n: int) -> int:
    """Threads per block of a block reduction over n values: a power of two from a warp up to TPB."""
    t = 4 if SIM else 32
    while t < n and t < TPB:
        t *= 2
    return t


def _skip_nan_max(a, b):
    return b if b > a else a  # NaNs are skipped, as the CPU's ``if x > mx``


block_max = tree_of(device_fn(_skip_nan_max))  # as reduce_launch.block_sum: every thread gets the block's max


def float_kernels(factory, what):
    """``get(x)``: the kernels ``factory(numba float type)`` builds for x's dtype (float32 or float64), else
    NotImplementedError ``what``."""
    table = {np.dtype(np.float32): factory(numba.float32), np.dtype(np.float64): factory(numba.float64)}

    def get(x):
        k = table.get(x.dtype)
        if k is None:
            raise NotImplementedError(f"{what}, got {x.dtype}")
        return k

    return get


def _float_kernels(T):
    """Batch- and layer-norm kernels computing in numba float type ``T`` (float32 or float64)."""

    @jit
    def bn_train(x, w, b, eps, y, mean, var, nb, nc, ns):
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh = cuda.shared.array(TPB, F64)
        cnt = nb * ns
        acc = 0.0
        for k in range(t, cnt, nt):
            n = k // ns
            acc += x[(n * nc + c) * ns + k - n * ns]
        m = block_sum(sh, acc) / cnt
        acc = 0.0
        for k in range(t, cnt, nt):
            n = k // ns
            d = x[(n * nc + c) * ns + k - n * ns] - m
            acc += d * d
        v = block_sum(sh, acc) / cnt
        if t == 0:
            mean[c] = m
            var[c] = v
        inv = 1.0 / math.sqrt(F64(T(v)) + eps)  # from the stored variance, as the backward recomputes it
        scale = T(w[c] * inv)
        shift = T(b[c] - m * w[c] * inv)
        for k in range(t, cnt, nt):
            n = k // ns
            j = (n * nc + c) * ns + k - n * ns
            y[j] = x[j] * scale + shift

    @jit
    def bn_backward(g, x, mean, var, w, eps, training, gx, gw, gb, nb, nc, ns):
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh = cuda.shared.array(TPB, F64)
        cnt = nb * ns
        m = mean[c]
        inv = 1.0 / math.sqrt(F64(var[c]) + eps)
        sg = 0.0
        sgx = 0.0
        for k in range(t, cnt, nt):
            n = k // ns
            j = (n * nc + c) * ns + k - n * ns
            gg = g[j]
            sg += gg
            sgx += gg * (x[j] - m)
        sg = block_sum(sh, sg)
        sgx = block_sum(sh, sgx)
        if t == 0:
            gb[c] = sg
            gw[c] = sgx * inv
        k1 = T(w[c] * inv)
        mg = T(sg / cnt) if training else T(0.0)
        k2 = T(sgx * inv * inv / cnt) if training else T(0.0)
        mf = T(m)
        for k in range(t, cnt, nt):
            n = k // ns
            j = (n * nc + c) * ns + k - n * ns
            if training:
                gx[j] = k1 * (g[j] - mg - (x[j] - mf) * k2)
            else:
                gx[j] = g[j] * k1

    @jit
    def ln_forward(x, w, b, eps, y, mean, rstd, kd):
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh = cuda.shared.array(TPB, F64)
        row = i * kd
        acc = 0.0
        for k in range(t, kd, nt):
            acc += x[row + k]
        m = block_sum(sh, acc) / kd
        acc = 0.0
        for k in range(t, kd, nt):
            d = x[row + k] - m
            acc += d * d
        r = 1.0 / math.sqrt(block_sum(sh, acc) / kd + eps)
        if t == 0:
            mean[i] = m
            rstd[i] = r
        mf = T(m)
        rf = T(r)
        for k in range(t, kd, nt):
            y[row + k] = (x[row + k] - mf) * rf * w[k] + b[k]

    @jit
    def ln_backward_rows(g, x, mean, rstd, w, gx, kd):
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sh = cuda.shared.array(TPB, F64)
        row = i * kd
        m = T(mean[i])
        r = T(rstd[i])
        s1 = 0.0
        s2 = 0.0
        for k in range(t, kd, nt):
            gwk = g[row + k] * w[k]
            s1 += gwk
            s2 += gwk * ((x[row + k] - m) * r)
        a = T(block_sum(sh, s1) / kd)
        c = T(block_sum(sh, s2) / kd)
        for k in range(t, kd, nt):
            xh = (x[row + k] - m) * r
            gx[row + k] = r * (g[row + k] * w[k] - a - xh * c)

    @jit
    def ln_backward_cols(g, x, mean, rstd, pw, pb, rows, kd, chunks):
        """Partial weight/bias gradients of row chunk blockIdx.y for column k."""
        k = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        p = cuda.blockIdx.y
        if k < kd:
            aw = 0.0
            ab = 0.0
            for i in range(p * rows // chunks, (p + 1) * rows // chunks):
                gg = g[i * kd + k]
                aw += gg * ((x[i * kd + k] - T(mean[i])) * T(rstd[i]))
                ab += gg
            pw[p * kd + k] = aw
            pb[p * kd + k] = ab

    return bn_train, bn_backward, ln_forward, ln_backward_rows, ln_backward_cols


_kernels = float_kernels(_float_kernels, "normalisation on CUDA supports float32 and float64 inputs")


@jit
def _col_sums(pw, pb, gw, gb, chunks, kd):
    k = cuda.grid(1)
    if k < kd:
        aw = 0.0
        ab = 0.0
        for p in range(chunks):
            aw += pw[p * kd + k]
            ab += pb[p * kd + k]
        gw[k] = aw
        gb[k] = ab


@jit
def _bn_coefficients(rm, rv, w, b, eps, scale, shift, nc):
    c = cuda.grid(1)
    if c < nc:
        sc = F64(w[c]) / math.sqrt(F64(rv[c]) + eps)
        scale[c] = sc
        shift[c] = F64(b[c]) - F64(rm[c]) * sc


@jit
def _channel_affine(x, scale, shift, y, n, nc, ns):
    i = cuda.grid(1)
    if i < n:
        c = (i // ns) % nc
        y[i] = x[i] * scale[c] + shift[c]


def _ncs(shape):
    ns = 1
    for s in shape[2:]:
        ns *= s
    return shape[0], shape[1], ns


# ---- batch norm ----------------------------------------------------------------------------------------

@kernel("batch_norm", "cuda")
def _batch_norm(x, rm, rv, w, b, eps):
    _kernels(x)
    nb, nc, ns = _ncs(x.shape)
    scale, shift = empty((nc,), x.dtype), empty((nc,), x.dtype)
    y = empty(x.shape, x.dtype)
    if nc:
        _bn_coefficients[blocks(nc), TPB](rm.d, rv.d, w.d, b.d, float(eps), scale.d, shift.d, nc)
    if y.size:
        _channel_affine[blocks(y.size), TPB](x.d, scale.d, shift.d, y.d, y.size, nc, ns)
    return y


@kernel("batch_norm_train", "cuda")
def _batch_norm_train(x, w, b, eps):
    bn_train = _kernels(x)[0]
    nb, nc, ns = _ncs(x.shape)
    y, mean, var = empty(x.shape, x.dtype), empty((nc,), x.dtype), empty((nc,), x.dtype)
    if nc:
        bn_train[nc, threads_for(nb * ns)](x.d, w.d, b.d, float(eps), y.d, mean.d, var.d, nb, nc, ns)
    return y, mean, var


@kernel("batch_norm_backward", "cuda")
def _batch_norm_backward(g, x, mean, var, w, eps, training):
    bn_backward = _kernels(x)[1]
    nb, nc, ns = _ncs(x.shape)
    gx, gw, gb = empty(x.shape, x.dtype), empty((nc,), x.dtype), empty((nc,), x.dtype)
    if nc:
        bn_backward[nc, threads_for(nb * ns)](g.d, x.d, mean.d, var.d, w.d, float(eps), bool(training), gx.d, gw.d,
                                              gb.d, nb, nc, ns)
    return gx, gw, gb


# ---- layer norm ----------------------------------------------------------------------------------------

def _rows(x, normalized_shape):
    kd = 1
    for s in normalized_shape:
        kd *= s
    return x.size // kd if kd else 0, kd


@kernel("layer_norm", "cuda")
def _layer_norm(x, w, b, normalized_shape, eps):
    ln_forward = _kernels(x)[2]
    rows, kd = _rows(x, normalized_shape)
    y, mean, rstd = empty(x.shape, x.dtype), empty((rows,), x.dtype), empty((rows,), x.dtype)
    if rows:
        ln_forward[rows, threads_for(kd)](x.d, w.d, b.d, float(eps), y.d, mean.d, rstd.d, kd)
    return y, mean, rstd


@kernel("layer_norm_backward", "cuda")
def _layer_norm_backward(g, x, mean, rstd, w, normalized_shape):
    _, _, _, ln_rows, ln_cols = _kernels(x)
    rows, kd = _rows(x, normalized_shape)
    gx = empty(x.shape, x.dtype)
    gw, gb = empty(tuple(normalized_shape), x.dtype), empty(tuple(normalized_shape), x.dtype)
    if not rows:
        return gx, full(gw.shape, 0, x.dtype), full(gb.shape, 0, x.dtype)
    ln_rows[rows, threads_for(kd)](g.d, x.d, mean.d, rstd.d, w.d, gx.d, kd)
    chunks = min(rows, ROW_CHUNKS)
    pw, pb = empty((chunks, kd), np.float64), empty((chunks, kd), np.float64)
    ln_cols[(blocks(kd), chunks), TPB](g.d, x.d, mean.d, rstd.d, pw.d, pb.d, rows, kd, chunks)
    _col_sums[blocks(kd), TPB](pw.d, pb.d, gw.d, gb.d, chunks, kd)
    return gx, gw, gb


# ---- dropout -------------------------------------------------------------------------------------------

@jit
def _dropout_k(x, u, p, scale, zero, y, mask, n):
    i = cuda.grid(1)
    if i < n:
        keep = u[i] >= p
        mask[i] = keep
        y[i] = x[i] * (scale if keep else zero)  # multiply, not select: a dropped inf/nan gives nan (as torch)


@jit
def _masked_scale(g, mask, scale, zero, out, n):
    i = cuda.grid(1)
    if i < n:
        out[i] = g[i] * (scale if mask[i] else zero)


@kernel("dropout", "cuda")
def _dropout(x, p):
    if p >= 1.0:
        return full(x.shape, 0, x.dtype), full(x.shape, False, np.bool_)
    # The mask's uniforms come from ember's host generator, drawn exactly as the CPU kernel draws them (so a
    # seed gives the same mask on both devices); that costs one host->device copy of x.size floats per call.
    u = from_host(_random.default_generator().random(x.shape, dtype=np.float32))
    y, mask = empty(x.shape, x.dtype), empty(x.shape, np.bool_)
    t = x.dtype.type
    if x.size:
        _dropout_k[blocks(x.size), TPB](x.d, u.d, np.float32(p), t(1.0 / (1.0 - p)), t(0), y.d, mask.d, x.size)
    return y, mask


@kernel("dropout_backward", "cuda")
def _dropout_backward(g, mask, p):
    if p >= 1.0:
        return full(g.shape, 0, g.dtype)
    out = empty(g.shape, g.dtype)
    t = g.dtype.type
    if g.size:
        _masked_scale[blocks(g.size), TPB](g.d, mask.d, t(1.0 / (1.0 - p)), t(0), out.d, g.size)
    return out
