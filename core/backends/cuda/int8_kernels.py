"""CUDA kernels of the quantization ops (core/ops/quantized.py, qlinear.py, qfold.py): quantize per tensor /
per channel, dequantize, fake_quantize and its backward, requantize (one thread per element), the int8 GEMM,
and dynamic_quantized_linear; the static int8 layers (quantized_linear, the convolutions, the uint8 pooling)
are in int8_conv_kernels.py. The arithmetic is the CPU kernels', operation for operation (bit-identical):
- codes: ``rint(x / scale)`` (divided in x's dtype) clamped to [qmin - zp, qmax - zp] (NaN -> qmin), + zp;
  clamping before rounding gives the same integers (the bounds are) and keeps llrint in range;
- the GEMM sums ``(a - a_zp) * w`` exactly in int32 (16x16 threads, each 4x4 outputs of a 64x64 tile, k in
  steps of 32 through shared memory). Epilogues per output channel n: requantize
  ``clip(rint(float32(acc + bias_i32[n]) * mult[n]) + y_zp, lo, 255)`` (the sum exact in int64), or dequantize
  ``float32(acc) * (a_scale * w_scale[n]) + bias[n]``, product and sum rounded apart (``fmul_rn``/``fadd_rn``:
  NVVM would contract them into one FMA, rounded once). ``mult`` and ``bias_i32`` (requant_params on the CPU)
  and ``a_scale * w_scale`` come from a small kernel per call; the dynamic activation's qparams (torch's
  MinMaxObserver) from a two-pass shared-memory min/max reduction.

A scale or zero point may be a CUDA array or a 0-d host array (copied over). The CPU's checks of parameter
values (scale > 0 and finite, zero point in range) run on host parameters only, and dynamic_quantized_linear
returns NaN for input holding NaN or Inf where the CPU raises: reading device values would stall the stream.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from ...ops.quantized import QRANGES, _check_qparams
from ...ops.registry import kernel
from ..cpu.int8_kernels import K_MAX
from .array import CudaArray, empty, from_host
from .kernel import jit
from .launch import SIM, TPB, blocks, device_fn

_F32 = np.dtype(np.float32)
_EPS32 = np.finfo(np.float32).eps  # a float32 scalar: the smallest dynamic scale
MODE_INT32, MODE_REQUANT, MODE_DEQUANT = 0, 1, 2

# GEMM tiling: TH x TH threads per block, each R x R outputs spaced TH apart (a BT x BT output tile); BK
# k per shared-memory step. The simulator runs one Python thread per CUDA thread: smaller tiles there.
TH = 4 if SIM else 16
R = 2 if SIM else 4
BT = TH * R
BK = 8 if SIM else 32
TILE = (BT, BK + 1)  # a shared tile: BT rows of BK k, +1: the inner loop's column reads hit distinct banks
MINMAX_BLOCKS = 4 if SIM else 512

if SIM:  # numpy float32 scalars: IEEE operations, each rounded
    _fmul = device_fn(lambda a, b: a * b)
    _fadd = device_fn(lambda a, b: a + b)
else:  # pragma: no cover (a real GPU)
    from numba.cuda import libdevice

    _fmul, _fadd = libdevice.fmul_rn, libdevice.fadd_rn


# ---- parameters ---------------------------------------------------------------------------------------
def dev(a) -> CudaArray:
    """A parameter as a CUDA array (a host array, e.g. a CPU scalar tensor, is copied over)."""
    return a if isinstance(a, CudaArray) else from_host(np.asarray(a))


def check_qparams(op, scale, zp, zp_dtype, qmin, qmax):
    """quantized.py's _check_qparams: everything for host parameters, the dtypes for CUDA ones."""
    if isinstance(scale, np.ndarray) and isinstance(zp, np.ndarray):
        _check_qparams(op, scale, zp, zp_dtype, qmin, qmax)
        return
    if scale.dtype != _F32:
        raise RuntimeError(f"{op}: scale must be a float32 tensor, got {scale.dtype}")
    if zp.dtype != zp_dtype:
        raise RuntimeError(f"{op}: zero_point must have dtype {zp_dtype} here, got {zp.dtype}")


def _check_float(op, x):
    if x.dtype.kind != "f":
        raise RuntimeError(f"{op}: input must be a floating point tensor, got {x.dtype} (shape {x.shape})")


