"""CUDA kernels of the pointwise losses (mse, l1, smooth_l1, huber, kl_div, binary_cross_entropy with and
without logits) and their backwards, with torch's conventions as the CPU formulas have them.

Each loss is a device function for its value and one for its two derivatives; a small factory builds
three kernels from them: the unreduced loss (one thread per element), the reduced loss (each block
sums its grid-stride share in float64, one more block adds the blocks' sums) and the backward (one
thread per element of the broadcast shape, writing the input and target gradients). Operands
broadcast through element strides (``launch.bstrides``); a gradient whose operand was broadcast is
summed back to that operand's shape by ``_sum_to``, one thread per output element.
binary_cross_entropy does not check that the input lies in [0, 1] (that would sync with the host):
outside it the loss is NaN.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import empty
from .kernel import jit
from .launch import MAXD, TPB, blocks, bstrides, broadcast_shape, device_fn, pad_shape, strided_offset
from .loss_kernels import dev, total
from .norm_kernels import block_sum

F64 = numba.float64
MAX_PARTS = 1024  # blocks of the reduced-loss kernel (each adds a grid-stride share)


@device_fn
def _log(a):
    """log with log(0) = -inf and log(< 0) = nan (the simulator's math.log raises on both)."""
    if a > 0:
        return math.log(a)
    return -math.inf if a == 0 else math.nan


@device_fn
def _clamped_log(a):
    """BCE's log, clamped at -100 (nan stays nan, as np.maximum)."""
    v = _log(a)
    return -100.0 if v < -100.0 else v


@device_fn
def _log1p(a):
    if a > -1:
        return math.log1p(a)
    return -math.inf if a == -1 else math.nan


@device_fn
def _sign(d):
    if d > 0:
        return 1.0
    if d < 0:
        return -1.0
    return F64(d)  # 0 or nan, as np.sign


@device_fn
def _softplus_neg(x):
    """log(1 + exp(-x)), stable for any x."""
    return math.log1p(math.exp(-abs(x))) + (-x if x < 0 else 0.0)


@device_fn
def _sigmoid(x):
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


# Each loss: value(x, t, pw, p, flag) and grads(...) -> (d/dx, d/dt); p is beta or delta, flag is
# log_target (kl_div) or "has pos_weight" (BCE with logits, pw its value).

def _mse(x, t, pw, p, flag):
    d = x - t
    return d * d


def _mse_g(x, t, pw, p, flag):
    d = x - t
    return 2.0 * d, -2.0 * d


def _l1(x, t, pw, p, flag):
    return abs(x - t)


def _l1_g(x, t, pw, p, flag):
    s = _sign(x - t)
    return s, -s


def _smooth_l1(x, t, pw, p, flag):
    d = x - t
    ad = abs(d)
    if p == 0:
        return F64(ad)
    return 0.5 * d * d / p if ad < p else ad - 0.5 * p


def _smooth_l1_g(x, t, pw, p, flag):
    d = x - t
    s = _sign(d) if (p == 0 or abs(d) >= p) else d / p
    return s, -s


def _huber(x, t, pw, p, flag):
    d = x - t
    ad = abs(d)
    return 0.5 * d * d if ad <= p else p * (ad - 0.5 * p)


def _huber_g(x, t, pw, p, flag):
    d = x - t
    s = F64(d) if abs(d) <= p else p * _sign(d)
    return s, -s


def _kl(x, t, pw, p, flag):
    if flag:
        return math.exp(t) * (t - x)
    if t > 0:
        return t * (math.log(t) - x)
    return -t * x * 0.0  # 0, or nan for an infinite input (as the CPU formula)


def _kl_g(x, t, pw, p, flag):
    if flag:
        et = math.exp(t)
        return -et, et * (t - x + 1.0)
    return -F64(t), (math.log(t) + 1.0 - x if t > 0 else 0.0)


def _bce(x, t, pw, p, flag):
    return -(t * _clamped_log(x) + (1.0 - t) * _clamped_log(1.0 - x))


def _bce_g(x, t, pw, p, flag):
    # the target gradient is left unclamped (inf at 0 and 1), as torch
    den = x * (1.0 - x)
    return (x - t) / (1e-12 if den < 1e-12 else den), _log1p(-x) - _log(x)


def _bce_logits(x, t, pw, p, flag):
    lw = 1.0 + (pw - 1.0) * t if flag else 1.0
    return (1.0 - t) * x + lw * _softplus_neg(x)


def _bce_logits_g(x, t, pw, p, flag):
    if flag:
        return (1.0 + (pw - 1.0) * t) * _sigmoid(x) - pw * t, -x + (pw - 1.0) * _softplus_neg(x)
    return _sigmoid(x) - t, -F64(x)


@device_fn
def _offsets(i, nd, shape, s0, s1, s2, s3, s4):
    """Flat offsets of element i of the broadcast shape in five operands (element strides, MAXD-padded)."""
    o0 = 0
    o1 = 0
    o2 = 0
    o3 = 0
    o4 = 0
    r = i
    for d in range(MAXD - 1, MAXD - 1 - nd, -1):
        sz = shape[d]
        j = r % sz
        r //= sz
        o0 += j * s0[d]
        o1 += j * s1[d]
        o2 += j * s2[d]
        o3 += j * s3[d]
        o4 += j * s4[d]
    return o0, o1, o2, o3, o4


def _kernels(value_fn, grads_fn):
    value, grads = device_fn(value_fn), device_fn(grads_fn)

    @jit
    def unreduced(x, t, w, pw, out, n, nd, shape, sx, st, sw, sp, has_w, p, flag):
        i = cuda.grid(1)
        if i < n:
            ix, it, iw, ip, _ = _offsets(i, nd, shape, sx, st, sw, sp, sp)
            v = value(x[ix], t[it], pw[ip], p, flag)
            out[i] = v * w[iw] if has_w else v

    @jit
    def partial(x, t, w, pw, parts, n, nd, shape, sx, st, sw, sp, has_w, p, flag):
        sh = cuda.shared.array(TPB, F64)
        acc = 0.0
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            ix, it, iw, ip, _ = _offsets(i, nd, shape, sx, st, sw, sp, sp)
            v = value(x[ix], t[it], pw[ip], p, flag)
            acc += v * w[iw] if has_w else v
        acc = block_sum(sh, acc)
        if cuda.threadIdx.x == 0:
            parts[cuda.blockIdx.x] = acc

    @jit
    def backward(g, x, t, w, pw, gx, gt, n, nd, shape, sg, sx, st, sw, sp, has_w, scale, p, flag):
        i = cuda.grid(1)
        if i < n:
            ig, ix, it, iw, ip = _offsets(i, nd, shape, sg, sx, st, sw, sp)
            a, b = grads(x[ix], t[it], pw[ip], p, flag)
            s = g[ig] * scale
            if has_w:
                s *= w[iw]
            gx[i] = a * s
            gt[i] = b * s

    return unreduced, partial, backward


@jit
def _sum_to(src, dst, n, out_shape, out_st, red_shape, red_st, n_red):
    """dst[o] = sum of the src elements (of the broadcast shape) that broadcast from dst's element o."""
    o = cuda.grid(1)
    if o < n:
        base = strided_offset(o, out_shape, out_st, 0)
        acc = 0.0
        for k in range(n_red):
            acc += src[strided_offset(k, red_shape, red_st, base)]
        dst[o] = acc


def _unbroadcast(full_grad, shape):
    """``full_grad`` (the broadcast shape) summed back to ``shape``."""
    shape = tuple(shape)
    if full_grad.shape == shape:
        return full_grad
    b = pad_shape(full_grad.shape)
    s = (1,) * (MAXD - len(shape)) + shape
    cs = bstrides(full_grad.shape, full_grad.shape)
    keep = [s[d] == b[d] for d in range(MAXD)]
    out_shape = tuple(b[d] if keep[d] else 1 for d in range(MAXD))
    red_shape = tuple(1 if keep[d] else b[d] for d in range(MAXD))
    out = empty(shape, full_grad.dtype)
    n_red = int(np.prod(red_shape))
    if out.size:
        _sum_to[blocks(out.size), TPB](full_grad.d, out.d, out.size, out_shape,
                                       tuple(cs[d] if keep[d] else 0 for d in range(MAXD)), red_shape,
                                       tuple(0 if keep[d] else cs[d] for d in range(MAXD)), n_red)
    return out


_LOSSES = {
    "mse_loss": (_mse, _mse_g), "l1_loss": (_l1, _l1_g), "smooth_l1_loss": (_smooth_l1, _smooth_l1_g),
    "huber_loss": (_huber, _huber_g), "kl_div": (_kl, _kl_g), "binary_cross_entropy": (_bce, _bce_g),
    "binary_cross_entropy_with_logits": (_bce_logits, _bce_logits_g),
}


def _operands(x, t, extra, params):
    """Broadcast shape and (buffer, strides) of x, t, weight, pos_weight; an absent one reads x (never used)."""
    shape = broadcast_shape(x.shape, t.shape)
    if len(shape) > MAXD:
        raise NotImplementedError(f"pointwise losses on CUDA support at most {MAXD} dims, got shape {shape}")
    names = [n for n in ("weight", "pos_weight") if params.get("has_" + n)]
    given = dict(zip(names, extra))
    ops = [(a.d, bstrides(a.shape, shape)) for a in (x, t)]
    for n in ("weight", "pos_weight"):
        a = given.get(n, x)
        ops.append((a.d, bstrides(a.shape, shape)))
    return shape, ops, "weight" in given, "pos_weight" in given


def _scalars(name, params, has_pw):
    p = float(params.get("beta", params.get("delta", 0.0)))
    flag = bool(params.get("log_target", False)) if name == "kl_div" else has_pw
    return p, flag


def _batch(x):
    return max(x.shape[0] if x.ndim else 1, 1)


def _register(name, value_fn, grads_fn):
    unreduced, partial, backward = _kernels(value_fn, grads_fn)

    def forward(x, t, *extra, reduction, **params):
        shape, ops, has_w, has_pw = _operands(x, t, extra, params)
        p, flag = _scalars(name, params, has_pw)
        (xd, sx), (td, st), (wd, sw), (pd, sp) = ops
        n = int(np.prod(shape))
        args = (n, len(shape), pad_shape(shape), sx, st, sw, sp, has_w, p, flag)
        if reduction == "none":
            out = empty(shape, x.dtype)
            if n:
                unreduced[blocks(n), TPB](xd, td, wd, pd, out.d, *args)
            return out
        n_parts = min(blocks(n), MAX_PARTS)
        parts = empty((n_parts,), np.float64)
        partial[n_parts, TPB](xd, td, wd, pd, parts.d, *args)
        out = empty((), x.dtype)
        denom = float(_batch(x) if reduction == "batchmean" else n) if reduction != "sum" else 1.0
        total[1, TPB](parts.d, n_parts, denom, out.d)
        return out

    def grad(g, x, t, *extra, reduction, **params):
        shape, ops, has_w, has_pw = _operands(x, t, extra, params)
        p, flag = _scalars(name, params, has_pw)
        (xd, sx), (td, st), (wd, sw), (pd, sp) = ops
        g = dev(g)
        n = int(np.prod(shape))
        scale = 1.0
        if reduction == "mean":
            scale = 1.0 / max(n, 1)
        elif reduction == "batchmean":
            scale = 1.0 / _batch(x)
        gx, gt = empty(shape, x.dtype), empty(shape, t.dtype)
        if n:
            backward[blocks(n), TPB](g.d, xd, td, wd, pd, gx.d, gt.d, n, len(shape), pad_shape(shape),
                                     bstrides(g.shape, shape), sx, st, sw, sp, has_w, scale, p, flag)
        return _unbroadcast(gx, x.shape), _unbroadcast(gt, t.shape)

    kernel(name, "cuda")(forward)
    kernel(name + "_backward", "cuda")(grad)


for _name, (_value, _grads) in _LOSSES.items():
    _register(_name, _value, _grads)

