"""int8 GEMM kernels for quantized inference: weight prepacking, an exact int32 GEMM and its fused
requantize / dequantize epilogues (``qlinear``, ``qlinear_dynamic``); ``qconv2d`` is in int8_conv.py.

Accumulator: ``acc[m, n] = sum_k (a[m, k] - a_zp) * w[n, k]``, uint8 activations, symmetric int8
weights (zero point 0, -128 allowed), exact in int32 for K <= K_MAX (|a*w| <= 255 * 128); the tiles
sum raw products and the epilogue subtracts ``a_zp * col_sums[n]``. int8 activations work too
(``qgemm_s8``; qgemm, qlinear and qconv2d take either): ``a ^ 0x80 = a + 128`` maps them to uint8
with zero point ``a_zp + 128``.

Epilogues run on each block of rows as it leaves the GEMM (no int32 (M, N) array), in float32 with
one rounding per operation (no fastmath: no FMA contraction, no reciprocal), so a numpy reference
reproduces them bit for bit:
- requantize: ``v = float32(acc + bias_i32[n]) * multiplier[n]`` (the sum exact in int64, rounded
  once), ``q = clip(rint(v) + out_zp, lo, qmax)``, rint = round half to even, lo = qmin, or
  ``max(qmin, out_zp)`` with ReLU; qmin/qmax: the output dtype's range unless given.
- dequantize: ``y = float32(acc) * (a_scale * w_scale[n]) + bias_f32[n]`` (float32 product first),
  ``max(y, 0)`` with ReLU.

Code generation (numba 0.68 / LLVM 20, ``dispatcher.inspect_asm``): per 16 k, the 4x4 tile's loop is
4 ``vpmovzxbd`` (activations) + 4 ``vpmovsxbd`` (weights) and 16 ``vpdpwssd zmm`` on this AVX-512
VNNI machine (AMD Zen 4); ``vpmaddwd ymm`` + ``vpaddd`` with AVX2 only, ``pmaddwd`` with SSE2. LLVM
turns an int32 multiply of a zero-extended byte by a sign-extended one into ``vpmaddwd`` on 16-bit
halves (upper halves 0: 16 products per zmm instruction) and fuses the add into ``vpdpwssd``. The
zero extension is what lets one load feed four products: with activations minus the zero point in
int16 (both sides sign-extended) shared loads stay ``vpmulld``; only one-product-per-load dot loops
get ``vpmaddwd``. The arithmetic uses ``np.multiply``/``np.add`` on int32 scalars (numba's ``*``/``+``
widen to int64). Single rows (M = 1, and M % 4) use a 1x8 tile. One thread: M = 64, 784 -> 512 at
~100 Gop/s (OpenBLAS sgemm ~80 GFLOP/s); short K pays for each tile's 16 horizontal sums (K = 144:
~55 Gop/s).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import prange

from . import jit
from . import vnni as _vnni
from .jit import njit

# Largest K with an exact int32 accumulator: 255 * 128 * K <= 2**31 - 1 (and >= -2**31).
K_MAX = 65793
# K is padded to a multiple of this (zeros in both operands): the vector loop then has no remainder.
K_BLOCK = 16
# prange over row blocks from this many rows and multiply-adds on. On the 2-core reference VM a
# parallel call right after other work waits for numba's workqueue worker to wake: M = 64, 784 -> 512
# (25.7M) took 535 us serial, 755 us parallel (median; 420 us when parallel calls run back to back).
PAR_MIN_ROWS = 16
PAR_MIN_MACS = 1 << 25

MODE_INT32, MODE_REQUANT, MODE_DEQUANT = 0, 1, 2
_QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
_EPS32 = np.finfo(np.float32).eps


class PackedWeight(NamedTuple):
    """A weight in the GEMM's layout: ``data`` (N, Kp) int8, each row zero-padded to Kp (a multiple
    of K_BLOCK); conv weights have K in (kh, kw, C/groups) order (im2row copies whole pixels).
    ``col_sums[n] = sum_k w[n, k]`` (int32) corrects for the activation zero point."""
    data: np.ndarray
    n: int
    k: int
    col_sums: np.ndarray
    kernel_size: tuple | None = None  # (kh, kw) when packed from a 4-d conv weight
    vnni: np.ndarray = np.zeros((1, 1, _vnni.TILE_N, 4), np.int8)  # vnni.pack(data) where the VNNI tile runs

    def unpack(self) -> np.ndarray:
        """The int8 weight as it was given to ``pack_weight`` ((N, K), or (Cout, C/groups, kh, kw))."""
        w = self.data[:, :self.k]
        if self.kernel_size is None:
            return w.copy()
        kh, kw = self.kernel_size
        return np.ascontiguousarray(w.reshape(self.n, kh, kw, self.k // (kh * kw)).transpose(0, 3, 1, 2))


def pack_weight(w) -> PackedWeight:
    """Prepack a symmetric int8 weight once (at convert/load time): (N, K) for linear layers or
    (Cout, C/groups, kh, kw) for convolutions."""
    w = np.asarray(w)
    if w.dtype != np.int8:
        raise TypeError(f"pack_weight: weight must be int8 (symmetric, zero point 0), got {w.dtype} "
                        f"(shape {w.shape})")
    if w.ndim == 2:
        rows, ks = w, None
    elif w.ndim == 4:
        rows, ks = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1), (int(w.shape[2]), int(w.shape[3]))
    else:
        raise ValueError(f"pack_weight: weight must be 2-d (N, K) or 4-d (Cout, C/groups, kh, kw), got shape {w.shape}")
    n, k = rows.shape
    if n == 0 or k == 0:
        raise ValueError(f"pack_weight: weight has no elements (shape {w.shape})")
    if k > K_MAX:
        raise ValueError(f"pack_weight: K = {k} exceeds {K_MAX}, the largest K whose int32 accumulator "
                         f"cannot overflow (weight shape {w.shape})")
    kp = -(-k // K_BLOCK) * K_BLOCK
    data = np.zeros((n, kp), np.int8)
    data[:, :k] = rows
    col_sums = rows.sum(axis=1, dtype=np.int64).astype(np.int32)
    if _vnni.tile() is not None:
        return PackedWeight(data, n, k, col_sums, ks, _vnni.pack(data))
    return PackedWeight(data, n, k, col_sums, ks)


def exact_kernel(threshold):
    """A serial/parallel kernel pair compiled without fastmath: the epilogues' float32 math must round
    as numpy's does (fastmath would contract ``acc * scale + bias`` into an FMA and turn ``x / scale``
    into a reciprocal multiply). The integer loops vectorise the same either way."""
    return jit.prange_kernel(threshold, fastmath=False)


_inline = njit(inline="always", fastmath=False)


@_inline
def _tile4x4(a, m, w, n, nlast, kp, acc, j):
    """acc[r, j + c] = sum_k a[m + r, k] * w[min(n + c, nlast), k] for r, c < 4 (raw uint8 x int8)."""
    a0 = a[m]
    a1 = a[m + 1]
    a2 = a[m + 2]
    a3 = a[m + 3]
    w0 = w[n]
    w1 = w[min(n + 1, nlast)]
    w2 = w[min(n + 2, nlast)]
    w3 = w[min(n + 3, nlast)]
    z = np.int32(0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
    for k in range(kp):
        x0 = np.int32(a0[k])
        x1 = np.int32(a1[k])
        x2 = np.int32(a2[k])
        x3 = np.int32(a3[k])
        y0 = np.int32(w0[k])
        y1 = np.int32(w1[k])
        y2 = np.int32(w2[k])
        y3 = np.int32(w3[k])
        s00 = np.add(s00, np.multiply(x0, y0))
        s01 = np.add(s01, np.multiply(x0, y1))
        s02 = np.add(s02, np.multiply(x0, y2))
        s03 = np.add(s03, np.multiply(x0, y3))
        s10 = np.add(s10, np.multiply(x1, y0))
        s11 = np.add(s11, np.multiply(x1, y1))
        s12 = np.add(s12, np.multiply(x1, y2))
        s13 = np.add(s13, np.multiply(x1, y3))
        s20 = np.add(s20, np.multiply(x2, y0))
        s21 = np.add(s21, np.multiply(x2, y1))
        s22 = np.add(s22, np.multiply(x2, y2))
        s23 = np.add(s23, np.multiply(x2, y3))
        s30 = np.add(s30, np.multiply(x3, y0))
        s31 = np.add(s31, np.multiply(x3, y1))
        s32 = np.add(s32, np.multiply(x3, y2))
        s33 = np.add(s33, np.multiply(x3, y3))
    acc[0, j], acc[0, j + 1], acc[0, j + 2], acc[0, j + 3] = s00, s01, s02, s03
    acc[1, j], acc[1, j + 1], acc[1, j + 2], acc[1, j + 3] = s10, s11, s12, s13
    acc[2, j], acc[2, j + 1], acc[2, j + 2], acc[2, j + 3] = s20, s21, s22, s23
    acc[3, j], acc[3, j + 1], acc[3, j + 2], acc[3, j + 3] = s30, s31, s32, s33


@_inline
def _tile1x8(a, m, w, n, nlast, kp, acc, j):
    """acc[0, j + c] = sum_k a[m, k] * w[min(n + c, nlast), k] for c < 8 (the one-row tile: M = 1)."""
    a0 = a[m]
    w0 = w[n]
    w1 = w[min(n + 1, nlast)]
    w2 = w[min(n + 2, nlast)]
    w3 = w[min(n + 3, nlast)]
    w4 = w[min(n + 4, nlast)]
    w5 = w[min(n + 5, nlast)]
    w6 = w[min(n + 6, nlast)]
    w7 = w[min(n + 7, nlast)]
    z = np.int32(0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
    for k in range(kp):
        x = np.int32(a0[k])
        s0 = np.add(s0, np.multiply(x, np.int32(w0[k])))
        s1 = np.add(s1, np.multiply(x, np.int32(w1[k])))
        s2 = np.add(s2, np.multiply(x, np.int32(w2[k])))
        s3 = np.add(s3, np.multiply(x, np.int32(w3[k])))
        s4 = np.add(s4, np.multiply(x, np.int32(w4[k])))
        s5 = np.add(s5, np.multiply(x, np.int32(w5[k])))
        s6 = np.add(s6, np.multiply(x, np.int32(w6[k])))
        s7 = np.add(s7, np.multiply(x, np.int32(w7[k])))
    acc[0, j], acc[0, j + 1], acc[0, j + 2], acc[0, j + 3] = s0, s1, s2, s3
    acc[0, j + 4], acc[0, j + 5], acc[0, j + 6], acc[0, j + 7] = s4, s5, s6, s7


@_inline
def _finish(acc, nr, n0, n1, img, pos, ep, outs, stage_q, stage_f):
    """The epilogue of rows 0 .. nr of acc (raw sums of columns n0 .. n1): row r goes to
    [img[r], n, pos[r]] of one of ``outs`` (int32, quantized, float32; each (B, N, L)). The math runs
    along n in unit stride (vectorised) into acc or a stage row, which ``_copy_out`` then stores."""
    mode, a_zp, col_sums, bias_i, mult, out_zp, lo, hi, a_scale, w_scale, bias_f, relu = ep[:12]
    out_i, out_q, out_f = outs
    nc = n1 - n0
    cs = col_sums[n0:n1]
    bi = bias_i[n0:n1]
    for r in range(nr):
        row = acc[r]
        if mode == MODE_INT32:
            for j in range(nc):
                row[j] = np.int64(row[j]) - a_zp * np.int64(cs[j])
        elif mode == MODE_REQUANT:
            sq = stage_q[r]
            m = mult[n0:n1]
            for j in range(nc):
                v = np.float32(np.int64(row[j]) - a_zp * np.int64(cs[j]) + bi[j]) * m[j]
                sq[j] = int(min(max(np.rint(v) + out_zp, lo), hi))
        else:
            sf = stage_f[r]
            ws = w_scale[n0:n1]
            bf = bias_f[n0:n1]
            floor = np.float32(0) if relu else np.float32(-np.inf)
            for j in range(nc):
                y = np.float32(np.int64(row[j]) - a_zp * np.int64(cs[j])) * (a_scale * ws[j]) + bf[j]
                sf[j] = max(y, floor)
    if mode == MODE_INT32:
        _copy_out(acc, out_i, nr, n0, nc, img, pos)
    elif mode == MODE_REQUANT:
        _copy_out(stage_q, out_q, nr, n0, nc, img, pos)
    else:
        _copy_out(stage_f, out_f, nr, n0, nc, img, pos)


@_inline
def _copy_out(stage, out, nr, n0, nc, img, pos):
    """out[img[r], n0 + j, pos[r]] = stage[r, j]: along n when out's channels are adjacent (L = 1:
    linear layers; vectorised), else one channel at a time (a conv's channels are L apart, and a
    vectorised strided store would be a slow scatter)."""
    if out.shape[2] == 1:
        for r in range(nr):
            b = img[r]
            for j in range(nc):
                out[b, n0 + j, 0] = stage[r, j]
    else:
        for j in range(nc):
            for r in range(nr):
                out[img[r], n0 + j, pos[r]] = stage[r, j]


@_inline
def new_scratch(n, outs):
    """Per-thread buffers of ``gemm_rows`` for n columns: raw sums (4, n + 32) int32 (tiles write up
    to 31 columns past n), the output rows' image/position (4,) and stage rows of the quantized and
    float outputs."""
    acc = np.empty((4, n + 32), np.int32)
    stage_q = np.empty((4, n), outs[1].dtype)
    stage_f = np.empty((4, n), np.float32)
    return acc, np.empty(4, np.int64), np.empty(4, np.int64), stage_q, stage_f


@_inline
def gemm_rows(a, m0, nr, row_base, w, n0, n1, ep, outs, rows_per_image, scratch):
    """Rows m0 .. m0+nr of ``a`` (nr = 4, or 1) times weight rows n0 .. n1, finished by the epilogue;
    they are output rows row_base + m0 ... (output row g is [g // L, :, g % L]). ``scratch`` is
    ``new_scratch(n1 - n0, outs)``."""
    acc, img, pos, stage_q, stage_f = scratch
    kp = a.shape[1]
    g = row_base + m0
    img[0] = g // rows_per_image
    pos[0] = g - img[0] * rows_per_image
    for r in range(1, nr):  # one division per row block
        img[r], pos[r] = img[r - 1], pos[r - 1] + 1
        if pos[r] == rows_per_image:
            img[r], pos[r] = img[r] + 1, 0
    wv, tile, use_vnni = ep[12], ep[13], ep[14]
    if use_vnni and n0 % 32 == 0:  # the VNNI tile: 4 rows x 32 columns (one row repeated when nr = 1)
        a_ptr = a[m0:].ctypes.data
        lda = kp if nr == 4 else 0
        for nb in range(n0 // 32, (n1 + 31) // 32):
            tile(a_ptr, lda, wv[nb].ctypes.data, kp, acc[:, nb * 32 - n0:].ctypes.data, acc.shape[1])
    elif nr == 4:
        for n in range(n0, n1, 4):
            _tile4x4(a, m0, w, n, n1 - 1, kp, acc, n - n0)
    else:
        for n in range(n0, n1, 8):
            _tile1x8(a, m0, w, n, n1 - 1, kp, acc, n - n0)
    _finish(acc, nr, n0, n1, img, pos, ep, outs, stage_q, stage_f)


@exact_kernel(PAR_MIN_MACS)
def _linear_kernel(a, w, ep, outs):
    """outs[mode][m, n, 0] = epilogue(sum_k a[m, k] * w[n, k]) for all rows: 4-row blocks, then the
    M % 4 single rows; prange over the blocks."""
    m_ = a.shape[0]
    n_ = w.shape[0]
    full = m_ // 4
    for blk in prange(full + m_ - 4 * full):
        scratch = new_scratch(n_, outs)
        if blk < full:
            gemm_rows(a, 4 * blk, 4, 0, w, 0, n_, ep, outs, 1, scratch)
        else:
            gemm_rows(a, blk + 3 * full, 1, 0, w, 0, n_, ep, outs, 1, scratch)


@njit(fastmath=False)
def _qparams(lo, hi):
    """``dynamic_qparams`` from float32 lo = min(x), hi = max(x), as float32 (scale, zero point) (in
    numba: numpy's scalar float32 operations cost more than a batch-1 GEMM)."""
    lo = min(lo, np.float32(0))
    hi = max(hi, np.float32(0))
    scale = max((hi - lo) / np.float32(255), np.float32(_EPS32))
    return scale, min(max(-np.rint(lo / scale), np.float32(0)), np.float32(255))


@njit(fastmath=False)
def _quantize_dynamic(x, lo, hi, kp):
    """(uint8 (M, kp) ``clip(rint(x / scale) + zp, 0, 255)`` (float32 division) zero-padded past K,
    scale, zp) for float32 x (M, K) with min lo and max hi."""
    scale, zpf = _qparams(lo, hi)
    m_, k_ = x.shape
    out = np.empty((m_, kp), np.uint8)
    for m in range(m_):
        row = out[m]
        src = x[m]
        for k in range(k_):
            row[k] = int(min(max(np.rint(src[k] / scale) + zpf, np.float32(0)), np.float32(255)))
        for k in range(k_, kp):
            row[k] = 0
    return out, scale, int(zpf)


# Stand-ins for the outputs and epilogue operands a call does not use.
_NO_I32 = np.zeros((1, 1, 1), np.int32)
_NO_U8 = np.zeros((1, 1, 1), np.uint8)
_NO_F32 = np.zeros((1, 1, 1), np.float32)
_NO_VEC_F32 = np.zeros(1, np.float32)
_F0 = np.float32(0)


def epilogue(mode, packed, a_zp, bias_i32=None, mult=_NO_VEC_F32, out_zp=_F0, lo=_F0, hi=_F0, a_scale=_F0,
             w_scale=_NO_VEC_F32, bias_f=_NO_VEC_F32, relu=False):
    """The epilogue tuple ``ep`` of the kernels (every field typed the same in every call, so each
    kernel compiles once per output dtype); a_zp is in the kernels' uint8 space."""
    bias = np.zeros(packed.n, np.int32) if bias_i32 is None else bias_i32
    tile = _vnni.tile()
    use = tile is not None and packed.vnni.shape[0] * _vnni.TILE_N >= packed.n
    return (mode, a_zp, packed.col_sums, bias, mult, out_zp, lo, hi, a_scale, w_scale, bias_f, bool(relu),
            packed.vnni, tile if use else _vnni.stand_in(), use)


def zero_point_u8(dtype, a_zp, shape, op):
    """(the zero point in the uint8 space the kernels run in, the xor that maps the activations
    there): int8 activations become ``a ^ 0x80 = a + 128`` with zero point ``a_zp + 128``."""
    if dtype == np.uint8:
        lo, hi, flip = 0, 255, 0
    elif dtype == np.int8:
        lo, hi, flip = -128, 127, 0x80
    else:
        raise TypeError(f"{op}: activations must be uint8 or int8, got {dtype} (shape {shape})")
    zp = int(a_zp)
    if not lo <= zp <= hi:
        raise ValueError(f"{op}: zero point {zp} is outside the {np.dtype(dtype).name} range [{lo}, {hi}]")
    return zp + (128 if flip else 0), flip


def activation_u8(a, a_zp, k, kp, op):
    """(a as a C-contiguous uint8 (M, kp) array, zero-padded past k, and its zero point)."""
    zp, flip = zero_point_u8(a.dtype, a_zp, a.shape, op)
    if a.ndim != 2 or a.shape[1] != k:
        raise ValueError(f"{op}: activations must be (M, {k}) to match the packed weight's K = {k}, "
                         f"got shape {a.shape}")
    if not flip and kp == k and a.flags.c_contiguous:
        return a, zp
    buf = np.zeros((a.shape[0], kp), np.uint8)
    np.bitwise_xor(a.view(np.uint8), np.uint8(flip), out=buf[:, :k])
    return buf, zp


def per_channel(v, n, dtype, what, op):
    """v as a C-contiguous (n,) array of ``dtype`` (a scalar is broadcast)."""
    if type(v) is np.ndarray and v.dtype == dtype and v.shape == (n,) and v.flags.c_contiguous:
        return v  # the per-call fast path (batch-1 inference spends microseconds here)
    arr = np.asarray(v)
    if arr.ndim == 0:
        return np.full(n, arr, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{op}: {what} must be a scalar or have shape ({n},), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def requant_epilogue(packed, a_zp, bias_i32, multiplier, out_zp, relu, out_dtype, quant_min, quant_max, op):
    """The epilogue tuple for requantization (a_zp: the activations' zero point in the kernels' uint8
    space), after checking its operands."""
    name = out_dtype if isinstance(out_dtype, str) else np.dtype(out_dtype).name
    if name not in _QRANGE:
        raise ValueError(f"{op}: out_dtype must be uint8 or int8, got {out_dtype!r}")
    qmin, qmax = _QRANGE[name]
    qmin = qmin if quant_min is None else int(quant_min)
    qmax = qmax if quant_max is None else int(quant_max)
    if not _QRANGE[name][0] <= qmin <= qmax <= _QRANGE[name][1] or not qmin <= int(out_zp) <= qmax:
        raise ValueError(f"{op}: need {_QRANGE[name][0]} <= quant_min ({qmin}) <= out_zp ({int(out_zp)}) <= "
                         f"quant_max ({qmax}) <= {_QRANGE[name][1]} for {name} outputs")
    n = packed.n
    bias = None if bias_i32 is None else per_channel(bias_i32, n, np.int32, "bias_i32", op)
    mult = per_channel(multiplier, n, np.float32, "multiplier", op)
    lo = max(qmin, int(out_zp)) if relu else qmin
    ep = epilogue(MODE_REQUANT, packed, a_zp, bias, mult, np.float32(int(out_zp)), np.float32(lo), np.float32(qmax),
                  relu=relu)
    return ep, np.dtype(name)


def _run_linear(a, packed, ep, outs):
    """``_linear_kernel`` on uint8 rows a: in parallel from PAR_MIN_ROWS rows and PAR_MIN_MACS on."""
    m = a.shape[0]
    _linear_kernel(m * packed.n * packed.data.shape[1] if m >= PAR_MIN_ROWS else 0, a, packed.data, ep, outs)


def _check_packed(packed, op):
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"{op}: expected a PackedWeight from pack_weight, got {type(packed).__name__}")


def qgemm(a, a_zero_point, packed) -> np.ndarray:
    """int32 (M, N) accumulators ``sum_k (a[m, k] - a_zp) * w[n, k]`` of uint8 (or int8) activations
    a (M, K) and a packed int8 weight (N, K); exact."""
    _check_packed(packed, "qgemm")
    a = np.asarray(a)
    au, zp = activation_u8(a, a_zero_point, packed.k, packed.data.shape[1], "qgemm")
    m = au.shape[0]
    out = np.empty((m, packed.n), np.int32)
    _run_linear(au, packed, epilogue(MODE_INT32, packed, zp), (out.reshape(m, packed.n, 1), _NO_U8, _NO_F32))
    return out


def qgemm_s8(a, a_zero_point, packed) -> np.ndarray:
    """``qgemm`` for int8 activations (zero point in [-128, 127])."""
    a = np.asarray(a)
    if a.dtype != np.int8:
        raise TypeError(f"qgemm_s8: activations must be int8, got {a.dtype} (shape {a.shape}); use qgemm for uint8")
    return qgemm(a, a_zero_point, packed)


def qlinear(a, a_zero_point, packed, bias_i32, multiplier, out_zero_point, relu=False, out_dtype="uint8",
            quant_min=None, quant_max=None) -> np.ndarray:
    """Quantized linear layer: the requantized (..., N) uint8/int8 output of uint8 (or int8)
    activations a (..., K); multiplier[n] = a_scale * w_scale[n] / out_scale (float32, per channel
    or scalar), bias_i32[n] = round(bias / (a_scale * w_scale[n])) or None."""
    _check_packed(packed, "qlinear")
    a = np.asarray(a)
    lead = a.shape[:-1]
    a2 = a.reshape(-1, a.shape[-1]) if a.ndim >= 1 else a
    au, zp = activation_u8(a2, a_zero_point, packed.k, packed.data.shape[1], "qlinear")
    ep, dt = requant_epilogue(packed, zp, bias_i32, multiplier, out_zero_point, relu, out_dtype, quant_min,
                              quant_max, "qlinear")
    m = au.shape[0]
    out = np.empty((m, packed.n), dt)
    _run_linear(au, packed, ep, (_NO_I32, out.reshape(m, packed.n, 1), _NO_F32))
    return out.reshape(lead + (packed.n,))


def dynamic_qparams(x) -> tuple[np.float32, int]:
    """uint8 (scale, zero_point) of x from its min/max, as torch's MinMaxObserver computes them
    (quint8, per tensor, reduce_range=False): the range is widened to include 0,
    ``scale = max((max - min) / 255, eps)`` and ``zero_point = clip(-rint(min / scale), 0, 255)``,
    all in float32."""
    scale, zp = _qparams(*_finite_range(np.asarray(x, dtype=np.float32)))
    return np.float32(scale), int(zp)


def _finite_range(x):
    lo, hi = x.min(), x.max()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"qlinear_dynamic: input holds NaN or Inf (min {lo}, max {hi}, shape {x.shape})")
    return lo, hi


def qlinear_dynamic(x, packed, w_scale, bias=None, relu=False) -> np.ndarray:
    """Dynamically quantized linear layer: float32 x (..., K) is quantized to uint8 with its own
    per-tensor qparams (``dynamic_qparams``), multiplied by the packed int8 weight and dequantized
    (``acc * float32(a_scale * w_scale[n]) + bias[n]``) in one call; float32 (..., N)."""
    _check_packed(packed, "qlinear_dynamic")
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != packed.k:
        raise ValueError(f"qlinear_dynamic: input has {x.shape[-1] if x.ndim else 0} features, weight expects "
                         f"{packed.k} (input shape {x.shape})")
    lead = x.shape[:-1]
    x2 = jit.f32c(x.reshape(-1, packed.k))
    m, n = x2.shape[0], packed.n
    w_scale = per_channel(w_scale, n, np.float32, "w_scale", "qlinear_dynamic")
    bias_f = np.zeros(n, np.float32) if bias is None else per_channel(bias, n, np.float32, "bias", "qlinear_dynamic")
    out = np.empty((m, n), np.float32)
    if m == 0:
        return out.reshape(lead + (n,))
    au, a_scale, zp = _quantize_dynamic(x2, *_finite_range(x2), packed.data.shape[1])
    ep = epilogue(MODE_DEQUANT, packed, zp, a_scale=np.float32(a_scale), w_scale=w_scale, bias_f=bias_f, relu=relu)
    _run_linear(au, packed, ep, (_NO_I32, _NO_U8, out.reshape(m, n, 1)))
    return out.reshape(lead + (n,))


def requant_params(a_scale, w_scale, out_scale, bias=None):
    """(bias_i32, multiplier) for ``qlinear``/``qconv2d`` from float scales, in float32:
    ``multiplier = a_scale * w_scale / out_scale`` and ``bias_i32 = rint(bias / (a_scale * w_scale))``
    (None without a bias)."""
    w_scale = np.atleast_1d(np.asarray(w_scale, np.float32))
    acc_scale = np.float32(a_scale) * w_scale
    mult = acc_scale / np.float32(out_scale)
    if bias is None:
        return None, mult
    bq = np.rint(np.asarray(bias, np.float32) / acc_scale).astype(np.float64)
    return np.clip(bq, -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int32), mult
