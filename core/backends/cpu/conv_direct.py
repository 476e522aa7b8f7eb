"""Direct (im2col-free) stride-1 convolution kernels for short reductions (C_in/groups * kh * kw small).

With K = 9 (one input channel, 3x3) a GEMM is a poor shape; these kernels work on the padded
planes directly, blocking over output channels so each input load feeds several multiply-adds.
``conv_kernels.conv2d_forward`` / ``conv2d_backward`` route here when ``DIRECT_MAX_K`` allows.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .jit import njit, prange_kernel

PAR_MIN = 1 << 18


@njit(inline="always")
def _tap(r, c0, kh, kw, dh, dw, wp):
    """Input channel and offset in the padded plane of tap r = (c*kh + i)*kw + j."""
    return c0 + r // (kh * kw), ((r // kw) % kh) * dh * wp + (r % kw) * dw


@njit(inline="always")
def store_plane(src, dst, bv, wp, ho, wo, pool, relu):
    """One output plane from ``src`` (extended layout: row oh at oh*wp) plus ``bv``: copied to dst
    (ho, wo), or with ``pool`` its 2x2 / stride-2 max (floor mode, NaN wins as in max_pool2d) into
    dst (ho//2, wo//2); ``relu`` clamps at 0 afterwards (max and relu commute)."""
    if not pool:
        for oh in range(ho):
            d = dst[oh]
            s = src[oh * wp:oh * wp + wo]
            for q in range(wo):
                v = s[q] + bv
                d[q] = (v if v > 0 or v != v else 0.0) if relu else v
        return
    for oh in range(ho // 2):
        d = dst[oh]
        top = src[2 * oh * wp:2 * oh * wp + wo]
        bot = src[(2 * oh + 1) * wp:(2 * oh + 1) * wp + wo]
        for q in range(wo // 2):
            a, b, c, e = top[2 * q], top[2 * q + 1], bot[2 * q], bot[2 * q + 1]
            m = b if (b > a) | (b != b) else a
            m2 = e if (e > c) | (e != e) else c
            m = m2 if (m2 > m) | (m2 != m2) else m
            v = m + bv
            d[q] = (v if v > 0 or v != v else 0.0) if relu else v


@prange_kernel(PAR_MIN)
def direct_forward(xp, w, bias, out, dh, dw, wp, le, ho, wo, pool, relu):
    """Stride-1 conv straight from the padded planes xp (N, C, hp*wp): each pass adds three taps to
    four output channels' plane-sized accumulators, so each input load feeds 12 multiply-adds. For a
    short K = C/groups*kh*kw (a first layer) this beats im2col + a GEMM whose K is too short. The
    (ho, wo) planes are stored as they are, or 2x2 max-pooled (``pool``), then ReLU'd (``relu``)."""
    n_, co_ = out.shape[0], out.shape[1]
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    nt = cg * kh * kw
    cog = co_ // (xp.shape[1] // cg)
    wf = w.reshape(co_, nt)
    for n in prange(n_):
        acc = np.empty((4, le), out.dtype)
        zero = np.zeros(le, out.dtype)  # the source of the missing taps of a last pass (0 * x may be nan)
        z = zero[0]
        for blk in range(co_ // cog * ((cog + 3) // 4)):
            grp = blk // ((cog + 3) // 4)
            cb = grp * cog + (blk - grp * ((cog + 3) // 4)) * 4
            last = (grp + 1) * cog - 1
            # a block past the group's end repeats its last channel (same values written again)
            k0, k1, k2, k3 = cb, min(cb + 1, last), min(cb + 2, last), min(cb + 3, last)
            c0 = grp * cg
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            for q in range(le):
                a0[q] = bias[k0]
                a1[q] = bias[k1]
                a2[q] = bias[k2]
                a3[q] = bias[k3]
            for r in range(0, nt, 3):
                ca, oa = _tap(r, c0, kh, kw, dh, dw, wp)
                sa = xp[n, ca, oa:oa + le]
                sb, sc = zero, zero
                wb0 = wb1 = wb2 = wb3 = wc0 = wc1 = wc2 = wc3 = z
                if r + 1 < nt:
                    cb_, ob = _tap(r + 1, c0, kh, kw, dh, dw, wp)
                    sb = xp[n, cb_, ob:ob + le]
                    wb0, wb1, wb2, wb3 = wf[k0, r + 1], wf[k1, r + 1], wf[k2, r + 1], wf[k3, r + 1]
                if r + 2 < nt:
                    cc, oc = _tap(r + 2, c0, kh, kw, dh, dw, wp)
                    sc = xp[n, cc, oc:oc + le]
                    wc0, wc1, wc2, wc3 = wf[k0, r + 2], wf[k1, r + 2], wf[k2, r + 2], wf[k3, r + 2]
                wa0, wa1, wa2, wa3 = wf[k0, r], wf[k1, r], wf[k2, r], wf[k3, r]
                for q in range(le):
                    xa, xb, xc = sa[q], sb[q], sc[q]
                    a0[q] += wa0 * xa + wb0 * xb + wc0 * xc
                    a1[q] += wa1 * xa + wb1 * xb + wc1 * xc
                    a2[q] += wa2 * xa + wb2 * xb + wc2 * xc
                    a3[q] += wa3 * xa + wb3 * xb + wc3 * xc
            for k, co in enumerate((k0, k1, k2, k3)):
                store_plane(acc[k], out[n, co], z, wp, ho, wo, pool, relu)


@njit(inline="always")
def _to_padded_width(g, ge, wp):
    """ge[oh*wp + ow] = g[oh, ow] (the extra columns of ge stay as they are); returns the sum of g."""
    ho, wo = g.shape
    tot = 0.0
    for oh in range(ho):
        s = g[oh]
        d = ge[oh * wp:oh * wp + wo]
        rs = s[0]  # row sums in the input precision (vectorised), added up in float64
        d[0] = rs
        for q in range(1, wo):
            d[q] = s[q]
            rs += s[q]
        tot += rs
    return tot


@prange_kernel(PAR_MIN)
def direct_weight_grad(xp, g, gw, gb, dh, dw, wp, le, want_bias):
    """gw (Cout, C/groups, kh, kw, float64) = the stride-1 weight gradient as dot products of two
    output channels' gradient planes (moved to the padded width, 0 in the extra columns) with three
    shifted input planes per pass; gb (float64) = the bias gradient when ``want_bias``."""
    n_, co_, ho, wo = g.shape
    cg, kh, kw = gw.shape[1], gw.shape[2], gw.shape[3]
    nt = cg * kh * kw
    cog = co_ // (xp.shape[1] // cg)
    nb = (cog + 1) // 2
    gwf = gw.reshape(co_, nt)
    for blk in prange(co_ // cog * nb):
        grp = blk // nb
        k0 = grp * cog + (blk - grp * nb) * 2
        k1 = min(k0 + 1, (grp + 1) * cog - 1)  # past the group's end: k0 again, its sums dropped
        c0 = grp * cg
        ge0 = np.zeros(le, g.dtype)
        ge1 = np.zeros(le, g.dtype)
        bacc0 = 0.0
        bacc1 = 0.0
        for n in range(n_):
            bacc0 += _to_padded_width(g[n, k0], ge0, wp)
            bacc1 += _to_padded_width(g[n, k1], ge1, wp)
            for r in range(0, nt, 3):
                ca, oa = _tap(r, c0, kh, kw, dh, dw, wp)
                cb, ob = _tap(min(r + 1, nt - 1), c0, kh, kw, dh, dw, wp)
                cc, oc = _tap(min(r + 2, nt - 1), c0, kh, kw, dh, dw, wp)
                sa = xp[n, ca, oa:oa + le]
                sb = xp[n, cb, ob:ob + le]
                sc = xp[n, cc, oc:oc + le]
                # sums of a missing tap (r + 1 or r + 2 >= nt) are computed and dropped
                a0, a1, a2 = ge0[0] * sa[0], ge0[0] * sb[0], ge0[0] * sc[0]
                b0, b1, b2 = ge1[0] * sa[0], ge1[0] * sb[0], ge1[0] * sc[0]
                for q in range(1, le):
                    xa, xb, xc = sa[q], sb[q], sc[q]
                    u, v = ge0[q], ge1[q]
                    a0 += u * xa
                    a1 += u * xb
                    a2 += u * xc
                    b0 += v * xa
                    b1 += v * xb
                    b2 += v * xc
                gwf[k0, r] += a0
                if k1 != k0:
                    gwf[k1, r] += b0
                if r + 1 < nt:
                    gwf[k0, r + 1] += a1
                    if k1 != k0:
                        gwf[k1, r + 1] += b1
                if r + 2 < nt:
                    gwf[k0, r + 2] += a2
                    if k1 != k0:
                        gwf[k1, r + 2] += b2
        if want_bias:
            gb[k0] = bacc0
            gb[k1] = bacc1


# ---- drivers: numpy arrays in, numpy arrays out (the op kernels of ops/conv.py call these) ----
