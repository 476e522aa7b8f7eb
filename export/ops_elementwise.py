"""ONNX lowerings of the elementwise ops: arithmetic, math functions, activations, comparisons and logic,
where / masked_fill, cast and clone.

Each lowering casts its inputs to the dtype ember's kernel computes in (the output's, for arithmetic), so
graphs whose inputs differ in dtype export like the kernel runs them. Where ONNX Runtime has no CPU
kernel for a dtype, the op runs in a wider dtype that holds every value (``_emit``) and is cast back.
"""
from __future__ import annotations

import numpy as np

from .lowering import lowers, onnx_dtype

_B, _U8, _I32 = np.dtype(bool), np.dtype(np.uint8), np.dtype(np.int32)
_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_INTS = ("uint8", "int8", "int16", "int32", "int64")
_FLOATS = ("float32", "float64")
_SMALL = ("uint8", "int8", "int32", "int64")  # no int16 kernel

# dtypes ONNX Runtime 1.32's CPU kernels take for each op at every opset from 17 to 28 (probed). float16 has
# real kernels only where listed: for other ops ORT inserts casts to float32 and then drops a float32 ->
# float16 -> float32 pair, losing a rounding numpy does (x // y: the quotient's). So float16 runs through
# explicit float32 casts, which ORT keeps.
_NATIVE = {
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Mod", "Abs", "Less", "LessOrEqual", "Greater",
                     "GreaterOrEqual"), _INTS + _FLOATS),
    **dict.fromkeys(("Max", "Min", "Clip"), _SMALL + ("float16",) + _FLOATS),
    **dict.fromkeys(("Reciprocal", "Sqrt", "Exp", "Log", "Sin", "Cos", "Tanh", "Sigmoid", "IsInf", "Floor",
                     "Ceil", "Relu"), _FLOATS),
    **dict.fromkeys(("Round", "IsNaN"), ("float16",) + _FLOATS),
    **dict.fromkeys(("BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot"), _INTS),
    "Sign": _INTS + ("float16",) + _FLOATS,
    "Where": _SMALL + _FLOATS,
    "Neg": ("int8", "int16", "int32", "int64") + _FLOATS,
    "Pow": ("int32", "int64") + _FLOATS,
    "Equal": ("bool",) + _INTS + _FLOATS,
    "Erf": ("float32",),
    "Gelu": ("float32",),
}
# each step holds every value of the one before; Cast back wraps ints like numpy does
_WIDER = {_B: _U8, _U8: _I32, np.dtype(np.int8): _I32, np.dtype(np.int16): _I32, _I32: np.dtype(np.int64),
          _F16: _F32}
_BOOL_RESULT = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN", "IsInf"}


def _run_dtype(g, op_type, dt):
    """``dt``, or the first wider dtype ONNX Runtime has a kernel of ``op_type`` for."""
    c = dt
    while c.name not in _NATIVE.get(op_type, (c.name,)):
        if c not in _WIDER:
            raise g.error(f"ember bug: no ONNX Runtime kernel of {op_type} for {dt} and no wider dtype to run it in")
        c = _WIDER[c]
    return c


def _emit(g, op_type, inputs, dt, out=None, **attrs):
    """``op_type`` on ``inputs`` (all of dtype ``dt``; '' skips one), run in a dtype ONNX Runtime has a kernel
    for; the result has dtype ``dt`` (bool for comparisons) and is named ``out`` when given."""
    c = _run_dtype(g, op_type, dt)
    if c == dt:
        return g.op(op_type, inputs, out, **attrs)
    cast = {i: g.op("Cast", [i], to=onnx_dtype(c)) for i in set(inputs) if i}
    wide = [cast.get(i, "") for i in inputs]
    if op_type in _BOOL_RESULT:
        return g.op(op_type, wide, out, **attrs)
    return g.op("Cast", [g.op(op_type, wide, **attrs)], out, to=onnx_dtype(dt))


def _out(g, node):
    return node.outputs[0], g.dtype(node.outputs[0])


