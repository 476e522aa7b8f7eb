"""int8 2-d convolution (``qconv2d``): im2row on uint8 and the int8 GEMM of int8_kernels.py with
its fused requantize epilogue, one parallel pass per chunk of images.

Each chunk of images is moved to zero-point-padded NHWC planes (so the padding needs no bounds
tests and contributes (x_zp - x_zp) * w = 0), then copied to im2row rows (one row per output pixel,
K in (kh, kw, C/groups) order, as ``pack_weight`` lays out 4-d weights: a kernel row of a
stride-1 convolution is one contiguous run of kw * C bytes), then multiplied by the packed weight
with the requantized tiles written straight to NCHW. A chunk's rows stay in L2 from im2row to the
GEMM; prange runs over the chunks.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import int8_conv_tiled as _tiled
from .conv_kernels import _scratch, out_size
from .int8_gemm import BLOCK_ROWS
from .int8_kernels import (_NO_F32, _NO_I32, PackedWeight, _check_packed, _inline, exact_kernel, gemm_rows,
                           new_scratch, requant_epilogue, zero_point_u8)

# Bytes of padded planes + rows per chunk of images (a quarter of the 1 MiB L2 per core).
CHUNK_BYTES = 1 << 18

# prange over chunks from this many multiply-adds on. The cnn's second conv (58M) ran in ~0.96 ms on two
# threads alone, but inside the whole int8 graph, after serial layers, numba's workqueue had to wake and
# the graph took 2.2-3.2 ms; with the conv on one thread 2.11-2.15 ms (3 alternating runs, 2026-11-26).
PAR_MIN_CONV_MACS = 1 << 27


@_inline
def _to_nhwc(x, b0, b1, xp, hp, wp, ph, pw, fill, flip):
    """xp[b - b0] = image b as flat (hp, wp, C) uint8 with x ^ flip at (ph + h, pw + w) and ``fill``
    around it."""
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    for b in range(b0, b1):
        d = xp[b - b0]
        for q in range(hp * wp * c_):
            d[q] = fill
        for h in range(h_):
            for w in range(w_):
                o = ((ph + h) * wp + pw + w) * c_
                for c in range(c_):
                    d[o + c] = x[b, c, h, w] ^ flip


@_inline
def _im2row(xp, nb, c0, cg, c_, kh, kw, sh, sw, dh, dw, wp, ho, wo, rows):
    """rows[bi*ho*wo + oh*wo + ow, (i*kw + j)*cg + c] = xp[bi] at pixel (oh*sh + i*dh, ow*sw + j*dw),
    channel c0 + c; 0 past kh*kw*cg. Channel counts and offsets are in units of xp's item: uint64
    words (8 channels) when the group's channels come in multiples of 8, else bytes."""
    kp = rows.shape[1]
    k = kh * kw * cg
    merged = cg == c_ and dw == 1  # a kernel row is one run of kw * C channels
    run = kw * cg if merged else cg
    nj = 1 if merged else kw
    for bi in range(nb):
        src = xp[bi]
        for oh in range(ho):
            for ow in range(wo):
                dst = rows[(bi * ho + oh) * wo + ow]
                for i in range(kh):
                    base = (oh * sh + i * dh) * wp + ow * sw
                    for j in range(nj):
                        s0 = (base + j * dw) * c_ + c0
                        d0 = (i * kw + j) * cg
                        d = dst[d0:d0 + run]  # copying between slice views: ~4x faster than offsets
                        s_ = src[s0:s0 + run]
                        for q in range(run):
                            d[q] = s_[q]
                for q in range(k, kp):
                    dst[q] = 0


@exact_kernel(PAR_MIN_CONV_MACS)
def _qconv_kernel(x, fill, flip, w, geom, ep, outs, xp, rows, xp_w, rows_w):
    """outs[1] (B, Cout, Ho*Wo) = the requantized convolution of x (B, C, H, W) uint8, a chunk of
    images per prange iteration (xp, rows: that chunk's scratch planes and im2row rows; xp_w, rows_w:
    the same memory in im2row's copy unit, see ``_im2row``)."""
    kh, kw, sh, sw, ph, pw, dh, dw, groups, hp, wp, ho, wo, chunk = geom
    n_, c_ = x.shape[0], x.shape[1]
    cg = c_ // groups
    cog = w.shape[0] // groups
    unit = xp.shape[2] // xp_w.shape[2]
    le = ho * wo
    for ci in prange((n_ + chunk - 1) // chunk):
        b0 = ci * chunk
        b1 = min(b0 + chunk, n_)
        nrows = (b1 - b0) * le
        scratch = new_scratch(cog, outs, w.shape[1])
        _to_nhwc(x, b0, b1, xp[ci], hp, wp, ph, pw, fill, flip)
        r = rows[ci]
        for g in range(groups):
            _im2row(xp_w[ci], b1 - b0, g * cg // unit, cg // unit, c_ // unit, kh, kw, sh, sw, dh, dw, wp, ho, wo,
                    rows_w[ci])
            m = 0
            while m < nrows:  # blocks of BLOCK_ROWS rows, then of 4, then single rows
                nr = BLOCK_ROWS if nrows - m >= BLOCK_ROWS else (4 if nrows - m >= 4 else 1)
                gemm_rows(r, m, nr, b0 * le, w, g * cog, (g + 1) * cog, ep, outs, le, scratch)
                m += nr


def _pool_codes(y):
    """2x2 / stride-2 max pooling (floor mode) of integer codes."""
    n, c, h, w = y.shape
    return np.ascontiguousarray(y[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5)))


