"""Fused inference ops the serialize runtime's load-time passes emit: ``linear_act``, ``conv2d_act``,
``conv2d_pool`` and ``linear_mlp``.

``linear_act`` / ``conv2d_act`` run the existing linear / conv2d kernel, then apply the activation
(``act``: "relu", "gelu" or "gelu_tanh") in place on the fresh output, saving one pass over memory and
one allocation. ``conv2d_pool`` (conv2d, optional relu, 2x2 max pool) pools in the pass that leaves
the convolution's GEMM, so the full-size conv output is never written. They have no backward: graphs are fused only for inference, and files hold the
unfused graph (docs/serialize-design.md).
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from ..backends.cpu import conv_kernels as _ck
from ..backends.cpu import conv_tiled as _ct
from ..backends.cpu import elementwise_kernels as _ek
from ..backends.cpu import f32_chain as _f32_chain
from ..backends.cpu import winograd as _wino
from ..backends.cpu.int8_kernels import cached_per_arrays
from ..backends.cpu.jit import prange_kernel
from .conv import _conv2d_cpu, _conv2d_rule
from .linalg import _linear_cpu, _linear_rule
from .registry import get_op, kernel, prepared_kernel, register_op
from .util import float32_input

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def _check_act(op, act):
    if act not in ACTIVATIONS:
        raise RuntimeError(f"{op}: unknown activation act={act!r}; valid: {', '.join(ACTIVATIONS)}")


# One array read and written (not elementwise_kernels' (x, out) loops called with out = x): with
# two aliased arguments LLVM's no-alias check fails and relu ran 3.5x slower, as a branchy scalar loop.
@prange_kernel(_ek._MEM_BOUND)
def _relu_inplace(a):
    for i in prange(a.size):
        v = a[i]
        a[i] = 0.0 if v <= 0 else v  # NaN stays NaN, as in torch


@prange_kernel(_ek._MATH_BOUND)
def _gelu_inplace(a, tanh_approx):
    if tanh_approx:
        for i in prange(a.size):
            v = a[i]
            a[i] = 0.5 * v * (1.0 + math.tanh(_ek._K_TANH * (v + _ek._C_TANH * v * v * v)))
    else:
        for i in prange(a.size):
            v = a[i]
            a[i] = 0.5 * v * (1.0 + math.erf(v * _ek._SQRT1_2))


def _activate_(out, act):
    """Apply ``act`` to the fresh array ``out`` in place (and return it)."""
    if out.dtype == np.float32 or out.dtype == np.float64:
        flat = out.reshape(-1)  # a view: out is C-contiguous and owned by the caller
        if act == "relu":
            _relu_inplace(flat.size, flat)
        else:
            _gelu_inplace(flat.size, flat, act == "gelu_tanh")
        return out
    # other float dtypes: the unfused op's kernel (it computes via float32 like the fused one would)
    if act == "relu":
        return get_op("relu").kernels["cpu"](out)
    return get_op("gelu").kernels["cpu"](out, approximate="tanh" if act == "gelu_tanh" else "none")


def _linear_act_rule(x, w, b=None, *, act="relu"):
    _check_act("linear_act", act)
    return _linear_rule(x, w, b)


register_op("linear_act", attrs={"act": "relu"}, shape=_linear_act_rule,
            doc="act(x @ weight^T + bias): linear fused with a following activation (inference only)")


@kernel("linear_act")
def _linear_act_cpu(x, w, b=None, *, act="relu"):
    out = _linear_cpu(x, w, b)
    return _activate_(np.ascontiguousarray(out), act)


def _conv2d_act_rule(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0), act="relu"):
    _check_act("conv2d_act", act)
    return _conv2d_rule(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        padding_extra=padding_extra)


register_op("conv2d_act",
            attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "padding_extra": (0, 0),
                   "act": "relu"},
            shape=_conv2d_act_rule,
            doc="act(conv2d(x, weight, bias)): conv2d fused with a following activation (inference only)")


@kernel("conv2d_act")
def _conv2d_act_cpu(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0), act="relu"):
    out = _conv2d_cpu(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_extra=padding_extra)
    return _activate_(np.ascontiguousarray(out), act)


# ---- conv2d -> (relu) -> 2x2 max pool ---------------------------------------------------------------

def _conv2d_pool_rule(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0), act="none"):
    if act not in ("none", "relu"):
        raise RuntimeError(f"conv2d_pool: act must be 'none' or 'relu' (max pooling commutes with those only), "
                           f"got {act!r}")
    n, c, h, w_ = _conv2d_rule(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                               padding_extra=padding_extra)
    if h < 2 or w_ < 2:
        raise RuntimeError(f"conv2d_pool: the conv output ({h}x{w_}) is smaller than the 2x2 pooling window")
    return (n, c, h // 2, w_ // 2)


register_op("conv2d_pool",
            attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "padding_extra": (0, 0),
                   "act": "none"},
            shape=_conv2d_pool_rule,
            doc="max_pool2d(act(conv2d(x, weight, bias)), 2): conv2d, optional relu and a 2x2 / stride-2 max pool "
                "in one pass over the conv result (inference only)")


@kernel("conv2d_pool")
def _conv2d_pool_cpu(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0), act="none"):
    n, co, h, w_ = _conv2d_rule(x.shape, w.shape, None if b is None else b.shape, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, padding_extra=padding_extra)
    out = _ck.conv2d_forward(x, w, b, stride, padding, dilation, groups, (h, w_), pool=True, relu=act == "relu")
    return out.astype(x.dtype, copy=False)


def _prepared_conv(op, inputs, attrs, pool, act):
    """The prepared kernel of a float32 stride-1 convolution on the tiles (conv_tiled.PreparedForward: weights
    packed once, geometry once per input shape); other inputs go to the plain kernel."""
    x, w, *rest = inputs
    b = rest[0] if rest else None
    if x is not None or w is None or (rest and b is None) or w.dtype != np.float32 or w.ndim != 4:
        return None
    if tuple(attrs["stride"]) != (1, 1) or _ct.host_tiles() is None or act not in ("none", "relu"):
        return None
    if pool and _wino.usable(w, attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"]):
        fwd = _wino.PreparedPool(w, b, attrs["padding"], act == "relu")  # 3x3 conv + pool: Winograd F(2x2, 3x3)
    else:
        fwd = _ct.PreparedForward(w, b, attrs["padding"], attrs["dilation"], attrs["groups"], pool, act == "relu")
    plain, out_hw = get_op(op).kernels["cpu"], {}

    def run(x):
        hw = out_hw.get(x.shape) if x.dtype == np.float32 else None
        if hw is None:
            if x.dtype != np.float32:  # (the plain kernel computes other dtypes, or says what is wrong)
                return plain(x, *inputs[1:], **attrs)
            n, c, h, w_ = _conv2d_rule(x.shape, w.shape, None if b is None else b.shape, stride=attrs["stride"],
                                       padding=attrs["padding"], dilation=attrs["dilation"], groups=attrs["groups"],
                                       padding_extra=attrs.get("padding_extra", (0, 0)))
            if pool and (h < 2 or w_ < 2):
                return plain(x, *inputs[1:], **attrs)  # (raises: smaller than the pooling window)
            hw = out_hw[x.shape] = (h, w_)
        return fwd(x, hw)
    return run


@prepared_kernel("conv2d_pool")
def _conv2d_pool_prepare(inputs, attrs):
    return _prepared_conv("conv2d_pool", inputs, attrs, True, attrs.get("act", "none"))


@prepared_kernel("conv2d_act")
def _conv2d_act_prepare(inputs, attrs):
    return _prepared_conv("conv2d_act", inputs, attrs, False, attrs.get("act", "relu"))


# ---- linear_mlp: a chain of linear (+ relu) layers in one kernel call (backends/cpu/f32_chain.py) ----------
def _linear_mlp_rule(x, *params, relus=()):
    if not params or len(params) != 2 * len(relus):
        raise RuntimeError(f"linear_mlp: inputs are x then (weight, bias) per layer with one relus entry each; got "
                           f"{len(params)} parameter inputs and relus={tuple(relus)}")
    for i in range(0, len(params), 2):
        x = _linear_rule(x, params[i], params[i + 1])
    return x


register_op("linear_mlp", attrs={"relus": ()}, shape=_linear_mlp_rule,
            doc="a chain of linear layers (each optionally followed by relu), each feeding the next, in one kernel "
                "call (made by the runtime's load-time passes on CPU, never saved); inputs (x, then weight, bias per "
                "layer)")

_MLP_PLANS: dict = {}


def _mlp_plan(params, relus):
    """The f32_chain plan of the layers, or None where the chain cannot run them (no tiles, not float32)."""
    shapes_ok = all(p.dtype == np.float32 and p.ndim == 2 - i % 2 for i, p in enumerate(params))  # (w, b) pairs
    if not shapes_ok or not _f32_chain.available():
        return None
    layers = [(params[2 * i], params[2 * i + 1], bool(r)) for i, r in enumerate(relus)]
    return cached_per_arrays(_MLP_PLANS, tuple(params), tuple(bool(r) for r in relus),
                             lambda: _f32_chain.plan(layers), limit=256)


def _layer_by_layer(x, params, relus):
    for i, relu in enumerate(relus):
        x = _linear_cpu(x, params[2 * i], params[2 * i + 1])
        if relu:
            x = _activate_(np.ascontiguousarray(x), "relu")
    return x


@kernel("linear_mlp")
def _linear_mlp_cpu(x, *params, relus=()):
    plan = _mlp_plan(params, relus)
    if plan is None or x.dtype != np.float32:
        return _layer_by_layer(x, params, relus)
    return _f32_chain.run(x, plan)


@prepared_kernel("linear_mlp")
def _linear_mlp_prepare(inputs, attrs):
    x, *params = inputs
    if x is not None or any(p is None for p in params):
        return None
    plan = _mlp_plan(params, attrs.get("relus", ()))  # the packed weights, held here: no lookup per call
    if plan is None:
        return None
    return lambda x: _f32_chain.run(float32_input("linear_mlp", x), plan)
