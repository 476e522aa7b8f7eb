"""Reductions: sum/mean/var/std, max/min, arg-reductions, any/all, prod, cumsum, with torch's dtype
rules and gradients (ties share evenly). softmax/log_softmax/logsumexp live in ``softmax.py``."""
from __future__ import annotations

import collections

import numpy as np

from .. import dtypes as _dt
from ..tensor import Tensor
from . import elementwise as E
from .registry import apply, backward, kernel, register_op
from .util import norm_dim, norm_dims

max_result = collections.namedtuple("max", ["values", "indices"])
min_result = collections.namedtuple("min", ["values", "indices"])


def _kshape(shape, dims):
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def _rshape(shape, dims=(), keepdim=False, **_):
    if keepdim:
        return _kshape(shape, dims)
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _keep(g, ctx):
    """The reduced gradient ``g`` with the reduced dims put back as size 1."""
    return g if ctx.attrs.get("keepdim") else g.reshape(_kshape(ctx.input_shapes[0], ctx.attrs["dims"]))


def _back(g, ctx):
    """``g`` broadcast back over the reduced dims (a zero-copy view), in the input's dtype."""
    shape = ctx.input_shapes[0]
    g = (g if g.ndim == 0 else _keep(g, ctx)).expand(shape)  # a full reduction expands from 0-d directly
    return g.to(ctx.input_dtypes[0]) if g.dtype != ctx.input_dtypes[0] else g


def _dims(x, dim, name):
    if dim is None or (not isinstance(dim, (int, np.integer)) and len(dim) == 0):
        return tuple(range(x.ndim))
    return norm_dims(dim, x.ndim, name)


def _dim_rule(shape, dim=None, keepdim=False, **_):
    """Shape rule of ops with one optional ``dim`` (None: all dims)."""
    return _rshape(shape, tuple(range(len(shape))) if dim is None else (dim,), keepdim)


def _count(shape, dims):
    n = 1
    for d in dims:
        n *= shape[d]
    return n


def _reduction(name, doc, extra=None, save_inputs=True, save_outputs=False):
    return register_op(name, attrs={"dims": (), "keepdim": False, **(extra or {})}, shape=_rshape, save_inputs=save_inputs,
                       save_outputs=save_outputs, doc=doc)


# ---- sum / mean / var / std ----------------------------------------------------------------------
_sum = _reduction("sum", "sum over dims (bool/int -> int64)", {"dtype": None}, save_inputs=False)
_mean = _reduction("mean", "mean over dims (floating only)", {"dtype": None}, save_inputs=False)
_var = _reduction("var", "variance over dims with Bessel-style correction", {"correction": 1})
_std = _reduction("std", "standard deviation over dims", {"correction": 1}, save_outputs=True)


@kernel("sum")
def _sum_cpu(x, dims=(), keepdim=False, dtype=None):
    acc = _dt.as_dtype(dtype).np if dtype is not None else (np.int64 if x.dtype.kind in "biu" else None)
    return np.sum(x, axis=dims, keepdims=keepdim, dtype=acc)


@kernel("mean")
def _mean_cpu(x, dims=(), keepdim=False, dtype=None):
    with np.errstate(all="ignore"):
        return np.mean(x, axis=dims, keepdims=keepdim, dtype=None if dtype is None else _dt.as_dtype(dtype).np)


@kernel("var")
def _var_cpu(x, dims=(), keepdim=False, correction=1):
    with np.errstate(all="ignore"):
        return np.var(x, axis=dims, ddof=correction, keepdims=keepdim)


kernel("std")(lambda x, dims=(), keepdim=False, correction=1: np.sqrt(_var_cpu(x, dims, keepdim, correction)))
backward("sum")(lambda ctx, g: (_back(g, ctx),))


@backward("mean")
def _mean_bw(ctx, g):
    return (_back(g / _count(ctx.input_shapes[0], ctx.attrs["dims"]), ctx),)


def _var_grad(ctx, gk):
    """d var / d x times ``gk`` (already shaped with kept dims)."""
    x = ctx.inputs[0]
    dims = ctx.attrs["dims"]
    dof = _count(x.shape, dims) - ctx.attrs.get("correction", 1)
    return (x - mean(x, dims, keepdim=True)) * (gk * (2.0 / dof if dof > 0 else float("nan")))