def _pair(v, name):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"qconv2d: {name} must be an int or a pair, got {v!r}")
    return t


def qconv2d(x, x_zero_point, packed, stride, padding, dilation, groups, bias_i32, multiplier, out_zero_point,
            relu=False, out_dtype="uint8", quant_min=None, quant_max=None, pool=False, weight=None) -> np.ndarray:
    """Quantized conv2d: uint8 (or int8) NCHW x, a weight packed from (Cout, C/groups, kh, kw) int8,
    bias_i32/multiplier per output channel as in ``qlinear``; returns the requantized uint8 (or
    int8) NCHW output, 2x2 / stride-2 max-pooled (floor mode) with ``pool``. ``weight``: the unpacked int8
    weight when the caller has it (the VNNI conv tile of int8_conv_tiled.py packs its own layout from it)."""
    if not isinstance(packed, PackedWeight) or packed.kernel_size is None:
        raise TypeError("qconv2d: expected a PackedWeight packed from a 4-d (Cout, C/groups, kh, kw) weight, got "
                        + ("one packed from a 2-d (N, K) weight" if isinstance(packed, PackedWeight)
                           else type(packed).__name__))
    _check_packed(packed, "qconv2d")
    x = np.asarray(x)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    kh, kw = packed.kernel_size
    cout, cg = packed.n, packed.k // (kh * kw)
    groups = int(groups)
    if x.ndim != 4:
        raise ValueError(f"qconv2d: input must be 4-d NCHW, got shape {x.shape}")
    if groups < 1 or x.shape[1] != cg * groups or cout % groups:
        raise ValueError(f"qconv2d: input has {x.shape[1]} channels, weight ({cout}, {cg}, {kh}, {kw}) with "
                         f"groups={groups} expects {cg * groups} (and Cout divisible by groups)")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"qconv2d: stride and dilation must be >= 1 and padding >= 0, got stride {(sh, sw)}, "
                         f"padding {(ph, pw)}, dilation {(dh, dw)}")
    n, c, h, w_ = x.shape
    ho, wo = out_size(h, kh, sh, ph, ph, dh), out_size(w_, kw, sw, pw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"qconv2d: kernel {(kh, kw)} with dilation {(dh, dw)} does not fit the padded input "
                         f"{(h + 2 * ph, w_ + 2 * pw)} (input shape {x.shape})")
    zp, flip = zero_point_u8(x.dtype, x_zero_point, x.shape, "qconv2d")
    xu = np.ascontiguousarray(x).view(np.uint8)
    ep, dt = requant_epilogue(packed, zp, bias_i32, multiplier, out_zero_point, relu, out_dtype, quant_min, quant_max,
                              "qconv2d")
    if _tiled.usable(x, (cout, cg, kh, kw), (sh, sw), groups):
        out = np.empty((n, cout, ho // 2, wo // 2) if pool else (n, cout, ho, wo), dt)
        w4 = weight if weight is not None else packed.unpack()
        return _tiled.qconv2d(xu, np.uint8(zp), np.uint8(flip), w4, (ph, pw), (dh, dw), ep, out, pool)
    if pool:
        return _pool_codes(qconv2d(x, x_zero_point, packed, stride, padding, dilation, groups, bias_i32, multiplier,
                                   out_zero_point, relu, out_dtype, quant_min, quant_max, weight=weight))
    out = np.empty((n, cout, ho, wo), dt)
    if n == 0:
        return out
    hp, wp = h + 2 * ph, w_ + 2 * pw
    kp = packed.data.shape[1]
    per_image = hp * wp * c + ho * wo * kp
    threads = numba.get_num_threads()
    nchunks = max(-(-n * per_image // CHUNK_BYTES), min(n, threads))
    nchunks = min(n, -(-nchunks // threads) * threads)  # a multiple of the threads, when there are enough images
    chunk = -(-n // nchunks)
    nchunks = -(-n // chunk)
    xp = _scratch("q_planes", (nchunks, chunk, hp * wp * c), np.uint8)
    rows = _scratch("q_rows", (nchunks, chunk * ho * wo, kp), np.uint8)
    geom = (kh, kw, sh, sw, ph, pw, dh, dw, groups, hp, wp, ho, wo, chunk)
    macs = n * ho * wo * cout * kp
    # im2row copies 8 channels at a time as one uint64 (~8x faster than bytes for short runs)
    word = np.uint64 if cg % 8 == 0 else np.uint8
    _qconv_kernel(macs, xu, np.uint8(zp), np.uint8(flip), packed.data, geom, ep,
                  (_NO_I32, out.reshape(n, cout, ho * wo), _NO_F32), xp, rows, xp.view(word), rows.view(word))
    return out
