"""Normalisation ops: batch_norm (training and eval) and layer_norm, each a primitive op with a fused
forward kernel and one fused backward op; group_norm is composed from them.

Missing weight/bias become ones/zeros constants, so every op has a fixed input list (as ONNX's
BatchNormalization / LayerNormalization do) and one kernel serves affine and non-affine layers.
"""
from __future__ import annotations

import numpy as np

from .. import factories as _factories
from ..autograd.grad_mode import no_grad
from ..backends.cpu import norm_kernels as K
from ..backends.cpu.jit import f32c
from .registry import apply, backward, kernel, register_op
from .util import prod


def _as3d(a):
    """(N, C, *) -> (N, C, S) view/copy, C-contiguous."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


def _work_dtype(a):
    """float32 for float16 (numpy path), else the array's own float dtype."""
    return np.float32 if a.dtype == np.float16 else a.dtype.type


def _channel_shape(c, ndim):
    return (1, c) + (1,) * (ndim - 2)


# ---- batch_norm, training mode --------------------------------------------------------------------

def _bn_train_rule(x, w, b, eps):
    c = x[1]
    return tuple(x), (c,), (c,)


_bn_train = register_op(
    "batch_norm_train", attrs={"eps": 1e-5}, shape=_bn_train_rule, n_outputs=3, save_outputs=(1, 2),
    doc="batch norm with batch statistics: inputs (x, weight, bias); outputs (y, mean, biased var)",
)


@kernel("batch_norm_train")
def _bn_train_cpu(x, w, b, eps):
    if x.dtype == np.float32:
        x3 = _as3d(x)
        y = np.empty_like(x3)
        mean = np.empty(x.shape[1], np.float32)
        var = np.empty(x.shape[1], np.float32)
        K.bn_train_forward(x3.size, x3, f32c(w), f32c(b), float(eps), y, mean, var)
        return y.reshape(x.shape), mean, var
    dt = _work_dtype(x)
    x3 = _as3d(x).astype(dt, copy=False)
    mean = x3.mean(axis=(0, 2))
    var = x3.var(axis=(0, 2))
    scale = w.astype(dt) / np.sqrt(var + dt(eps))
    y = (x3 - mean[:, None]) * scale[:, None] + b.astype(dt)[:, None]
    return y.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), var.astype(x.dtype)


@backward("batch_norm_train")
def _bn_train_bw(ctx, g, g_mean, g_var):
    if g is None:  # only the statistics were used downstream: they carry no gradient here
        return None, None, None
    x, w, _ = ctx.inputs
    _, mean, var = ctx.outputs
    return _bn_backward(ctx, g, x, mean, var, w, training=True)


# ---- batch_norm, fixed statistics (eval) ----------------------------------------------------------

def _bn_rule(x, rm, rv, w, b, eps):
    for name, s in (("running_mean", rm), ("running_var", rv), ("weight", w), ("bias", b)):
        if tuple(s) != (x[1],):
            raise RuntimeError(
                f"batch_norm: {name} should have shape ({x[1]},) for an input with {x[1]} channels "
                f"(input shape {tuple(x)}), got {tuple(s)}"
            )
    return tuple(x)


_bn = register_op(
    "batch_norm", attrs={"eps": 1e-5}, shape=_bn_rule,
    doc="batch norm with given statistics: inputs (x, running_mean, running_var, weight, bias)",
)


@kernel("batch_norm")
def _bn_cpu(x, rm, rv, w, b, eps):
    dt = _work_dtype(x)
    scale = w.astype(np.float64) / np.sqrt(rv.astype(np.float64) + eps)
    shift = b.astype(np.float64) - rm.astype(np.float64) * scale
    if x.dtype == np.float32:
        x3 = _as3d(x)
        y = np.empty_like(x3)
        K.channel_affine(x3.size, x3, scale.astype(np.float32), shift.astype(np.float32), y)
        return y.reshape(x.shape)
    x3 = _as3d(x).astype(dt, copy=False)
    y = x3 * scale.astype(dt)[:, None] + shift.astype(dt)[:, None]
    return y.reshape(x.shape).astype(x.dtype)


