"""CUDA kernels of the elementwise ops: arithmetic, comparisons and logic, math functions, activations
and their fused gradients, clamp, where, masked_fill, cast, clone. Each is a small device function
run by the engine of ``launch.py``; result dtypes come from the CPU kernels (``result_dtype``)."""
from __future__ import annotations

import math

import numpy as np

from ... import dtypes as _dt
from ...ops.registry import kernel
from .array import CudaArray
from .launch import Binary, Ternary, Unary, cast, device_fn, result_dtype

_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_2_PI = 0.7978845608028654


def _dt_of(x):
    return x.dtype


def _register_binary(name, fn):
    eng = Binary(device_fn(fn))

    def run(a, b, **attrs):
        return eng(a, b, result_dtype(name, (_dt_of(a), _dt_of(b)), attrs))

    kernel(name, "cuda")(run)
    return eng


def _register_unary(name, fn, params=None):
    """``params(attrs) -> (p0, p1)`` maps the op's attributes onto the device function's parameters."""
    eng = Unary(device_fn(fn))

    def run(x, **attrs):
        p0, p1 = params(**attrs) if params else (0.0, 0.0)
        return eng(x, result_dtype(name, (x.dtype,), attrs), p0, p1)

    kernel(name, "cuda")(run)
    return eng


# ---- binary arithmetic -----------------------------------------------------------------------
_register_binary("add", lambda a, b, p0, p1: a + b)
_register_binary("sub", lambda a, b, p0, p1: a - b)
_register_binary("mul", lambda a, b, p0, p1: a * b)


def _max(a, b, p0, p1):
    return a if (a > b or a != a) else b


def _min(a, b, p0, p1):
    return a if (a < b or a != a) else b


_register_binary("maximum", _max)
_register_binary("minimum", _min)


def _rem(a, b, p0, p1):
    return a % b


_register_binary("remainder", _rem)

