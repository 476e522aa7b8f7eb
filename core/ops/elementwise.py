"""Elementwise ops: arithmetic, math functions, comparisons and logic, where.

Binary ops broadcast like numpy and accept python scalars (``util.binary_operands``: a scalar never
widens float32); gradients are summed back to each input's shape with ``unbroadcast``. Kernels run
with floating-point warnings off because torch returns inf/nan silently. Activations and clamp are
in ``activation.py``, Tensor operators and in-place methods in ``elementwise_methods.py``.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..factories import zeros
from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op
from .util import binary_operands, broadcast_shapes, scalar_tensor, unbroadcast

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _quiet(fn):
    def k(*args, **kw):
        with np.errstate(all="ignore"):
            return fn(*args, **kw)

    k.__name__ = getattr(fn, "__name__", "kernel")
    return k


def _fl(x):
    """bool/int -> float32: torch's result type for exp, log, sqrt, true division, ..."""
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def _numba(k, *arrays, extra=()):
    """Run a fused kernel on C-contiguous float32/float64 copies (float16 and ints go via float32)."""
    dt = arrays[0].dtype
    if dt == _F32 or dt == _F64:
        return k(*[np.ascontiguousarray(a, dt) for a in arrays], *extra)
    out = k(*[np.ascontiguousarray(a, np.float32) for a in arrays], *extra)
    return out.astype(dt) if dt.kind == "f" else out


def _same_shape(s, *_, **__):
    return s


def _bshape(name):
    def rule(a, b, **_):
        if a == b or not b:  # the common cases (same shape, python scalar) skip numpy's broadcasting
            return a
        return b if not a else broadcast_shapes(name, a, b)

    return rule


def _need_float(x, name):
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"{name}: expected a floating point tensor, got {x.dtype}; convert with .float() first")


def _zero_grad(ctx, *grads):
    """Piecewise-constant ops (sign, floor, round, ...) have zero gradient, as in torch."""
    dev = grads[0].device if grads and grads[0] is not None else None
    return tuple(zeros(*s, dtype=d, device=dev) if n else None
                 for s, d, n in zip(ctx.input_shapes, ctx.input_dtypes, ctx.needs_input_grad))


# ---- binary arithmetic -----------------------------------------------------------------------
def _binary_op(name, fn, doc, save_inputs=True, save_outputs=False, attrs=None):
    op = register_op(name, attrs=attrs, shape=_bshape(name), save_inputs=save_inputs, save_outputs=save_outputs,
                     doc=doc)
    if fn is not None:
        kernel(name)(_quiet(fn))
    return op


_add = _binary_op("add", np.add, "a + b", save_inputs=False)
_sub = _binary_op("sub", np.subtract, "a - b", save_inputs=False)
_mul = _binary_op("mul", np.multiply, "a * b")
_div = _binary_op("div", None, "a / b (true division: ints give float32; or rounded, then zero gradient)",
                  save_inputs=(1,), save_outputs=True, attrs={"rounding_mode": None})
_pow = _binary_op("pow", None, "a ** b", save_outputs=True)
_maximum = _binary_op("maximum", np.maximum, "elementwise max (NaN propagates)")
_minimum = _binary_op("minimum", np.minimum, "elementwise min (NaN propagates)")
_remainder = _binary_op("remainder", np.remainder, "a - floor(a / b) * b (sign of b, like python)")


@kernel("div")
def _div_cpu(a, b, rounding_mode=None):
    with np.errstate(all="ignore"):
        if rounding_mode is None:
            return np.true_divide(a, b, dtype=np.float32) if a.dtype.kind in "biu" else np.true_divide(a, b)
        if a.dtype.kind in "biu":
            if rounding_mode == "floor":
                return np.floor_divide(a, b)
            # floor, then one step toward zero where it rounded down a negative quotient (no abs(): abs(-128)
            # wraps in int8)
            q = np.floor_divide(a, b)
            return q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(q.dtype)
        return (np.floor if rounding_mode == "floor" else np.trunc)(a / b)


@kernel("pow")
def _pow_cpu(a, b):
    if b.ndim == 0 and b == 2:
        return np.square(a)
    with np.errstate(all="ignore"):
        try:
            return np.power(a, b)
        except ValueError:
            raise RuntimeError("pow: integers to negative integer powers are not allowed") from None


def _mul_t(a, b):
    return apply(_mul, a, b)


@backward("add")
def _add_bw(ctx, g):
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    return (unbroadcast(g, sa) if na else None, unbroadcast(g, sb) if nb else None)


