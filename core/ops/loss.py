"""Losses: cross_entropy and nll_loss as fused primitive ops (they run in every training step), and
the pointwise losses (mse, l1, smooth_l1, huber, kl_div, binary cross-entropy with and without
logits) as primitive ops with torch's exact gradient conventions (e.g. BCE's log clamp at -100).

Every loss op takes (input, target[, weight][, pos_weight]) with the reduction as an attribute and
has one fused backward op. (N, C, d1, ...) inputs are moved to (N * d1 * ..., C) rows first.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..autograd.grad_mode import is_grad_enabled
from ..backends.cpu import loss_kernels as L
from ..backends.cpu.jit import f32c
from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op
from .util import broadcast_shapes

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(op, reduction, allowed=_REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(
            f"{op}: reduction={reduction!r} is not valid; expected one of {', '.join(repr(r) for r in allowed)}"
        )


def _check_no_grad_weight(op, name, t):
    if t is not None and t.requires_grad and is_grad_enabled():
        raise RuntimeError(f"{op}: the loss is not differentiable with respect to {name}; pass {name}.detach()")


def _class_rule(op):
    def rule(x, t, w=None, **attrs):
        if len(x) != 2 or len(t) != 1:
            raise ValueError(f"{op}: expected input (N, C) and target (N,), got {tuple(x)} and {tuple(t)}")
        if x[0] != t[0]:
            raise ValueError(
                f"{op}: expected input batch_size ({x[0]}) to match target batch_size ({t[0]}) "
                f"(input shape {tuple(x)}, target shape {tuple(t)})"
            )
        if w is not None and tuple(w) != (x[1],):
            raise RuntimeError(f"{op}: weight should have shape ({x[1]},) for {x[1]} classes, got {tuple(w)}")
        return (x[0],) if attrs["reduction"] == "none" else ()

    return rule


def _input_grad_rule(g, x, *_, **__):
    """A fused loss backward with inputs (grad, x, target[, weight]): the gradient of x."""
    return x


def _pair_grad_rule(g, x, t, *_, **__):
    """A fused loss backward with inputs (grad, x, target, ...): the gradients of x and of target."""
    return (x, t)


def _raise_bad_target(op, t, pos, n_cls):
    raise IndexError(f"{op}: target {int(t[pos])} is out of bounds for {n_cls} classes (at flat position {pos})")


def _targets(t):
    return np.ascontiguousarray(t, dtype=np.int64)


# ---- cross_entropy with class indices: fused log-softmax + NLL ----------------------------------------

_CE_ATTRS = {"ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
_ce = register_op("cross_entropy", attrs=_CE_ATTRS, shape=_class_rule("cross_entropy"),
                  doc="log_softmax + nll over rows: inputs (x (N, C), target (N,) int[, weight (C,)])")
_ce_bwd = register_op("cross_entropy_backward", attrs=_CE_ATTRS, shape=_input_grad_rule,
                      doc="fused (softmax - onehot) gradient: inputs (grad, x, target[, weight])")


def _ce_prepare(x, t, w, ignore_index):
    """Range-check targets; returns (weight as the kernels take it, summed weight of the kept targets)."""
    n_cls = x.shape[1]
    if x.dtype == np.float32:
        wc = f32c(w) if w is not None else L.NO_WEIGHT
        bad, wsum = L.ce_prepare(t, wc, w is not None, n_cls, ignore_index)
    else:
        wc = w
        bad, wsum = L.ce_check(t, w, n_cls, ignore_index)
    if bad >= 0:
        _raise_bad_target("cross_entropy", t, bad, n_cls)
    return wc, wsum


@kernel("cross_entropy")
def _ce_cpu(x, t, w=None, *, ignore_index, reduction, label_smoothing):
    t = _targets(t)
    wc, wsum = _ce_prepare(x, t, w, ignore_index)
    if x.dtype != np.float32:
        return L.reduce_rows(L.ce_forward_np(x, t, w, ignore_index, label_smoothing), reduction, wsum, x.dtype)
    xc = f32c(x)
    out = np.empty(x.shape[0], np.float32)
    total = L.ce_forward(xc.size, xc, t, wc, w is not None, ignore_index, label_smoothing, out)
    if reduction == "none":
        return out
    if reduction == "mean":
        total = L.safe_div(total, wsum)
    return np.array(total, np.float32)


@backward("cross_entropy")
def _ce_bw(ctx, g):
    ins = ctx.inputs
    gx = None
    if ctx.needs_input_grad[0]:
        if g._data.__class__ is np.ndarray:  # (the kernel directly: the backward records nothing)
            gx = Tensor._wrap(_ce_bwd_cpu(g._data, *[t._data for t in ins], **ctx.attrs))
        else:
            gx = apply(_ce_bwd, g, *ins, **ctx.attrs)
    return (gx,) + (None,) * (len(ins) - 1)


@kernel("cross_entropy_backward")
def _ce_bwd_cpu(g, x, t, w=None, *, ignore_index, reduction, label_smoothing):
    t = _targets(t)
    wc, wsum = _ce_prepare(x, t, w, ignore_index)
    scale = L.safe_div(1.0, wsum) if reduction == "mean" else 1.0
    if x.dtype == np.float32:
        xc = f32c(x)
        gx = np.empty_like(xc)
        g1 = f32c(g).reshape(-1)
        stride = 1 if reduction == "none" else 0
        L.ce_backward(xc.size, xc, t, wc, w is not None, ignore_index, label_smoothing, g1, stride, float(scale), gx)
        return gx
    rows = g * scale if reduction == "none" else np.full(x.shape[0], g * scale)
    return L.ce_backward_np(x, t, w, ignore_index, label_smoothing, rows)


# ---- cross_entropy with class probabilities ------------------------------------------------------------

def _prob_rule(x, t, w=None, **attrs):
    if tuple(x) != tuple(t):
        raise ValueError(f"cross_entropy: probability target shape {tuple(t)} must match input shape {tuple(x)}")
    if w is not None and tuple(w) != (x[1],):
        raise RuntimeError(f"cross_entropy: weight should have shape ({x[1]},) for {x[1]} classes, got {tuple(w)}")
    return (x[0],) if attrs["reduction"] == "none" else ()


_PROB_ATTRS = {"reduction": "mean", "label_smoothing": 0.0}
_ce_prob = register_op("cross_entropy_prob", attrs=_PROB_ATTRS, shape=_prob_rule,
                       doc="soft-target cross entropy over rows: inputs (x (N, C), target (N, C)[, weight (C,)])")
_ce_prob_bwd = register_op("cross_entropy_prob_backward", attrs=_PROB_ATTRS, n_outputs=2, shape=_pair_grad_rule,
                           doc="gradients of cross_entropy_prob for input and target")


@kernel("cross_entropy_prob")
def _ce_prob_cpu(x, t, w=None, *, reduction, label_smoothing):
    out = L.ce_prob_forward(x, t, w, label_smoothing)[0]
    return L.reduce_rows(out, reduction, x.shape[0], x.dtype)


@backward("cross_entropy_prob")
def _ce_prob_bw(ctx, g):
    gx, gt = apply(_ce_prob_bwd, g, *ctx.inputs, **ctx.attrs)
    need = ctx.needs_input_grad
    return (gx if need[0] else None, gt if need[1] else None) + (None,) * (len(need) - 2)


@kernel("cross_entropy_prob_backward")
def _ce_prob_bwd_cpu(g, x, t, w=None, *, reduction, label_smoothing):
    n = x.shape[0]
    rows = g if reduction == "none" else np.full(n, g / n if reduction == "mean" else g)
    return L.ce_prob_backward(x, t, w, label_smoothing, rows)


# ---- nll_loss --------------------------------------------------------------------------------------------

_NLL_ATTRS = {"ignore_index": -100, "reduction": "mean"}
_nll = register_op("nll_loss", attrs=_NLL_ATTRS, shape=_class_rule("nll_loss"),
                   doc="-weight[t] * x[i, t] over rows: inputs (x (N, C) log-probs, target (N,)[, weight (C,)])")
_nll_bwd = register_op("nll_loss_backward", attrs=_NLL_ATTRS, shape=_input_grad_rule, doc="scatter of the nll_loss gradient")


def _nll_parts(x, t, w, ignore_index):
    t = _targets(t)
    bad, wsum = L.ce_check(t, w, x.shape[1], ignore_index)
    if bad >= 0:
        _raise_bad_target("nll_loss", t, bad, x.shape[1])
    valid = t != ignore_index
    tt = np.where(valid, t, 0)
    wt = w[tt].astype(x.dtype) if w is not None else np.ones(len(t), x.dtype)
    return tt, np.where(valid, wt, 0).astype(x.dtype), wsum


@kernel("nll_loss")
def _nll_cpu(x, t, w=None, *, ignore_index, reduction):
    tt, wt, wsum = _nll_parts(x, t, w, ignore_index)
    return L.reduce_rows(-x[np.arange(len(tt)), tt] * wt, reduction, wsum, x.dtype)


@backward("nll_loss")
def _nll_bw(ctx, g):
    ins = ctx.inputs
    gx = apply(_nll_bwd, g, *ins, **ctx.attrs) if ctx.needs_input_grad[0] else None
    return (gx,) + (None,) * (len(ins) - 1)


@kernel("nll_loss_backward")
def _nll_bwd_cpu(g, x, t, w=None, *, ignore_index, reduction):
    tt, wt, wsum = _nll_parts(x, t, w, ignore_index)
    scale = g * L.safe_div(1.0, wsum) if reduction == "mean" else g
    gx = np.zeros(x.shape, x.dtype)
    gx[np.arange(len(tt)), tt] = -wt * np.where(wt != 0, scale, 0)  # ignored rows: 0, even when scale is inf
    return gx


# ---- public class-index losses -------------------------------------------------------------------------

def _to_rows(op, input, target):
    """(C,) / (N, C) / (N, C, d1, ...) input and matching target -> ((M, C) input, (M,) target, out shape)."""
    if input.ndim == 1:
        if target.ndim != 0:
            raise ValueError(f"{op}: an unbatched input of shape {tuple(input.shape)} needs a 0-d target, "
                             f"got shape {tuple(target.shape)}")
        return input.reshape(1, input.shape[0]), target.reshape(1), ()
    if input.ndim == 0:
        raise ValueError(f"{op}: expected input of shape (N, C) or (N, C, d1, ...), got a 0-d tensor")
    n, c, rest = input.shape[0], input.shape[1], tuple(input.shape[2:])
    expected = (n,) + rest
    if tuple(target.shape) != expected:
        if target.ndim == 1 and input.ndim == 2:  # the (N,) vs (N,) batch mismatch: the op rule says it best
            return input, target, expected
        raise ValueError(f"{op}: expected target shape {expected} for input shape {tuple(input.shape)}, "
                         f"got {tuple(target.shape)}")
    if rest:
        perm = (0,) + tuple(range(2, input.ndim)) + (1,)
        input = input.permute(*perm).reshape(-1, c)
        target = target.reshape(-1)
    return input, target, expected


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.functional.cross_entropy: class-index targets (fused op) or class-probability targets."""
    _check_reduction("cross_entropy", reduction)
    if not input.is_floating_point():
        raise TypeError(f"cross_entropy: expected floating point logits, got {input.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    _check_no_grad_weight("cross_entropy", "weight", weight)
    attrs = {"reduction": reduction, "label_smoothing": float(label_smoothing)}
    extra = () if weight is None else (weight,)
    if target.is_floating_point():
        if tuple(target.shape) != tuple(input.shape):
            raise ValueError(f"cross_entropy: float (probability) target shape {tuple(target.shape)} must match "
                             f"input shape {tuple(input.shape)}; class-index targets must be integers")
        x2, t2, shape = _prob_rows(input, target)
        out = apply(_ce_prob, x2, t2, *extra, **attrs)
    else:
        if input.ndim == 2 and target.ndim == 1:  # the common case goes straight to the fused op
            return apply(_ce, input, target, *extra, ignore_index=int(ignore_index), **attrs)
        x2, t2, shape = _to_rows("cross_entropy", input, target)
        out = apply(_ce, x2, t2, *extra, ignore_index=int(ignore_index), **attrs)
    return out.reshape(shape) if reduction == "none" and out.shape != shape else out


def _prob_rows(input, target):
    if input.ndim == 1:
        return input.reshape(1, -1), target.reshape(1, -1), ()
    if input.ndim == 2:
        return input, target, (input.shape[0],)
    perm = (0,) + tuple(range(2, input.ndim)) + (1,)
    c = input.shape[1]
    shape = (input.shape[0],) + tuple(input.shape[2:])
    return input.permute(*perm).reshape(-1, c), target.permute(*perm).reshape(-1, c), shape


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """torch.nn.functional.nll_loss on log-probabilities (N, C) or (N, C, d1, ...)."""
    _check_reduction("nll_loss", reduction)
    _check_no_grad_weight("nll_loss", "weight", weight)
    if not input.is_floating_point():
        raise TypeError(f"nll_loss: expected floating point log-probabilities, got {input.dtype}")
    if target.is_floating_point():
        raise TypeError(f"nll_loss: target must hold integer class indices, got {target.dtype}")
    x2, t2, shape = _to_rows("nll_loss", input, target)
    extra = () if weight is None else (weight,)
    out = apply(_nll, x2, t2, *extra, ignore_index=int(ignore_index), reduction=reduction)
    return out.reshape(shape) if reduction == "none" and out.shape != shape else out


# ---- pointwise losses ----------------------------------------------------------------------------------

# name -> (extra attrs, input and target must have the same shape, reductions)
_POINTWISE = {
    "mse_loss": ({}, False, _REDUCTIONS),
    "l1_loss": ({}, False, _REDUCTIONS),
    "smooth_l1_loss": ({"beta": 1.0}, False, _REDUCTIONS),
    "huber_loss": ({"delta": 1.0}, False, _REDUCTIONS),
    "kl_div": ({"log_target": False}, False, _REDUCTIONS + ("batchmean",)),
    "binary_cross_entropy": ({"has_weight": False}, True, _REDUCTIONS),
    "binary_cross_entropy_with_logits": ({"has_weight": False, "has_pos_weight": False}, True, _REDUCTIONS),
}


def _pointwise_rule(name):
    def rule(x, t, *extra, reduction, **params):
        shape = x if x == t else broadcast_shapes(name, x, t)
        names = [n for n in ("weight", "pos_weight") if params.get("has_" + n)]
        for n, s in zip(names, extra):
            try:
                ok = broadcast_shapes(name, shape, s) == shape
            except RuntimeError:
                ok = False
            if not ok:
                raise RuntimeError(f"{name}: {n} of shape {tuple(s)} does not broadcast to the input shape {shape}")
        return shape if reduction == "none" else ()

    return rule


def _pointwise_forward(name):
    def fwd(x, t, *extra, reduction, **params):
        if name == "binary_cross_entropy" and ((x < 0) | (x > 1)).any():
            raise RuntimeError("binary_cross_entropy: all elements of input should be between 0 and 1")
        return L.pointwise_forward(name, x, t, extra, reduction, params)

    return fwd


def _pointwise_backward_kernel(name):
    def bwd(g, x, t, *extra, reduction, **params):
        return L.pointwise_backward(name, g, x, t, extra, reduction, params)

    return bwd


def _pointwise_backward(bwd_op):
    def bw(ctx, g):
        x, t = ctx.inputs[:2]
        gx, gt = apply(bwd_op, g, *ctx.inputs, **ctx.attrs)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, gt if need[1] and t.is_floating_point() else None) + (None,) * (len(need) - 2)

    return bw


