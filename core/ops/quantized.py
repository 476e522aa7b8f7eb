"""Quantization primitives: affine int8/uint8 quantize, dequantize and fake-quantize (torch's QAT op).

The math is ONNX's QuantizeLinear/DequantizeLinear, so exports are exact:
``q = clamp(rint(x / scale) + zero_point, qmin, qmax)`` (a float32 division, float64 for float64 input,
ties to even) and ``x^ = (q - zero_point) * scale``. NaN quantizes to qmin, as in ONNX Runtime and
torch's fake_quantize. torch's own kernels differ in two corners: they multiply by ``1 / scale`` (so a
value within an ulp of a .5 tie may land one step away), and ``torch.quantize_per_tensor`` /
``quantize_per_channel`` round ``x / scale + zero_point`` as a whole (exact ties with an odd zero
point go the other way); its fake_quantize rounds before adding the zero point, as here.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from ..backends.cpu import jit
from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op
from .util import norm_dim, prod

QRANGES = {"uint8": (0, 255), "int8": (-128, 127)}  # dtype name -> (qmin, qmax)
_ALIASES = {"quint8": "uint8", "qint8": "int8"}  # torch's names of the same dtypes
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


# ---- checks: shapes and attributes in the shape rules, dtypes and values in the kernels ------------

def _qparam_shapes(op, x, scale, zp, axis):
    if axis is None:
        if tuple(scale) != () or tuple(zp) != ():
            raise RuntimeError(f"{op}: per-tensor scale and zero_point must be 0-d tensors, got shapes "
                               f"{tuple(scale)} and {tuple(zp)}; per-channel parameters need an axis")
        return
    n = len(x)
    if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < n:
        raise IndexError(f"{op}: axis {axis!r} is out of range for an input of shape {tuple(x)} "
                         f"(valid: 0 to {n - 1} after wrapping negative axes)")
    c = x[axis]
    if len(scale) != 1 or len(zp) != 1 or scale[0] != c or zp[0] != c:
        raise RuntimeError(f"{op}: per-channel scale and zero_point must be 1-d with x.shape[{axis}] = {c} "
                           f"elements, got shapes {tuple(scale)} and {tuple(zp)} (input shape {tuple(x)})")


def check_quant_range(op, quant_min, quant_max):
    """fake_quantize's range: ints, quant_min < quant_max, inside int32 (its zero points are int32)."""
    for name, v in (("quant_min", quant_min), ("quant_max", quant_max)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if not quant_min < quant_max:
        raise RuntimeError(f"{op}: quant_min ({quant_min}) must be less than quant_max ({quant_max})")
    if quant_min < -2 ** 31 or quant_max > 2 ** 31 - 1:
        raise RuntimeError(f"{op}: [quant_min, quant_max] = [{quant_min}, {quant_max}] must fit in int32")


def _check_float(op, x):
    if x.dtype.kind != "f":
        raise RuntimeError(f"{op}: input must be a floating point tensor, got {x.dtype} (shape {x.shape})")


def _check_qparams(op, scale, zp, zp_dtype, qmin, qmax):
    if scale.dtype != _F32:
        raise RuntimeError(f"{op}: scale must be a float32 tensor, got {scale.dtype}")
    bad = ~(np.isfinite(scale) & (scale > 0))
    if bad.any():
        raise RuntimeError(f"{op}: scale must be positive and finite (scales are never 0), got "
                           f"{scale[bad].reshape(-1)[:4].tolist()}")
    if zp.dtype != zp_dtype:
        raise RuntimeError(f"{op}: zero_point must have dtype {zp_dtype} here, got {zp.dtype}")
    out = (zp < qmin) | (zp > qmax)
    if out.any():
        raise RuntimeError(f"{op}: zero_point must lie in the quantized range [{qmin}, {qmax}], got "
                           f"{zp[out].reshape(-1)[:4].tolist()}")


# ---- registry ops -------------------------------------------------------------------------------

def _quantize_rule(op, axis_default):
    def rule(x, scale, zp, axis=axis_default, dtype="uint8"):
        if dtype not in QRANGES:
            raise RuntimeError(f"{op}: dtype must be 'uint8' or 'int8', got {dtype!r}")
        _qparam_shapes(op, x, scale, zp, axis)
        return x
    return rule


_qpt = register_op("quantize_per_tensor", attrs={"dtype": "uint8"}, shape=_quantize_rule("quantize_per_tensor", None),
                   doc="x -> uint8/int8 codes with one scale and zero point")
_qpc = register_op("quantize_per_channel", attrs={"axis": 0, "dtype": "uint8"},
                   shape=_quantize_rule("quantize_per_channel", 0),
                   doc="x -> uint8/int8 codes with a scale and zero point per index of ``axis``")


@kernel("quantize_per_tensor")
def _qpt_cpu(x, scale, zp, dtype="uint8"):
    _check_float("quantize_per_tensor", x)
    _check_qparams("quantize_per_tensor", scale, zp, np.dtype(dtype), *QRANGES[dtype])
    return _quantize(x, scale, zp, None, dtype)


@kernel("quantize_per_channel")
def _qpc_cpu(x, scale, zp, axis=0, dtype="uint8"):
    _check_float("quantize_per_channel", x)
    _check_qparams("quantize_per_channel", scale, zp, np.dtype(dtype), *QRANGES[dtype])
    return _quantize(x, scale, zp, axis, dtype)


def _dequantize_rule(q, scale, zp, axis=None):
    _qparam_shapes("dequantize", q, scale, zp, axis)
    return q


_deq = register_op("dequantize", attrs={"axis": None}, shape=_dequantize_rule,
                   doc="(q - zero_point) * scale as float32 (axis None: per-tensor)")


@kernel("dequantize")
def _deq_cpu(q, scale, zp, axis=None):
    if q.dtype.name not in QRANGES:
        raise RuntimeError(f"dequantize: input must be a uint8 or int8 tensor, got {q.dtype} (shape {q.shape})")
    _check_qparams("dequantize", scale, zp, q.dtype, *QRANGES[q.dtype.name])
    return _dequantize(q, scale, zp, axis)


def _fq_rule(x, scale, zp, quant_min=0, quant_max=255, axis=None):
    check_quant_range("fake_quantize", quant_min, quant_max)
    _qparam_shapes("fake_quantize", x, scale, zp, axis)
    return x


def _fq_bw_rule(g, x, scale, zp, quant_min=0, quant_max=255, axis=None):
    if tuple(g) != tuple(x):
        raise RuntimeError(f"fake_quantize_backward: gradient shape {tuple(g)} differs from input shape {tuple(x)}")
    return _fq_rule(x, scale, zp, quant_min, quant_max, axis)


_FQ_ATTRS = {"quant_min": 0, "quant_max": 255, "axis": None}
_fq = register_op("fake_quantize", attrs=_FQ_ATTRS, shape=_fq_rule,
                  doc="quantize then dequantize in x's dtype; straight-through gradient inside the range")
_fq_bw = register_op("fake_quantize_backward", attrs=_FQ_ATTRS, shape=_fq_bw_rule,
                     doc="g where quant_min <= rint(x / scale) + zero_point <= quant_max, else 0 (torch's mask)")


@kernel("fake_quantize")
def _fq_cpu(x, scale, zp, quant_min=0, quant_max=255, axis=None):
    _check_float("fake_quantize", x)
    _check_qparams("fake_quantize", scale, zp, np.dtype(np.int32), quant_min, quant_max)
    return _fake_quantize(x, scale, zp, axis, quant_min, quant_max)


@kernel("fake_quantize_backward")
def _fq_bw_cpu(g, x, scale, zp, quant_min=0, quant_max=255, axis=None):
    _check_float("fake_quantize_backward", x)
    _check_qparams("fake_quantize_backward", scale, zp, np.dtype(np.int32), quant_min, quant_max)
    return _fake_quantize_bw(g, x, scale, zp, axis, quant_min, quant_max)


@backward("fake_quantize")
def _fq_backward(ctx, g):
    if not ctx.needs_input_grad[0]:
        return None, None, None
    x, scale, zp = ctx.inputs
    return apply(_fq_bw, g, x, scale, zp, **ctx.attrs), None, None  # no gradient for scale / zero_point


# ---- public functions (torch's names and argument orders) -----------------------------------------

def _qdtype(op, dtype):
    name = getattr(dtype, "name", dtype)
    name = _ALIASES.get(name, name)
    if name not in QRANGES:
        raise RuntimeError(f"{op}: dtype must be ember.uint8 or ember.int8 (or 'quint8' / 'qint8'), got {dtype!r}")
    return name


def _scale(op, scale, axis):
    """The scale as a float32 tensor: 0-d per-tensor (a number or a one-element tensor), (C,) per-channel."""
    if not isinstance(scale, Tensor):
        scale = Tensor._wrap(np.asarray(scale, np.float32))
    elif scale.dtype.name != "float32":
        if not scale.dtype.is_floating_point:
            raise RuntimeError(f"{op}: scale must be a floating point tensor or number, got {scale.dtype.name}")
        scale = scale.to("float32")
    if axis is None and scale.ndim and scale.numel() == 1:
        scale = scale.reshape(())
    return scale


def _zero_point(op, zp, dtype, lo, hi, axis):
    """The zero point as a ``dtype`` tensor (shaped like the scale), after checking it lies in [lo, hi]:
    a cast would wrap an out-of-range value silently."""
    t = zp if isinstance(zp, Tensor) else None
    values = np.asarray(zp._data if t is not None else zp)
    if values.dtype.kind not in "iu":
        raise RuntimeError(f"{op}: zero_point must be an int or an integer tensor, got {values.dtype}")
    out = (values < lo) | (values > hi)
    if out.any():
        raise RuntimeError(f"{op}: zero_point must lie in [{lo}, {hi}], got {values[out].reshape(-1)[:4].tolist()}")
    if t is None:
        t = Tensor._wrap(np.asarray(values, dtype))
    elif t.dtype.name != dtype:
        t = t.to(dtype)
    if axis is None and t.ndim and t.numel() == 1:
        t = t.reshape(())
    return t


def quantize_per_tensor(input, scale, zero_point, dtype):
    """uint8/int8 codes of ``input`` with one ``scale`` and ``zero_point`` (numbers or tensors)."""
    dt = _qdtype("quantize_per_tensor", dtype)
    s = _scale("quantize_per_tensor", scale, None)
    z = _zero_point("quantize_per_tensor", zero_point, dt, *QRANGES[dt], None)
    return apply(_qpt, input, s, z, dtype=dt)


def quantize_per_channel(input, scales, zero_points, axis, dtype):
    """uint8/int8 codes of ``input`` with a scale and zero point per index of dim ``axis``."""
    dt = _qdtype("quantize_per_channel", dtype)
    ax = norm_dim(axis, input.ndim, "quantize_per_channel")
    s = _scale("quantize_per_channel", scales, ax)
    z = _zero_point("quantize_per_channel", zero_points, dt, *QRANGES[dt], ax)
    return apply(_qpc, input, s, z, axis=ax, dtype=dt)


def dequantize(q, scale, zero_point, axis=None):
    """float32 ``(q - zero_point) * scale`` of uint8/int8 codes ``q`` (per-channel along ``axis`` if given)."""
    if q.dtype.name not in QRANGES:
        raise RuntimeError(f"dequantize: input must be a uint8 or int8 tensor, got {q.dtype.name} (shape {q.shape})")
    ax = None if axis is None else norm_dim(axis, q.ndim, "dequantize")
    s = _scale("dequantize", scale, ax)
    z = _zero_point("dequantize", zero_point, q.dtype.name, *QRANGES[q.dtype.name], ax)
    return apply(_deq, q, s, z, axis=ax)


def fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max):
    """Quantize and dequantize in ``input``'s dtype (torch's QAT op); the gradient passes where the code is
    inside [quant_min, quant_max] and is 0 where it saturates."""
    op = "fake_quantize_per_tensor_affine"
    check_quant_range(op, quant_min, quant_max)
    s = _scale(op, scale, None)
    z = _zero_point(op, zero_point, "int32", int(quant_min), int(quant_max), None)
    return apply(_fq, input, s, z, quant_min=int(quant_min), quant_max=int(quant_max), axis=None)


def fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max):
    """Per-channel fake quantization along dim ``axis``; gradient as in the per-tensor form."""
    op = "fake_quantize_per_channel_affine"
    check_quant_range(op, quant_min, quant_max)
    ax = norm_dim(axis, input.ndim, op)
    s = _scale(op, scale, ax)
    z = _zero_point(op, zero_point, "int32", int(quant_min), int(quant_max), ax)
    return apply(_fq, input, s, z, quant_min=int(quant_min), quant_max=int(quant_max), axis=ax)


__all__ = ["quantize_per_tensor", "quantize_per_channel", "dequantize", "fake_quantize_per_tensor_affine",
           "fake_quantize_per_channel_affine"]
