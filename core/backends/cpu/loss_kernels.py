"""CPU kernels for the losses: fused log-softmax + NLL (numba, float32) with a numpy path for other
dtypes, and the numpy formulas behind the pointwise losses (value and derivatives).

Cross-entropy per row i with target t, class weights w, smoothing e and C classes:
    loss_i = (1 - e) * w[t] * (lse_i - x[i, t]) + e / C * sum_c w[c] * (lse_i - x[i, c])
    dloss_i/dx[i, c] = (1 - e) * w[t] * (p[i, c] - [c == t]) + e / C * (sum(w) * p[i, c] - w[c])
'mean' divides by the summed weight of the non-ignored targets (torch's convention).
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from .jit import njit, prange_kernel

NO_WEIGHT = np.empty(0, np.float32)


@njit
def ce_prepare(t, w, has_w, n_classes, ignore_index):
    """First out-of-range target position (or -1) and the summed weight of non-ignored targets."""
    wsum = 0.0
    for i in range(t.shape[0]):
        ti = t[i]
        if ti == ignore_index:
            continue
        if ti < 0 or ti >= n_classes:
            return i, 0.0
        wsum += w[ti] if has_w else 1.0
    return -1, wsum


@prange_kernel()
def ce_forward(x, t, w, has_w, ignore_index, smoothing, out):
    """Per-row losses into ``out`` (0 for ignored rows), returns their sum; targets already range-checked."""
    n_rows, n_cls = x.shape
    total = 0.0
    for i in prange(n_rows):
        ti = t[i]
        if ti == ignore_index:
            out[i] = 0.0
        else:
            mx = x[i, 0]
            for c in range(1, n_cls):
                if x[i, c] > mx:
                    mx = x[i, c]
            se = 0.0
            for c in range(n_cls):
                se += np.exp(x[i, c] - mx)
            lse = mx + np.log(se)
            wt = w[ti] if has_w else 1.0
            loss = wt * (lse - x[i, ti])
            if smoothing != 0.0:
                sm = 0.0
                if has_w:
                    for c in range(n_cls):
                        sm += w[c] * (lse - x[i, c])
                else:
                    for c in range(n_cls):
                        sm += lse - x[i, c]
                loss = (1.0 - smoothing) * loss + smoothing / n_cls * sm
            out[i] = loss
            total += loss
    return total


@prange_kernel()
def ce_backward(x, t, w, has_w, ignore_index, smoothing, g, g_stride, g_scale, gx):
    """grad_x; row i's upstream gradient is g[i * g_stride] * g_scale (stride 0 for a reduced loss)."""
    n_rows, n_cls = x.shape
    wsum_all = 0.0
    if smoothing != 0.0:
        if has_w:
            for c in range(n_cls):
                wsum_all += w[c]
        else:
            wsum_all = n_cls
    for i in prange(n_rows):
        ti = t[i]
        if ti == ignore_index:
            for c in range(n_cls):
                gx[i, c] = 0.0
        else:
            s = g[i * g_stride] * g_scale
            mx = x[i, 0]
            for c in range(1, n_cls):
                if x[i, c] > mx:
                    mx = x[i, c]
            se = 0.0
            for c in range(n_cls):
                se += np.exp(x[i, c] - mx)
            inv = 1.0 / se
            wt = w[ti] if has_w else 1.0
            a = np.float32(s * (1.0 - smoothing) * wt * inv)
            if smoothing == 0.0:
                for c in range(n_cls):
                    gx[i, c] = a * np.exp(x[i, c] - mx)
            else:
                k = s * smoothing / n_cls
                b = np.float32(k * wsum_all * inv)
                for c in range(n_cls):
                    wc = w[c] if has_w else 1.0
                    gx[i, c] = (a + b) * np.exp(x[i, c] - mx) - np.float32(k * wc)
            gx[i, ti] -= np.float32(s * (1.0 - smoothing) * wt)


# ---- numpy path (float64, float16) ------------------------------------------------------------------

