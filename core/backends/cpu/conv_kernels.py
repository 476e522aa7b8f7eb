"""The drivers the conv2d ops call: im2col / col2im (conv_layout.py) around the BLAS GEMMs, or the
direct kernels (conv_direct.py) for short reductions; per-thread scratch and the chunking geometry.

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

Stride-1 float32 convolutions (forward, input and weight gradients) run on the register-blocked tiles
of conv_tiled.py / conv_tile_ir.py ahead of both (cnn benchmark training step ~8.5 ms -> ~6.5 ms; conv1
of the cnn, K = 9: forward 391 -> 250 us, weight gradient 424 -> 272 us at B=64); the direct kernels
and im2col + GEMM remain for other strides and dtypes, and when the tiles are off.
"""
from __future__ import annotations

import threading

import numpy as np

from . import blas, conv_tiled
from .conv_direct import direct_forward, direct_weight_grad  # noqa: F401 (re-exported for tests)
from .conv_layout import (  # noqa: F401 (the layout kernels, re-exported for tests)
    PAR_MIN, bias_grad, col2im_ext, col2im_strided, im2col_ext, im2col_strided, nchw_to_rows, pad_planes,
    rows_to_nchw, rows_to_planes,
)

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
        return blas.matmul(a, b, out=out)
    g = groups
    blas.matmul(a.reshape(g, a.shape[0] // g, a.shape[1]), b.reshape(g, b.shape[0] // g, b.shape[1]),
              out=out.reshape(g, out.shape[0] // g, out.shape[1]))
    return out


def conv2d_forward(x, w, b, stride, padding, dilation, groups, out_hw, pool=False, relu=False):
    """NCHW convolution by im2col + one GEMM per group, a chunk of images at a time; ``out_hw`` fixes
    the output size (so the bottom/right padding may exceed ``padding``, the top/left one). For
    inference, ``pool`` max-pools 2x2 / stride 2 (floor mode) and ``relu`` clamps, in the pass that
    leaves the GEMM (or the direct kernel's accumulators): the output is then (N, Cout, Ho//2, Wo//2)
    and the full-size conv result is never written."""
    dt = _compute_dtype(x.dtype)
    x = np.ascontiguousarray(x, dtype=dt)
    w = np.ascontiguousarray(w, dtype=dt)
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation, out_hw, np.dtype(dt).itemsize)
    ho, wo = (geo.ho // 2, geo.wo // 2) if pool else (geo.ho, geo.wo)
    out = np.empty((geo.n, geo.co, ho, wo), dt)
    bias = np.zeros(geo.co, dt) if b is None else np.ascontiguousarray(b, dtype=dt)
    if conv_tiled.usable(x, w, stride):
        return conv_tiled.forward(x, w, bias, padding, dilation, groups, out_hw, pool, relu)
    if geo.direct:
        direct_forward(_work(out) * (4 if pool else 1), geo.padded(x, dt), w, bias, out, geo.dilation[0],
                       geo.dilation[1], geo.wp, geo.le, geo.ho, geo.wo, pool, relu)
        return out
    w2 = w.reshape(geo.co, geo.cg * geo.kh * geo.kw)
    for n0, n1 in geo.chunks():
        cols = geo.columns(x[n0:n1], dt)
        rows = _scratch("rows", (geo.co, (n1 - n0) * geo.le), dt)
        _grouped_matmul(w2, cols, groups, rows)
        if pool or relu:
            rows_to_planes(_work(rows), rows, bias, out[n0:n1], geo.wp, geo.le, geo.ho, geo.wo, pool, relu)
        else:
            rows_to_nchw(_work(rows), rows, bias, out[n0:n1], geo.wp, geo.le)
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
    tiled_dx = bool(output_mask[0]) and conv_tiled.usable(x, w, stride, True, padding, dilation)
    if conv_tiled.usable(x, w, stride) and (tiled_dx or not output_mask[0]):
        gw = gb = None
        if output_mask[1]:
            gw, gb = conv_tiled.weight_grad(g, x, w.shape, padding, dilation, groups, want_gb)
        elif want_gb:
            gb = np.zeros(geo.co, np.float64)
            bias_grad(_work(g), g, gb)
        gx = conv_tiled.input_grad(g, w, padding, dilation, groups, (geo.h, geo.w)) if output_mask[0] else None
        return gx, gw, (None if gb is None else gb.astype(dt))
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
            if tiled_dx:
                return (conv_tiled.input_grad(g, w, padding, dilation, groups, (geo.h, geo.w)), gw,
                        (gb.astype(dt) if output_mask[2] else None))
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
            part = blas.matmul(cols.reshape(groups, kg, nl), grows.reshape(groups, cog, nl).transpose(0, 2, 1))
            gwt += part
        if output_mask[0]:
            dcols = _scratch("dcols", (geo.k, nl), dt)
            _grouped_matmul(wt, grows, groups, dcols)
            geo.to_image(dcols, gx[n0:n1])
    if gwt is not None:
        gw = np.ascontiguousarray(gwt.transpose(0, 2, 1)).reshape(w.shape)
    return gx, gw, (gb.astype(dt) if want_gb else None)