def _inputs(g, node, dt):
    return [g.cast(i, dt) for i in node.inputs]


def _to(g, name, have, want, out=None):
    """``name`` (of dtype ``have``) as dtype ``want`` (a Cast named ``out`` when given; none when they agree)."""
    return name if have == want and out is None else g.op("Cast", [name], out, to=onnx_dtype(want))


def _math_dtype(dt):
    """The dtype ember's fused kernels compute a float ``dt`` in: float64 stays, float16 goes to float32."""
    return dt if dt == _F64 else _F32


# ---- binary arithmetic -------------------------------------------------------------------------------
_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "maximum": "Max", "minimum": "Min"}
_BOOL_ARITH = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And"}  # numpy's bool ufunc loops


@lowers(*_ARITH)
def _arith(g, node):
    out, dt = _out(g, node)
    a, b = _inputs(g, node, dt)
    if dt != _B:
        _emit(g, _ARITH[node.op], [a, b], dt, out)
    elif node.op in _BOOL_ARITH:
        g.op(_BOOL_ARITH[node.op], [a, b], out)
    else:
        raise g.error("subtraction of bool tensors is not defined (ember refuses it too); use logical_xor")


def _sign_differs(g, r, b, dt):
    """Where the remainder ``r`` of a truncating division is nonzero with a sign other than the divisor ``b``'s:
    there floor division is one less, and python's remainder is ``r + b``."""
    zero = g.scalar(0, dt)
    return g.op("And", [g.op("Not", [_emit(g, "Equal", [r, zero], dt)]),
                        g.op("Xor", [_emit(g, "Less", [r, zero], dt), _emit(g, "Less", [b, zero], dt)])])


def _int_division(g, kind, node, a, b, dt, out):
    """Integer ``kind`` 'floor' / 'trunc' division or python's remainder ('mod') of ``a`` by ``b`` (dtype ``dt``).
    numpy gives 0 for a division by zero where ONNX Runtime fails, so zero divisors are masked unless ``b``
    is a constant without zeros."""
    zero = g.scalar(0, dt)
    const = g.constant_value(node.inputs[1])
    is0 = None
    if const is None or np.any(np.asarray(const).astype(dt) == 0):
        is0 = _emit(g, "Equal", [b, zero], dt)
        b = _select(g, is0, g.scalar(1, dt), b, dt)
    last = out if is0 is None else None
    if kind == "mod":
        y = _emit(g, "Mod", [a, b], dt, last, fmod=0)  # fmod=0: the sign of the divisor, like python
    elif kind == "trunc" or dt.kind == "u":
        y = _emit(g, "Div", [a, b], dt, last)  # ONNX Div truncates ints, like C
    else:
        off = _sign_differs(g, _emit(g, "Mod", [a, b], dt, fmod=1), b, dt)
        y = _emit(g, "Sub", [_emit(g, "Div", [a, b], dt), g.op("Cast", [off], to=onnx_dtype(dt))], dt, last)
    if is0 is not None:
        _select(g, is0, zero, y, dt, out)


@lowers("div")
def _div(g, node):
    out, dt = _out(g, node)
    a, b = _inputs(g, node, dt)  # true division of ints: both cast to float32 first, like the kernel
    mode = node.attrs.get("rounding_mode")
    if mode not in (None, "floor", "trunc"):
        raise g.error(f"div with rounding_mode={mode!r}: only None, 'floor' and 'trunc' exist")
    if mode is None:
        _emit(g, "Div", [a, b], dt, out)
    elif dt.kind != "f":
        _int_division(g, mode, node, a, b, dt, out)
    elif mode == "floor":
        _emit(g, "Floor", [_emit(g, "Div", [a, b], dt)], dt, out)
    else:  # no Trunc in ONNX
        q = _emit(g, "Div", [a, b], dt)
        neg = _emit(g, "Less", [q, g.scalar(0, dt)], dt)
        _select(g, neg, _emit(g, "Ceil", [q], dt), _emit(g, "Floor", [q], dt), dt, out)


