"""CUDA kernels of 2-d pooling on NCHW arrays: max_pool2d (with its int64 argmax), avg_pool2d,
adaptive_avg_pool2d, adaptive_max_pool2d and their backwards.

Forwards run one thread per output element and walk its window. Backwards of the average pools run in
gather form, one thread per input pixel summing the windows that cover it, so they need no atomics.
max_pool2d_backward also serves adaptive_max_pool2d, whose windows the op does not describe, so it
scatters each output gradient to its argmax with ``cuda.atomic.add`` (windows may overlap).
Accumulation follows the CPU kernels: float64 for float64 and integer inputs and for window sums,
the input's float type for max comparisons; indices are flat positions h * W + w inside the plane.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import empty
from .index_math import unravel3
from .kernel import jit
from .launch import TPB, blocks, device_fn, fill


def _wide(dtype) -> bool:
    """float64 and integer inputs pool in float64, as the CPU kernels do; float32 stays float32."""
    return dtype == np.float64 or dtype.kind in "iu"


@device_fn
def _taps(o, stride, pad, k, d, size):
    """Kernel taps [lo, hi) of output ``o`` whose input position o*stride - pad + t*d lies in [0, size)."""
    start = o * stride - pad
    lo = 0
    if start < 0:
        lo = min((-start + d - 1) // d, k)
    hi = 0
    if size - start > 0:
        hi = min((size - start + d - 1) // d, k)
    return lo, max(lo, hi)


@device_fn
def _window_max(x, base, w, h0, nh, dh, w0, nw, dw, ninf):
    """(max, flat h * w + w position) over the nh x nw taps from (h0, w0), steps (dh, dw); ties keep the first,
    a NaN wins (as torch)."""
    m = ninf
    mi = h0 * w + w0
    for a in range(nh):
        ih = h0 + a * dh
        for b in range(nw):
            iw = w0 + b * dw
            v = x[base + ih * w + iw]
            if v > m or v != v:
                m = v
                mi = ih * w + iw
    return m, mi


@device_fn
def _window_sum(x, base, w, h0, h1, w0, w1):
    acc = 0.0
    for ih in range(h0, h1):
        for iw in range(w0, w1):
            acc += x[base + ih * w + iw]
    return acc


@jit
def _max_fwd(x, out, idx, n, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, ninf):
    i = cuda.grid(1)
    if i < n:
        plane, oh, ow = unravel3(i, ho, wo)
        i0, i1 = _taps(oh, sh, ph, kh, dh, h)
        j0, j1 = _taps(ow, sw, pw, kw, dw, w)
        out[i], idx[i] = _window_max(x, plane * h * w, w, oh * sh - ph + i0 * dh, i1 - i0, dh, ow * sw - pw + j0 * dw,
                                     j1 - j0, dw, ninf)


@jit
def _max_bwd(g, idx, gx, n, per_plane, hw):
    i = cuda.grid(1)
    if i < n:
        q = idx[i]
        if q >= 0 and q < hw:  # a window entirely in the padding points past the plane: no gradient
            cuda.atomic.add(gx, (i // per_plane) * hw + q, g[i])


@device_fn
def _avg_window(o, s, p, k, size):
    """(start, end, padded length) of an average-pool window, clipped to the input."""
    start = o * s - p
    end = min(start + k, size + p)
    return max(start, 0), min(end, size), end - start


@device_fn
def _divisor(h0, h1, plh, w0, w1, plw, count_include_pad, divisor):
    if divisor > 0:
        return divisor
    if count_include_pad:
        return plh * plw
    return (h1 - h0) * (w1 - w0)


@jit
def _avg_fwd(x, out, n, h, w, ho, wo, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    i = cuda.grid(1)
    if i < n:
        plane, oh, ow = unravel3(i, ho, wo)
        h0, h1, plh = _avg_window(oh, sh, ph, kh, h)
        w0, w1, plw = _avg_window(ow, sw, pw, kw, w)
        acc = 0.0
        if h0 < h1 and w0 < w1:
            acc = _window_sum(x, plane * h * w, w, h0, h1, w0, w1)
            acc /= _divisor(h0, h1, plh, w0, w1, plw, count_include_pad, divisor)
        out[i] = acc


@device_fn
def _covering(i, s, p, k, n_out):
    """Outputs [lo, hi) whose window [o*s - p, o*s - p + k) holds input position i."""
    top = i + p - k
    lo = 0 if top < 0 else top // s + 1
    return lo, min((i + p) // s + 1, n_out)


@jit
def _avg_bwd(g, gx, n, h, w, ho, wo, kh, kw, sh, sw, ph, pw, count_include_pad, divisor):
    i = cuda.grid(1)
    if i < n:
        plane, ih, iw = unravel3(i, h, w)
        base = plane * ho * wo
        oh0, oh1 = _covering(ih, sh, ph, kh, ho)
        ow0, ow1 = _covering(iw, sw, pw, kw, wo)
        acc = 0.0
        for oh in range(oh0, oh1):
            h0, h1, plh = _avg_window(oh, sh, ph, kh, h)
            for ow in range(ow0, ow1):
                w0, w1, plw = _avg_window(ow, sw, pw, kw, w)
                acc += g[base + oh * wo + ow] / _divisor(h0, h1, plh, w0, w1, plw, count_include_pad, divisor)
        gx[i] = acc


@device_fn
def _adaptive(o, n_out, size):
    """torch's adaptive window [floor(o*size/n_out), ceil((o+1)*size/n_out))."""
    return (o * size) // n_out, ((o + 1) * size + n_out - 1) // n_out


