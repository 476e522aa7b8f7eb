"""Stride-1 float32 convolutions on the register-blocked tiles of conv_tile_ir.py: forward, input
gradient and weight gradient without im2col or BLAS.

Layout (the "extended" layout of conv_kernels.py): an image's input planes zero-padded to hp x wp and
stored flat, with a few floats of slack after them (tiles read whole vectors past the end; those lanes
land in discarded columns). The forward tile computes NCO output channels x PB consecutive output
positions p = oh*wp + ow, reading input p + off(c, i, j); the columns ow >= wo of each row are computed
and dropped by the epilogue, which adds the bias and (for inference) applies ReLU and the 2x2 max pool
while moving the rows to NCHW.

- The input gradient of a stride-1 convolution is the forward convolution of the output gradient,
  zero-padded by d*(k-1) - p, with the kernel flipped and its channel axes swapped: the same tile.
- The weight gradient: the output gradient moved to the extended layout (zeros in the dropped
  columns) times shifted input planes, reduced over images and positions by the wgrad tile (WCO
  channels x WK taps per call), a chunk of images at a time (kept in L2).

Each operation is one kernel per slice of images (``jit.run_parts``: the calling thread and helper
threads): a thread pads one image (or a chunk) into its own scratch, runs the tiles and the epilogue
while the data is in cache, and moves on; weight gradients are summed per slice, then added up.

``usable(...)`` says when these run (float32, stride 1, padding within d*(k-1) for the input gradient,
tiles compiled); otherwise the im2col + BLAS path of conv_kernels.py does.
"""
from __future__ import annotations

import functools

import numpy as np

from .conv_direct import store_plane
from .conv_tile_ir import host_tiles
from .helpers import finish, no_sync, post
from .intrinsics import call
from .jit import njit, run_parts, slices

# Multiply-adds below which a convolution's tiles run on one thread (handing a slice of images to a
# helper thread costs ~20-50 us).
PAR_MIN_MACS = 1 << 21
_SLACK = 64  # floats after the last image: a tile reads at most one block of positions (<= 48) past it
WG_CHUNK_BYTES = 1 << 19  # output gradient + input floats per chunk of images in the weight gradient