@lowers("remainder")
def _remainder(g, node):
    out, dt = _out(g, node)
    a, b = _inputs(g, node, dt)
    if dt.kind != "f":
        _int_division(g, "mod", node, a, b, dt, out)
        return
    # floats: fmod is exact; add b where its sign differs from b's (numpy's npy_divmod)
    r = _emit(g, "Mod", [a, b], dt, fmod=1)
    _select(g, _sign_differs(g, r, b, dt), _emit(g, "Add", [r, b], dt), r, dt, out)


@lowers("pow")
def _pow(g, node):
    out, dt = _out(g, node)
    _emit(g, "Pow", _inputs(g, node, dt), dt, out)


# ---- unary math --------------------------------------------------------------------------------------
_UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal", "sin": "Sin", "cos": "Cos",
          "tanh": "Tanh", "sigmoid": "Sigmoid", "abs": "Abs", "neg": "Neg", "sign": "Sign"}


@lowers(*_UNARY)
def _unary(g, node):
    out, dt = _out(g, node)
    (x,) = _inputs(g, node, dt)  # ints -> float32 for the float functions, as the kernels do
    if dt == _B and node.op == "abs":
        g.op("Identity", [x], out)
    else:
        _emit(g, _UNARY[node.op], [x], dt, out)


@lowers("rsqrt")
def _rsqrt(g, node):
    out, dt = _out(g, node)
    (x,) = _inputs(g, node, dt)
    _emit(g, "Reciprocal", [_emit(g, "Sqrt", [x], dt)], dt, out)


@lowers("square")
def _square(g, node):
    out, dt = _out(g, node)
    (x,) = _inputs(g, node, dt)
    _emit(g, "Mul", [x, x], dt, out)  # bool squares to int8 in numpy: dt is never bool


@lowers("log1p", "expm1")
def _log1p_expm1(g, node):
    """Kahan's accurate forms from log and exp (ONNX has neither log1p nor expm1):
    log1p(x) = x * log(u) / (u - 1) with u = 1 + x; expm1(x) = (u - 1) * x / log(u) with u = exp(x)."""
    out, dt = _out(g, node)
    c = _math_dtype(dt)
    x = g.cast(node.inputs[0], c)
    one, inf = g.scalar(1, c), g.scalar(np.inf, c)
    last = out if c == dt else None
    if node.op == "log1p":
        u = g.op("Add", [x, one])
        d = g.op("Sub", [u, one])
        y = g.op("Mul", [g.op("Log", [u]), g.op("Div", [x, d])])
        y = g.op("Where", [g.op("Equal", [d, g.scalar(0, c)]), x, y])  # 1 + x rounds to 1: log1p(x) = x
        y = g.op("Where", [g.op("Equal", [x, inf]), x, y], last)
    else:
        u = g.op("Exp", [x])
        um1 = g.op("Sub", [u, one])
        y = g.op("Mul", [um1, g.op("Div", [x, g.op("Log", [u])])])
        y = g.op("Where", [g.op("Equal", [u, one]), x, y])
        y = g.op("Where", [g.op("Equal", [um1, g.scalar(-1, c)]), um1, y])  # exp underflows to 0
        y = g.op("Where", [g.op("Equal", [u, inf]), u, y], last)
    if c != dt:
        _to(g, y, c, dt, out)


@lowers("floor", "ceil", "round")
def _rounding(g, node):
    out, dt = _out(g, node)
    x = node.inputs[0]
    if dt.kind != "f":
        g.op("Identity", [x], out)  # the kernels copy int and bool tensors
        return
    op = node.op.capitalize()
    decimals = int(node.attrs.get("decimals", 0) or 0) if node.op == "round" else 0
    if decimals == 0:
        _emit(g, op, [x], dt, out)
        return
    # numpy's around: rint(x * 10**d) / 10**d, or rint(x / 10**-d) * 10**-d, each step in x's dtype
    with np.errstate(over="ignore"):  # past the dtype's range the factor is inf, and so is numpy's
        f = g.scalar(np.power(10.0, abs(decimals)), dt)
    scale, unscale = ("Mul", "Div") if decimals > 0 else ("Div", "Mul")
    _emit(g, unscale, [_emit(g, "Round", [_emit(g, scale, [x, f], dt)], dt), f], dt, out)


