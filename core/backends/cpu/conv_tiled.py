"""Stride-1 float32 convolutions on the register-blocked tiles of conv_tile_ir.py: forward, input
gradient and weight gradient without im2col or BLAS.

Layout (the "extended" layout of conv_kernels.py): each image's input planes are zero-padded to
hp x wp and stored flat, one image after the other, with a few floats of slack after the last image
(tiles read whole vectors past an image's end; those lanes land in discarded columns). The forward
tile computes NCO output channels x PB consecutive output positions p = oh*wp + ow, reading input
p + off(c, i, j); the columns ow >= wo of each row are computed and dropped by the epilogue, which
adds the bias and (for inference) applies ReLU and the 2x2 max pool while moving the rows to NCHW.

- The input gradient of a stride-1 convolution is the forward convolution of the output gradient,
  zero-padded by d*(k-1) - p, with the kernel flipped and its channel axes swapped: the same tile.
- The weight gradient: the output gradient moved to the extended layout (zeros in the dropped
  columns) times shifted input planes, reduced over images and positions by the wgrad tile (WCO
  channels x WK taps per call) in chunks of images that stay in L2; each thread sums its images into
  its own partial, added up at the end.

``usable(...)`` says when these run (float32, stride 1, padding within d*(k-1) for the input gradient,
tiles compiled); otherwise the im2col + BLAS path of conv_kernels.py does.
"""
from __future__ import annotations

import functools

import numpy as np
from .conv_direct import store_plane
from .conv_layout import pad_planes
from .conv_tile_ir import host_tiles
from .jit import njit, run_parts, slices

# Multiply-adds below which a convolution's tiles run on one thread (handing a slice of images to a
# helper thread costs ~20-50 us).
PAR_MIN_MACS = 1 << 21
PAR_MIN_COPY = 1 << 17  # elements below which the layout moves run on one thread
_SLACK = 64  # floats after the last image: a tile reads at most one block of positions (<= 48) past it
WG_CHUNK_BYTES = 1 << 19  # output gradient + input floats per chunk of images in the weight gradient


