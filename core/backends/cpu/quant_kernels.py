"""numba kernels and numpy paths of the quantization ops (core/ops/quantized.py has the math and the
checks): float32 (and float16, widened) runs the kernels, float64 the numpy paths, which are also the
reference the tests hold the kernels to, bit for bit."""
from __future__ import annotations

from math import prod

import numpy as np
from numba import prange

from . import jit

QRANGES = {"uint8": (0, 255), "int8": (-128, 127)}  # dtype name -> (qmin, qmax)
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_CHUNK = 1 << 14  # elements per parallel work item
_THRESHOLD = 1 << 20  # a division per element: parallel only for large tensors (see elementwise_kernels)


# ---- kernels ------------------------------------------------------------------------------------
# Compiled without fastmath: its "arcp" flag lets LLVM turn x / s into x * (1 / s), which rounds
# differently near .5 ties, and the result must be bit-identical to numpy's (and ONNX's) division.

_exact_kernel = jit.prange_kernel(_THRESHOLD, fastmath=False)  # serial/parallel pair with IEEE arithmetic


@jit.njit(fastmath=False, inline="always")
def _code(v, s):
    return np.float64(np.rint(v / s))


@jit.njit(fastmath=False, inline="always")
def _clamp(r, lo, hi):
    if not r > lo:  # also NaN -> lo (qmin)
        r = lo
    return hi if r > hi else r