def safe_div(a, b):
    """a / b with IEEE results for b == 0 (nan for 0 / 0, as torch's mean over no targets)."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)


def reduce_rows(out, reduction, denom, dtype):
    """'none' / 'sum' / 'mean' (sum / denom) of per-element losses, as an array of ``dtype``."""
    if reduction == "none":
        return out.astype(dtype, copy=False)
    total = float(out.sum(dtype=np.float64))
    if reduction == "mean":
        total = safe_div(total, denom)
    return np.array(total, dtype=dtype)


def _work(a):
    return np.float32 if a.dtype == np.float16 else a.dtype.type


def ce_check(t, w, n_classes, ignore_index):
    """numpy twin of ce_prepare."""
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        return int(np.argmax(bad)), 0.0
    if w is None:
        return -1, float(valid.sum())
    return -1, float(w[np.where(valid, t, 0)][valid].sum(dtype=np.float64))


def _log_softmax(x):
    mx = x.max(axis=1, keepdims=True)
    return x - (mx + np.log(np.exp(x - mx).sum(axis=1, keepdims=True)))


def ce_forward_np(x, t, w, ignore_index, smoothing):
    dt = _work(x)
    logp = _log_softmax(x.astype(dt, copy=False))
    valid = t != ignore_index
    tt = np.where(valid, t, 0)
    wt = w.astype(dt)[tt] if w is not None else np.ones(len(t), dt)
    loss = -logp[np.arange(len(t)), tt] * wt
    if smoothing:
        sm = -(logp * w.astype(dt)).sum(axis=1) if w is not None else -logp.sum(axis=1)
        loss = (1 - smoothing) * loss + smoothing / x.shape[1] * sm
    return np.where(valid, loss, 0).astype(x.dtype)


def ce_backward_np(x, t, w, ignore_index, smoothing, row_scale):
    dt = _work(x)
    n, n_cls = x.shape
    p = np.exp(_log_softmax(x.astype(dt, copy=False)))
    valid = t != ignore_index
    tt = np.where(valid, t, 0)
    wd = w.astype(dt) if w is not None else np.ones(n_cls, dt)
    wt = wd[tt]
    gx = (1 - smoothing) * wt[:, None] * p
    gx[np.arange(n), tt] -= (1 - smoothing) * wt
    if smoothing:
        gx += smoothing / n_cls * (wd.sum() * p - wd[None, :])
    gx *= np.where(valid, np.asarray(row_scale, dt), 0)[:, None]
    return gx.astype(x.dtype)


def ce_prob_forward(x, t, w, smoothing):
    """Per-row -sum_c w[c] * t'[c] * log_softmax(x)[c], with t' the smoothed target."""
    dt = _work(x)
    logp = _log_softmax(x.astype(dt, copy=False))
    tp = t.astype(dt) * (1 - smoothing) + smoothing / x.shape[1] if smoothing else t.astype(dt)
    wt = tp * w.astype(dt) if w is not None else tp
    return -(wt * logp).sum(axis=1), logp, wt


def ce_prob_backward(x, t, w, smoothing, row_scale):
    dt = _work(x)
    _, logp, wt = ce_prob_forward(x, t, w, smoothing)
    s = np.asarray(row_scale, dt)[:, None]
    gx = s * (np.exp(logp) * wt.sum(axis=1, keepdims=True) - wt)
    gt = -s * (1 - smoothing) * (logp * w.astype(dt) if w is not None else logp)
    return gx.astype(x.dtype), gt.astype(t.dtype)


# ---- pointwise losses: (value, d/dinput, d/dtarget) on broadcast arrays ----------------------------

def _log_clamped(a):
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(a), -100)


def _softplus_neg(x):
    """log(1 + exp(-x)), stable for any x."""
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def pointwise_value(name, x, t, extra, p):
    d = x - t if name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss") else None
    if name == "mse_loss":
        return d * d
    if name == "l1_loss":
        return np.abs(d)
    if name == "smooth_l1_loss":
        beta, ad = p["beta"], np.abs(d)
        return ad if beta == 0 else np.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
    if name == "huber_loss":
        delta, ad = p["delta"], np.abs(d)
        return np.where(ad <= delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    if name == "kl_div":
        if p["log_target"]:
            return np.exp(t) * (t - x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - x), -t * x * 0)
    if name == "binary_cross_entropy":
        return -(t * _log_clamped(x) + (1 - t) * _log_clamped(1 - x))
    if name == "binary_cross_entropy_with_logits":
        pw = extra.get("pos_weight")
        lw = 1 + (pw - 1) * t if pw is not None else 1
        return (1 - t) * x + lw * _softplus_neg(x)
    raise KeyError(name)


def pointwise_grads(name, x, t, extra, p):
    """(d loss / d input, d loss / d target), elementwise on the broadcast shape."""
    d = x - t if name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss") else None
    if name == "mse_loss":
        return 2 * d, -2 * d
    if name == "l1_loss":
        s = np.sign(d)
        return s, -s
    if name == "smooth_l1_loss":
        beta = p["beta"]
        s = np.sign(d) if beta == 0 else np.where(np.abs(d) < beta, d / beta, np.sign(d))
        return s, -s
    if name == "huber_loss":
        delta = p["delta"]
        s = np.where(np.abs(d) <= delta, d, delta * np.sign(d))
        return s, -s
    if name == "kl_div":
        if p["log_target"]:
            et = np.exp(t)
            return -et, et * (t - x + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -t, np.where(t > 0, np.log(np.where(t > 0, t, 1)) + 1 - x, 0)
    if name == "binary_cross_entropy":
        gx = (x - t) / np.maximum(x * (1 - x), 1e-12)
        with np.errstate(divide="ignore"):  # torch leaves the target gradient unclamped (inf at 0 and 1)
            return gx, np.log1p(-x) - np.log(x)
    if name == "binary_cross_entropy_with_logits":
        pw = extra.get("pos_weight")
        if pw is None:
            return _sigmoid(x) - t, -x
        lw = 1 + (pw - 1) * t
        return lw * _sigmoid(x) - pw * t, -x + (pw - 1) * _softplus_neg(x)
    raise KeyError(name)


def _extras(extra, params, dt):
    names = [n for n in ("weight", "pos_weight") if params.get("has_" + n)]
    return {n: a.astype(dt, copy=False) for n, a in zip(names, extra)}


def _unbroadcast(a, shape):
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    return a.sum(axis=dims, keepdims=True) if dims else a


def _batch(x):
    return max(x.shape[0] if x.ndim else 1, 1)


def pointwise_forward(name, x, t, extra, reduction, params):
    """The reduced (or not) loss ``name``; ``extra`` holds weight and/or pos_weight as params flag them."""
    dt = _work(x)
    ex = _extras(extra, params, dt)
    v = pointwise_value(name, x.astype(dt, copy=False), t.astype(dt, copy=False), ex, params)
    if "weight" in ex:
        v = v * ex["weight"]
    if reduction == "batchmean":
        return np.array(v.sum(dtype=np.float64) / _batch(x), x.dtype)
    return reduce_rows(v, reduction, v.size, x.dtype)


def pointwise_backward(name, g, x, t, extra, reduction, params):
    """(grad_input, grad_target), each summed back to its own (pre-broadcast) shape."""
    dt = _work(x)
    ex = _extras(extra, params, dt)
    gx, gt = pointwise_grads(name, x.astype(dt, copy=False), t.astype(dt, copy=False), ex, params)
    shape = np.broadcast_shapes(x.shape, t.shape)
    scale = g.astype(dt)
    if reduction == "mean":
        scale = scale / dt(max(int(np.prod(shape, dtype=np.int64)), 1))
    elif reduction == "batchmean":
        scale = scale / dt(_batch(x))
    if "weight" in ex:
        scale = scale * ex["weight"]
    gx = np.broadcast_to(gx * scale, shape)
    gt = np.broadcast_to(gt * scale, shape)
    return _unbroadcast(gx, x.shape).astype(x.dtype), _unbroadcast(gt, t.shape).astype(t.dtype)