@njit
def _fwd(xp, cgplane, offs, wpk, buf, tile, pb):
    """buf[i, blk*nco + r, p] = the tile sums of image i for block blk = (group, block of nco output
    channels) at every position p < lpad."""
    n = xp.shape[0]
    groups, ncb, k, nco = wpk.shape
    lpad = buf.shape[2]
    for t in range(n * groups * ncb):
        i = t // (groups * ncb)
        blk = t - i * groups * ncb
        g = blk // ncb
        xbase = xp[i].ctypes.data + g * cgplane * 4
        wptr = wpk[g, blk - g * ncb].ctypes.data
        obase = buf[i, blk * nco].ctypes.data
        for q in range(lpad // pb):
            tile(xbase + q * pb * 4, offs.ctypes.data, k, wptr, obase + q * pb * 4, lpad)


@njit
def _epilogue(buf, rows_per_group, bias, out, wp, ho, wo, pool, relu):
    """out[i, c] = buf's row of channel c as an NCHW plane, bias added (pooled / ReLU'd for inference)."""
    n, co = out.shape[0], out.shape[1]
    cog = co // (buf.shape[1] // rows_per_group)
    for t in range(n * co):
        i = t // co
        c = t - i * co
        g = c // cog
        store_plane(buf[i, g * rows_per_group + c - g * cog], out[i, c], bias[c], wp, ho, wo, pool, relu)


@njit
def _to_ext(g, ge, rows_per_group, wp, gb, want_bias):
    """ge[i, row(c), oh*wp + ow] = g[i, c, oh, ow] with zeros in the rest of the row; gb[c] (float64) += the
    sum of g[:, c] when ``want_bias`` (row sums in float32, added up in float64)."""
    n, co, ho, wo = g.shape
    cog = co // (ge.shape[1] // rows_per_group)
    lpad = ge.shape[2]
    for c in range(co):
        grp = c // cog
        row = grp * rows_per_group + c - grp * cog
        acc = 0.0
        for i in range(n):
            d = ge[i, row]
            for oh in range(ho):
                s = g[i, c, oh]
                dr = d[oh * wp:oh * wp + wo]
                rs = s[0]
                dr[0] = rs
                for q in range(1, wo):
                    dr[q] = s[q]
                    rs += s[q]
                acc += rs
                for q in range(oh * wp + wo, min((oh + 1) * wp, lpad)):
                    d[q] = 0
            for q in range(ho * wp, lpad):
                d[q] = 0
        if want_bias:
            gb[c] += acc


@njit
def _wgrad(ge, xp, cgplane, offs, part, tile, nsteps, chunk, wco, wk):
    """part[g, r, k] += the weight-gradient sums of all images of ge / xp (rows r of group g, taps k), a
    chunk of images at a time."""
    n = xp.shape[0]
    groups, rows, kpad = part.shape
    lpad = ge.shape[2]
    gstride = ge.shape[1] * lpad
    xstride = xp.shape[1]
    for i0 in range(0, n, chunk):
        m = min(chunk, n - i0)
        for g in range(groups):
            xb = xp[i0].ctypes.data + g * cgplane * 4
            for rb in range(0, rows, wco):
                gptr = ge[i0, g * rows + rb].ctypes.data
                for kb in range(0, kpad, wk):
                    tile(gptr, lpad, xb, offs[kb:].ctypes.data, m, gstride, xstride, nsteps,
                         part[g, rb, kb:].ctypes.data, kpad)


@njit
def _ext_and_wgrad(g, ge, rows_per_group, wp, gb, want_bias, xp, cgplane, offs, part, tile, nsteps, chunk, wco, wk):
    _to_ext(g, ge, rows_per_group, wp, gb, want_bias)
    _wgrad(ge, xp, cgplane, offs, part, tile, nsteps, chunk, wco, wk)


# ---- drivers ------------------------------------------------------------------------------------

def usable(x, w, stride, backward=False, padding=(0, 0), dilation=(1, 1)):
    """Whether the tiles run this convolution: float32, stride 1, tiles compiled for this CPU; for the
    input gradient also the top/left padding within dilation*(kernel-1)."""
    if stride != (1, 1) or x.dtype != np.float32 or w.dtype != np.float32 or host_tiles() is None:
        return False
    if backward:
        kh, kw = w.shape[2], w.shape[3]
        return 0 <= padding[0] <= dilation[0] * (kh - 1) and 0 <= padding[1] <= dilation[1] * (kw - 1)
    return True


def _padded(x, hp, wp, ph, pw, slack):
    """x (N, C, H, W) zero-padded into (N, C*hp*wp) planes (top/left padding ph, pw; cropped to hp x wp)
    inside a buffer with ``slack`` zero floats after the last image."""
    n, c = x.shape[0], x.shape[1]
    plane = c * hp * wp
    flat = np.empty(n * plane + slack, np.float32)
    flat[n * plane:] = 0
    xp = flat[:n * plane].reshape(n, c, hp * wp)
    x = np.ascontiguousarray(x, dtype=np.float32)
    run_parts(pad_planes.serial, [(x[lo:hi], xp[lo:hi], hp, wp, ph, pw) for lo, hi in slices(n, xp.size, PAR_MIN_COPY)])
    return xp.reshape(n, plane)


@functools.lru_cache(maxsize=256)
def _offsets(cg, kh, kw, dh, dw, hp, wp, pad_to=1):
    """The tap table (read-only, cached per geometry): off(c, i, j) = c*hp*wp + i*dh*wp + j*dw, padded
    with zeros to a multiple of ``pad_to``."""
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    offs = (c * hp * wp + i * dh * wp + j * dw).reshape(-1).astype(np.int64)
    k = offs.size
    kpad = -(-k // pad_to) * pad_to
    offs = np.concatenate([offs, np.zeros(kpad - k, np.int64)]) if kpad > k else offs
    offs.flags.writeable = False
    return offs


def _rows(xp, cgplane, wk, offs, le, tiles):
    """The forward tiles over padded images xp: wk (groups, cog, K) weights -> buf (N, groups*rows, lpad)
    with rows = cog rounded up to the tile's channel block."""
    groups, cog, k = wk.shape
    s, fwd = tiles.pick(cog, le)
    ncb = -(-cog // s.nco)
    wpk = np.zeros((groups, ncb * s.nco, k), np.float32)
    wpk[:, :cog] = wk
    wpk = np.ascontiguousarray(wpk.reshape(groups, ncb, s.nco, k).transpose(0, 1, 3, 2))
    lpad = -(-le // s.pb) * s.pb
    n = xp.shape[0]
    buf = np.empty((n, groups * ncb * s.nco, lpad), np.float32)
    run_parts(_fwd, [(xp[lo:hi], cgplane, offs, wpk, buf[lo:hi], fwd, s.pb)
                     for lo, hi in slices(n, n * groups * ncb * s.nco * lpad * k, PAR_MIN_MACS)])
    return buf, ncb * s.nco


def forward(x, w, bias, padding, dilation, groups, out_hw, pool=False, relu=False):
    """conv2d of float32 NCHW x with stride 1 (``out_hw`` fixes the output size, so the bottom/right
    padding may exceed the top/left one); ``pool`` / ``relu`` as conv_kernels.conv2d_forward."""
    tiles = host_tiles()
    n = x.shape[0]
    co, cg, kh, kw = w.shape
    (ph, pw), (dh, dw), (ho, wo) = padding, dilation, out_hw
    hp, wp = ho + dh * (kh - 1), wo + dw * (kw - 1)
    xp = _padded(x, hp, wp, ph, pw, _SLACK)
    offs = _offsets(cg, kh, kw, dh, dw, hp, wp)
    wk = np.ascontiguousarray(w, dtype=np.float32).reshape(groups, co // groups, cg * kh * kw)
    buf, rpg = _rows(xp, cg * hp * wp, wk, offs, (ho - 1) * wp + wo, tiles)
    out = np.empty((n, co, ho // 2, wo // 2) if pool else (n, co, ho, wo), np.float32)
    b = np.zeros(co, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    run_parts(_epilogue, [(buf[lo:hi], rpg, b, out[lo:hi], wp, ho, wo, pool, relu)
                          for lo, hi in slices(n, out.size, PAR_MIN_COPY)])
    return out


def input_grad(g, w, padding, dilation, groups, in_hw):
    """The input gradient of a stride-1 conv2d: the forward tiles on g padded by d*(k-1) - p with the
    kernel flipped and its channel axes swapped."""
    tiles = host_tiles()
    n, co = g.shape[0], g.shape[1]
    _, cg, kh, kw = w.shape
    cog = co // groups
    (ph, pw), (dh, dw), (h, w_) = padding, dilation, in_hw
    hq, wq = h + dh * (kh - 1), w_ + dw * (kw - 1)
    gp = _padded(g, hq, wq, dh * (kh - 1) - ph, dw * (kw - 1) - pw, _SLACK)
    offs = _offsets(cog, kh, kw, dh, dw, hq, wq)
    wf = np.ascontiguousarray(w, dtype=np.float32).reshape(groups, cog, cg, kh, kw)[:, :, :, ::-1, ::-1]
    wk = np.ascontiguousarray(wf.transpose(0, 2, 1, 3, 4)).reshape(groups, cg, cog * kh * kw)
    buf, rpg = _rows(gp, cog * hq * wq, wk, offs, (h - 1) * wq + w_, tiles)
    dx = np.empty((n, cg * groups, h, w_), np.float32)
    zero = np.zeros(cg * groups, np.float32)
    run_parts(_epilogue, [(buf[lo:hi], rpg, zero, dx[lo:hi], wq, h, w_, False, False)
                          for lo, hi in slices(n, dx.size, PAR_MIN_COPY)])
    return dx


def weight_grad(g, x, w_shape, padding, dilation, groups, want_bias):
    """(gw, gb) of a stride-1 conv2d: gw float32 like the weight, gb float64 (or None)."""
    tiles = host_tiles()
    s = tiles.shape
    n, co, ho, wo = g.shape
    _, cg, kh, kw = w_shape
    cog = co // groups
    (ph, pw), (dh, dw) = padding, dilation
    hp, wp = ho + dh * (kh - 1), wo + dw * (kw - 1)
    xp = _padded(x, hp, wp, ph, pw, _SLACK)
    le = (ho - 1) * wp + wo
    lpad = -(-le // s.v) * s.v
    rows = -(-cog // s.wco) * s.wco
    ge = np.empty((n, groups * rows, lpad), np.float32)
    if rows > cog:
        ge.reshape(n, groups, rows, lpad)[:, :, cog:] = 0
    g = np.ascontiguousarray(g, dtype=np.float32)
    offs = _offsets(cg, kh, kw, dh, dw, hp, wp, s.wk)
    parts = slices(n, n * co * le * cg * kh * kw, PAR_MIN_MACS)
    gb = np.zeros((len(parts), co), np.float64)
    part = np.zeros((len(parts), groups, rows, offs.size), np.float32)
    chunk = max(1, WG_CHUNK_BYTES // (4 * (groups * rows * lpad + xp.shape[1])))
    run_parts(_ext_and_wgrad, [(g[lo:hi], ge[lo:hi], rows, wp, gb[t], bool(want_bias), xp[lo:hi], cg * hp * wp, offs,
                                part[t], tiles.wgrad, lpad // s.v, chunk, s.wco, s.wk)
                               for t, (lo, hi) in enumerate(parts)])
    gw = part.sum(axis=0) if len(parts) > 1 else part[0]
    gb = gb.sum(axis=0)
    gw = np.ascontiguousarray(gw[:, :cog, :cg * kh * kw]).reshape(w_shape)
    return gw, (gb if want_bias else None)
