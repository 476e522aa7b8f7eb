"""softmax, log_softmax and logsumexp: max-shifted (numerically stable); the last-dim float case
runs fused numba row kernels, other dims use numpy."""
from __future__ import annotations

import warnings

import numpy as np

from ..backends.cpu import reduce_kernels as _rk
from ..tensor import Tensor
from . import elementwise as E
from .registry import apply, backward, kernel, register_op
from .util import norm_dim

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _same(s, *_, **__):
    return s


_softmax = register_op("softmax", attrs={"dim": -1}, shape=_same, save_inputs=False, save_outputs=True,
                       doc="exp(x) / sum(exp(x)) along dim")
_log_softmax = register_op("log_softmax", attrs={"dim": -1}, shape=_same, save_inputs=False, save_outputs=True,
                           doc="x - logsumexp(x) along dim")
_softmax_bw = register_op("softmax_backward", attrs={"dim": -1, "log": False}, shape=_same,
                          doc="softmax / log_softmax gradient from the saved output")


def _fused(x, dim):
    return dim == x.ndim - 1 and x.dtype in _FLOATS


def _softmax_np(x, dim, log):
    with np.errstate(all="ignore"):
        m = np.max(x, axis=dim, keepdims=True)
        m[m == -np.inf] = 0  # an all -inf slice gives nan, like torch, not -inf - -inf warnings
        z = x - m
        e = np.exp(z)
        s = np.sum(e, axis=dim, keepdims=True)
        return z - np.log(s) if log else e / s


def _softmax_cpu(log):
    def k(x, dim=-1):
        if x.ndim == 0:
            return np.zeros_like(x) if log else np.ones_like(x)
        if _fused(x, dim):
            return _rk.softmax_lastdim(np.ascontiguousarray(x), log)
        return _softmax_np(x, dim, log)

    return k


kernel("softmax")(_softmax_cpu(False))
kernel("log_softmax")(_softmax_cpu(True))


@kernel("softmax_backward")
def _softmax_bw_cpu(g, y, dim=-1, log=False):
    if y.ndim == 0:
        return np.zeros_like(y)
    if _fused(y, dim) and g.dtype == y.dtype:
        return _rk.softmax_backward_lastdim(np.ascontiguousarray(g), np.ascontiguousarray(y), log)
    with np.errstate(all="ignore"):
        if log:
            return g - np.exp(y) * np.sum(g, axis=dim, keepdims=True)
        return y * (g - np.sum(g * y, axis=dim, keepdims=True))


backward("softmax")(lambda ctx, g: (apply(_softmax_bw, g, ctx.outputs[0], dim=ctx.attrs["dim"]),))
backward("log_softmax")(lambda ctx, g: (apply(_softmax_bw, g, ctx.outputs[0], dim=ctx.attrs["dim"], log=True),))


def _softmax_dim(x, dim, name, dtype):
    if dtype is not None:
        x = x.to(dtype)
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"{name}: expected a floating point tensor, got {x.dtype}; pass dtype=ember.float32 "
                           f"or call .float() first")
    if dim is None:  # torch's legacy implicit choice
        dim = 0 if x.ndim in (0, 1, 3) else 1
        warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X "
                      f"as an argument.", stacklevel=3)
    return x, norm_dim(dim, x.ndim, name)


def softmax(input, dim=None, dtype=None):
    x, d = _softmax_dim(input, dim, "softmax", dtype)
    return apply(_softmax, x, dim=d)


def log_softmax(input, dim=None, dtype=None):
    x, d = _softmax_dim(input, dim, "log_softmax", dtype)
    return apply(_log_softmax, x, dim=d)


def _lse_rule(shape, dims=(), keepdim=False):
    return tuple(1 if i in dims else s for i, s in enumerate(shape)) if keepdim else \
        tuple(s for i, s in enumerate(shape) if i not in dims)


_logsumexp = register_op("logsumexp", attrs={"dims": (), "keepdim": False}, shape=_lse_rule, save_outputs=True,
                         doc="log(sum(exp(x))) over dims, max-shifted")


@kernel("logsumexp")
def _logsumexp_cpu(x, dims=(), keepdim=False):
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if x.size == 0:
        return np.full(_lse_rule(x.shape, dims, keepdim), -np.inf, x.dtype)
    with np.errstate(all="ignore"):
        m = np.array(np.max(x, axis=dims, keepdims=True))
        m[~np.isfinite(m)] = 0  # all -inf gives -inf, any +inf gives +inf
        out = np.log(np.sum(np.exp(x - m), axis=dims, keepdims=True)) + m
    return out if keepdim else out.reshape(_lse_rule(x.shape, dims, False))


@backward("logsumexp")
def _logsumexp_bw(ctx, g):
    dims = ctx.attrs["dims"]
    shape = tuple(1 if i in dims else s for i, s in enumerate(ctx.input_shapes[0]))
    out, x = ctx.outputs[0].reshape(shape), ctx.inputs[0]
    return (g.reshape(shape) * E.exp(x - out),)


def logsumexp(input, dim, keepdim=False):
    from .util import norm_dims

    dims = norm_dims(dim, input.ndim, "logsumexp") if input.ndim else ()
    return apply(_logsumexp, input, dims=dims, keepdim=bool(keepdim))


Tensor.softmax = softmax
Tensor.log_softmax = log_softmax
Tensor.logsumexp = logsumexp
