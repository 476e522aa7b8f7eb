"""The int8 GEMM's inner loops: 4x4 and 1x8 numba tiles (or the VNNI tile of vnni.py), the epilogue that
finishes each block of rows (int32, requantized or dequantized; formulas in int8_kernels.py) and the
row-block driver shared by the linear and convolution kernels.

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
With AVX-512 VNNI the 4x32 ``vpdpbusd`` tile of vnni.py replaces the numba tiles (~225 G multiply-adds/s
on one thread); with AVX2 its 4x32 ``vpmaddwd`` tile on int16 pairs (the activation rows widened here once per
row block): on AMD Zen 3, one thread, M = 64, 784 -> 512 dynamic linear ~49 G multiply-adds/s with its
quantization and epilogue (the tile alone 57-72; vpmaddwd + vpaddd peak there ~77, fp32 FMA peak ~47).
"""
from __future__ import annotations

import numpy as np

from . import jit
from .helpers import finish, post
from .intrinsics import call
from .jit import njit

# Linear layers split their rows over the helper threads (jit.run_parts) from this many rows and
# multiply-adds on: a hand-off to a spinning helper costs a few microseconds, ~1M multiply-adds of the tile.
PAR_MIN_ROWS = 8
PAR_MIN_MACS = 1 << 22

MODE_INT32, MODE_REQUANT, MODE_DEQUANT = 0, 1, 2


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
    zp64 = np.float64(a_zp)  # (products and sums of int32 values below 2^53: float64 holds them exactly)
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
            for j in range(nc):  # (the int32 sums in float64: exact, and vectorised on AVX2 as int64 is not)
                v = np.float32(np.float64(row[j]) - (zp64 * np.float64(cs[j]) - np.float64(bi[j]))) * m[j]
                sq[j] = np.int32(min(max(np.rint(v) + out_zp, lo), hi))
        else:
            sf = stage_f[r]
            ws = w_scale[n0:n1]
            bf = bias_f[n0:n1]
            floor = np.float32(0) if relu else np.float32(-np.inf)
            for j in range(nc):
                y = np.float32(np.float64(row[j]) - zp64 * np.float64(cs[j])) * (a_scale * ws[j]) + bf[j]
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
    linear layers; vectorised); for a conv (channels L apart) one contiguous run of positions per
    channel when the rows are consecutive pixels of one image, else one element at a time."""
    if out.shape[2] == 1:
        for r in range(nr):
            b = img[r]
            for j in range(nc):
                out[b, n0 + j, 0] = stage[r, j]
    elif img[nr - 1] == img[0] and pos[nr - 1] == pos[0] + nr - 1:
        b, p0 = img[0], pos[0]
        for j in range(nc):
            dst = out[b, n0 + j, p0:p0 + nr]
            for r in range(nr):
                dst[r] = stage[r, j]
    else:
        for j in range(nc):
            for r in range(nr):
                out[img[r], n0 + j, pos[r]] = stage[r, j]


BLOCK_ROWS = 16  # rows per gemm_rows call at most: 4 tiles of 4 rows share one epilogue pass and its stores


@_inline
def new_scratch(n, outs, kp):
    """Per-thread buffers of ``gemm_rows`` for n columns and Kp = kp: raw sums (BLOCK_ROWS, n + 32) int32 (tiles
    write up to 31 columns past n), the output rows' image/position, stage rows of the quantized and float outputs,
    and the activation rows widened to int16 for the AVX2 tile."""
    acc = np.empty((BLOCK_ROWS, n + 32), np.int32)
    stage_q = np.empty((BLOCK_ROWS, n), outs[1].dtype)
    stage_f = np.empty((BLOCK_ROWS, n), np.float32)
    return (acc, np.empty(BLOCK_ROWS, np.int64), np.empty(BLOCK_ROWS, np.int64), stage_q, stage_f,
            np.empty((BLOCK_ROWS, kp), np.int16))


@_inline
def gemm_rows(a, m0, nr, row_base, w, n0, n1, ep, outs, rows_per_image, scratch):
    """Rows m0 .. m0+nr of ``a`` (nr = 1, or a multiple of 4 up to BLOCK_ROWS) times weight rows n0 .. n1,
    finished by the epilogue; they are output rows row_base + m0 ... (output row g is [g // L, :, g % L]).
    ``scratch`` is ``new_scratch(n1 - n0, outs, Kp)``."""
    acc, img, pos, stage_q, stage_f, a16 = scratch
    kp = a.shape[1]
    g = row_base + m0
    img[0] = g // rows_per_image
    pos[0] = g - img[0] * rows_per_image
    for r in range(1, nr):  # one division per row block
        img[r], pos[r] = img[r - 1], pos[r - 1] + 1
        if pos[r] == rows_per_image:
            img[r], pos[r] = img[r] + 1, 0
    wv, tile, kind, half = ep[12], ep[13], ep[14], ep[15]
    if kind != 0 and n0 % 32 == 0:  # the IR tile (vnni.py): 4 rows x 32 columns (one row repeated when nr = 1)
        if kind == 2:  # the AVX2 tile reads the rows widened to int16
            for r in range(nr):
                src, dst = a[m0 + r], a16[r]
                for k in range(kp):
                    dst[k] = src[k]
        lda = (2 * kp if kind == 2 else kp) if nr >= 4 else 0  # bytes from row to row
        # each block of weights once for all the rows' tiles, while it is in cache (rows outer, a layer's weights
        # larger than L2 came from L3 once per 4 rows: AVX2, one thread, 64 x 784 -> 512 ~6-13% slower)
        a_base = a16.ctypes.data if kind == 2 else a[m0:].ctypes.data
        row_bytes = 2 * kp if kind == 2 else kp
        for nb in range(n0 // 32, (n1 + 31) // 32):
            fn = half if half != 0 and n1 - nb * 32 <= 16 else tile  # (AVX2: 16 columns when no more are real)
            w_ptr, out_ptr = wv[nb].ctypes.data, acc[:, nb * 32 - n0:].ctypes.data
            for t in range(max(1, nr // 4)):
                call(fn, (a_base + 4 * t * row_bytes, lda, w_ptr, kp, out_ptr + 16 * t * acc.shape[1], acc.shape[1]))
    elif nr >= 4:
        for t in range(nr // 4):
            acc_t = acc[4 * t:]
            for n in range(n0, n1, 4):
                _tile4x4(a, m0 + 4 * t, w, n, n1 - 1, kp, acc_t, n - n0)
    else:
        for n in range(n0, n1, 8):
            _tile1x8(a, m0, w, n, n1 - 1, kp, acc, n - n0)
    _finish(acc, nr, n0, n1, img, pos, ep, outs, stage_q, stage_f)


@_inline
def linear_rows(a, w, ep, outs, r0, r1):
    """outs[mode][m, n, 0] = epilogue(sum_k a[m, k] * w[n, k]) for rows r0 .. r1: blocks of BLOCK_ROWS rows, then
    of 4, then single rows."""
    n_ = w.shape[0]
    scratch = new_scratch(n_, outs, w.shape[1])
    m0 = r0
    while m0 < r1:
        nr = BLOCK_ROWS if r1 - m0 >= BLOCK_ROWS else (4 if r1 - m0 >= 4 else 1)
        gemm_rows(a, m0, nr, 0, w, 0, n_, ep, outs, 1, scratch)
        m0 += nr


@njit(fastmath=False)
def _linear_rows(a, w, ep, outs, r0, r1, sync):
    """``linear_rows`` as a ``jit.run_parts`` kernel."""
    post(sync)
    linear_rows(a, w, ep, outs, r0, r1)
    finish(sync)