_div_true = Binary(device_fn(lambda a, b, p0, p1: a / b))
_div_floor = Binary(device_fn(lambda a, b, p0, p1: a // b))


def _trunc_div(a, b, p0, p1):
    q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q += 1
    return q


_div_trunc_int = Binary(device_fn(_trunc_div))
def _trunc_div_f(a, b, p0, p1):
    q = a / b
    return math.floor(q) if q >= 0 else math.ceil(q)


_div_trunc_f = Binary(device_fn(_trunc_div_f))
_div_floor_f = Binary(device_fn(lambda a, b, p0, p1: math.floor(a / b)))


@kernel("div", "cuda")
def _div(a, b, rounding_mode=None):
    out = result_dtype("div", (a.dtype, b.dtype), {"rounding_mode": rounding_mode})
    if rounding_mode is None:
        return _div_true(a, b, out)
    ints = a.dtype.kind in "biu"
    if rounding_mode == "floor":
        return (_div_floor if ints else _div_floor_f)(a, b, out)
    return (_div_trunc_int if ints else _div_trunc_f)(a, b, out)


_pow = Binary(device_fn(lambda a, b, p0, p1: a ** b))


@kernel("pow", "cuda")
def _pow_k(a, b):
    return _pow(a, b, result_dtype("pow", (a.dtype, b.dtype)))


# ---- comparisons and logic -------------------------------------------------------------------
for _name, _fn in (
    ("eq", lambda a, b, p0, p1: a == b), ("ne", lambda a, b, p0, p1: a != b),
    ("lt", lambda a, b, p0, p1: a < b), ("le", lambda a, b, p0, p1: a <= b),
    ("gt", lambda a, b, p0, p1: a > b), ("ge", lambda a, b, p0, p1: a >= b),
    ("logical_and", lambda a, b, p0, p1: (a != 0) and (b != 0)),
    ("logical_or", lambda a, b, p0, p1: (a != 0) or (b != 0)),
    ("logical_xor", lambda a, b, p0, p1: (a != 0) != (b != 0)),
    ("bitwise_and", lambda a, b, p0, p1: a & b), ("bitwise_or", lambda a, b, p0, p1: a | b),
    ("bitwise_xor", lambda a, b, p0, p1: a ^ b),
):
    _register_binary(_name, _fn)


# ---- unary math ------------------------------------------------------------------------------
def _sign(x, p0, p1):
    if x != x:
        return x
    return 1 if x > 0 else (-1 if x < 0 else 0)


def _sigmoid(x, p0, p1):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _round(x, p0, p1):
    return round(x * p0) / p0 if p0 != 1.0 else round(x)


def _isinf(x, p0, p1):
    return x == math.inf or x == -math.inf


def _isfinite(x, p0, p1):
    return x == x and x != math.inf and x != -math.inf


def _gelu(x, p0, p1):
    if p0 != 0.0:
        return 0.5 * x * (1.0 + math.tanh(_SQRT_2_PI * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1.0 + math.erf(x * _SQRT1_2))


def _silu(x, p0, p1):
    return x * _sigmoid_d(x, p0, p1)


_sigmoid_d = device_fn(_sigmoid)

for _name, _fn in (
    ("neg", lambda x, p0, p1: -x), ("abs", lambda x, p0, p1: abs(x)),
    ("exp", lambda x, p0, p1: math.exp(x)), ("log", lambda x, p0, p1: math.log(x) if x > 0 else (
        -math.inf if x == 0 else math.nan)),
    ("log1p", lambda x, p0, p1: math.log1p(x) if x > -1 else (-math.inf if x == -1 else math.nan)),
    ("expm1", lambda x, p0, p1: math.expm1(x)),
    ("sqrt", lambda x, p0, p1: math.sqrt(x) if x >= 0 else math.nan),
    ("rsqrt", lambda x, p0, p1: 1.0 / math.sqrt(x) if x > 0 else (math.inf if x == 0 else math.nan)),
    ("sin", lambda x, p0, p1: math.sin(x)), ("cos", lambda x, p0, p1: math.cos(x)),
    ("tanh", lambda x, p0, p1: math.tanh(x)), ("square", lambda x, p0, p1: x * x),
    ("reciprocal", lambda x, p0, p1: 1.0 / x if x != 0 else (math.copysign(math.inf, x) if x == x else x)),
    ("sign", _sign), ("floor", lambda x, p0, p1: math.floor(x)), ("ceil", lambda x, p0, p1: math.ceil(x)),
    ("isnan", lambda x, p0, p1: x != x), ("isinf", _isinf), ("isfinite", _isfinite),
    ("logical_not", lambda x, p0, p1: x == 0),
    ("sigmoid", _sigmoid), ("relu", lambda x, p0, p1: x if x > 0 else 0), ("silu", _silu),
):
    _register_unary(_name, _fn)

_register_unary("round", _round, lambda decimals=0: (10.0 ** decimals, 0.0))
_register_unary("gelu", _gelu, lambda approximate="none": (1.0 if approximate == "tanh" else 0.0, 0.0))
_register_unary("leaky_relu", lambda x, p0, p1: x if x > 0 else x * p0,
                lambda negative_slope=0.01: (float(negative_slope), 0.0))

_invert = Unary(device_fn(lambda x, p0, p1: ~x))
_lnot = Unary(device_fn(lambda x, p0, p1: x == 0))


@kernel("bitwise_not", "cuda")
def _bitwise_not(x):
    return (_lnot if x.dtype.kind == "b" else _invert)(x, x.dtype)


def _clamp_fn(x, p0, p1):
    y = x
    if y < p0:
        y = p0
    if y > p1:
        y = p1
    return y


_register_unary("clamp", _clamp_fn, lambda min=None, max=None: (
    -math.inf if min is None else float(min), math.inf if max is None else float(max)))


# ---- fused activation gradients --------------------------------------------------------------
def _relu_bw(g, y, p0, p1):
    return g if y > 0 else 0


def _silu_bw(g, x, p0, p1):
    s = _sigmoid_d(x, p0, p1)
    return g * s * (1.0 + x * (1.0 - s))


def _gelu_bw(g, x, p0, p1):
    if p0 != 0.0:
        inner = _SQRT_2_PI * (x + 0.044715 * x * x * x)
        t = math.tanh(inner)
        return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_PI * (1.0 + 3.0 * 0.044715 * x * x))
    cdf = 0.5 * (1.0 + math.erf(x * _SQRT1_2))
    return g * (cdf + x * _INV_SQRT_2PI * math.exp(-0.5 * x * x))


def _leaky_bw(g, x, p0, p1):
    return g if x > 0 else g * p0


def _clamp_bw(g, x, p0, p1):
    return g if (x >= p0 and x <= p1) else 0


def _register_grad(name, fn, params=None):
    eng = Binary(device_fn(fn))

    def run(g, x, **attrs):
        p0, p1 = params(**attrs) if params else (0.0, 0.0)
        return eng(g, x, result_dtype(name, (g.dtype, x.dtype), attrs), p0, p1)

    kernel(name, "cuda")(run)


_register_grad("relu_backward", _relu_bw)
_register_grad("silu_backward", _silu_bw)
_register_grad("gelu_backward", _gelu_bw, lambda approximate="none": (1.0 if approximate == "tanh" else 0.0, 0.0))
_register_grad("leaky_relu_backward", _leaky_bw, lambda negative_slope=0.01: (float(negative_slope), 0.0))
_register_grad("clamp_backward", _clamp_bw, lambda min=None, max=None: (
    -math.inf if min is None else float(min), math.inf if max is None else float(max)))


# ---- where, masked_fill, cast, clone -----------------------------------------------------------
_where = Ternary(device_fn(lambda c, a, b: a if c else b))


@kernel("where", "cuda")
def _where_k(cond, a, b):
    dts = tuple(x.dtype for x in (cond, a, b))
    return _where(cond, a, b, result_dtype("where", dts))


@kernel("masked_fill", "cuda")
def _masked_fill(x, mask, value):
    return _where(mask, value, x, result_dtype("masked_fill", (x.dtype, mask.dtype, value.dtype)))


@kernel("cast", "cuda")
def _cast(x, dtype):
    return cast(x, _dt.as_dtype(dtype).np)


@kernel("clone", "cuda")
def _clone(x: CudaArray):
    return x.copy()


__all__ = ["np"]