_POINTWISE_OPS = {}
for _name, (_params, _same, _reds) in _POINTWISE.items():
    _attrs = {"reduction": "mean", **_params}
    _fwd = register_op(_name, attrs=_attrs, shape=_pointwise_rule(_name), doc=f"{_name} with its reduction")
    _bwd = register_op(_name + "_backward", attrs=_attrs, n_outputs=2, shape=_pair_grad_rule, doc=f"gradients of {_name}")
    kernel(_name)(_pointwise_forward(_name))
    kernel(_name + "_backward")(_pointwise_backward_kernel(_name))
    backward(_name)(_pointwise_backward(_bwd))
    _POINTWISE_OPS[_name] = _fwd


def _pointwise(name, input, target, reduction, extra=(), **params):
    _, same, reds = _POINTWISE[name]
    _check_reduction(name, reduction, reds)
    if not input.is_floating_point():
        raise TypeError(f"{name}: expected a floating point input, got {input.dtype}")
    if input.shape != target.shape:
        if same:
            raise ValueError(f"{name}: target shape {tuple(target.shape)} must be the same as input shape "
                             f"{tuple(input.shape)}")
        try:
            np.broadcast_shapes(input.shape, target.shape)
        except ValueError:
            raise ValueError(f"{name}: target shape {tuple(target.shape)} and input shape {tuple(input.shape)} "
                             f"are not broadcastable") from None
        if name != "kl_div":
            warnings.warn(f"{name}: target shape {tuple(target.shape)} differs from input shape "
                          f"{tuple(input.shape)}; they will be broadcast, which is likely not intended", stacklevel=3)
    if target.dtype != input.dtype:
        target = target.to(input.dtype)
    return apply(_POINTWISE_OPS[name], input, target, *extra, reduction=reduction, **params)