@njit
def _pad_into(x, i, xp, hp, wp, ph, pw, shift=0.0):
    """The interior of image i of x (N, C, H, W) written into xp (C*hp*wp floats) at row ph, column pw;
    xp's border (and anything cropped past hp x wp) is left as it is: zero, written once by the caller."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    rows = max(0, min(h, hp - ph))
    cols = max(0, min(w, wp - pw))
    for ci in range(c):
        for r in range(rows):
            d = xp[ci * hp * wp + (ph + r) * wp + pw:]
            src = x[i, ci, r]
            for q in range(cols):
                d[q] = src[q] - shift


@njit(inline="always")
def _unpool_plane(gptr, cptr, h2, w2, dst, base, wp, h, w, unpool_fn):
    """The gradient of a 2x2 / stride-2 max pool of an h x w plane from its pooled gradient (h2 x w2 float32 at
    address gptr) and window codes (uint8 at cptr): written at dst[base + r*wp + q] for r < h, q < w (zeros
    where no max was, and in the last row / column an odd size leaves out of every window)."""
    for r in range(2 * h2):
        off = (r >> 1) * w2
        call(unpool_fn, (gptr + 4 * off, cptr + off, w2, (r & 1) * 2, dst.ctypes.data + 4 * (base + r * wp)))
        if w > 2 * w2:
            dst[base + r * wp + w - 1] = 0
    for r in range(2 * h2, h):
        for q in range(w):
            dst[base + r * wp + q] = 0


@njit
def _fwd_slice(x, out, bias, hp, wp, ph, pw, offs, wpk, tile, tail, pb, lpad, pool, relu, qep, codes, src_codes, src_hw,
               shift, fns, sync):
    """out (n, Co, ...) = the tiled convolution of the images x (n, C, H, W) with packed weights wpk
    (groups, channel blocks, K, NCO) and tap table offs, lpad positions per channel: whole tiles of pb, then the
    ``tail`` tile (of the same channels) for the rest (when lpad is no multiple of pb); the epilogue adds bias,
    and pools / ReLUs (with ``codes`` (n, Co, ...) uint8, not None: pools and records where each max was, with
    llvm_ir.pool_codes_ir; no ReLU); or,
    with ``qep`` = (bias_i, multiplier, zero point, lo, hi), requantizes the (pooled) sums to uint8 codes.
    With ``src_codes`` not None, x is the pooled gradient of a 2x2 max pool whose input was src_hw big and whose
    window codes src_codes holds: each image is unpooled into the padded scratch (an input gradient's first step).
    ``shift`` is subtracted from x as it is padded (a uint8 input's zero point). ``fns``: the addresses of llvm_ir's
    pool, pool_codes and unpool kernels."""
    post(sync)
    pool_fn, codes_fn, unpool_fn = fns
    n, c = x.shape[0], x.shape[1]
    groups, ncb, k, nco = wpk.shape
    co = out.shape[1]
    cog = co // groups
    cgplane = (c // groups) * hp * wp
    rows_per_group = ncb * nco
    ho, wo = (out.shape[2] * 2, out.shape[3] * 2) if pool else (out.shape[2], out.shape[3])
    xp = np.zeros(c * hp * wp + _SLACK, np.float32)
    rows = groups * rows_per_group
    buf = np.empty(rows * lpad + 16, np.float32)[:rows * lpad].reshape(rows, lpad)  # + the pool's overhang
    stage = np.empty(ho * wo + 16, np.float32)
    for i in range(n):
        if src_codes is None:
            _pad_into(x, i, xp, hp, wp, ph, pw, shift)
        else:
            h2, w2 = x.shape[2], x.shape[3]
            for ci in range(c):
                at = (i * c + ci) * h2 * w2
                _unpool_plane(x.ctypes.data + 4 * at, src_codes.ctypes.data + at, h2, w2, xp,
                              ci * hp * wp + ph * wp + pw, wp, src_hw[0], src_hw[1], unpool_fn)
        for blk in range(groups * ncb):
            g = blk // ncb
            xb = xp.ctypes.data + g * cgplane * 4
            wptr = wpk[g, blk - g * ncb].ctypes.data
            ob = buf[blk * nco].ctypes.data
            for q in range(lpad // pb):
                call(tile, (xb + q * pb * 4, offs.ctypes.data, k, wptr, ob + q * pb * 4, lpad))
            if lpad % pb:
                q = lpad - lpad % pb
                call(tail, (xb + q * 4, offs.ctypes.data, k, wptr, ob + q * 4, lpad))
        if qep is None:
            for ch in range(co):
                g = ch // cog
                row = buf[g * rows_per_group + ch - g * cog]
                if codes is not None:
                    call(codes_fn, (row.ctypes.data, wp, ho // 2, wo // 2, bias[ch], out[i, ch].ctypes.data,
                                    codes[i, ch].ctypes.data))
                elif pool:  # the pool kernel into stage, then bias and ReLU on the way out
                    call(pool_fn, (row.ctypes.data, wp, ho // 2, wo, stage.ctypes.data))
                    flat = out[i, ch].reshape(out.shape[2] * out.shape[3])
                    bv = bias[ch]
                    for j in range(flat.size):
                        v = stage[j] + bv
                        flat[j] = (v if v > 0 or v != v else 0.0) if relu else v
                else:
                    store_plane(row, out[i, ch], bias[ch], wp, ho, wo, False, relu)
        else:
            _requant_image(buf, out[i], rows_per_group, cog, wp, ho, wo, pool, qep, stage, pool_fn)
    finish(sync)


@njit(fastmath=False)
def _requant_image(buf, out, rows_per_group, cog, wp, ho, wo, pool, qep, stage, pool_fn):
    """out (Co, ...) uint8 = clip(rint(float32(acc + bias_i[c]) * multiplier[c]) + zp, lo, hi) of one image's
    sums (exact integers in float32; the sum taken in float64 as the int8 kernels' int64), 2x2 max-pooled
    first with ``pool`` (the requantization is non-decreasing in the sum for positive multipliers)."""
    bias_i, mult, zp, lo, hi = qep
    for ch in range(out.shape[0]):
        g = ch // cog
        row = buf[g * rows_per_group + ch - g * cog]
        k = 0
        if pool:
            call(pool_fn, (row.ctypes.data, wp, ho // 2, wo, stage.ctypes.data))
            k = (ho // 2) * (wo // 2)
        else:
            for y in range(ho):
                stage[k:k + wo] = row[y * wp:y * wp + wo]
                k += wo
        requant_row(stage, k, bias_i[ch], mult[ch], zp, lo, hi, out[ch].reshape(k))


@njit(inline="always", fastmath=False)
def requant_row(src, k, b, m, zp, lo, hi, dst):
    """dst[j] = clip(rint(float32(src[j] + b) * m) + zp, lo, hi) for j < k, the sum taken in float64 (exact for
    the integer sums of a quantized layer); the callers compile without fastmath."""
    for j in range(k):
        r = np.rint(np.float32(np.float64(src[j]) + b) * m) + zp
        if r < lo:
            r = lo
        if r > hi:
            r = hi
        dst[j] = np.uint8(r)


@njit
def _wgrad_slice(g, x, hp, wp, ph, pw, offs, part, gb, want_bias, tile, v, lpad, chunk, wco, wk, codes, g_hw, unpool_fn,
                 sync):
    """part (groups, rows, kpad) += the weight-gradient sums of the images of g / x, a chunk of images at a
    time: the chunk's output gradients moved to the extended layout (zeros in the dropped columns) and its
    inputs padded, then the wgrad tiles; gb[c] (float64) += the sum of g[:, c] when ``want_bias``. With ``codes``
    not None, g is the pooled gradient of a 2x2 max pool of the g_hw-sized conv output (window codes ``codes``),
    unpooled straight into the extended layout."""
    post(sync)
    n, co = g.shape[0], g.shape[1]
    ho, wo = (g.shape[2], g.shape[3]) if codes is None else (g_hw[0], g_hw[1])
    groups, rows, kpad = part.shape
    cog = co // groups
    c = x.shape[1]
    plane = c * hp * wp
    cgplane = (c // groups) * hp * wp
    m_max = min(chunk, n)
    xp = np.zeros(m_max * plane + _SLACK, np.float32)
    ge = np.zeros((m_max, groups * rows, lpad), np.float32)  # only the valid columns are ever written
    for i0 in range(0, n, chunk):
        m = min(chunk, n - i0)
        for j in range(m):
            _pad_into(x, i0 + j, xp[j * plane:], hp, wp, ph, pw)
            for ch in range(co):
                grp = ch // cog
                d = ge[j, grp * rows + ch - grp * cog]
                acc = 0.0
                if codes is not None:
                    h2, w2 = g.shape[2], g.shape[3]
                    at = ((i0 + j) * co + ch) * h2 * w2
                    _unpool_plane(g.ctypes.data + 4 * at, codes.ctypes.data + at, h2, w2, d, 0, wp, ho, wo, unpool_fn)
                    if want_bias:
                        for r in range(h2):
                            src = g[i0 + j, ch, r]
                            rs = src[0]
                            for q in range(1, w2):
                                rs += src[q]
                            acc += rs
                        gb[ch] += acc
                    continue
                for oh in range(ho):
                    src = g[i0 + j, ch, oh]
                    dr = d[oh * wp:oh * wp + wo]
                    rs = src[0]  # row sums in float32 (vectorised), added up in float64
                    dr[0] = rs
                    for q in range(1, wo):
                        dr[q] = src[q]
                        rs += src[q]
                    acc += rs
                if want_bias:
                    gb[ch] += acc
        for grp in range(groups):
            xb = xp.ctypes.data + grp * cgplane * 4
            for rb in range(0, rows, wco):
                gptr = ge[0, grp * rows + rb].ctypes.data
                for kb in range(0, kpad, wk):
                    call(tile, (gptr, lpad, xb, offs[kb:].ctypes.data, m, groups * rows * lpad, plane, lpad // v,
                                part[grp, rb, kb:].ctypes.data, kpad))
    finish(sync)


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


def _packed(wk, tiles, length):
    """wk (groups, cog, K) -> (the forward variant's pointer, its tail tile's for the rest of lpad (0: none) and PB,
    weights packed (groups, blocks, K, NCO) with zero rows past cog, lpad = length rounded up to V)."""
    groups, cog, k = wk.shape
    s, fwd, tails = tiles.pick(cog, length)
    ncb = -(-cog // s.nco)
    wpk = np.zeros((groups, ncb * s.nco, k), np.float32)
    wpk[:, :cog] = wk
    wpk = np.ascontiguousarray(wpk.reshape(groups, ncb, s.nco, k).transpose(0, 1, 3, 2))
    lpad = -(-length // s.v) * s.v
    return fwd, tails[(lpad % s.pb) // s.v], s.pb, wpk, lpad


def _fwd_plan(n, out_hw, hp, wp, ph, pw, offs, wk, tiles):
    """(the geometry and packed-weight fields of ``_fwd_slice``, the slices of n images over the threads) of a
    forward convolution with conv output size out_hw."""
    le = (out_hw[0] - 1) * wp + out_hw[1]
    fwd, tail, pb, wpk, lpad = _packed(wk, tiles, le)
    work = n * wpk.shape[0] * wpk.shape[1] * wpk.shape[3] * lpad * wpk.shape[2]
    return (hp, wp, ph, pw, offs, wpk, fwd, tail, pb, lpad), slices(n, work, PAR_MIN_MACS)


def _fwd_launch(x, out, bias, fields, parts, pool, relu, qep, tiles, codes=None, src_codes=None, src_hw=(0, 0)):
    x = np.ascontiguousarray(x, dtype=np.float32)
    fns = (tiles.pool, tiles.pool_codes, tiles.unpool)
    run_parts(_fwd_slice, [(x[lo:hi], out[lo:hi], bias) + fields
                           + (pool, relu, qep, None if codes is None else codes[lo:hi],
                              None if src_codes is None else src_codes[lo:hi], tuple(src_hw), np.float32(0), fns)
                           for lo, hi in parts])
    return out


def _run_fwd(x, out, bias, hp, wp, ph, pw, offs, wk, tiles, pool, relu, qep=None, src_codes=None, src_hw=(0, 0)):
    k = 2 if pool else 1
    fields, parts = _fwd_plan(x.shape[0], (out.shape[2] * k, out.shape[3] * k), hp, wp, ph, pw, offs, wk, tiles)
    return _fwd_launch(x, out, bias, fields, parts, pool, relu, qep, tiles, src_codes=src_codes, src_hw=src_hw)


def _geometry(x, w, padding, dilation, groups, out_hw):
    """(n, Cout, ho, wo, hp, wp, ph, pw, tap table, weights as (groups, Cout/groups, K)) of a forward conv."""
    co, cg, kh, kw = w.shape
    (ph, pw), (dh, dw), (ho, wo) = padding, dilation, out_hw
    hp, wp = ho + dh * (kh - 1), wo + dw * (kw - 1)
    wk = np.ascontiguousarray(w, dtype=np.float32).reshape(groups, co // groups, cg * kh * kw)
    return x.shape[0], co, ho, wo, hp, wp, ph, pw, _offsets(cg, kh, kw, dh, dw, hp, wp), wk


class PreparedForward:
    """``forward`` of one float32 weight (and bias, geometry, epilogue) with the weights packed and the geometry
    worked out once per input shape: the runtime's prepared conv2d kernels call it with each input. With ``qep``
    (as ``forward_requant`` takes it: bias_i, multipliers, zero point, lo, hi) it is ``forward_requant``: uint8 codes
    out (the prepared short-reduction quantized convolutions), and then uint8 codes in too, ``shift`` (their zero
    point) subtracted as each image is padded: no float copy of the input first."""

    def __init__(self, w, bias, padding, dilation, groups, pool=False, relu=False, qep=None, shift=0):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        co = self.w.shape[0]
        self.bias = np.zeros(co, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.padding, self.dilation, self.groups = tuple(padding), tuple(dilation), groups
        self.pool, self.relu = bool(pool), bool(relu)
        self.qep, self.dtype = (None, np.float32) if qep is None else (_requant_fields(*qep), np.uint8)
        self.shift = np.float32(shift)
        self.per_shape: dict = {}

    def __call__(self, x, out_hw):
        hit = self.per_shape.get((x.shape, out_hw))
        if hit is None:
            n, co, ho, wo, hp, wp, ph, pw, offs, wk = _geometry(x, self.w, self.padding, self.dilation, self.groups,
                                                                out_hw)
            shape = (n, co, ho // 2, wo // 2) if self.pool else (n, co, ho, wo)
            t = host_tiles()
            fields, parts = _fwd_plan(n, (ho, wo), hp, wp, ph, pw, offs, wk, t)
            args = (self.bias,) + fields + (self.pool, self.relu, self.qep, None, None, (0, 0), self.shift,
                                            (t.pool, t.pool_codes, t.unpool))
            if len(self.per_shape) >= 16:
                self.per_shape.clear()
            hit = self.per_shape[(x.shape, out_hw)] = (shape, args, parts)
        shape, args, parts = hit
        out = np.empty(shape, self.dtype)
        if not x.flags.c_contiguous or (x.dtype != np.float32 and not (self.qep is not None and x.dtype == np.uint8)):
            x = np.ascontiguousarray(x, dtype=np.float32)
        if len(parts) == 1:  # (one numba call, no run_parts: ~1 us less per call at batch 1)
            _fwd_slice(x, out, *args, no_sync())
        else:
            run_parts(_fwd_slice, [(x[lo:hi], out[lo:hi]) + args for lo, hi in parts])
        return out


def forward(x, w, bias, padding, dilation, groups, out_hw, pool=False, relu=False):
    """conv2d of float32 NCHW x with stride 1 (``out_hw`` fixes the output size, so the bottom/right
    padding may exceed the top/left one); ``pool`` / ``relu`` as conv_kernels.conv2d_forward."""
    n, co, ho, wo, hp, wp, ph, pw, offs, wk = _geometry(x, w, padding, dilation, groups, out_hw)
    out = np.empty((n, co, ho // 2, wo // 2) if pool else (n, co, ho, wo), np.float32)
    b = np.zeros(co, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    return _run_fwd(x, out, b, hp, wp, ph, pw, offs, wk, host_tiles(), pool, relu)


def forward_pool_codes(x, w, bias, padding, dilation, groups, out_hw):
    """(the 2x2 / stride-2 max pool of the stride-1 float32 conv2d of x (conv output size ``out_hw``), the uint8
    code of each max's place in its window): the pool's argmax for training, from the tiles' epilogue."""
    n, co, ho, wo, hp, wp, ph, pw, offs, wk = _geometry(x, w, padding, dilation, groups, out_hw)
    out = np.empty((n, co, ho // 2, wo // 2), np.float32)
    codes = np.empty(out.shape, np.uint8)
    b = np.zeros(co, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    tiles = host_tiles()
    fields, parts = _fwd_plan(n, (ho, wo), hp, wp, ph, pw, offs, wk, tiles)
    _fwd_launch(x, out, b, fields, parts, True, False, None, tiles, codes)
    return out, codes


def forward_requant(x, w, padding, dilation, groups, out_hw, pool, bias_i, mult, zp, lo, hi):
    """The uint8 codes clip(rint(float32(conv + bias_i) * mult) + zp, lo, hi) per output channel of a stride-1
    float32 convolution whose sums are exact integers (quantized first layers: see ops/qlinear.py), pooled
    2x2 before the requantization with ``pool``."""
    n, co, ho, wo, hp, wp, ph, pw, offs, wk = _geometry(x, w, padding, dilation, groups, out_hw)
    out = np.empty((n, co, ho // 2, wo // 2) if pool else (n, co, ho, wo), np.uint8)
    qep = _requant_fields(bias_i, mult, zp, lo, hi)
    return _run_fwd(x, out, np.zeros(co, np.float32), hp, wp, ph, pw, offs, wk, host_tiles(), pool, False, qep)


def _requant_fields(bias_i, mult, zp, lo, hi):
    return (np.ascontiguousarray(bias_i, np.float64), np.ascontiguousarray(mult, np.float32), np.float32(zp),
            np.float32(lo), np.float32(hi))


def input_grad(g, w, padding, dilation, groups, in_hw, codes=None, g_hw=(0, 0)):
    """The input gradient of a stride-1 conv2d: the forward tiles on g padded by d*(k-1) - p with the
    kernel flipped and its channel axes swapped. With ``codes``: g is the pooled gradient of a 2x2 max pool of
    the g_hw-sized conv output, unpooled image by image into the tiles' padded input."""
    n, co = g.shape[0], g.shape[1]
    _, cg, kh, kw = w.shape
    cog = co // groups
    (ph, pw), (dh, dw), (h, w_) = padding, dilation, in_hw
    hq, wq = h + dh * (kh - 1), w_ + dw * (kw - 1)
    offs = _offsets(cog, kh, kw, dh, dw, hq, wq)
    wf = np.ascontiguousarray(w, dtype=np.float32).reshape(groups, cog, cg, kh, kw)[:, :, :, ::-1, ::-1]
    wk = np.ascontiguousarray(wf.transpose(0, 2, 1, 3, 4)).reshape(groups, cg, cog * kh * kw)
    dx = np.empty((n, cg * groups, h, w_), np.float32)
    return _run_fwd(g, dx, np.zeros(cg * groups, np.float32), hq, wq, dh * (kh - 1) - ph, dw * (kw - 1) - pw,
                    offs, wk, host_tiles(), False, False, src_codes=None if codes is None else np.ascontiguousarray(codes),
                    src_hw=g_hw)


def weight_grad(g, x, w_shape, padding, dilation, groups, want_bias, codes=None, g_hw=(0, 0)):
    """(gw, gb) of a stride-1 conv2d: gw float32 like the weight, gb float64 (or None). With ``codes``: g is the
    pooled gradient of a 2x2 max pool of the g_hw-sized conv output (window codes ``codes``)."""
    tiles = host_tiles()
    s = tiles.shape
    n, co = g.shape[0], g.shape[1]
    ho, wo = (g.shape[2], g.shape[3]) if codes is None else g_hw
    _, cg, kh, kw = w_shape
    cog = co // groups
    (ph, pw), (dh, dw) = padding, dilation
    hp, wp = ho + dh * (kh - 1), wo + dw * (kw - 1)
    le = (ho - 1) * wp + wo
    lpad = -(-le // s.v) * s.v
    rows = -(-cog // s.wco) * s.wco
    offs = _offsets(cg, kh, kw, dh, dw, hp, wp, s.wk)
    g = np.ascontiguousarray(g, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    parts = slices(n, n * co * le * cg * kh * kw, PAR_MIN_MACS)
    gb = np.zeros((len(parts), co), np.float64)
    part = np.zeros((len(parts), groups, rows, offs.size), np.float32)
    chunk = max(1, WG_CHUNK_BYTES // (4 * (groups * rows * lpad + x.shape[1] * hp * wp)))
    codes = None if codes is None else np.ascontiguousarray(codes)
    run_parts(_wgrad_slice, [(g[lo:hi], x[lo:hi], hp, wp, ph, pw, offs, part[t], gb[t], bool(want_bias), tiles.wgrad,
                              s.v, lpad, chunk, s.wco, s.wk, None if codes is None else codes[lo:hi], tuple(g_hw),
                              tiles.unpool) for t, (lo, hi) in enumerate(parts)])
    gw = part.sum(axis=0) if len(parts) > 1 else part[0]
    gw = np.ascontiguousarray(gw[:, :cog, :cg * kh * kw]).reshape(w_shape)
    return gw, (gb.sum(axis=0) if want_bias else None)
