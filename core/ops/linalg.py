"""Matrix products (matmul with torch's 1-D and batch-broadcast rules, mm, bmm, dot), the fused
``linear`` primitive (y = x @ W^T + b, BLAS into a preallocated output) and vector norms."""
from __future__ import annotations

import numpy as np

from ..backends.cpu import blas
from ..backends.cpu import narrow_linear as _narrow
from ..tensor import Tensor
from . import elementwise as E
from .registry import apply, backward, kernel, prepared_kernel, register_op
from .shape import transpose
from .util import broadcast_shapes, norm_dims, unbroadcast


def _matmul_rule(a, b):
    if not a or not b:
        raise RuntimeError(f"matmul: both arguments need to be at least 1-D, got shapes {tuple(a)} and {tuple(b)}")
    k_b = b[-2] if len(b) > 1 else b[0]
    if a[-1] != k_b:
        raise RuntimeError(f"matmul: shapes {tuple(a)} and {tuple(b)} cannot be multiplied ({a[-1]} != {k_b})")
    batch = broadcast_shapes("matmul (batch dims)", a[:-2], b[:-2]) if len(a) > 2 or len(b) > 2 else ()
    return tuple(batch) + tuple(a[-2:-1]) + (tuple(b[-1:]) if len(b) > 1 else ())


_matmul = register_op("matmul", shape=_matmul_rule, doc="matrix product with torch's 1-D and broadcast rules")
kernel("matmul")(blas.matmul)


def _mm(a, b):
    return apply(_matmul, a, b)


@backward("matmul")
def _matmul_bw(ctx, g):
    a, b = ctx.inputs
    (na, nb), (sa, sb) = ctx.needs_input_grad, ctx.input_shapes
    if len(sa) == 2 and len(sb) == 2:
        return (_mm(g, transpose(b, 0, 1)) if na else None, _mm(transpose(a, 0, 1), g) if nb else None)
    # promote 1-D operands to matrices (a row, b a column), differentiate, then undo
    a2 = a.reshape(1, sa[0]) if len(sa) == 1 else a
    b2 = b.reshape(sb[0], 1) if len(sb) == 1 else b
    g2 = g.reshape(tuple(g.shape[:len(g.shape) - (len(sa) > 1) - (len(sb) > 1)]) + (a2.shape[-2], b2.shape[-1]))
    ga = unbroadcast(_mm(g2, transpose(b2, -2, -1)), a2.shape).reshape(sa) if na else None
    gb = unbroadcast(_mm(transpose(a2, -2, -1), g2), b2.shape).reshape(sb) if nb else None
    return ga, gb


def _same_dtype(name, a, b):
    if a._data.dtype != b._data.dtype:
        raise RuntimeError(f"{name}: expected both operands to have the same dtype, got {a.dtype} and {b.dtype}")


def matmul(input, other):
    _same_dtype("matmul", input, other)
    return apply(_matmul, input, other)


def mm(input, mat2):
    if input.ndim != 2 or mat2.ndim != 2:
        raise RuntimeError(f"mm: expected 2-D tensors, got shapes {input.shape} and {mat2.shape}")
    return matmul(input, mat2)


def bmm(input, mat2):
    if input.ndim != 3 or mat2.ndim != 3 or input.shape[0] != mat2.shape[0]:
        raise RuntimeError(f"bmm: expected 3-D tensors with the same batch size, got shapes {input.shape} and "
                           f"{mat2.shape}")
    return matmul(input, mat2)


def dot(input, other):
    if input.ndim != 1 or other.ndim != 1 or input.shape != other.shape:
        raise RuntimeError(f"dot: expected 1-D tensors of the same size, got shapes {input.shape} and {other.shape}")
    return matmul(input, other)


def _linear_rule(x, w, b=None):
    if len(w) != 2:
        raise RuntimeError(f"linear: weight must be 2-D (out_features, in_features), got shape {tuple(w)}")
    if not x or x[-1] != w[1]:
        raise RuntimeError(f"linear: input has {x[-1] if x else 0} features, weight expects {w[1]} "
                           f"(input shape {tuple(x)})")
    if b is not None and tuple(b) not in ((w[0],), ()):
        raise RuntimeError(f"linear: bias has shape {tuple(b)}, expected ({w[0]},) for weight shape {tuple(w)}")
    return tuple(x[:-1]) + (w[0],)