def mse_loss(input, target, reduction="mean"):
    return _pointwise("mse_loss", input, target, reduction)


def l1_loss(input, target, reduction="mean"):
    return _pointwise("l1_loss", input, target, reduction)


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    return _pointwise("smooth_l1_loss", input, target, reduction, beta=float(beta))


def huber_loss(input, target, reduction="mean", delta=1.0):
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    return _pointwise("huber_loss", input, target, reduction, delta=float(delta))


def kl_div(input, target, reduction="mean", log_target=False):
    """KL(target || exp(input)) pointwise: input holds log-probabilities; 'batchmean' divides by N."""
    return _pointwise("kl_div", input, target, reduction, log_target=bool(log_target))


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """-(t log x + (1 - t) log(1 - x)) with each log clamped at -100, as torch."""
    _check_no_grad_weight("binary_cross_entropy", "weight", weight)
    extra = () if weight is None else (weight,)
    return _pointwise("binary_cross_entropy", input, target, reduction, extra, has_weight=weight is not None)


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Sigmoid + BCE in the stable form (1 - t) x + (1 + (pw - 1) t) log(1 + exp(-x))."""
    for n, t in (("weight", weight), ("pos_weight", pos_weight)):
        _check_no_grad_weight("binary_cross_entropy_with_logits", n, t)
    extra = tuple(a for a in (weight, pos_weight) if a is not None)
    return _pointwise("binary_cross_entropy_with_logits", input, target, reduction, extra,
                      has_weight=weight is not None, has_pos_weight=pos_weight is not None)


__all__ = []