@backward("sub")
def _sub_bw(ctx, g):
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    return (unbroadcast(g, sa) if na else None, unbroadcast(neg(g), sb) if nb else None)


@backward("mul")
def _mul_bw(ctx, g):
    a, b = ctx.inputs
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    return (unbroadcast(_mul_t(g, b), sa) if na else None, unbroadcast(_mul_t(g, a), sb) if nb else None)


@backward("div")
def _div_bw(ctx, g):
    b = ctx.inputs[1]
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    if ctx.attrs.get("rounding_mode") is not None:
        return _zero_grad(ctx, g)
    ga = div(g, b)
    return (unbroadcast(ga, sa) if na else None, unbroadcast(neg(_mul_t(ga, ctx.outputs[0])), sb) if nb else None)


@backward("pow")
def _pow_bw(ctx, g):
    a, b = ctx.inputs
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    ga = gb = None
    if na:  # torch: zero where the exponent is 0 (avoids 0 * inf at a == 0)
        ga = unbroadcast(where(b == 0, 0.0, g * b * pow(a, b - 1)), sa)
    if nb:  # torch: zero where a == 0 and b >= 0 (avoids 0 * -inf)
        gb = unbroadcast(where(logical_and(a == 0, b >= 0), 0.0, g * ctx.outputs[0] * log(a)), sb)
    return ga, gb


def _minmax_bw(ctx, g, loses):
    # torch: tied inputs share the gradient half/half; only the losing side gets 0 (NaN: both get it)
    a, b = ctx.inputs
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    half = where(a == b, g * 0.5, g)
    ga = unbroadcast(where(loses(a, b), 0.0, half), sa) if na else None
    gb = unbroadcast(where(loses(b, a), 0.0, half), sb) if nb else None
    return ga, gb


backward("maximum")(lambda ctx, g: _minmax_bw(ctx, g, lt))
backward("minimum")(lambda ctx, g: _minmax_bw(ctx, g, gt))


@backward("remainder")
def _remainder_bw(ctx, g):
    a, b = ctx.inputs
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    gb = unbroadcast(neg(g * div(a, b, rounding_mode="floor")), sb) if nb else None
    return (unbroadcast(g, sa) if na else None, gb)


def add(input, other, *, alpha=1):
    a, b = binary_operands(input, other, "add")
    if alpha != 1:
        b = _mul_t(b, scalar_tensor(alpha, b.dtype))
    return apply(_add, a, b)


def sub(input, other, *, alpha=1):
    a, b = binary_operands(input, other, "sub")
    if a.dtype is _dt.bool_:
        raise RuntimeError("sub: subtraction of two bool tensors is not supported; use logical_xor() or ^ instead")
    if alpha != 1:
        b = _mul_t(b, scalar_tensor(alpha, b.dtype))
    return apply(_sub, a, b)


def mul(input, other):
    a, b = binary_operands(input, other, "mul")
    return apply(_mul, a, b)


def div(input, other, *, rounding_mode=None):
    """True division (ints give float32); rounding_mode "floor" or "trunc" keeps the dtype."""
    if rounding_mode not in (None, "floor", "trunc"):
        raise ValueError(f"div: rounding_mode must be None, 'floor' or 'trunc', got {rounding_mode!r}")
    a, b = binary_operands(input, other, "div")
    if rounding_mode is None:
        return apply(_div, a, b)
    return apply(_div, a, b, rounding_mode=rounding_mode)


def floor_divide(input, other):
    return div(input, other, rounding_mode="floor")


def remainder(input, other):
    a, b = binary_operands(input, other, "remainder")
    return apply(_remainder, a, b)


def pow(input, exponent):
    a, b = binary_operands(input, exponent, "pow")
    return apply(_pow, a, b)


def maximum(input, other):
    a, b = binary_operands(input, other, "maximum")
    return apply(_maximum, a, b)


def minimum(input, other):
    a, b = binary_operands(input, other, "minimum")
    return apply(_minimum, a, b)


# ---- comparisons and logic (bool outputs, no gradient) -----------------------------------------
def _bool_binary(name, ufunc, ints_only=False):
    op = register_op(name, shape=_bshape(name), save_inputs=False, doc=f"elementwise {ufunc.__name__} (bool result)")
    kernel(name)(ufunc)

    def fn(input, other):
        a, b = binary_operands(input, other, name)
        if ints_only and a.dtype.is_floating_point:
            raise RuntimeError(f"{name}: only integer and bool tensors are supported, got {a.dtype}")
        return apply(op, a, b)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``{ufunc.__name__}`` elementwise, with broadcasting."
    return fn