GEMV_ROWS = 4  # the prepared linear's rows from which the transposed weight is used

_linear = register_op("linear", shape=_linear_rule, save_inputs=(0, 1),
                      doc="x @ weight^T + bias over the last dim of x")


@kernel("linear")
def _linear_cpu(x, w, b=None):
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    out = np.empty((x2.shape[0], w.shape[0]), np.result_type(x.dtype, w.dtype))
    blas.matmul(x2, w.T, out=out)
    if b is not None:
        np.add(out, b, out=out)
    return out if x.ndim == 2 else out.reshape(x.shape[:-1] + (w.shape[0],))


@prepared_kernel("linear")
def _linear_prepare(inputs, attrs):
    """The runtime's linear with a constant float32 weight (and bias): one np.dot into a fresh output, then the
    bias in place. Below GEMV_ROWS rows the weight as it is (x @ w.T: OpenBLAS's GEMV runs contiguous dot products),
    from there on transposed once to a C-contiguous (in, out) (blas.matmul: one thread below SMALL_MACS, as a second
    OpenBLAS thread fights the conv tiles' spinning helpers). The cnn's last layer at batch 1: 2.8-3.1 vs 4.3 us per
    call (the plain kernel). Layers of at most narrow_linear.MAX_OUTPUTS outputs (a classifier's last) take
    narrow_linear's dot-product kernel from GEMV_ROWS rows on (64 x 1568 x 10: ~24 vs ~45 us on one thread)."""
    x, w, *rest = inputs
    b = rest[0] if rest else None
    if x is not None or w is None or w.dtype != np.float32 or w.ndim != 2 or (rest and b is None):
        return None
    if b is not None and (b.dtype != np.float32 or b.shape != (w.shape[0],)):
        return None
    wt, k, n = np.ascontiguousarray(w.T), w.shape[1], w.shape[0]
    narrow = _narrow.PreparedNarrow(w, b) if n <= _narrow.MAX_OUTPUTS and _narrow.kernels(n) is not None else None

    def run(x):
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != k:  # (the plain kernel computes or says why not)
            return _linear_cpu(x, w, b)
        if narrow is not None and x.shape[0] >= GEMV_ROWS:
            return narrow(x)
        out = np.empty((x.shape[0], n), np.float32)
        if x.shape[0] < GEMV_ROWS:
            np.dot(x, w.T, out=out)
        else:
            blas.matmul(x, wt, out=out)
        if b is not None:
            np.add(out, b, out=out)
        return out
    return run


_linear_gw = register_op("linear_weight_grad", shape=lambda g, x: (g[-1], x[-1]),
                         doc="g2^T @ x2 over the flattened leading dims: linear's weight gradient in one GEMM")


@kernel("linear_weight_grad")
def _linear_gw_cpu(g, x):
    g2 = g if g.ndim == 2 else g.reshape(-1, g.shape[-1])
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    out = np.empty((g2.shape[1], x2.shape[1]), np.result_type(g.dtype, x.dtype))
    return blas.matmul(g2.T, x2, out=out)


@backward("linear")
def _linear_bw(ctx, g):
    x, w = ctx.inputs[0], ctx.inputs[1]
    needs = ctx.needs_input_grad
    if g._data.__class__ is np.ndarray:
        return _linear_bw_cpu(ctx, g._data, x._data, w._data, needs)
    g2 = g if g.ndim == 2 else g.reshape(-1, g.shape[-1])
    gx = gw = gb = None
    if needs[0]:
        gx = _mm(g2, w)
        gx = gx if x.ndim == 2 else gx.reshape(x.shape)
    if needs[1]:
        gw = apply(_linear_gw, g, x)
    if len(needs) > 2 and needs[2]:
        gb = g2.sum(0).reshape(ctx.input_shapes[2])
    return (gx, gw, gb) if len(needs) > 2 else (gx, gw)


