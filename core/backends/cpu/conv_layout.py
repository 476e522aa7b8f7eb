"""numba layout kernels of the 2-d convolution: zero padding, im2col / col2im (extended stride-1 layout
and plain strided), and the moves of GEMM results between the (Cout, n*L) rows and NCHW, with the bias
(and, for inference, 2x2 max pooling and ReLU) fused in. The layouts are described in conv_kernels.py,
whose drivers call these."""
from __future__ import annotations

import numpy as np
from numba import prange

from .conv_direct import store_plane
from .jit import njit, prange_kernel

# Memory-bound copies: below this many elements a second thread costs more than it saves.
PAR_MIN = 1 << 18


@njit(inline="always")
def _col_range(off, sw, w_, wo):
    """Output columns ow with 0 <= ow*sw + off < w_, as [lo, hi)."""
    lo = 0
    if off < 0:
        lo = min((-off + sw - 1) // sw, wo)
    hi = 0
    if w_ - off > 0:
        hi = min((w_ - off + sw - 1) // sw, wo)
    return lo, max(hi, lo)


@prange_kernel(PAR_MIN)
def pad_planes(x, xp, hp, wp, ph, pw):
    """xp (N, C, hp*wp) = x (N, C, H, W) placed at row ph, column pw of zero planes (cropped to
    hp x wp)."""
    n_, c_, h_, w_ = x.shape
    rows = min(h_, hp - ph)
    cols = min(w_, wp - pw)
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        d = xp[n, c]
        for q in range(ph * wp):
            d[q] = 0
        for ih in range(rows):
            base = (ph + ih) * wp
            for q in range(base, base + pw):
                d[q] = 0
            row = d[base + pw:base + pw + cols]
            src = x[n, c, ih]
            for q in range(cols):
                row[q] = src[q]
            for q in range(base + pw + cols, base + wp):
                d[q] = 0
        for q in range((ph + rows) * wp, hp * wp):
            d[q] = 0


@prange_kernel(PAR_MIN)
def im2col_ext(xp, cols, kh, kw, dh, dw, wp, le):
    """cols[(c*kh + i)*kw + j, n*le + p] = xp[n, c, i*dh*wp + j*dw + p]: one contiguous run per tap."""
    n_, c_ = xp.shape[0], xp.shape[1]
    for t in prange(c_ * kh * kw * n_):
        r = t // n_
        n = t - r * n_
        c = r // (kh * kw)
        off = ((r // kw) % kh) * dh * wp + (r % kw) * dw
        d = cols[r, n * le:(n + 1) * le]
        s = xp[n, c, off:off + le]
        for q in range(le):
            d[q] = s[q]


@prange_kernel(PAR_MIN)
def col2im_ext(dcols, dx, kh, kw, dh, dw, ph, pw, hp, wp, le):
    """dx[n, c] = the padded-plane sum of every tap's run of dcols, cropped to the image."""
    n_, c_, h_, w_ = dx.shape
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        acc = np.zeros(hp * wp, dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                a = acc[i * dh * wp + j * dw:i * dh * wp + j * dw + le]
                s = dcols[r, n * le:(n + 1) * le]
                for q in range(le):
                    a[q] += s[q]
        for ih in range(min(h_, hp - ph)):
            row = dx[n, c, ih]
            s = acc[(ph + ih) * wp + pw:(ph + ih + 1) * wp]
            for q in range(min(w_, wp - pw)):
                row[q] = s[q]
            for q in range(min(w_, wp - pw), w_):
                row[q] = 0
        for ih in range(min(h_, hp - ph), h_):
            for q in range(w_):
                dx[n, c, ih, q] = 0


# The two moves between NCHW and the extended layout copy a row plus the next row's first wp - wo
# elements (overwritten or zeroed right after) when wp <= 2*wo: a loop of wp = 16 reaches numba's
# vectorised body where one of wo = 14 runs scalar (conv2 of the cnn benchmark: ~2x faster moves).

@prange_kernel(PAR_MIN)
def rows_to_nchw(rows, bias, out, wp, le):
    """out[n, co, oh, ow] = rows[co, n*le + oh*wp + ow] + bias[co] (the GEMM result back to NCHW,
    bias fused)."""
    n_, co_, ho, wo = out.shape
    span = wp if wp <= 2 * wo else wo
    of = out.reshape(n_, co_, ho * wo)
    for t in prange(n_ * co_):
        n = t // co_
        co = t - n * co_
        bv = bias[co]
        src = rows[co, n * le:(n + 1) * le]
        d = of[n, co]
        for oh in range(ho - 1):  # rows top-down: the spill into row oh + 1 is rewritten next
            dr = d[oh * wo:oh * wo + span]
            s = src[oh * wp:oh * wp + span]
            for q in range(span):
                dr[q] = s[q] + bv
        dr = d[(ho - 1) * wo:ho * wo]
        s = src[(ho - 1) * wp:(ho - 1) * wp + wo]
        for q in range(wo):
            dr[q] = s[q] + bv


@prange_kernel(PAR_MIN)
def rows_to_planes(rows, bias, out, wp, le, ho, wo, pool, relu):
    """The GEMM result rows (Cout, n*le) as NCHW planes plus bias, 2x2 max-pooled with ``pool`` and
    ReLU'd with ``relu`` (``rows_to_nchw``'s fused-epilogue sibling, for inference)."""
    n_, co_ = out.shape[0], out.shape[1]
    for t in prange(n_ * co_):
        n = t // co_
        co = t - n * co_
        store_plane(rows[co, n * le:(n + 1) * le], out[n, co], bias[co], wp, ho, wo, pool, relu)


@prange_kernel(PAR_MIN)
def nchw_to_rows(g, rows, gb, wp, le, want_bias):
    """rows[co, n*le + oh*wp + ow] = g[n, co, oh, ow] (0 in the extra columns); when ``want_bias``
    also gb[co] += the sum of g[:, co] (gb is a float64 accumulator)."""
    n_, co_, ho, wo = g.shape
    span = wp if wp <= 2 * wo else wo
    m = ho * wo
    gf = g.reshape(n_, co_, m)
    for co in prange(co_):
        acc = 0.0
        for n in range(n_):
            dst = rows[co, n * le:(n + 1) * le]
            s = gf[n, co]
            if want_bias:
                ps = s[0]  # plane sums in the input precision (vectorised), added up in float64
                for q in range(1, m):
                    ps += s[q]
                acc += ps
            for oh in range(ho - 1):
                d = dst[oh * wp:oh * wp + span]
                sr = s[oh * wo:oh * wo + span]
                for q in range(span):
                    d[q] = sr[q]
                for q in range(oh * wp + wo, (oh + 1) * wp):
                    dst[q] = 0
            d = dst[(ho - 1) * wp:(ho - 1) * wp + wo]
            sr = s[(ho - 1) * wo:m]
            for q in range(wo):
                d[q] = sr[q]
        if want_bias:
            gb[co] += acc


@prange_kernel(PAR_MIN)
def bias_grad(g, gb):
    """gb[co] = the sum of g[:, co] (gb float64; used when only the bias needs a gradient), summed as
    nchw_to_rows does: plane sums in the input precision, added up in float64."""
    n_, co_, ho, wo = g.shape
    m = ho * wo
    gf = g.reshape(n_, co_, m)
    for co in prange(co_):
        acc = 0.0
        for n in range(n_):
            s = gf[n, co]
            ps = s[0]
            for q in range(1, m):
                ps += s[q]
            acc += ps
        gb[co] = acc


@prange_kernel(PAR_MIN)
def im2col_strided(x, cols, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """cols[(c*kh + i)*kw + j, n*L + oh*wo + ow] = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    (0 outside the image), with per-row bounds (any stride)."""
    n_, c_, h_, w_ = x.shape
    hw = h_ * w_
    xf = x.reshape(n_, c_, hw)
    ll = ho * wo
    for t in prange(c_ * kh * kw * n_):
        r = t // n_
        n = t - r * n_
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        a = i * dh - ph
        b = j * dw - pw
        lo, hi = _col_range(b, sw, w_, wo)
        dst = cols[r, n * ll:(n + 1) * ll]
        src = xf[n, c]
        for oh in range(ho):
            ih = oh * sh + a
            o = oh * wo
            if ih < 0 or ih >= h_:
                for q in range(o, o + wo):
                    dst[q] = 0
                continue
            for q in range(lo):
                dst[o + q] = 0
            s0 = ih * w_ + b
            for q in range(lo, hi):
                dst[o + q] = src[s0 + q * sw]
            for q in range(hi, wo):
                dst[o + q] = 0


@prange_kernel(PAR_MIN)
def col2im_strided(dcols, dx, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """The adjoint of im2col_strided: dx[n, c] = the sum of every column entry read from it
    (writes all of dx)."""
    n_, c_, h_, w_ = dx.shape
    hw = h_ * w_
    dxf = dx.reshape(n_, c_, hw)
    ll = ho * wo
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        plane = dxf[n, c]
        for q in range(hw):
            plane[q] = 0
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                a = i * dh - ph
                b = j * dw - pw
                lo, hi = _col_range(b, sw, w_, wo)
                seg = dcols[r, n * ll:(n + 1) * ll]
                for oh in range(ho):
                    ih = oh * sh + a
                    if ih < 0 or ih >= h_:
                        continue
                    s0 = ih * w_ + b
                    o = oh * wo
                    for q in range(lo, hi):
                        plane[s0 + q * sw] += seg[o + q]
