"""Activation functions with fused numba kernels (relu, gelu, silu, sigmoid, leaky_relu) and clamp.

Each has a fused backward op (``relu_backward`` ...) so the gradient is one pass over memory;
``ember.nn.functional`` re-exports these through ``ops.elementwise``.
"""
from __future__ import annotations

import numpy as np

from ..backends.cpu import elementwise_kernels as _ek
from ..tensor import Tensor
from .elementwise import _in, _need_float, _numba, _out, _same_shape, _unary_fn, _unary_op, gt, lt, where
from .registry import apply, backward, kernel, register_op

_sigmoid = _unary_op("sigmoid", lambda x: _numba(_ek.sigmoid, x), lambda c, g: (g * _out(c) * (1 - _out(c)),),
                     save="output", doc="1 / (1 + e^-x), overflow-free")
sigmoid = _unary_fn("sigmoid", _sigmoid)

_relu_bw = register_op("relu_backward", shape=_same_shape, doc="g where relu's output > 0, else 0 (fused mask)")
kernel("relu_backward")(lambda g, y: _numba(_ek.relu_backward, g, y))
_relu = _unary_op("relu", lambda x: _numba(_ek.relu, x) if x.dtype.kind == "f" else np.maximum(x, 0),
                  lambda c, g: (apply(_relu_bw, g, _out(c)),), save="output", doc="max(x, 0); gradient 0 at 0")
relu = _unary_fn("relu", _relu)

_silu_bw = register_op("silu_backward", shape=_same_shape, doc="fused silu gradient")
kernel("silu_backward")(lambda g, x: _numba(_ek.silu_backward, g, x))
_silu = _unary_op("silu", lambda x: _numba(_ek.silu, x), lambda c, g: (apply(_silu_bw, g, _in(c)),),
                  doc="x * sigmoid(x)")
silu = _unary_fn("silu", _silu, _need_float)


def _tanh_flag(approximate):
    return (approximate == "tanh",)


_gelu_bw = register_op("gelu_backward", attrs={"approximate": "none"}, shape=_same_shape, doc="fused gelu gradient")
kernel("gelu_backward")(lambda g, x, approximate="none": _numba(_ek.gelu_backward, g, x, extra=_tanh_flag(approximate)))
_gelu = _unary_op("gelu", lambda x, approximate="none": _numba(_ek.gelu, x, extra=_tanh_flag(approximate)),
                  lambda c, g: (apply(_gelu_bw, g, _in(c), approximate=c.attrs.get("approximate", "none")),),
                  attrs={"approximate": "none"}, doc="x * Phi(x) (exact erf or tanh approximation)")

_leaky_bw = register_op("leaky_relu_backward", attrs={"negative_slope": 0.01}, shape=_same_shape,
                        doc="g where x > 0, else g * slope")
kernel("leaky_relu_backward")(lambda g, x, negative_slope=0.01: np.where(x > 0, g, g * negative_slope))
_leaky = _unary_op("leaky_relu", lambda x, negative_slope=0.01: np.where(x > 0, x, x * negative_slope),
                   lambda c, g: (apply(_leaky_bw, g, _in(c), negative_slope=c.attrs["negative_slope"]),),
                   attrs={"negative_slope": 0.01}, doc="x if x > 0 else slope * x (slope at 0, as torch)")


def gelu(input, approximate="none"):
    _need_float(input, "gelu")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply(_gelu, input, approximate=approximate)


def leaky_relu(input, negative_slope=0.01):
    _need_float(input, "leaky_relu")
    return apply(_leaky, input, negative_slope=float(negative_slope))


# ---- clamp ---------------------------------------------------------------------------------------
_clamp = register_op("clamp", attrs={"min": None, "max": None}, shape=_same_shape, doc="limit to [min, max]")
kernel("clamp")(lambda x, min=None, max=None: np.clip(x, min, max))
_clamp_bw = register_op("clamp_backward", attrs={"min": None, "max": None}, shape=_same_shape,
                        doc="g where min <= x <= max (boundaries included, as torch), else 0")


@kernel("clamp_backward")
def _clamp_bw_cpu(g, x, min=None, max=None):
    keep = (x >= min) if min is not None else np.ones(x.shape, bool)
    if max is not None:
        keep &= x <= max
    return np.where(keep, g, np.zeros((), g.dtype))


@backward("clamp")
def _clamp_bw_fn(ctx, g):
    return (apply(_clamp_bw, g, ctx.inputs[0], **ctx.attrs),)


def clamp(input, min=None, max=None):
    if min is None and max is None:
        raise RuntimeError("clamp: at least one of 'min' or 'max' must not be None")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        out = input  # tensor bounds: where() routes the gradient to whichever side is selected
        if min is not None:
            out = where(lt(out, min), min, out)
        if max is not None:
            out = where(gt(out, max), max, out)
        return out
    for v in (min, max):
        if v is not None and not input.dtype.is_floating_point and not isinstance(v, (int, np.integer)):
            input = input.float()  # torch: an int tensor clamped by a float bound becomes float32
    attrs = {}
    if min is not None:
        attrs["min"] = float(min) if input.dtype.is_floating_point else int(min)
    if max is not None:
        attrs["max"] = float(max) if input.dtype.is_floating_point else int(max)
    return apply(_clamp, input, **attrs)


def clamp_min(input, min):
    return clamp(input, min=min)


def clamp_max(input, max):
    return clamp(input, max=max)


clip = clamp