def _linear_bw_cpu(ctx, g, x, w, needs):
    """linear's backward on numpy arrays: the kernels called directly (the backward records nothing; an op dispatch
    for each of its four small results cost more than their arithmetic in the mlp's last layer)."""
    g2 = g if g.ndim == 2 else g.reshape(-1, g.shape[-1])
    gx = gw = gb = None
    if needs[0]:
        gx = blas.matmul(g2, w)
        gx = Tensor._wrap(gx if x.ndim == 2 else gx.reshape(x.shape))
    if needs[1]:
        gw = Tensor._wrap(_linear_gw_cpu(g, x))
    if len(needs) > 2:
        if needs[2]:
            b = g2.sum(0)
            gb = Tensor._wrap(b if b.shape == ctx.input_shapes[2] else b.reshape(ctx.input_shapes[2]))
        return gx, gw, gb
    return gx, gw


def linear(input, weight, bias=None):
    """y = input @ weight^T + bias, for input of shape (*, in_features) and weight (out_features, in_features)."""
    dt = weight._data.dtype
    if input._data.dtype != dt or (bias is not None and bias._data.dtype != dt):
        got = ", ".join(str(t.dtype) for t in (input, weight, bias) if t is not None)
        raise RuntimeError(f"linear: input, weight and bias must share one dtype, got {got}")
    if bias is None:
        return apply(_linear, input, weight)
    return apply(_linear, input, weight, bias)


# ---- norms ---------------------------------------------------------------------------------------
def _norm_rule(shape, p=2.0, dims=(), keepdim=False):
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


_norm = register_op("norm", attrs={"p": 2.0, "dims": (), "keepdim": False}, shape=_norm_rule, save_outputs=True,
                    doc="vector p-norm over dims (p: a float, 'inf' or '-inf')")


@kernel("norm")
def _norm_cpu(x, p=2.0, dims=(), keepdim=False):
    a = np.abs(x)
    with np.errstate(all="ignore"):
        if p == 2.0:
            return np.sqrt(np.sum(a * a, axis=dims, keepdims=keepdim))
        if p == 1.0:
            return np.sum(a, axis=dims, keepdims=keepdim)
        if p == "inf":
            return np.max(a, axis=dims, keepdims=keepdim)
        if p == "-inf":
            return np.min(a, axis=dims, keepdims=keepdim)
        if p == 0.0:
            return np.sum(a != 0, axis=dims, keepdims=keepdim).astype(x.dtype)
        return np.power(np.sum(np.power(a, p), axis=dims, keepdims=keepdim), 1.0 / p)


@backward("norm")
def _norm_bw(ctx, g):
    x, p, dims = ctx.inputs[0], ctx.attrs.get("p", 2.0), ctx.attrs["dims"]
    kshape = tuple(1 if i in dims else s for i, s in enumerate(x.shape))
    out, g = ctx.outputs[0].reshape(kshape), g.reshape(kshape)
    if p == 0.0:
        return (E.mul(x, 0.0),)
    if p == 1.0:
        return (E.sign(x) * g,)
    if p in ("inf", "-inf"):  # torch shares the gradient evenly among the tied extremes
        hit = E.abs(x) == out
        return (E.sign(x) * E.where(hit, g / hit.sum(dims, keepdim=True), 0.0),)
    # d||x||_p / dx = sign(x) |x|^(p-1) / ||x||^(p-1); torch gives 0 where the norm is 0
    scale = E.where(out == 0, 0.0, g / (out if p == 2.0 else E.pow(out, p - 1)))
    return ((x if p == 2.0 else E.sign(x) * E.pow(E.abs(x), p - 1)) * scale,)


def norm(input, p="fro", dim=None, keepdim=False, dtype=None):
    """Vector p-norm over ``dim`` (all dims by default); p = 'fro' (= 2), a number, inf or -inf."""
    if dtype is not None:
        input = input.to(dtype)
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"norm: expected a floating point tensor, got {input.dtype}")
    if p == "fro" or p is None:
        p = 2.0
    elif isinstance(p, str) or not isinstance(p, (int, float)):
        raise ValueError(f"norm: p must be 'fro', a number, inf or -inf, got {p!r}")
    p = float(p)
    p = "inf" if p == float("inf") else "-inf" if p == float("-inf") else p
    dims = tuple(range(input.ndim)) if dim is None else norm_dims(dim, input.ndim, "norm")
    return apply(_norm, input, p=p, dims=dims, keepdim=bool(keepdim))


Tensor.matmul = matmul
Tensor.mm = mm
Tensor.bmm = bmm
Tensor.dot = dot
Tensor.norm = norm
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = lambda self, other: matmul(other, self)

__all__ = ["matmul", "mm", "bmm", "dot", "norm"]