eq = _bool_binary("eq", np.equal)
ne = _bool_binary("ne", np.not_equal)
lt = _bool_binary("lt", np.less)
le = _bool_binary("le", np.less_equal)
gt = _bool_binary("gt", np.greater)
ge = _bool_binary("ge", np.greater_equal)
logical_and = _bool_binary("logical_and", np.logical_and)
logical_or = _bool_binary("logical_or", np.logical_or)
logical_xor = _bool_binary("logical_xor", np.logical_xor)
bitwise_and = _bool_binary("bitwise_and", np.bitwise_and, ints_only=True)
bitwise_or = _bool_binary("bitwise_or", np.bitwise_or, ints_only=True)
bitwise_xor = _bool_binary("bitwise_xor", np.bitwise_xor, ints_only=True)


# ---- unary ops -------------------------------------------------------------------------------
def _unary_op(name, fn, bw=None, save="input", doc="", attrs=None):
    op = register_op(name, attrs=attrs, shape=_same_shape, save_inputs=save == "input",
                     save_outputs=save == "output", doc=doc)
    kernel(name)(fn)
    if bw is not None:
        backward(name)(bw)
    return op


def _out(ctx):
    return ctx.outputs[0]


def _in(ctx):
    return ctx.inputs[0]


def _int_copy(f):
    return lambda x, **kw: x.copy() if x.dtype.kind in "biu" else f(x, **kw)


# backward formulas use the saved output where that is cheaper (exp, sqrt, tanh)
_neg = _unary_op("neg", np.negative, lambda c, g: (neg(g),), save=None, doc="-x")
_abs = _unary_op("abs", np.abs, lambda c, g: (g * sign(_in(c)),), doc="|x| (gradient 0 at 0)")
_exp = _unary_op("exp", _quiet(lambda x: np.exp(_fl(x))), lambda c, g: (g * _out(c),), save="output", doc="e^x")
_log = _unary_op("log", _quiet(lambda x: np.log(_fl(x))), lambda c, g: (g / _in(c),), doc="natural log")
_log1p = _unary_op("log1p", _quiet(lambda x: np.log1p(_fl(x))), lambda c, g: (g / (_in(c) + 1),), doc="log(1 + x)")
_expm1 = _unary_op("expm1", _quiet(lambda x: np.expm1(_fl(x))), lambda c, g: (g * (_out(c) + 1),), save="output",
                   doc="e^x - 1")
_sqrt = _unary_op("sqrt", _quiet(lambda x: np.sqrt(_fl(x))), lambda c, g: (g / (_out(c) * 2),), save="output",
                  doc="square root")
_rsqrt = _unary_op("rsqrt", _quiet(lambda x: 1 / np.sqrt(_fl(x))),
                   lambda c, g: (g * _out(c) ** 3 * -0.5,), save="output", doc="1 / sqrt(x)")
_sin = _unary_op("sin", lambda x: np.sin(_fl(x)), lambda c, g: (g * cos(_in(c)),), doc="sine")
_cos = _unary_op("cos", lambda x: np.cos(_fl(x)), lambda c, g: (neg(g * sin(_in(c))),), doc="cosine")
_tanh = _unary_op("tanh", lambda x: np.tanh(_fl(x)), lambda c, g: (g * (1 - square(_out(c))),), save="output",
                  doc="hyperbolic tangent")
_square = _unary_op("square", np.square, lambda c, g: (g * _in(c) * 2,), doc="x * x")
_reciprocal = _unary_op("reciprocal", _quiet(lambda x: np.reciprocal(_fl(x))),
                        lambda c, g: (neg(g * square(_out(c))),), save="output", doc="1 / x")
_sign = _unary_op("sign", np.sign, _zero_grad, save=None, doc="-1, 0 or 1 (zero gradient)")
_floor = _unary_op("floor", _int_copy(np.floor), _zero_grad, save=None, doc="round down (zero gradient)")
_ceil = _unary_op("ceil", _int_copy(np.ceil), _zero_grad, save=None, doc="round up (zero gradient)")
_round = _unary_op("round", _int_copy(lambda x, decimals=0: np.round(x, decimals)), _zero_grad, save=None,
                   attrs={"decimals": 0}, doc="round half to even (zero gradient)")
