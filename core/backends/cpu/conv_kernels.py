"""numba kernels for 2-d convolution (im2col / col2im and the layout moves around the BLAS GEMMs)
and the drivers the conv2d ops call.

Columns are laid out (C*kh*kw, n*L) for a chunk of n images: one GEMM per group covers the chunk,
the weight gradient is ``cols @ g_rows.T`` with no copy of cols, and only the (Cout, n*L) GEMM
result moves to NCHW, fused with the bias add. Chunks keep the columns in cache between im2col,
the GEMMs and col2im, and the scratch buffers are reused per thread (no page faults per call).

Stride-1 convolutions (the common case) use an "extended" column layout: the input is zero-padded
once to (Hp, Wp) and every output row is computed Wp wide, so one kernel tap of one image is a
single contiguous run of the padded plane (one vectorised copy, no border tests) and col2im is one
contiguous add per tap. The Wp - Wo extra columns per row are dropped when leaving the layout and
enter it as zeros. Other strides use plain im2col with per-row bounds.

Stride-1 convolutions with a short K = C/groups*kh*kw (<= DIRECT_MAX_K: a first layer on one or
two channels) and 4+ output channels per group skip im2col and BLAS: ``direct_forward`` and
``direct_weight_grad`` multiply-add shifted runs of the padded planes, blocked over output channels
so each load feeds several FMAs (cnn benchmark conv1: forward ~1.2x, weight gradient ~1.3x faster
than im2col + GEMM).
"""
from __future__ import annotations

import threading

import numpy as np
from numba import prange

from .conv_direct import direct_forward, direct_weight_grad, store_plane  # noqa: F401 (re-exported for tests)
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


_WS = threading.local()
_WS_MAX = 64 << 20  # bytes: larger scratch is allocated per call rather than kept
CHUNK_BYTES = 1 << 19  # bytes of columns + GEMM rows per chunk of images when K is short (half an L2)
# The layout kernels alternate with BLAS GEMMs chunk by chunk. BLAS already spreads each GEMM over
# the cores, and a numba thread pool spinning next to OpenBLAS's costs far more than it saves on
# the 2-core machines (conv1 of the cnn benchmark: 16 ms instead of 1.8 ms per forward+backward),
# so they run on the calling thread unless this is switched on.
PARALLEL_LAYOUT = False
# Largest K = C/groups*kh*kw of a stride-1 conv that takes the direct kernels (forward and weight
# gradient): below it BLAS runs far from peak and the im2col copies cost more than the FLOPs.
DIRECT_MAX_K = 16


def _work(a):
    """The work size handed to a layout kernel: its element count, or 0 (serial) by default."""
    return a.size if PARALLEL_LAYOUT else 0


def _scratch(slot, shape, dtype):
    """A per-thread reusable buffer (so big temporaries don't page-fault on every call); never
    returned to a caller."""
    size = 1
    for d in shape:
        size *= d
    try:
        bufs = _WS.bufs
    except AttributeError:
        bufs = _WS.bufs = {}
    key = (slot, dtype)
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        if buf.nbytes <= _WS_MAX:
            bufs[key] = buf
    return buf[:size].reshape(shape)


def _compute_dtype(dt):
    """float32 and float64 run natively; float16 computes in float32 (numba has no half math)."""
    return np.float64 if dt == np.float64 else np.float32


def out_size(h, k, s, p_lo, p_hi, d):
    return (h + p_lo + p_hi - d * (k - 1) - 1) // s + 1


