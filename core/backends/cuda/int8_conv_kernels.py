"""CUDA kernels of the static int8 layer ops (uint8 in, uint8 out), on the GEMM of int8_kernels.py with its
requantizing epilogue: quantized_linear, quantized_conv2d (uint8 im2col, then the GEMM writing NCHW),
quantized_max_pool2d (one thread per output, the window max of the codes) and quantized_conv2d_pool (the two
in turn, as the CPU's GEMM path).

im2col writes one uint8 row per output pixel, K in (C, kh, kw) order, the weight's own layout, so group g
multiplies columns [g * K_g, (g + 1) * K_g) by weight rows of group g with no repacking; taps in the padding
hold the input zero point, so they add (x_zp - x_zp) * w = 0 to the exact int32 sums. The CPU computes a
first layer (K <= 16) with its float convolution, whose sums are the same exact integers: the results agree
bit for bit either way.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...ops.qfold import _POOL_2X2, _qpool_rule
from ...ops.registry import kernel
from ..cpu.conv_kernels import out_size
from .array import empty
from .int8_kernels import MODE_REQUANT, channel_params, dev, gemm
from .kernel import jit
from .launch import TPB, blocks


def check_static(op, x, x_zp, w, y_zp):
    """The CPU's dtype checks of quantized_linear / quantized_conv2d (qlinear._requant_checked)."""
    if x.dtype != np.uint8 or x_zp.dtype != np.uint8 or y_zp.dtype != np.uint8:
        raise TypeError(f"{op}: activations and their zero points must be uint8, got x {x.dtype}, x_zero_point "
                        f"{x_zp.dtype}, y_zero_point {y_zp.dtype}")
    if w.dtype != np.int8:
        raise TypeError(f"{op}: weight must be int8 (symmetric), got {w.dtype}")


@kernel("quantized_linear", "cuda")
def _ql(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, relu=False):
    check_static("quantized_linear", x, x_zp, w, y_zp)
    n, k = w.shape
    m = x.size // k
    out = empty(x.shape[:-1] + (n,), np.uint8)
    bias_i, f1, _ = channel_params(n, MODE_REQUANT, x_scale, w_scale, y_scale, bias)
    return gemm(x, k, dev(x_zp), w, m, n, k, 1, 1, MODE_REQUANT, out, bias_i, f1, None, dev(y_zp), relu)


@jit
def _im2col_k(x, zp, cols, total, c_, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    e = cuda.grid(1)
    if e < total:
        taps = kh * kw
        kcols = c_ * taps
        m = e // kcols
        q = e - m * kcols
        b = m // (ho * wo)
        p = m - b * (ho * wo)
        oh = p // wo
        ow = p - oh * wo
        c = q // taps
        r = q - c * taps
        i = r // kw
        ih = oh * sh - ph + i * dh
        iw = ow * sw - pw + (r - i * kw) * dw
        if 0 <= ih < h and 0 <= iw < w:
            cols[e] = x[((b * c_ + c) * h + ih) * w + iw]
        else:
            cols[e] = zp[0]


def _qconv(op, x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias, stride, padding, dilation, groups, relu):
    check_static(op, x, x_zp, w, y_zp)
    n, c, h, w_ = x.shape
    cout, cg, kh, kw = w.shape
    ho = out_size(h, kh, stride[0], padding[0], padding[0], dilation[0])
    wo = out_size(w_, kw, stride[1], padding[1], padding[1], dilation[1])
    out = empty((n, cout, ho, wo), np.uint8)
    m, kcols = n * ho * wo, c * kh * kw
    bias_i, f1, _ = channel_params(cout, MODE_REQUANT, x_scale, w_scale, y_scale, bias)
    if m == 0:
        return out
    zp = dev(x_zp)
    cols = empty((m, kcols), np.uint8)
    _im2col_k[blocks(cols.size), TPB](x.d, zp.d, cols.d, cols.size, c, h, w_, kh, kw, *stride, *padding, *dilation,
                                      ho, wo)
    return gemm(cols, kcols, zp, w, m, cout // groups, cg * kh * kw, groups, ho * wo, MODE_REQUANT, out, bias_i, f1,
                None, dev(y_zp), relu)


@kernel("quantized_conv2d", "cuda")
def _qc(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, stride, padding, dilation, groups, relu=False):
    return _qconv("quantized_conv2d", x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias, stride, padding, dilation,
                  groups, relu)


@jit
def _qmax_pool_k(x, out, total, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, lowest):
    e = cuda.grid(1)
    if e < total:
        t = e // wo
        ow = e - t * wo
        plane = t // ho
        oh = t - plane * ho
        base = plane * h * w
        best = lowest
        for a in range(kh):
            y = oh * sh - ph + a * dh
            if 0 <= y < h:
                for b in range(kw):
                    xx = ow * sw - pw + b * dw
                    if 0 <= xx < w:
                        v = x[base + y * w + xx]
                        if v > best:
                            best = v
        out[e] = best


@kernel("quantized_max_pool2d", "cuda")
def _qmax_pool(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    if x.dtype.name not in ("uint8", "int8"):
        raise RuntimeError(f"quantized_max_pool2d: input must be a uint8 or int8 tensor, got {x.dtype} "
                           f"(shape {x.shape})")
    shape = _qpool_rule(x.shape, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                        ceil_mode=ceil_mode)
    out = empty(shape, x.dtype)
    if out.size:
        _qmax_pool_k[blocks(out.size), TPB](x.d, out.d, out.size, x.shape[2], x.shape[3], shape[2], shape[3],
                                            *kernel_size, *stride, *padding, *dilation,
                                            x.dtype.type(np.iinfo(x.dtype).min))
    return out


@kernel("quantized_conv2d_pool", "cuda")
def _qconv_pool(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, stride, padding, dilation, groups,
                relu=False):
    y = _qconv("quantized_conv2d_pool", x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias, stride, padding,
               dilation, groups, relu)
    return _qmax_pool(y, **_POOL_2X2)