# ---- activations -------------------------------------------------------------------------------------
@lowers("relu")
def _relu(g, node):
    out, dt = _out(g, node)
    (x,) = _inputs(g, node, dt)
    if dt.kind == "f":
        _emit(g, "Relu", [x], dt, out)
    else:
        _emit(g, "Max", [x, g.scalar(0, dt)], dt, out)  # the kernel's np.maximum(x, 0)


@lowers("leaky_relu")
def _leaky_relu(g, node):
    out, dt = _out(g, node)
    (x,) = _inputs(g, node, dt)
    slope = float(node.attrs["negative_slope"])
    if dt == _F32:
        g.op("LeakyRelu", [x], out, alpha=slope)
        return
    # float16 / float64: x * slope in x's dtype, like the kernel (ORT has no float64 LeakyRelu)
    pos = _emit(g, "Greater", [x, g.scalar(0, dt)], dt)
    _select(g, pos, x, _emit(g, "Mul", [x, g.scalar(slope, dt)], dt), dt, out)


_SQRT1_2 = 0.7071067811865476
_K_TANH, _C_TANH = 0.7978845608028654, 0.044715


@lowers("gelu")
def _gelu(g, node):
    out, dt = _out(g, node)
    mode = node.attrs.get("approximate", "none")
    if mode not in ("none", "tanh"):
        raise g.error(f"gelu with approximate={mode!r}: only 'none' (erf) and 'tanh' exist")
    c = _math_dtype(dt)
    x = g.cast(node.inputs[0], c)
    last = out if c == dt else None
    if g.opset >= 20 and c == _F32:
        y = g.op("Gelu", [x], last, approximate=mode)
    else:  # the kernel's formula, operation for operation
        k = {v: g.scalar(v, c) for v in (0.5, 1.0, _SQRT1_2, _K_TANH, _C_TANH)}
        if mode == "tanh":
            cube = g.op("Mul", [g.op("Mul", [g.op("Mul", [k[_C_TANH], x]), x]), x])
            t = g.op("Tanh", [g.op("Mul", [k[_K_TANH], g.op("Add", [x, cube])])])
        else:
            # ORT has no float64 Erf: it runs in float32 (relative error ~1e-7 on a float64 gelu)
            z = g.op("Mul", [x, k[_SQRT1_2]])
            t = _to(g, g.op("Erf", [_to(g, z, c, _F32)]), _F32, c)
        y = g.op("Mul", [g.op("Mul", [k[0.5], x]), g.op("Add", [k[1.0], t])], last)
    if c != dt:
        _to(g, y, c, dt, out)


@lowers("silu")
def _silu(g, node):
    out, dt = _out(g, node)
    c = _math_dtype(dt)
    x = g.cast(node.inputs[0], c)
    y = g.op("Mul", [x, g.op("Sigmoid", [x])], out if c == dt else None)
    if c != dt:
        _to(g, y, c, dt, out)


@lowers("clamp")
def _clamp(g, node):
    out, dt = _out(g, node)
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if lo is None and hi is None:
        raise g.error("clamp with neither min nor max: give at least one bound")
    c = _run_dtype(g, "Clip", dt)
    x = _to(g, g.cast(node.inputs[0], dt), dt, c)  # bool -> the output's int dtype first, as np.clip promotes

    def bound(v):
        if v is None:
            return ""
        if c.kind in "iu":  # np.clip accepts python ints outside the dtype's range
            info = np.iinfo(dt)
            v = min(max(int(v), info.min), info.max)
        with np.errstate(over="ignore"):
            return g.scalar(v, c)

    last = out if c == dt else None
    if any(v is not None and np.isnan(v) for v in (lo, hi)):  # Clip ignores a NaN bound; np.clip gives NaN
        y = g.op("Max", [x, bound(lo)], last if hi is None else None) if lo is not None else x
        if hi is not None:
            y = g.op("Min", [y, bound(hi)], last)
    else:
        y = g.op("Clip", [x, bound(lo), bound(hi)], last)
    if c != dt:
        _to(g, y, c, dt, out)