_isnan = _unary_op("isnan", np.isnan, save=None, doc="NaN mask")
_isinf = _unary_op("isinf", np.isinf, save=None, doc="+-inf mask")
_isfinite = _unary_op("isfinite", np.isfinite, save=None, doc="finite mask")
_logical_not = _unary_op("logical_not", np.logical_not, save=None, doc="not x (bool result)")
_bitwise_not = _unary_op("bitwise_not", np.invert, save=None, doc="~x for bool and integer tensors")


def _unary_fn(name, op, check=None):
    def fn(input):
        if check is not None:
            check(input, name)
        return apply(op, input)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = op.doc
    return fn


def _no_bool(x, name):
    if x.dtype is _dt.bool_:
        raise RuntimeError(f"{name}: negation of a bool tensor is not supported; use ~ or logical_not() to invert "
                           f"a mask")


def _int_or_bool(x, name):
    if x.dtype.is_floating_point:
        raise RuntimeError(f"{name}: only integer and bool tensors are supported, got {x.dtype}")


neg = _unary_fn("neg", _neg, _no_bool)
abs = _unary_fn("abs", _abs)
exp = _unary_fn("exp", _exp)
log = _unary_fn("log", _log)
log1p = _unary_fn("log1p", _log1p)
expm1 = _unary_fn("expm1", _expm1)
sqrt = _unary_fn("sqrt", _sqrt)
rsqrt = _unary_fn("rsqrt", _rsqrt)
sin = _unary_fn("sin", _sin)
cos = _unary_fn("cos", _cos)
tanh = _unary_fn("tanh", _tanh)
square = _unary_fn("square", _square)
reciprocal = _unary_fn("reciprocal", _reciprocal)
sign = _unary_fn("sign", _sign)
floor = _unary_fn("floor", _floor)
ceil = _unary_fn("ceil", _ceil)
isnan = _unary_fn("isnan", _isnan)
isinf = _unary_fn("isinf", _isinf)
isfinite = _unary_fn("isfinite", _isfinite)
logical_not = _unary_fn("logical_not", _logical_not)
bitwise_not = _unary_fn("bitwise_not", _bitwise_not, _int_or_bool)
negative = neg


def round(input, decimals=0):
    return apply(_round, input, decimals=int(decimals)) if decimals else apply(_round, input)


# ---- where ---------------------------------------------------------------------------------------
def _where_rule(c, a, b):
    return c if c == a == b else broadcast_shapes("where", c, a, b)


_where = register_op("where", shape=_where_rule, save_inputs=(0,), doc="a where cond else b")
kernel("where")(np.where)


@backward("where")
def _where_bw(ctx, g):
    cond = ctx.inputs[0]
    _, na, nb = ctx.needs_input_grad
    _, sa, sb = ctx.input_shapes
    return (None, unbroadcast(where(cond, g, 0.0), sa) if na else None,
            unbroadcast(where(cond, 0.0, g), sb) if nb else None)


def where(condition, input=None, other=None):
    """``input`` where ``condition`` else ``other`` (either may be a python scalar);
    ``where(condition)`` alone gives the indices of True elements, like torch."""
    if not isinstance(condition, Tensor):
        raise TypeError(f"where: condition must be a bool Tensor, got {type(condition).__name__}")
    if condition.dtype is not _dt.bool_:
        raise RuntimeError(f"where: expected condition to be a bool tensor, got {condition.dtype}")
    if input is None and other is None:
        return tuple(Tensor._wrap(i) for i in np.nonzero(condition._data))
    if isinstance(input, Tensor) or isinstance(other, Tensor):
        a, b = binary_operands(input, other, "where")
    else:
        d = _dt.promote(_dt.scalar_dtype(input), _dt.scalar_dtype(other))
        a, b = scalar_tensor(input, d), scalar_tensor(other, d)
    return apply(_where, condition, a, b)


from .activation import clamp, clamp_max, clamp_min, clip, gelu, leaky_relu, relu, sigmoid, silu  # noqa: E402,F401
from . import elementwise_methods  # noqa: E402,F401  (Tensor dunders, methods and in-place ops)

__all__ = [
    "add", "sub", "mul", "div", "floor_divide", "remainder", "pow", "maximum", "minimum", "neg", "negative", "abs",
    "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "square",
    "reciprocal", "sign", "floor", "ceil", "round", "isnan", "isinf", "isfinite", "clamp", "clamp_min", "clamp_max",
    "clip", "where", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
]