@backward("batch_norm")
def _bn_bw(ctx, g):
    x, rm, rv, w, _ = ctx.inputs
    need = ctx.needs_input_grad
    gx, gw, gb = _bn_backward(ctx, g, x, rm, rv, w, training=False, need=(need[0], need[3], need[4]))
    return gx, None, None, gw, gb


# ---- the shared fused backward ---------------------------------------------------------------------

def _norm_bwd_rule(g, x, mean, var, w, **_):
    """Fused norm backward, inputs (grad_y, x, stat, stat, weight): grads of x, weight and bias."""
    return tuple(x), tuple(w), tuple(w)


_bn_bwd = register_op(
    "batch_norm_backward", attrs={"eps": 1e-5, "training": True}, n_outputs=3, shape=_norm_bwd_rule,
    doc="fused batch-norm gradients: inputs (grad_y, x, mean, var, weight) -> (grad_x, grad_w, grad_b)",
)


@kernel("batch_norm_backward")
def _bn_bwd_cpu(g, x, mean, var, w, eps, training):
    n_ch = x.shape[1]
    if x.dtype == np.float32:
        x3 = _as3d(x)
        g3 = _as3d(f32c(g))
        gx = np.empty_like(x3)
        gw = np.empty(n_ch, np.float32)
        gb = np.empty(n_ch, np.float32)
        K.bn_backward(x3.size, g3, x3, f32c(mean), f32c(var), f32c(w), float(eps), bool(training), gx, gw, gb)
        return gx.reshape(x.shape), gw, gb
    dt = _work_dtype(x)
    x3 = _as3d(x).astype(dt, copy=False)
    g3 = _as3d(g).astype(dt, copy=False)
    inv = 1.0 / np.sqrt(var.astype(dt) + dt(eps))
    xc = x3 - mean.astype(dt)[:, None]
    sg = g3.sum(axis=(0, 2))
    sgx = (g3 * xc).sum(axis=(0, 2))
    k1 = (w.astype(dt) * inv)[:, None]
    if training:
        count = x3.shape[0] * x3.shape[2]
        gx = k1 * (g3 - (sg / count)[:, None] - xc * (sgx * inv * inv / count)[:, None])
    else:
        gx = g3 * k1
    return gx.reshape(x.shape).astype(x.dtype), (sgx * inv).astype(x.dtype), sg.astype(x.dtype)


def _bn_backward(ctx, g, x, mean, var, w, training, need=None):
    need = need or (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
    gx, gw, gb = apply(_bn_bwd, g, x, mean, var, w, eps=ctx.attrs["eps"], training=training)
    return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None)


# ---- public batch_norm -----------------------------------------------------------------------------

def _param_or(t, fill, c, dtype, device=None):
    if t is not None:
        return t
    return _factories.full((c,), fill, dtype=dtype, device=device)