class _Geometry:
    """Where the columns of one convolution come from (the extended layout for stride 1, else plain),
    and how many images go through the GEMMs at a time."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, out_hw, itemsize):
        self.n, self.c, self.h, self.w = x_shape
        self.co, self.cg, self.kh, self.kw = w_shape
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.ho, self.wo = out_hw
        self.ext = stride == (1, 1)
        if self.ext:
            self.hp = self.ho + dilation[0] * (self.kh - 1)
            self.wp = self.wo + dilation[1] * (self.kw - 1)
            self.le = (self.ho - 1) * self.wp + self.wo  # the last row's extra columns are never read
        else:
            self.wp, self.le = self.wo, self.ho * self.wo
        self.k = self.c * self.kh * self.kw
        # Short K per group: convolve straight from the padded planes instead of im2col + GEMM. The
        # kernels work on blocks of 4 output channels of a group: depthwise-like groups stay on GEMM.
        self.direct = (self.ext and self.cg * self.kh * self.kw <= DIRECT_MAX_K
                       and self.co // (self.c // self.cg) >= 4)
        # Images per chunk. A short K makes the GEMM memory-bound: keep the chunk's columns and rows
        # in L2 from im2col to col2im. A long K makes it compute-bound: fewer, larger BLAS calls.
        budget = CHUNK_BYTES * min(16, max(1, self.k // 32))
        self.chunk = max(1, min(self.n, budget // max(1, (self.k + self.co) * self.le * itemsize)))

    def chunks(self):
        for n0 in range(0, self.n, self.chunk):
            yield n0, min(n0 + self.chunk, self.n)

    def padded(self, x, dt):
        """The images x as zero-padded (n, C, hp*wp) planes (a view when there is no padding)."""
        n = x.shape[0]
        if (self.padding == (0, 0) and (self.hp, self.wp) == (self.h, self.w)):
            return x.reshape(n, self.c, self.h * self.w)
        xp = _scratch("xpad", (n, self.c, self.hp * self.wp), dt)
        pad_planes(_work(xp), x, xp, self.hp, self.wp, self.padding[0], self.padding[1])
        return xp

    def columns(self, x, dt):
        """The (C*kh*kw, n*le) column matrix of the images x (a scratch buffer)."""
        cols = _scratch("cols", (self.k, x.shape[0] * self.le), dt)
        if self.ext:
            im2col_ext(_work(cols), self.padded(x, dt), cols, self.kh, self.kw, self.dilation[0], self.dilation[1],
                       self.wp, self.le)
        else:
            (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
            im2col_strided(_work(cols), x, cols, self.kh, self.kw, sh, sw, ph, pw, dh, dw, self.ho, self.wo)
        return cols

    def to_image(self, dcols, dx):
        """The adjoint of ``columns``, written into the images dx."""
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        if self.ext:
            col2im_ext(_work(dcols), dcols, dx, self.kh, self.kw, dh, dw, ph, pw, self.hp, self.wp, self.le)
        else:
            col2im_strided(_work(dcols), dcols, dx, self.kh, self.kw, sh, sw, ph, pw, dh, dw, self.ho, self.wo)


def _grouped_matmul(a, b, groups, out):
    """out = a @ b per group: a (G*M, K), b (G*K, N) -> out (G*M, N)."""
    if groups == 1:
        return np.matmul(a, b, out=out)
    g = groups
    np.matmul(a.reshape(g, a.shape[0] // g, a.shape[1]), b.reshape(g, b.shape[0] // g, b.shape[1]),
              out=out.reshape(g, out.shape[0] // g, out.shape[1]))
    return out


def conv2d_forward(x, w, b, stride, padding, dilation, groups, out_hw):
    """NCHW convolution by im2col + one GEMM per group, a chunk of images at a time; ``out_hw`` fixes
    the output size (so the bottom/right padding may exceed ``padding``, the top/left one)."""
    dt = _compute_dtype(x.dtype)
    x = np.ascontiguousarray(x, dtype=dt)
    w = np.ascontiguousarray(w, dtype=dt)
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation, out_hw, np.dtype(dt).itemsize)
    w2 = w.reshape(geo.co, geo.cg * geo.kh * geo.kw)
    out = np.empty((geo.n, geo.co, geo.ho, geo.wo), dt)
    bias = np.zeros(geo.co, dt) if b is None else np.ascontiguousarray(b, dtype=dt)
    if geo.direct:
        direct_forward(_work(out), geo.padded(x, dt), w, bias, out, geo.dilation[0], geo.dilation[1], geo.wp, geo.le,
                       geo.ho, geo.wo, False, False)
        return out
    for n0, n1 in geo.chunks():
        cols = geo.columns(x[n0:n1], dt)
        rows = _scratch("rows", (geo.co, (n1 - n0) * geo.le), dt)
        _grouped_matmul(w2, cols, groups, rows)
        rows_to_nchw(_work(rows), rows, bias, out[n0:n1], geo.wp, geo.le)
    return out


def conv2d_pool_forward(x, w, b, stride, padding, dilation, groups, out_hw, relu):
    """Inference: conv2d (+ bias) then a 2x2 / stride-2 max pool (floor mode) and optionally ReLU, in the
    pass that leaves the GEMM (or the direct kernel's accumulators): the full-size conv output is
    never written. Returns (N, Cout, Ho//2, Wo//2)."""
    dt = _compute_dtype(x.dtype)
    x = np.ascontiguousarray(x, dtype=dt)
    w = np.ascontiguousarray(w, dtype=dt)
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation, out_hw, np.dtype(dt).itemsize)
    out = np.empty((geo.n, geo.co, geo.ho // 2, geo.wo // 2), dt)
    bias = np.zeros(geo.co, dt) if b is None else np.ascontiguousarray(b, dtype=dt)
    if geo.direct:
        direct_forward(_work(out) * 4, geo.padded(x, dt), w, bias, out, geo.dilation[0], geo.dilation[1], geo.wp,
                       geo.le, geo.ho, geo.wo, True, relu)
        return out
    w2 = w.reshape(geo.co, geo.cg * geo.kh * geo.kw)
    for n0, n1 in geo.chunks():
        cols = geo.columns(x[n0:n1], dt)
        rows = _scratch("rows", (geo.co, (n1 - n0) * geo.le), dt)
        _grouped_matmul(w2, cols, groups, rows)
        rows_to_planes(_work(rows), rows, bias, out[n0:n1], geo.wp, geo.le, geo.ho, geo.wo, True, relu)
    return out


def conv2d_backward(g, x, w, stride, padding, dilation, groups, output_mask):
    """Gradients of conv2d w.r.t. (input, weight, bias), each only where ``output_mask`` says;
    the others come back as None."""
    dt = _compute_dtype(x.dtype)
    g = np.ascontiguousarray(g, dtype=dt)
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation, g.shape[2:], np.dtype(dt).itemsize)
    co, kg, cog = geo.co, geo.cg * geo.kh * geo.kw, geo.co // groups
    gb = np.zeros(co, np.float64)
    want_gb = bool(output_mask[2])
    if not (output_mask[0] or output_mask[1]):
        bias_grad(_work(g), g, gb)
        return None, None, gb.astype(dt)
    gx = np.empty((geo.n, geo.c, geo.h, geo.w), dt) if output_mask[0] else None
    gw = None
    if output_mask[1]:
        x = np.ascontiguousarray(x, dtype=dt)
        if geo.direct:
            gw64 = np.zeros(w.shape, np.float64)
            direct_weight_grad(_work(g), geo.padded(x, dt), g, gw64, gb, geo.dilation[0], geo.dilation[1], geo.wp,
                               geo.le, bool(output_mask[2]))
            gw = gw64.astype(dt)
            if not output_mask[0]:
                return None, gw, (gb.astype(dt) if output_mask[2] else None)
            output_mask = (True, False, False)  # the input gradient goes through the GEMM below
    gwt = np.zeros((groups, kg, cog), dt) if output_mask[1] else None
    if output_mask[0]:
        w = np.ascontiguousarray(w, dtype=dt)
        wt = w.reshape(groups, cog, kg).transpose(0, 2, 1).reshape(groups * kg, cog)
    for n0, n1 in geo.chunks():
        nl = (n1 - n0) * geo.le
        grows = _scratch("grows", (co, nl), dt)
        nchw_to_rows(_work(grows), g[n0:n1], grows, gb, geo.wp, geo.le, bool(output_mask[2]))
        if output_mask[1]:
            cols = geo.columns(x[n0:n1], dt)
            # cols @ grows.T reads both operands in their stored order (faster in BLAS than grows @ cols.T)
            part = np.matmul(cols.reshape(groups, kg, nl), grows.reshape(groups, cog, nl).transpose(0, 2, 1))
            gwt += part
        if output_mask[0]:
            dcols = _scratch("dcols", (geo.k, nl), dt)
            _grouped_matmul(wt, grows, groups, dcols)
            geo.to_image(dcols, gx[n0:n1])
    if gwt is not None:
        gw = np.ascontiguousarray(gwt.transpose(0, 2, 1)).reshape(w.shape)
    return gx, gw, (gb.astype(dt) if want_gb else None)