@jit
def _adaptive_avg_fwd(x, out, n, h, w, ho, wo):
    i = cuda.grid(1)
    if i < n:
        plane, oh, ow = unravel3(i, ho, wo)
        h0, h1 = _adaptive(oh, ho, h)
        w0, w1 = _adaptive(ow, wo, w)
        out[i] = _window_sum(x, plane * h * w, w, h0, h1, w0, w1) / ((h1 - h0) * (w1 - w0))


@jit
def _adaptive_avg_bwd(g, gx, n, h, w, ho, wo):
    i = cuda.grid(1)
    if i < n:
        plane, ih, iw = unravel3(i, h, w)
        base = plane * ho * wo
        # the windows holding ih are o in [floor(ih*ho/h), ceil((ih+1)*ho/h))
        acc = 0.0
        for oh in range((ih * ho) // h, ((ih + 1) * ho + h - 1) // h):
            h0, h1 = _adaptive(oh, ho, h)
            for ow in range((iw * wo) // w, ((iw + 1) * wo + w - 1) // w):
                w0, w1 = _adaptive(ow, wo, w)
                acc += g[base + oh * wo + ow] / ((h1 - h0) * (w1 - w0))
        gx[i] = acc


@jit
def _adaptive_max_fwd(x, out, idx, n, h, w, ho, wo, ninf):
    i = cuda.grid(1)
    if i < n:
        plane, oh, ow = unravel3(i, ho, wo)
        h0, h1 = _adaptive(oh, ho, h)
        w0, w1 = _adaptive(ow, wo, w)
        out[i], idx[i] = _window_max(x, plane * h * w, w, h0, h1 - h0, 1, w0, w1 - w0, 1, ninf)


def _ninf(dtype):
    return np.float64(-np.inf) if _wide(dtype) else np.float32(-np.inf)


# ---- registry kernels ----------------------------------------------------------------------------

@kernel("max_pool2d", "cuda")
def _max_pool2d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    from ...ops.pool import _max_pool2d_rule

    shape = _max_pool2d_rule(x.shape, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                             ceil_mode=ceil_mode)[0]
    out, idx = empty(shape, x.dtype), empty(shape, np.int64)
    n = out.size
    _, _, h, w = x.shape
    _max_fwd[blocks(n), TPB](x.d, out.d, idx.d, n, h, w, shape[2], shape[3], kernel_size[0], kernel_size[1],
                             stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], _ninf(x.dtype))
    return out, idx


@kernel("max_pool2d_backward", "cuda")
def _max_pool2d_backward(g, indices, *, input_hw):
    n_, c_ = g.shape[:2]
    gx = empty((n_, c_) + tuple(input_hw), g.dtype)
    fill(gx, 0)
    n = g.size
    if n and gx.size:
        _max_bwd[blocks(n), TPB](g.d, indices.d, gx.d, n, g.shape[2] * g.shape[3], input_hw[0] * input_hw[1])
    return gx


@kernel("avg_pool2d", "cuda")
def _avg_pool2d(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    from ...ops.pool import _avg_pool2d_rule

    shape = _avg_pool2d_rule(x.shape, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                             count_include_pad=count_include_pad, divisor_override=divisor_override)
    out = empty(shape, x.dtype)
    n = out.size
    _avg_fwd[blocks(n), TPB](x.d, out.d, n, x.shape[2], x.shape[3], shape[2], shape[3], kernel_size[0],
                             kernel_size[1], stride[0], stride[1], padding[0], padding[1], bool(count_include_pad),
                             int(divisor_override or 0))
    return out


@kernel("avg_pool2d_backward", "cuda")
def _avg_pool2d_backward(g, *, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                         input_hw):
    gx = empty(g.shape[:2] + tuple(input_hw), g.dtype)
    n = gx.size
    if n:
        _avg_bwd[blocks(n), TPB](g.d, gx.d, n, input_hw[0], input_hw[1], g.shape[2], g.shape[3], kernel_size[0],
                                 kernel_size[1], stride[0], stride[1], padding[0], padding[1],
                                 bool(count_include_pad), int(divisor_override or 0))
    return gx


@kernel("adaptive_avg_pool2d", "cuda")
def _adaptive_avg_pool2d(x, *, output_size):
    out = empty(x.shape[:2] + tuple(output_size), x.dtype)
    n = out.size
    if n:
        _adaptive_avg_fwd[blocks(n), TPB](x.d, out.d, n, x.shape[2], x.shape[3], output_size[0], output_size[1])
    return out


@kernel("adaptive_avg_pool2d_backward", "cuda")
def _adaptive_avg_pool2d_backward(g, *, input_hw):
    gx = empty(g.shape[:2] + tuple(input_hw), g.dtype)
    n = gx.size
    if n:  # (an empty output size leaves every window range empty: zeros)
        _adaptive_avg_bwd[blocks(n), TPB](g.d, gx.d, n, input_hw[0], input_hw[1], g.shape[2], g.shape[3])
    return gx


@kernel("adaptive_max_pool2d", "cuda")
def _adaptive_max_pool2d(x, *, output_size):
    shape = x.shape[:2] + tuple(output_size)
    out, idx = empty(shape, x.dtype), empty(shape, np.int64)
    n = out.size
    if n:
        _adaptive_max_fwd[blocks(n), TPB](x.d, out.d, idx.d, n, x.shape[2], x.shape[3], output_size[0],
                                          output_size[1], _ninf(x.dtype))
    return out, idx