def _check_stat(name, t, c, shape):
    if t is not None and tuple(t.shape) != (c,):
        raise RuntimeError(
            f"batch_norm: {name} should have shape ({c},) for an input with {c} channels "
            f"(input shape {tuple(shape)}), got {tuple(t.shape)}"
        )


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm for (N, C, *) inputs. In training, normalises with the batch
    statistics and updates ``running_mean``/``running_var`` in place (unbiased variance, as torch)."""
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of shape (N, C, *), got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"batch_norm: expected a floating point input, got {input.dtype}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _check_stat(name, t, c, input.shape)
    w = _param_or(weight, 1.0, c, input.dtype, input.device)
    b = _param_or(bias, 0.0, c, input.dtype, input.device)
    if not training:
        if running_mean is None or running_var is None:
            raise RuntimeError(
                "batch_norm: running_mean and running_var must be given in evaluation mode (training=False)"
            )
        return apply(_bn, input, running_mean, running_var, w, b, eps=float(eps))
    count = input.numel() // c if c else 0
    if count <= 1:
        raise ValueError(
            f"batch_norm: expected more than 1 value per channel when training, got input shape {tuple(input.shape)}"
        )
    y, mean, var = apply(_bn_train, input, w, b, eps=float(eps))
    if running_mean is not None or running_var is not None:
        if momentum is None:
            raise TypeError("batch_norm: momentum must be a float (use the module's cumulative average for None)")
        m = float(momentum)
        with no_grad():
            if running_mean is not None:
                _ema_(running_mean, mean, m)
            if running_var is not None:
                _ema_(running_var, var, m, count / (count - 1))
    return y


def _ema_(stat, value, momentum, factor=1.0):
    """stat = (1 - momentum) * stat + momentum * factor * value, written into stat's buffer."""
    buf = stat._data
    if buf.__class__ is not np.ndarray:  # CUDA: the same update with device ops (float32 arithmetic)
        if value.device != stat.device:
            raise RuntimeError(f"batch_norm: running statistics are on {stat.device} but the input is on "
                               f"{value.device}; move the module with .to(device)")
        buf[...] = (stat.detach() * (1.0 - momentum) + value.detach() * (momentum * factor))._data
    else:
        new = (1.0 - momentum) * buf.astype(np.float64) + momentum * (value._data.astype(np.float64) * factor)
        np.copyto(buf, new, casting="unsafe")
    stat._bump_version()


# ---- layer_norm ------------------------------------------------------------------------------------

def _ln_rule(x, w, b, normalized_shape, eps):
    k = len(normalized_shape)
    if k == 0 or len(x) < k or tuple(x[len(x) - k:]) != tuple(normalized_shape):
        raise RuntimeError(
            f"layer_norm: given normalized_shape={list(normalized_shape)}, expected input with shape "
            f"[*, {', '.join(str(s) for s in normalized_shape)}], but got input of size {list(x)}"
        )
    for name, s in (("weight", w), ("bias", b)):
        if tuple(s) != tuple(normalized_shape):
            raise RuntimeError(
                f"layer_norm: {name} should have shape {tuple(normalized_shape)} (normalized_shape), got {tuple(s)}"
            )
    lead = prod(x[: len(x) - k])
    return tuple(x), (lead,), (lead,)


_ln = register_op(
    "layer_norm", attrs={"normalized_shape": (), "eps": 1e-5}, shape=_ln_rule, n_outputs=3, save_outputs=(1, 2),
    doc="normalise over the trailing dims: inputs (x, weight, bias); outputs (y, mean, rstd) per row",
)


def _rows(x, normalized_shape):
    k = int(np.prod(normalized_shape, dtype=np.int64))
    return np.ascontiguousarray(x).reshape(-1, k)


@kernel("layer_norm")
def _ln_cpu(x, w, b, normalized_shape, eps):
    x2 = _rows(x, normalized_shape)
    if x.dtype == np.float32:
        y = np.empty_like(x2)
        mean = np.empty(x2.shape[0], np.float32)
        rstd = np.empty(x2.shape[0], np.float32)
        K.ln_forward(x2.size, x2, f32c(w).reshape(-1), f32c(b).reshape(-1), float(eps), y, mean, rstd)
        return y.reshape(x.shape), mean, rstd
    dt = _work_dtype(x)
    x2 = x2.astype(dt, copy=False)
    mean = x2.mean(axis=1)
    rstd = 1.0 / np.sqrt(x2.var(axis=1) + dt(eps))
    y = (x2 - mean[:, None]) * rstd[:, None] * w.astype(dt).reshape(-1) + b.astype(dt).reshape(-1)
    return y.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


@backward("layer_norm")
def _ln_bw(ctx, g, g_mean, g_rstd):
    if g is None:
        return None, None, None
    x, w, _ = ctx.inputs
    _, mean, rstd = ctx.outputs
    gx, gw, gb = apply(_ln_bwd, g, x, mean, rstd, w, normalized_shape=ctx.attrs["normalized_shape"])
    need = ctx.needs_input_grad
    return (gx if need[0] else None, gw if need[1] else None, gb if need[2] else None)