backward("var")(lambda ctx, g: (_var_grad(ctx, _keep(g, ctx)),))


@backward("std")
def _std_bw(ctx, g):
    sk = _keep(ctx.outputs[0], ctx)
    # torch: zero gradient where std == 0 instead of 0 / 0
    return (_var_grad(ctx, E.where(sk == 0, 0.0, _keep(g, ctx) / (sk * 2))),)


def sum(input, dim=None, keepdim=False, *, dtype=None):
    dims = _dims(input, dim, "sum")
    if dtype is not None:
        return apply(_sum, input, dims=dims, keepdim=bool(keepdim), dtype=_dt.as_dtype(dtype).name)
    return apply(_sum, input, dims=dims, keepdim=bool(keepdim))


def mean(input, dim=None, keepdim=False, *, dtype=None):
    if dtype is None and not input.dtype.is_floating_point:
        raise RuntimeError(f"mean: input dtype must be floating point, got {input.dtype}; "
                           f"call .float() or pass dtype=ember.float32")
    dims = _dims(input, dim, "mean")
    if dtype is not None:
        return apply(_mean, input, dims=dims, keepdim=bool(keepdim), dtype=_dt.as_dtype(dtype).name)
    return apply(_mean, input, dims=dims, keepdim=bool(keepdim))


def _var_like(op, name, input, dim, unbiased, keepdim, correction):
    if isinstance(dim, bool):  # torch.var(x, False): the legacy positional `unbiased`
        dim, unbiased = None, dim
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{name}: input dtype must be floating point, got {input.dtype}")
    if correction is None:
        correction = 1 if unbiased else 0
    return apply(op, input, dims=_dims(input, dim, name), keepdim=bool(keepdim), correction=int(correction))


def var(input, dim=None, unbiased=True, keepdim=False, *, correction=None):
    return _var_like(_var, "var", input, dim, unbiased, keepdim, correction)


def std(input, dim=None, unbiased=True, keepdim=False, *, correction=None):
    return _var_like(_std, "std", input, dim, unbiased, keepdim, correction)


# ---- max / min -------------------------------------------------------------------------------------
_amax = _reduction("amax", "max over dims (ties share the gradient evenly)", save_outputs=True)
_amin = _reduction("amin", "min over dims (ties share the gradient evenly)", save_outputs=True)
kernel("amax")(lambda x, dims=(), keepdim=False: np.max(x, axis=dims, keepdims=keepdim))
kernel("amin")(lambda x, dims=(), keepdim=False: np.min(x, axis=dims, keepdims=keepdim))


def _extreme_bw(ctx, g):
    x, ok = ctx.inputs[0], _keep(ctx.outputs[0], ctx)
    hit = E.logical_or(x == ok, E.logical_and(E.isnan(x), E.isnan(ok)))  # NaN is the max, as in torch
    count = sum(hit, ctx.attrs["dims"], keepdim=True)
    return (E.where(hit, _keep(g, ctx) / count, 0.0),)


backward("amax")(_extreme_bw)
backward("amin")(_extreme_bw)


def _select_rule(shape, dim=0, keepdim=False):
    out = _rshape(shape, (dim,) if shape else (), keepdim)
    return out, out


_max_dim = register_op("max_dim", attrs={"dim": 0, "keepdim": False}, shape=_select_rule, n_outputs=2,
                       save_inputs=False, save_outputs=True, doc="(values, indices) of the max along dim")
_min_dim = register_op("min_dim", attrs={"dim": 0, "keepdim": False}, shape=_select_rule, n_outputs=2,
                       save_inputs=False, save_outputs=True, doc="(values, indices) of the min along dim")
_select_bw = register_op("select_along_backward", attrs={"shape": (), "dim": 0, "keepdim": False},
                         shape=lambda g, i, shape=(), **_: tuple(shape),
                         doc="scatter g into zeros of `shape` at `indices` along dim")


def _select_cpu(argfn):
    def k(x, dim=0, keepdim=False):
        if x.ndim == 0:
            return x.copy(), np.zeros((), np.int64)
        idx = argfn(x, axis=dim, keepdims=True)
        vals = np.take_along_axis(x, idx, axis=dim)
        return (vals, idx) if keepdim else (vals.squeeze(dim), idx.squeeze(dim))

    return k