# Every kernel takes flat C-contiguous arrays: x (n,), per-channel scale (C,) float32, zero point (C,)
# int32, code bounds lo/hi = qmin/qmax - zero point (C,) float64, and ``inner``: the run of consecutive
# elements sharing one channel (the size of the dims after the axis; per-tensor: see _run_length); it divides
# n. Work items are blocks of whole runs ("rows"); row r belongs to channel r % C.
@_exact_kernel
def _quantize_k(x, scale, zp, lo, hi, inner, out):
    rows, per = x.size // inner, max(1, _CHUNK // inner)
    for b in prange((rows + per - 1) // per):
        c = (b * per) % scale.size
        for r in range(b * per, min(b * per + per, rows)):
            s, z, a, h = scale[c], zp[c], lo[c], hi[c]
            for t in range(r * inner, r * inner + inner):
                out[t] = np.int32(_clamp(_code(x[t], s), a, h)) + z
            c = c + 1 if c + 1 < scale.size else 0


@_exact_kernel
def _fake_quantize_k(x, scale, zp, lo, hi, inner, out):
    rows, per = x.size // inner, max(1, _CHUNK // inner)
    for b in prange((rows + per - 1) // per):
        c = (b * per) % scale.size
        for r in range(b * per, min(b * per + per, rows)):
            s, a, h = scale[c], lo[c], hi[c]
            for t in range(r * inner, r * inner + inner):
                out[t] = np.float32(_clamp(_code(x[t], s), a, h)) * s
            c = c + 1 if c + 1 < scale.size else 0


@_exact_kernel
def _fake_quantize_bw_k(g, x, scale, zp, lo, hi, inner, out):
    rows, per = x.size // inner, max(1, _CHUNK // inner)
    for b in prange((rows + per - 1) // per):
        c = (b * per) % scale.size
        for r in range(b * per, min(b * per + per, rows)):
            s, a, h = scale[c], lo[c], hi[c]
            for t in range(r * inner, r * inner + inner):
                v = np.float64(x[t] / s)  # the unrounded code: see fake_quantize_mask_np; NaN -> 0
                out[t] = g[t] if a - 0.5 <= v <= h + 0.5 else np.float32(0.0)
            c = c + 1 if c + 1 < scale.size else 0


@_exact_kernel
def _dequantize_k(q, scale, zp, inner, out):
    rows, per = q.size // inner, max(1, _CHUNK // inner)
    for b in prange((rows + per - 1) // per):
        c = (b * per) % scale.size
        for r in range(b * per, min(b * per + per, rows)):
            s, z = scale[c], zp[c]
            for t in range(r * inner, r * inner + inner):
                out[t] = np.float32(np.int32(q[t]) - z) * s
            c = c + 1 if c + 1 < scale.size else 0


# Per-tensor fast paths: one flat loop that LLVM vectorises (the run/channel bookkeeping above keeps the
# general kernels scalar: ~10x slower for a per-tensor activation). Same arithmetic, bit for bit.
@_exact_kernel
def _quantize_flat_k(x, s, z, lo, hi, out):
    for t in prange(x.size):
        r = np.rint(x[t] / s)
        if not r > lo:  # also NaN -> lo (qmin)
            r = lo
        if r > hi:
            r = hi
        out[t] = np.int32(r) + z


@_exact_kernel
def _dequantize_flat_k(q, s, z, out):
    for t in prange(q.size):
        out[t] = np.float32(np.int32(q[t]) - z) * s


# ---- numpy paths (float64 input; also the reference the tests hold the kernels to) ---------------

def _bc(a, axis, ndim):
    """A per-channel (C,) parameter shaped to broadcast against an ``ndim``-d input along ``axis``."""
    return a if axis is None else a.reshape(a.shape + (1,) * (ndim - axis - 1))


def _compute_dtype(x):
    return _F64 if x.dtype == _F64 else _F32


def _codes_np(x, scale, axis):
    ct = _compute_dtype(x)
    return np.rint(x.astype(ct, copy=False) / _bc(scale, axis, x.ndim).astype(ct)).astype(np.float64)


def _bounds(zp, axis, ndim, qmin, qmax):
    z = _bc(zp.astype(np.float64), axis, ndim)
    return qmin - z, qmax - z


def _clamp_np(r, lo, hi):
    r = np.where(r > lo, r, lo)  # NaN -> lo, as the kernel
    return np.where(r > hi, hi, r)


def quantize_np(x, scale, zp, axis, dtype):
    qmin, qmax = QRANGES[dtype]
    r = _clamp_np(_codes_np(x, scale, axis), *_bounds(zp, axis, x.ndim, qmin, qmax))
    return (r + _bc(zp, axis, x.ndim)).astype(dtype)


def fake_quantize_np(x, scale, zp, axis, qmin, qmax):
    ct = _compute_dtype(x)
    r = _clamp_np(_codes_np(x, scale, axis), *_bounds(zp, axis, x.ndim, qmin, qmax))
    return (r.astype(ct) * _bc(scale, axis, x.ndim).astype(ct)).astype(x.dtype, copy=False)


def fake_quantize_mask_np(x, scale, zp, axis, qmin, qmax):
    """Where the straight-through gradient passes: torch's ``qmin <= round(x / scale) + zp <= qmax``, except
    that a code exactly half a step outside (a .5 tie that rounds past the range) still counts as inside.
    Symmetric observers put each channel's largest |x| exactly on such a tie (scale = max|x| / 127.5);
    torch's ``x * (1 / scale)`` happens to land just inside, and ember's exact division must not starve
    those weights of gradient in quantization-aware training."""
    ct = _compute_dtype(x)
    v = (x.astype(ct, copy=False) / _bc(scale, axis, x.ndim).astype(ct)).astype(np.float64)
    lo, hi = _bounds(zp, axis, x.ndim, qmin, qmax)
    return (lo - 0.5 <= v) & (v <= hi + 0.5)


def dequantize_np(q, scale, zp, axis):
    z = _bc(zp.astype(np.int32), axis, q.ndim)
    return (q.astype(np.int32) - z).astype(np.float32) * _bc(scale, axis, q.ndim)


# ---- dispatch: float32 (and float16, widened) to numba, float64 to numpy --------------------------

def _run_length(shape):
    """Per-tensor run length: the trailing dims up to about a work item (runs of one element would cost a
    loop each), or the whole tensor."""
    inner = 1
    for d in reversed(shape):
        if inner * d > _CHUNK:
            break
        inner *= d
    return inner if inner >= 64 else prod(shape)


def _flat_params(shape, scale, zp, axis, qmin, qmax):
    inner = prod(shape[axis + 1:]) if axis is not None else _run_length(shape)
    z = np.ascontiguousarray(zp.reshape(-1), np.int32)
    lo, hi = qmin - z.astype(np.float64), qmax - z.astype(np.float64)
    return np.ascontiguousarray(scale.reshape(-1)), z, lo, hi, max(int(inner), 1)


def _quantize(x, scale, zp, axis, dtype):
    if x.dtype == _F64:
        return quantize_np(x, scale, zp, axis, dtype)
    out = np.empty(x.shape, dtype)
    if axis is None:
        qmin, qmax = QRANGES[dtype]
        z = int(zp)
        _quantize_flat_k(x.size, jit.f32c(x).reshape(-1), np.float32(scale), np.int32(z), np.float32(qmin - z),
                         np.float32(qmax - z), out.reshape(-1))
        return out
    _quantize_k(x.size, jit.f32c(x).reshape(-1), *_flat_params(x.shape, scale, zp, axis, *QRANGES[dtype]),
                out.reshape(-1))
    return out


def _fake_quantize(x, scale, zp, axis, qmin, qmax):
    if x.dtype == _F64:
        return fake_quantize_np(x, scale, zp, axis, qmin, qmax)
    out = np.empty(x.shape, _F32)
    _fake_quantize_k(x.size, jit.f32c(x).reshape(-1), *_flat_params(x.shape, scale, zp, axis, qmin, qmax),
                     out.reshape(-1))
    return out.astype(x.dtype, copy=False)


def _fake_quantize_bw(g, x, scale, zp, axis, qmin, qmax):
    if x.dtype != _F32:
        keep = fake_quantize_mask_np(x, scale, zp, axis, qmin, qmax)
        return np.where(keep, g, np.zeros((), g.dtype))
    out = np.empty(x.shape, _F32)
    _fake_quantize_bw_k(x.size, jit.f32c(g).reshape(-1), jit.f32c(x).reshape(-1),
                        *_flat_params(x.shape, scale, zp, axis, qmin, qmax), out.reshape(-1))
    return out


def _dequantize(q, scale, zp, axis):
    out = np.empty(q.shape, _F32)
    if axis is None:
        _dequantize_flat_k(q.size, np.ascontiguousarray(q).reshape(-1), np.float32(scale), np.int32(int(zp)),
                           out.reshape(-1))
        return out
    s, z, _, _, inner = _flat_params(q.shape, scale, zp, axis, 0, 0)
    _dequantize_k(q.size, np.ascontiguousarray(q).reshape(-1), s, z, inner, out.reshape(-1))
    return out