# ---- basic -------------------------------------------------------------------------------------------
@lowers("cast")
def _cast(g, node):
    out, dt = _out(g, node)
    g.op("Cast", [node.inputs[0]], out, to=onnx_dtype(dt))


@lowers("clone")
def _clone(g, node):
    g.op("Identity", [node.inputs[0]], node.outputs[0])


# ---- comparisons and logic ---------------------------------------------------------------------------
_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


@lowers(*_COMPARE, "ne")
def _compare(g, node):
    out = node.outputs[0]
    dt = np.promote_types(*(g.dtype(i) for i in node.inputs))  # numpy's ufunc rule for mixed dtypes
    a, b = _inputs(g, node, dt)
    if node.op == "ne":
        g.op("Not", [_emit(g, "Equal", [a, b], dt)], out)
    else:
        _emit(g, _COMPARE[node.op], [a, b], dt, out)


_LOGICAL = {"logical_and": "And", "logical_or": "Or", "logical_xor": "Xor", "logical_not": "Not"}


@lowers(*_LOGICAL)
def _logical(g, node):
    g.op(_LOGICAL[node.op], _inputs(g, node, _B), node.outputs[0])  # nonzero (and NaN) is True


_BITWISE = {"bitwise_and": "And", "bitwise_or": "Or", "bitwise_xor": "Xor", "bitwise_not": "Not"}


@lowers(*_BITWISE)
def _bitwise(g, node):
    out, dt = _out(g, node)
    xs = _inputs(g, node, dt)
    if dt == _B:
        g.op(_BITWISE[node.op], xs, out)
        return
    onnx_op = "Bitwise" + _BITWISE[node.op]
    g.require_opset(18, f"{node.op} on {dt} tensors (ONNX {onnx_op}; bool tensors export at any opset)")
    g.op(onnx_op, xs, out)


@lowers("isnan", "isinf", "isfinite")
def _isnan_isinf(g, node):
    out, x = node.outputs[0], node.inputs[0]
    dt = g.dtype(x)
    if dt.kind != "f":  # ints and bools are always finite: Equal(x, x) is all True
        same = g.op("Equal", [x, x], out if node.op == "isfinite" else None)
        if node.op != "isfinite":
            g.op("Not", [same], out)
        return
    if node.op == "isnan":
        _emit(g, "IsNaN", [x], dt, out)
    elif node.op == "isinf":
        _emit(g, "IsInf", [x], dt, out)
    else:
        g.op("Not", [g.op("Or", [_emit(g, "IsNaN", [x], dt), _emit(g, "IsInf", [x], dt)])], out)


# ---- selection ---------------------------------------------------------------------------------------
def _select(g, cond, a, b, dt, out=None):
    """Where(cond, a, b) for ``a``, ``b`` of dtype ``dt``, in a dtype ONNX Runtime has a Where kernel for."""
    c = _run_dtype(g, "Where", dt)
    y = g.op("Where", [cond, _to(g, a, dt, c), _to(g, b, dt, c)], out if c == dt else None)
    return y if c == dt else _to(g, y, c, dt, out)


@lowers("where")
def _where_op(g, node):
    out, dt = _out(g, node)
    cond, a, b = node.inputs
    _select(g, g.cast(cond, _B), g.cast(a, dt), g.cast(b, dt), dt, out)


@lowers("masked_fill")
def _masked_fill(g, node):
    out, dt = _out(g, node)
    x, mask, value = node.inputs  # the kernel: np.where(mask, value, x), value a 0-d tensor
    _select(g, g.cast(mask, _B), g.cast(value, dt), g.cast(x, dt), dt, out)