kernel("max_dim")(_select_cpu(np.argmax))
kernel("min_dim")(_select_cpu(np.argmin))


@kernel("select_along_backward")
def _select_bw_cpu(g, idx, shape=(), dim=0, keepdim=False):
    if not shape:
        return g.copy()
    out = np.zeros(shape, g.dtype)
    if not keepdim:
        g, idx = np.expand_dims(g, dim), np.expand_dims(idx, dim)
    np.put_along_axis(out, idx, g, axis=dim)
    return out


def _select_backward(ctx, g, _):
    a = ctx.attrs
    return (apply(_select_bw, g, ctx.outputs[1], shape=ctx.input_shapes[0], dim=a["dim"], keepdim=a["keepdim"]),)


backward("max_dim")(_select_backward)
backward("min_dim")(_select_backward)


def _check_nonempty(x, dims, name):
    if x.numel() == 0 and (_count(x.shape, dims) == 0 or not dims):
        raise RuntimeError(f"{name}: cannot reduce over a zero-size dimension (input shape {x.shape}); "
                           f"specify a dim of nonzero size")


def amax(input, dim=(), keepdim=False):
    dims = _dims(input, dim, "amax")
    _check_nonempty(input, dims, "amax")
    return apply(_amax, input, dims=dims, keepdim=bool(keepdim))


def amin(input, dim=(), keepdim=False):
    dims = _dims(input, dim, "amin")
    _check_nonempty(input, dims, "amin")
    return apply(_amin, input, dims=dims, keepdim=bool(keepdim))


def _max_min(name, op, full, pair, result, input, dim, keepdim):
    if isinstance(dim, Tensor):
        return pair(input, dim)
    if dim is None:
        return full(input)
    d = norm_dim(dim, input.ndim, name)
    _check_nonempty(input, (d,), name)
    return result(*apply(op, input, dim=d, keepdim=bool(keepdim)))


def max(input, dim=None, keepdim=False):
    """max(x): the largest element; max(x, dim): (values, indices); max(x, other): maximum."""
    return _max_min("max", _max_dim, amax, E.maximum, max_result, input, dim, keepdim)


def min(input, dim=None, keepdim=False):
    """min(x): the smallest element; min(x, dim): (values, indices); min(x, other): minimum."""
    return _max_min("min", _min_dim, amin, E.minimum, min_result, input, dim, keepdim)


_argmax = register_op("argmax", attrs={"dim": None, "keepdim": False}, shape=_dim_rule, save_inputs=False,
                      doc="index of the max (first on ties)")
_argmin = register_op("argmin", attrs={"dim": None, "keepdim": False}, shape=_dim_rule, save_inputs=False,
                      doc="index of the min (first on ties)")


def _arg_cpu(argfn):
    def k(x, dim=None, keepdim=False):
        if dim is None:
            i = np.asarray(argfn(x), np.int64)
            return i.reshape((1,) * x.ndim) if keepdim else i
        return argfn(x, axis=dim, keepdims=keepdim).astype(np.int64, copy=False) if x.ndim else np.zeros((), np.int64)

    return k


kernel("argmax")(_arg_cpu(np.argmax))
kernel("argmin")(_arg_cpu(np.argmin))


def argmax(input, dim=None, keepdim=False):
    d = None if dim is None else norm_dim(dim, input.ndim, "argmax")
    _check_nonempty(input, () if d is None else (d,), "argmax")
    return apply(_argmax, input, dim=d, keepdim=bool(keepdim))


def argmin(input, dim=None, keepdim=False):
    d = None if dim is None else norm_dim(dim, input.ndim, "argmin")
    _check_nonempty(input, () if d is None else (d,), "argmin")
    return apply(_argmin, input, dim=d, keepdim=bool(keepdim))


# ---- any / all / prod / cumsum ---------------------------------------------------------------------
_any = _reduction("any", "True where any element is nonzero", save_inputs=False)
_all = _reduction("all", "True where every element is nonzero", save_inputs=False)
kernel("any")(lambda x, dims=(), keepdim=False: np.any(x, axis=dims, keepdims=keepdim))
kernel("all")(lambda x, dims=(), keepdim=False: np.all(x, axis=dims, keepdims=keepdim))


def any(input, dim=None, keepdim=False):
    return apply(_any, input, dims=_dims(input, dim, "any"), keepdim=bool(keepdim))