_ln_bwd = register_op(
    "layer_norm_backward", attrs={"normalized_shape": ()}, n_outputs=3, shape=_norm_bwd_rule,
    doc="fused layer-norm gradients: inputs (grad_y, x, mean, rstd, weight) -> (grad_x, grad_w, grad_b)",
)


@kernel("layer_norm_backward")
def _ln_bwd_cpu(g, x, mean, rstd, w, normalized_shape):
    x2 = _rows(x, normalized_shape)
    wshape = tuple(normalized_shape)
    if x.dtype == np.float32:
        g2 = _rows(f32c(g), normalized_shape)
        gx = np.empty_like(x2)
        parts = K.ln_backward_parts(x2.shape[0], x2.size)
        gw = np.zeros((parts, x2.shape[1]), np.float32)
        gb = np.zeros((parts, x2.shape[1]), np.float32)
        K.ln_backward(x2.size, g2, x2, f32c(mean), f32c(rstd), f32c(w).reshape(-1), gx, gw, gb)
        return gx.reshape(x.shape), gw.sum(axis=0).reshape(wshape), gb.sum(axis=0).reshape(wshape)
    dt = _work_dtype(x)
    x2 = x2.astype(dt, copy=False)
    g2 = _rows(g, normalized_shape).astype(dt, copy=False)
    xh = (x2 - mean.astype(dt)[:, None]) * rstd.astype(dt)[:, None]
    gwx = g2 * w.astype(dt).reshape(-1)
    gx = gwx - gwx.mean(axis=1, keepdims=True) - xh * (gwx * xh).mean(axis=1, keepdims=True)
    gx *= rstd.astype(dt)[:, None]
    gw = (g2 * xh).sum(axis=0).reshape(wshape)
    gb = g2.sum(axis=0).reshape(wshape)
    return gx.reshape(x.shape).astype(x.dtype), gw.astype(x.dtype), gb.astype(x.dtype)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm: normalise over the trailing ``normalized_shape`` dims."""
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    normalized_shape = tuple(int(s) for s in normalized_shape)
    if not input.is_floating_point():
        raise TypeError(f"layer_norm: expected a floating point input, got {input.dtype}")
    w = weight if weight is not None else _factories.ones(*normalized_shape, dtype=input.dtype, device=input.device)
    b = bias if bias is not None else _factories.zeros(*normalized_shape, dtype=input.dtype, device=input.device)
    return apply(_ln, input, w, b, normalized_shape=normalized_shape, eps=float(eps))[0]


# ---- group_norm (composite) ------------------------------------------------------------------------

def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.group_norm: each (sample, group) normalised with its own statistics.
    Composed as batch-norm statistics over a (1, N*G, rest) view, then the per-channel affine."""
    if input.ndim < 2:
        raise ValueError(f"group_norm: expected an input of shape (N, C, *), got shape {tuple(input.shape)}")
    n, c = input.shape[0], input.shape[1]
    if num_groups <= 0 or c % num_groups:
        raise RuntimeError(
            f"group_norm: expected the number of channels ({c}) to be divisible by num_groups ({num_groups}), "
            f"input shape {tuple(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise RuntimeError(f"group_norm: {name} should have shape ({c},), got {tuple(t.shape)}")
    grouped = input.reshape(1, n * num_groups, -1)
    if grouped.shape[2] <= 1:
        raise ValueError(
            f"group_norm: expected more than 1 value per group, got input shape {tuple(input.shape)} "
            f"with {num_groups} groups"
        )
    # through the factories, so a traced batch size stays symbolic instead of baking n * num_groups in
    ones = _factories.ones(n * num_groups, dtype=input.dtype, device=input.device)
    zeros = _factories.zeros(n * num_groups, dtype=input.dtype, device=input.device)
    y = apply(_bn_train, grouped, ones, zeros, eps=float(eps))[0].reshape(input.shape)
    cshape = _channel_shape(c, input.ndim)
    if weight is not None:
        y = y * weight.reshape(cshape)
    if bias is not None:
        y = y + bias.reshape(cshape)
    return y


__all__ = []