def _check_codes(op, q):
    if q.dtype.name not in QRANGES:
        raise RuntimeError(f"{op}: input must be a uint8 or int8 tensor, got {q.dtype} (shape {q.shape})")


def _channels(shape, axis):
    """(inner, nc): element i belongs to channel (i // inner) % nc; per tensor (axis None): channel 0."""
    if axis is None:
        return 1, 1
    return max(1, math.prod(shape[axis + 1:])), shape[axis]


# ---- elementwise quantization kernels -----------------------------------------------------------------
@device_fn
def _code(v, lo, hi):
    """clamp(rint(v), lo, hi) for integer bounds; NaN -> lo."""
    if v >= hi:
        return hi
    if v > lo:
        return round(v)
    return lo


@jit
def _quantize_k(x, scale, zp, out, n, inner, nc, qmin, qmax):
    i = cuda.grid(1)
    if i < n:
        c = (i // inner) % nc
        z = np.int64(zp[c])
        out[i] = _code(x[i] / scale[c], qmin - z, qmax - z) + z


def _make_fake_quantize(ft):
    """fake_quantize in float dtype ``ft``: the code times the scale, both in ``ft``."""
    @jit
    def k(x, scale, zp, out, n, inner, nc, qmin, qmax):
        i = cuda.grid(1)
        if i < n:
            c = (i // inner) % nc
            z = np.int64(zp[c])
            s = scale[c]
            out[i] = ft(_code(x[i] / s, qmin - z, qmax - z)) * ft(s)

    return k


_FAKE_QUANTIZE = {np.dtype(np.float32): _make_fake_quantize(np.float32),
                  np.dtype(np.float64): _make_fake_quantize(np.float64)}


@jit
def _fake_quantize_bw_k(g, x, scale, zp, out, n, inner, nc, qmin, qmax):
    i = cuda.grid(1)
    if i < n:
        c = (i // inner) % nc
        z = np.int64(zp[c])
        v = np.float64(x[i] / scale[c])  # unrounded code; half a step past the range still passes (see CPU)
        if np.float64(qmin - z) - 0.5 <= v <= np.float64(qmax - z) + 0.5:
            out[i] = g[i]
        else:
            out[i] = 0


@device_fn
def _dequant(q, s, z):
    return np.float32(np.int32(q) - np.int32(z)) * s


@jit
def _dequantize_k(q, scale, zp, out, n, inner, nc, qmin, qmax):
    i = cuda.grid(1)
    if i < n:
        c = (i // inner) % nc
        out[i] = _dequant(q[i], scale[c], zp[c])


@jit
def _requantize_k(q, s1, z1, s2, z2, out, n, qmin, qmax):
    """quantize(dequantize(q)) per element: what the CPU's 256-entry table holds for each code."""
    i = cuda.grid(1)
    if i < n:
        z = np.int64(z2[0])
        out[i] = _code(_dequant(q[i], s1[0], z1[0]) / s2[0], qmin - z, qmax - z) + z


def _per_channel(k, x, scale, zp, out, axis, qmin=0, qmax=0, head=()):
    """Run one of the kernels above on x (one thread per element of ``out``)."""
    if out.size:
        inner, nc = _channels(x.shape, axis)
        k[blocks(out.size), TPB](*head, x.d, dev(scale).d, dev(zp).d, out.d, out.size, inner, nc, int(qmin),
                                 int(qmax))
    return out


def _quantize(op, x, scale, zp, axis, dtype):
    _check_float(op, x)
    qmin, qmax = QRANGES[dtype]
    check_qparams(op, scale, zp, np.dtype(dtype), qmin, qmax)
    return _per_channel(_quantize_k, x, scale, zp, empty(x.shape, dtype), axis, qmin, qmax)


@kernel("quantize_per_tensor", "cuda")
def _qpt(x, scale, zp, dtype="uint8"):
    return _quantize("quantize_per_tensor", x, scale, zp, None, dtype)


@kernel("quantize_per_channel", "cuda")
def _qpc(x, scale, zp, axis=0, dtype="uint8"):
    return _quantize("quantize_per_channel", x, scale, zp, axis, dtype)


@kernel("dequantize", "cuda")
def _deq(q, scale, zp, axis=None):
    _check_codes("dequantize", q)
    check_qparams("dequantize", scale, zp, q.dtype, *QRANGES[q.dtype.name])
    return _per_channel(_dequantize_k, q, scale, zp, empty(q.shape, np.float32), axis)


def _fq_params(op, x, scale, zp, quant_min, quant_max):
    _check_float(op, x)
    check_qparams(op, scale, zp, np.dtype(np.int32), quant_min, quant_max)


@kernel("fake_quantize", "cuda")
def _fq(x, scale, zp, quant_min=0, quant_max=255, axis=None):
    _fq_params("fake_quantize", x, scale, zp, quant_min, quant_max)
    return _per_channel(_FAKE_QUANTIZE[x.dtype], x, scale, zp, empty(x.shape, x.dtype), axis, quant_min, quant_max)


@kernel("fake_quantize_backward", "cuda")
def _fq_bw(g, x, scale, zp, quant_min=0, quant_max=255, axis=None):
    _fq_params("fake_quantize_backward", x, scale, zp, quant_min, quant_max)
    out = empty(x.shape, _F32 if x.dtype == _F32 else g.dtype)
    return _per_channel(_fake_quantize_bw_k, x, scale, zp, out, axis, quant_min, quant_max, head=(g.d,))


@kernel("requantize", "cuda")
def _requantize(q, s1, z1, s2, z2, dtype="uint8"):
    _check_codes("requantize", q)
    if dtype not in QRANGES:
        raise RuntimeError(f"requantize: dtype must be 'uint8' or 'int8', got {dtype!r}")
    check_qparams("requantize (input qparams)", s1, z1, q.dtype, *QRANGES[q.dtype.name])
    check_qparams("requantize (output qparams)", s2, z2, np.dtype(dtype), *QRANGES[dtype])
    out = empty(q.shape, dtype)
    if out.size:
        _requantize_k[blocks(out.size), TPB](q.d, dev(s1).d, dev(z1).d, dev(s2).d, dev(z2).d, out.d, out.size,
                                             *QRANGES[dtype])
    return out


# ---- the int8 GEMM ------------------------------------------------------------------------------------
@jit
def _gemm_k(a, lda, azp, w, m_, ng, k_, rows_per_img, ntot, mode, out_i, out_q, out_f, bias_i, f1, f2, yzp, relu):
    """Output row m, channel n = g * ng + j (g = blockIdx.z, the group) of acc = sum_k (a[m, g*k_ + k] - a_zp) *
    w[n, k], finished by epilogue ``mode`` and stored at [m // rows_per_img, n, m % rows_per_img] of an
    (images, ntot, rows_per_img) output: linear layers have rows_per_img = 1, convolutions Ho * Wo."""
    sa = cuda.shared.array(TILE, np.int32)
    sw = cuda.shared.array(TILE, np.int32)
    acc = cuda.local.array((R, R), np.int32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    t = ty * TH + tx
    m0, n0, g = cuda.blockIdx.x * BT, cuda.blockIdx.y * BT, cuda.blockIdx.z
    koff, nbase = g * k_, g * ng
    zp = np.int32(azp[0])
    for i in range(R):
        for j in range(R):
            acc[i, j] = 0
    for k0 in range(0, k_, BK):
        for e in range(t, BT * BK, TH * TH):
            r = e // BK
            c = e - r * BK
            k = k0 + c
            va = np.int32(0)
            vw = np.int32(0)
            if k < k_:
                if m0 + r < m_:
                    va = np.int32(a[(m0 + r) * lda + koff + k]) - zp
                if n0 + r < ng:
                    vw = np.int32(w[(nbase + n0 + r) * k_ + k])
            sa[r, c] = va
            sw[r, c] = vw
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(R):
                av = sa[ty + i * TH, kk]
                for j in range(R):
                    acc[i, j] = np.int32(acc[i, j] + av * sw[tx + j * TH, kk])
        cuda.syncthreads()
    for i in range(R):
        m = m0 + ty + i * TH
        if m < m_:
            img = m // rows_per_img
            p = m - img * rows_per_img
            for j in range(R):
                jn = n0 + tx + j * TH
                if jn < ng:
                    n = nbase + jn
                    idx = (img * ntot + n) * rows_per_img + p
                    _epilogue(acc[i, j], n, idx, mode, out_i, out_q, out_f, bias_i, f1, f2, yzp, relu)


@device_fn
def _epilogue(acc, n, idx, mode, out_i, out_q, out_f, bias_i, f1, f2, yzp, relu):
    if mode == MODE_INT32:
        out_i[idx] = acc
    elif mode == MODE_REQUANT:
        z = np.int64(yzp[0])
        lo = z if relu else 0
        v = np.float32(np.int64(acc) + np.int64(bias_i[n])) * f1[n]
        out_q[idx] = _code(v, lo - z, 255 - z) + z
    else:
        y = _fadd(_fmul(np.float32(acc), f1[n]), f2[n])
        if relu and y < 0:
            y = np.float32(0)
        out_f[idx] = y


@functools.cache
def _stand_ins():
    """int32, uint8 and float32 arrays for the outputs and operands a mode does not use."""
    return tuple(empty((1,), d) for d in (np.int32, np.uint8, np.float32))


def gemm(a, lda, a_zp, w, m, ng, k, groups, rows_per_img, mode, out, bias_i=None, f1=None, f2=None, y_zp=None,
         relu=False):
    """Launch the GEMM (see _gemm_k) into ``out`` (int32, uint8 or float32 per ``mode``); a_zp and y_zp are
    1-element CUDA arrays, bias_i / f1 / f2 the epilogue's per-channel arrays (int32, float32, float32)."""
    if ng == 0 or k == 0:
        raise ValueError(f"int8 GEMM: weight has no elements (shape {w.shape})")
    if k > K_MAX:
        raise ValueError(f"int8 GEMM: K = {k} exceeds {K_MAX}, the largest K whose int32 accumulator cannot "
                         f"overflow (weight shape {w.shape})")
    if m == 0:
        return out
    no_i, no_u, no_f = _stand_ins()
    outs = [no_i, no_u, no_f]
    outs[mode] = out
    outs += [no_i if bias_i is None else bias_i, no_f if f1 is None else f1, no_f if f2 is None else f2,
             a_zp if y_zp is None else y_zp]
    grid = (blocks(m, BT), blocks(ng, BT), groups)
    _gemm_k[grid, (TH, TH)](a.d, lda, a_zp.d, w.d, m, ng, k, rows_per_img, ng * groups, mode, *(o.d for o in outs),
                            bool(relu))
    return out


def qgemm(a: CudaArray, a_zero_point, w: CudaArray) -> CudaArray:
    """int32 (M, N) accumulators ``sum_k (a[m, k] - a_zp) * w[n, k]`` of uint8/int8 a (M, K) and int8 w (N, K):
    the GEMM without an epilogue (what the tests hold to numpy's int64 matmul)."""
    m, k = a.shape
    zp = from_host(np.int32(a_zero_point))
    return gemm(a, k, zp, w, m, w.shape[0], k, 1, 1, MODE_INT32, empty((m, w.shape[0]), np.int32))


# ---- per-channel epilogue parameters ------------------------------------------------------------------
@jit
def _channel_params_k(n_, mode, xs, ws, ws_pc, ys, bias, has_bias, bias_i, f1, f2):
    """Static (MODE_REQUANT): f1 = x_scale * w_scale / y_scale, bias_i = rint(bias / (x_scale * w_scale))
    clipped to int32 (requant_params on the CPU). Dynamic: f1 = a_scale * w_scale (xs holds a_scale),
    f2 = float32(bias)."""
    n = cuda.grid(1)
    if n < n_:
        acc_scale = np.float32(xs[0]) * np.float32(ws[n if ws_pc else 0])
        if mode == MODE_REQUANT:
            f1[n] = acc_scale / np.float32(ys[0])
            b = np.int32(0)
            if has_bias:
                v = np.float64(np.float32(bias[n]) / acc_scale)
                b = np.int32(_code(v, -2147483648, 2147483647))
            bias_i[n] = b
        else:
            f1[n] = acc_scale
            f2[n] = np.float32(bias[n]) if has_bias else np.float32(0)


def channel_params(n, mode, xs, ws, ys, bias):
    """(bias_i32, f1, f2) CUDA arrays of the GEMM epilogue for n output channels (see _channel_params_k)."""
    bias_i, f1, f2 = empty((n,), np.int32), empty((n,), np.float32), empty((n,), np.float32)
    ws = dev(ws)
    _channel_params_k[blocks(n), TPB](n, mode, dev(xs).d, ws.d, ws.ndim == 1, dev(ys).d,
                                      dev(bias if bias is not None else ws).d, bias is not None, bias_i.d, f1.d, f2.d)
    return bias_i, f1, f2


# ---- dynamic quantization -----------------------------------------------------------------------------
@device_fn
def _merge(lo, hi, a, b):
    """min/max that keep a NaN once seen (the CPU refuses non-finite input; here it poisons the output)."""
    if a < lo or a != a:
        lo = a
    if b > hi or b != b:
        hi = b
    return lo, hi


@device_fn
def _block_minmax(lo, hi):
    """The min and max of every thread's (lo, hi) in the block (a shared-memory tree), valid in thread 0."""
    smin = cuda.shared.array(TPB, np.float32)
    smax = cuda.shared.array(TPB, np.float32)
    t = cuda.threadIdx.x
    smin[t], smax[t] = lo, hi
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if t < s:
            smin[t], smax[t] = _merge(smin[t], smax[t], smin[t + s], smax[t + s])
        cuda.syncthreads()
        s //= 2
    return smin[0], smax[0]


@jit
def _minmax_k(x, n, pmin, pmax):
    """Block b writes the min and max of its grid-stride share of x to pmin[b], pmax[b]."""
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        lo, hi = _merge(lo, hi, x[i], x[i])
    lo, hi = _block_minmax(lo, hi)
    if cuda.threadIdx.x == 0:
        pmin[cuda.blockIdx.x], pmax[cuda.blockIdx.x] = lo, hi


@jit
def _qparams_k(pmin, pmax, nb, qmax, qs, qz):
    """One block: reduce the partial min/max, then torch's MinMaxObserver qparams (int8_kernels._qparams), in
    float32: scale = max((max(hi, 0) - min(lo, 0)) / qmax, eps), zp = clip(-rint(lo / scale), 0, qmax) (qmax 255,
    or 127 with reduce_range)."""
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    for i in range(cuda.threadIdx.x, nb, TPB):
        lo, hi = _merge(lo, hi, pmin[i], pmax[i])
    lo, hi = _block_minmax(lo, hi)
    if cuda.threadIdx.x == 0:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            qs[0], qz[0] = np.float32(np.nan), 0
            return
        lo = min(lo, np.float32(0))
        hi = max(hi, np.float32(0))
        scale = max((hi - lo) / np.float32(qmax), _EPS32)
        qs[0] = scale
        qz[0] = _code(-(lo / scale), 0, qmax)  # rint is odd, so -rint(v) = rint(-v)


@jit
def _quantize_dynamic_k(x, qs, qz, qmax, out, n):
    i = cuda.grid(1)
    if i < n:
        z = np.int64(qz[0])
        out[i] = _code(x[i] / qs[0], -z, qmax - z) + z


@kernel("dynamic_quantized_linear", "cuda")
def _dql(x, w, w_scale, bias=None, *, relu=False, reduce_range=False):
    if w.dtype != np.int8:
        raise TypeError(f"dynamic_quantized_linear: weight must be int8 (symmetric), got {w.dtype}")
    if x.dtype != np.float32:
        raise TypeError(f"dynamic_quantized_linear: input must be float32, got {x.dtype}")
    n, k = w.shape
    size = x.size
    out = empty(x.shape[:-1] + (n,), np.float32)
    if size == 0:
        return out
    nb = min(blocks(size), MINMAX_BLOCKS)
    pmin, pmax = empty((nb,), np.float32), empty((nb,), np.float32)
    qs, qz = empty((1,), np.float32), empty((1,), np.int32)
    _minmax_k[nb, TPB](x.d, size, pmin.d, pmax.d)
    qmax = 127 if reduce_range else 255
    _qparams_k[1, TPB](pmin.d, pmax.d, nb, qmax, qs.d, qz.d)
    xq = empty(x.shape, np.uint8)
    _quantize_dynamic_k[blocks(size), TPB](x.d, qs.d, qz.d, qmax, xq.d, size)
    _, f1, f2 = channel_params(n, MODE_DEQUANT, qs, w_scale, qs, bias)
    return gemm(xq, k, qz, w, size // k, n, k, 1, 1, MODE_DEQUANT, out, None, f1, f2, None, relu)