def all(input, dim=None, keepdim=False):
    return apply(_all, input, dims=_dims(input, dim, "all"), keepdim=bool(keepdim))


_prod = register_op("prod", attrs={"dim": None, "keepdim": False, "dtype": None}, shape=_dim_rule,
                    doc="product (bool/int -> int64)")
_prod_bw = register_op("prod_backward", attrs={"dim": None, "keepdim": False}, shape=lambda g, x, **_: x,
                       doc="g times the product of all other elements (exact with zeros)")


@kernel("prod")
def _prod_cpu(x, dim=None, keepdim=False, dtype=None):
    acc = _dt.as_dtype(dtype).np if dtype is not None else (np.int64 if x.dtype.kind in "biu" else None)
    if dim is None:
        p = np.prod(x, dtype=acc)
        return np.reshape(p, (1,) * x.ndim) if keepdim else p
    return np.prod(x, axis=dim, keepdims=keepdim, dtype=acc)


@kernel("prod_backward")
def _prod_bw_cpu(g, x, dim=None, keepdim=False):
    a = x.reshape(-1) if dim is None else np.moveaxis(x, dim, -1)
    left, right = np.ones_like(a), np.ones_like(a)  # products of the elements before / after each one
    left[..., 1:] = np.cumprod(a[..., :-1], axis=-1)
    right[..., :-1] = np.cumprod(a[..., ::-1][..., :-1], axis=-1)[..., ::-1]
    others = left * right
    if dim is None:
        return (others * g.reshape(())).reshape(x.shape)
    gk = g if keepdim else np.expand_dims(g, dim)
    return np.moveaxis(others, -1, dim) * gk


@backward("prod")
def _prod_bw_fn(ctx, g):
    a = ctx.attrs
    out = apply(_prod_bw, g, ctx.inputs[0], dim=a.get("dim"), keepdim=a.get("keepdim", False))
    return (out.to(ctx.input_dtypes[0]) if out.dtype != ctx.input_dtypes[0] else out,)


def prod(input, dim=None, keepdim=False, *, dtype=None):
    d = None if dim is None else norm_dim(dim, input.ndim, "prod")
    if input.ndim == 0:
        d = None
    attrs = {"dim": d, "keepdim": bool(keepdim)}
    if dtype is not None:
        attrs["dtype"] = _dt.as_dtype(dtype).name
    return apply(_prod, input, **attrs)


_cumsum = register_op("cumsum", attrs={"dim": 0, "reverse": False, "dtype": None}, shape=lambda s, **_: s,
                      save_inputs=False, doc="running sum along dim (reverse: from the end)")


@kernel("cumsum")
def _cumsum_cpu(x, dim=0, reverse=False, dtype=None):
    acc = _dt.as_dtype(dtype).np if dtype is not None else (np.int64 if x.dtype.kind in "biu" else None)
    if x.ndim == 0:
        return x.astype(acc or x.dtype)
    if reverse:
        return np.ascontiguousarray(np.flip(np.cumsum(np.flip(x, dim), axis=dim, dtype=acc), dim))
    return np.cumsum(x, axis=dim, dtype=acc)


@backward("cumsum")
def _cumsum_bw(ctx, g):
    a = ctx.attrs
    out = apply(_cumsum, g, dim=a.get("dim", 0), reverse=not a.get("reverse", False))
    return (out.to(ctx.input_dtypes[0]) if out.dtype != ctx.input_dtypes[0] else out,)


def cumsum(input, dim, *, dtype=None):
    attrs = {"dim": norm_dim(dim, input.ndim, "cumsum")}
    if dtype is not None:
        attrs["dtype"] = _dt.as_dtype(dtype).name
    return apply(_cumsum, input, **attrs)


from .softmax import log_softmax, logsumexp, softmax  # noqa: E402,F401

for _name in ("sum", "mean", "var", "std", "max", "min", "amax", "amin", "argmax", "argmin", "any", "all", "prod",
              "cumsum", "logsumexp", "softmax", "log_softmax"):
    setattr(Tensor, _name, globals()[_name])

__all__ = ["sum", "mean", "var", "std", "max", "min", "amax", "amin", "argmax", "argmin", "logsumexp", "softmax",
           "log_softmax", "any", "all", "prod", "cumsum"]
