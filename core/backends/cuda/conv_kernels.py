"""CUDA kernels of the 2-d convolution ops: ``conv2d``, ``conv2d_act``, ``conv2d_pool`` and ``conv2d_backward``,
as im2col + the tiled GEMM of matmul_kernels.py (stride, padding, dilation, groups and the bottom/right
``padding_extra`` as on the CPU; float32 and float64 compute natively, other dtypes in float32 as the CPU
kernels do).

Layouts (L = Ho*Wo, K = C/groups*kh*kw, a chunk of nc images at a time so the columns stay bounded):
- forward: columns (nc, C*kh*kw, L), one GEMM per (image, group) on the grid's batch axis writing
  NCHW directly, bias and activation in the GEMM's epilogue. A 1x1 / stride-1 / unpadded conv reads x
  itself as its columns.
- input gradient: ``W_g^T @ g`` per (image, group) (W read transposed in place) into columns of the
  same layout, then col2im in gather form: one thread per input pixel sums the column entries that
  read it (no atomics). A 1x1 conv's GEMM writes the gradient directly.
- weight gradient: one GEMM per group over the chunk's images at once, ``g_rows @ cols^T`` with the
  gradient moved to rows (Cout, nc*L) and the columns laid out (C*kh*kw, nc*L); later chunks accumulate.
- bias gradient: one block per output channel, a shared-memory tree reduction.
- conv2d_pool: the conv (no bias) into a scratch NCHW array, then one thread per pooled output takes the
  2x2 max (NaN wins, as max_pool2d), adds the bias and applies relu, as the CPU kernel orders them.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, from_dtype

from ...ops.conv import _out_hw
from ...ops.registry import kernel
from .array import empty
from .index_math import unravel3
from .kernel import jit
from .launch import TPB, blocks, cast, full
from .matmul_kernels import ACTS, _bias_array, gemm
from .reduce_launch import block_sum

CHUNK_ELEMS = 1 << 24  # column elements per chunk of images (64 MiB of float32)


@jit
def _im2col(x, cols, total, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, csn, csk):
    """cols[n*csn + ((ch*kh + i)*kw + j)*csk + oh*wo + ow] = x[n, ch, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    (0 outside the image); one thread per column element, the output position fastest."""
    t = cuda.grid(1)
    if t < total:
        nn, p, l = unravel3(t, c * kh * kw, ho * wo)
        ch, i, j = unravel3(p, kh, kw)
        oh = l // wo
        ow = l % wo
        ih = oh * sh - ph + i * dh
        iw = ow * sw - pw + j * dw
        if 0 <= ih < h and 0 <= iw < w:
            cols[nn * csn + p * csk + l] = x[((nn * c + ch) * h + ih) * w + iw]
        else:
            cols[nn * csn + p * csk + l] = 0


@jit
def _col2im(cols, dx, total, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, csn, csk, zero):
    """The adjoint of ``_im2col`` in gather form: each thread owns one input pixel and sums the column
    entries that read it."""
    t = cuda.grid(1)
    if t < total:
        r, ih, iw = unravel3(t, h, w)
        nn = r // c
        ch = r % c
        s = zero
        for i in range(kh):
            a = ih + ph - i * dh
            if a < 0 or a % sh != 0:
                continue
            oh = a // sh
            if oh >= ho:
                continue
            for j in range(kw):
                b = iw + pw - j * dw
                if b < 0 or b % sw != 0:
                    continue
                ow = b // sw
                if ow < wo:
                    s += cols[nn * csn + ((ch * kh + i) * kw + j) * csk + oh * wo + ow]
        dx[t] = s


@jit
def _to_rows(g, rows, total, co, ll, nc):
    """rows[ch, n*ll + l] = g[n, ch, l]: a chunk's gradient as the (Cout, nc*L) GEMM operand."""
    t = cuda.grid(1)
    if t < total:
        ch, nn, l = unravel3(t, nc, ll)
        rows[t] = g[(nn * co + ch) * ll + l]


@jit
def _pool2(y, out, bias, total, co, ho, wo, hq, wq, has_bias, relu, zero):
    """out[n, ch, p, q] = relu?(max of y[n, ch, 2p:2p+2, 2q:2q+2] + bias[ch]) (floor mode, NaN wins)."""
    t = cuda.grid(1)
    if t < total:
        r, p, q = unravel3(t, hq, wq)
        base = r * ho * wo + 2 * p * wo + 2 * q
        a = y[base]
        b = y[base + 1]
        c = y[base + wo]
        e = y[base + wo + 1]
        m = b if (b > a) or (b != b) else a
        m2 = e if (e > c) or (e != e) else c
        m = m2 if (m2 > m) or (m2 != m2) else m
        if has_bias:
            m += bias[r % co]
        if relu and not (m > zero or m != m):
            m = zero
        out[t] = m


def _make_channel_sum(np_dtype):
    nbt = from_dtype(np_dtype)
    zero = np_dtype.type(0)

    @jit
    def channel_sum(g, out, n, co, ll):
        """out[ch] = sum of g[:, ch] (block ch; each thread strides the planes, then a tree reduction)."""
        sh = cuda.shared.array(TPB, nbt)
        ch = cuda.blockIdx.x
        t = cuda.threadIdx.x
        s = zero
        for nn in range(n):
            base = (nn * co + ch) * ll
            for l in range(t, ll, TPB):
                s += g[base + l]
        s = block_sum(sh, s)
        if t == 0:
            out[ch] = s

    return channel_sum


_CHANNEL_SUMS: dict = {}


def _channel_sum(g):
    n, co = g.shape[0], g.shape[1]
    fn = _CHANNEL_SUMS.get(g.dtype)
    if fn is None:
        fn = _CHANNEL_SUMS[g.dtype] = _make_channel_sum(g.dtype)
    out = empty((co,), g.dtype)
    fn[co, TPB](g.d, out.d, n, co, g.size // (n * co) if n * co else 0)
    return out


class _Geo:
    """The sizes of one convolution and its chunking."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, padding_extra):
        self.n, self.c, self.h, self.w = x_shape
        self.co, self.cg, self.kh, self.kw = w_shape
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.ho, self.wo = _out_hw(x_shape, w_shape, stride, padding, dilation, padding_extra)
        self.ll = self.ho * self.wo
        self.k = self.cg * self.kh * self.kw
        self.cog = self.co // groups
        self.pointwise = (self.kh, self.kw) == (1, 1) and stride == (1, 1) and (self.ho, self.wo) == (self.h, self.w) \
            and padding == (0, 0)
        self.chunk = max(1, min(self.n, CHUNK_ELEMS // max(1, self.c * self.kh * self.kw * self.ll)))

    def chunks(self):
        for n0 in range(0, self.n, self.chunk):
            yield n0, min(n0 + self.chunk, self.n)

    def columns(self, x, n0, n1, cols, csn, csk):
        """im2col of images n0:n1 of x into cols (element strides csn per image, csk per row)."""
        total = (n1 - n0) * self.c * self.kh * self.kw * self.ll
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        _im2col[blocks(total), TPB](x.d[n0 * self.c * self.h * self.w:], cols.d, total, self.c, self.h, self.w,
                                    self.kh, self.kw, sh, sw, ph, pw, dh, dw, self.ho, self.wo, csn, csk)

    def to_image(self, cols, dx, n0, n1):
        total = (n1 - n0) * self.c * self.h * self.w
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        kk = self.c * self.kh * self.kw
        _col2im[blocks(total), TPB](cols.d, dx.d[n0 * self.c * self.h * self.w:], total, self.c, self.h, self.w,
                                    self.kh, self.kw, sh, sw, ph, pw, dh, dw, self.ho, self.wo, kk * self.ll,
                                    self.ll, dx.dtype.type(0))


def _compute_dtype(dt):
    return np.dtype(np.float64 if dt == np.float64 else np.float32)


def _as(a, dt):
    return a if a.dtype == dt else cast(a, dt)


def _conv(x, w, b, stride, padding, dilation, groups, padding_extra, act=0, pool=False):
    """NCHW conv (+ bias, + act code) in the compute dtype; with ``pool`` the conv result without the bias
    (the pool kernel adds it)."""
    dt = _compute_dtype(x.dtype)
    x, w, b = _as(x, dt), _as(w, dt), _bias_array(b, dt)
    geo = _Geo(x.shape, w.shape, stride, padding, dilation, groups, padding_extra)
    g, ll, k, cog, co = groups, geo.ll, geo.k, geo.cog, geo.co
    y = empty((geo.n, co, geo.ho, geo.wo), dt)
    bias = None if (b is None or pool) else b.d
    # A = W_g (cog, K), B = the columns of (image, group), C = y[n, group rows]
    common = dict(sa=(0, cog * k), sc=(co * ll, cog * ll), bias=bias, bias_m=1, sbias=(0, cog), act=act)
    if geo.pointwise:
        gemm(w.d, x.d, y.d, cog, ll, k, k, 1, ll, 1, (geo.n, g), sb=(geo.c * ll, k * ll), **common)
        return y
    cols = empty((geo.chunk * g * k * ll,), dt)
    for n0, n1 in geo.chunks():
        geo.columns(x, n0, n1, cols, g * k * ll, ll)
        gemm(w.d, cols.d, y.d[n0 * co * ll:], cog, ll, k, k, 1, ll, 1, (n1 - n0, g), sb=(g * k * ll, k * ll),
             **common)
    return y


@kernel("conv2d", "cuda")
def _conv2d(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0)):
    return _as(_conv(x, w, b, stride, padding, dilation, groups, padding_extra), x.dtype)


@kernel("conv2d_act", "cuda")
def _conv2d_act(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0), act="relu"):
    return _as(_conv(x, w, b, stride, padding, dilation, groups, padding_extra, ACTS[act]), x.dtype)


@kernel("conv2d_pool", "cuda")
def _conv2d_pool(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0), act="none"):
    y = _conv(x, w, b, stride, padding, dilation, groups, padding_extra, pool=True)
    n, co, ho, wo = y.shape
    hq, wq = ho // 2, wo // 2
    out = empty((n, co, hq, wq), y.dtype)
    bias = _bias_array(b, y.dtype)
    total = out.size
    if total:
        _pool2[blocks(total), TPB](y.d, out.d, y.d if bias is None else bias.d, total, co, ho, wo, hq, wq,
                                   bias is not None, act == "relu", y.dtype.type(0))
    return _as(out, x.dtype)


@kernel("conv2d_backward", "cuda")
def _conv2d_backward(g, x, w, *, stride, padding, dilation, groups, padding_extra=(0, 0), output_mask):
    dt = _compute_dtype(x.dtype)
    g, x_, w_ = _as(g, dt), _as(x, dt), _as(w, dt)
    geo = _Geo(x.shape, w.shape, stride, padding, dilation, groups, padding_extra)
    gr, ll, k, cog, co, c = groups, geo.ll, geo.k, geo.cog, geo.co, geo.c
    gx = gw = gb = None
    if output_mask[2]:
        gb = _channel_sum(g)
    if output_mask[0]:
        gx = empty(x.shape, dt)
        # A = W_g^T (K, cog) read in place, B = g[n, group rows] (cog, L)
        common = dict(sa=(0, cog * k), sb=(co * ll, cog * ll))
        if geo.pointwise:
            gemm(w_.d, g.d, gx.d, k, ll, cog, 1, k, ll, 1, (geo.n, gr), sc=(c * ll, k * ll), **common)
        else:
            dcols = empty((geo.chunk * gr * k * ll,), dt)
            for n0, n1 in geo.chunks():
                gemm(w_.d, g.d[n0 * co * ll:], dcols.d, k, ll, cog, 1, k, ll, 1, (n1 - n0, gr),
                     sc=(gr * k * ll, k * ll), **common)
                geo.to_image(dcols, gx, n0, n1)
    if output_mask[1]:
        gw = empty(w.shape, dt) if geo.n else full(w.shape, 0, dt)  # no images: no GEMM writes it
        rows = empty((co * geo.chunk * ll,), dt)
        cols = empty((gr * k * geo.chunk * ll,), dt)
        for n0, n1 in geo.chunks():
            nl = (n1 - n0) * ll
            _to_rows[blocks(co * nl), TPB](g.d[n0 * co * ll:], rows.d, co * nl, co, ll, n1 - n0)
            geo.columns(x_, n0, n1, cols, ll, nl)
            # gw_g (cog, K) = rows_g (cog, nl) @ cols_g^T, cols_g (K, nl) read transposed in place
            gemm(rows.d, cols.d, gw.d, cog, k, nl, nl, 1, 1, nl, (gr,), sa=(cog * nl,), sb=(k * nl,), sc=(cog * k,),
                 accumulate=n0 > 0)
    dts = (x.dtype, w.dtype, w.dtype)
    return tuple(empty((0,), d) if o is None else _as(o, d) for o, d in zip((gx, gw, gb), dts))
