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

from ..backends.cpu.quant_kernels import (  # noqa: F401 (the kernels and numpy paths, re-exported for tests)
    _F32, QRANGES, _dequantize, _fake_quantize, _fake_quantize_bw, _quantize, dequantize_np, fake_quantize_mask_np,
    fake_quantize_np, quantize_np,
)
from ..tensor import Tensor
from .registry import apply, backward, kernel, prepared_kernel, register_op
from .util import norm_dim

_ALIASES = {"quint8": "uint8", "qint8": "int8"}  # torch's names of the same dtypes
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


@prepared_kernel("quantize_per_tensor")
def _qpt_prepare(inputs, attrs):
    x, scale, zp = inputs
    dtype = attrs.get("dtype", "uint8")
    if x is not None or scale is None or zp is None or dtype not in QRANGES:
        return None
    try:  # (checked once; where they fail the plain kernel raises on every call)
        _check_qparams("quantize_per_tensor", scale, zp, np.dtype(dtype), *QRANGES[dtype])
    except RuntimeError:
        return None

    def run(x):
        _check_float("quantize_per_tensor", x)
        return _quantize(x, scale, zp, None, dtype)
    return run


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


@prepared_kernel("dequantize")
def _deq_prepare(inputs, attrs):
    q, scale, zp = inputs
    if q is not None or scale is None or zp is None:
        return None
    axis, checked = attrs.get("axis"), set()

    def run(q):
        if q.dtype not in checked:  # (the checks depend on q's dtype only: once per dtype)
            _deq_cpu(q[:0], scale, zp, axis)
            checked.add(q.dtype)
        return _dequantize(q, scale, zp, axis)
    return run


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
    if t is not None and t.is_cuda:  # its values stay on the device: reading them back would stall it
        if t.dtype.name not in ("int8", "uint8", "int16", "int32", "int64"):
            raise RuntimeError(f"{op}: zero_point must be an int or an integer tensor, got {t.dtype.name}")
        t = t if t.dtype.name == dtype else t.to(dtype)
        return t.reshape(()) if axis is None and t.ndim and t.numel() == 1 else t
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


def _placed(x, *params):
    """Per-channel parameters made from lists / numpy arrays live on the CPU: move them to a CUDA ``x``'s device
    (0-d CPU tensors may join CUDA ones as they are)."""
    if not x.is_cuda:
        return params
    return tuple(p.to(x.device) if p.ndim and p.device != x.device else p for p in params)


def quantize_per_tensor(input, scale, zero_point, dtype):
    """uint8/int8 codes of ``input`` with one ``scale`` and ``zero_point`` (numbers or tensors)."""
    dt = _qdtype("quantize_per_tensor", dtype)
    s = _scale("quantize_per_tensor", scale, None)
    z = _zero_point("quantize_per_tensor", zero_point, dt, *QRANGES[dt], None)
    return apply(_qpt, input, *_placed(input, s, z), dtype=dt)


def quantize_per_channel(input, scales, zero_points, axis, dtype):
    """uint8/int8 codes of ``input`` with a scale and zero point per index of dim ``axis``."""
    dt = _qdtype("quantize_per_channel", dtype)
    ax = norm_dim(axis, input.ndim, "quantize_per_channel")
    s = _scale("quantize_per_channel", scales, ax)
    z = _zero_point("quantize_per_channel", zero_points, dt, *QRANGES[dt], ax)
    return apply(_qpc, input, *_placed(input, s, z), axis=ax, dtype=dt)


def dequantize(q, scale, zero_point, axis=None):
    """float32 ``(q - zero_point) * scale`` of uint8/int8 codes ``q`` (per-channel along ``axis`` if given)."""
    if q.dtype.name not in QRANGES:
        raise RuntimeError(f"dequantize: input must be a uint8 or int8 tensor, got {q.dtype.name} (shape {q.shape})")
    ax = None if axis is None else norm_dim(axis, q.ndim, "dequantize")
    s = _scale("dequantize", scale, ax)
    z = _zero_point("dequantize", zero_point, q.dtype.name, *QRANGES[q.dtype.name], ax)
    return apply(_deq, q, *_placed(q, s, z), axis=ax)


def fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max):
    """Quantize and dequantize in ``input``'s dtype (torch's QAT op); the gradient passes where the code is
    inside [quant_min, quant_max] and is 0 where it saturates."""
    op = "fake_quantize_per_tensor_affine"
    check_quant_range(op, quant_min, quant_max)
    s = _scale(op, scale, None)
    z = _zero_point(op, zero_point, "int32", int(quant_min), int(quant_max), None)
    return apply(_fq, input, *_placed(input, s, z), quant_min=int(quant_min), quant_max=int(quant_max), axis=None)


def fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max):
    """Per-channel fake quantization along dim ``axis``; gradient as in the per-tensor form."""
    op = "fake_quantize_per_channel_affine"
    check_quant_range(op, quant_min, quant_max)
    ax = norm_dim(axis, input.ndim, op)
    s = _scale(op, scale, ax)
    z = _zero_point(op, zero_point, "int32", int(quant_min), int(quant_max), ax)
    return apply(_fq, input, *_placed(input, s, z), quant_min=int(quant_min), quant_max=int(quant_max), axis=ax)


__all__ = ["quantize_per_tensor", "quantize_per_channel", "dequantize", "fake_quantize_per_tensor_affine",
           "fake_quantize_per_channel_affine"]
