"""CUDA losses against the CPU backend, forward and backward, through ember.nn.functional and the loss
modules: class-index and class-probability cross-entropy (weight, ignore_index, label_smoothing), nll,
and the pointwise losses with every reduction, broadcasting, weights and their options."""
import warnings

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F

from .conftest import grads_match, same

RNG = np.random.default_rng(0)
RED = dict(rtol=1e-4, atol=1e-5)


def _t(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return ember.from_numpy(RNG.uniform(lo, hi, shape).astype(dtype))


def _labels(n, c, ignored=()):
    a = RNG.integers(0, c, n)
    a[list(ignored)] = -100
    return ember.from_numpy(a)


def _on(t, x):
    """A constant (weight) on x's device."""
    return None if t is None else t.to(x.device)


# ---- cross_entropy -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [{}, {"weight": True}, {"label_smoothing": 0.2},
                                  {"weight": True, "label_smoothing": 0.1, "ignore": True}])
def test_cross_entropy(reduction, opts):
    n, c = 6, 5
    w = _t(c, lo=0.2, hi=2.0) if opts.get("weight") else None
    y = _labels(n, c, ignored=(1, 4) if opts.get("ignore") else ())
    ls = opts.get("label_smoothing", 0.0)
    grads_match(lambda x, y: F.cross_entropy(x, y, _on(w, x), reduction=reduction, label_smoothing=ls), _t(n, c),
                y, **RED)


def test_cross_entropy_float64_wide_rows_and_custom_ignore_index():
    y = ember.from_numpy(np.array([3, 7, 69, 0], np.int32))
    grads_match(lambda x, y: F.cross_entropy(x, y, ignore_index=7, label_smoothing=0.3),
                _t(4, 70, dtype=np.float64), y, **RED)


def test_cross_entropy_spatial_and_module():
    x, y = _t(2, 3, 2, 2), ember.from_numpy(RNG.integers(0, 3, (2, 2, 2)))
    grads_match(lambda x, y: F.cross_entropy(x, y, reduction="none"), x, y, **RED)
    w = _t(3, lo=0.5, hi=1.5)
    loss = {d: nn.CrossEntropyLoss(weight=w.to(d), ignore_index=1, label_smoothing=0.1) for d in ("cpu", "cuda")}
    grads_match(lambda x, y: loss["cuda" if x.is_cuda else "cpu"](x, y), x, y, **RED)


def test_cross_entropy_probability_targets():
    x, p = _t(4, 5), F.softmax(_t(4, 5), dim=1)
    w = _t(5, lo=0.5, hi=1.5)
    for reduction in ("mean", "sum", "none"):
        grads_match(lambda x, p: F.cross_entropy(x, p, reduction=reduction), x, p, **RED)
    grads_match(lambda x, p: F.cross_entropy(x, p, _on(w, x), label_smoothing=0.25), x, p, **RED)
    grads_match(lambda x, p: F.cross_entropy(x, p, reduction="none"), _t(2, 3, 4, dtype=np.float64),
                _t(2, 3, 4, dtype=np.float64, lo=0, hi=1), **RED)


def test_cross_entropy_all_ignored_and_bad_target():
    x = _t(3, 4)
    y = ember.from_numpy(np.full(3, -100))
    same(F.cross_entropy(x, y), F.cross_entropy(x.cuda(), y.cuda()))  # mean over no targets: nan on both
    bad = ember.from_numpy(np.array([0, 9, 1]))
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(x, bad)
    # CUDA does not sync to check: the out-of-range row is NaN
    out = F.cross_entropy(x.cuda(), bad.cuda(), reduction="none").cpu().numpy()
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


# ---- nll_loss ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(reduction):
    w = _t(4, lo=0.2, hi=2.0)
    y = _labels(5, 4, ignored=(2,))
    grads_match(lambda x, y: F.nll_loss(x, y, reduction=reduction), _t(5, 4, lo=-3, hi=0), y, **RED)
    grads_match(lambda x, y: F.nll_loss(x, y, _on(w, x), reduction=reduction), _t(5, 4, lo=-3, hi=0), y, **RED)


def test_nll_loss_spatial_float64_and_module():
    x, y = _t(2, 3, 4, dtype=np.float64, lo=-3, hi=0), ember.from_numpy(RNG.integers(0, 3, (2, 4)))
    grads_match(lambda x, y: F.nll_loss(x, y, ignore_index=0), x, y, **RED)
    grads_match(lambda x, y: nn.NLLLoss(reduction="sum")(x, y), x, y, **RED)


# ---- pointwise losses ----------------------------------------------------------------------------------

_POINTWISE = {
    "mse": lambda x, t, r: F.mse_loss(x, t, reduction=r),
    "l1": lambda x, t, r: F.l1_loss(x, t, reduction=r),
    "smooth_l1": lambda x, t, r: F.smooth_l1_loss(x, t, reduction=r, beta=0.5),
    "smooth_l1_beta0": lambda x, t, r: F.smooth_l1_loss(x, t, reduction=r, beta=0.0),
    "huber": lambda x, t, r: F.huber_loss(x, t, reduction=r, delta=0.7),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(_POINTWISE))
def test_regression_losses(name, reduction):
    fn = _POINTWISE[name]
    grads_match(lambda x, t: fn(x, t, reduction), _t(3, 5), _t(3, 5), **RED)


def test_regression_losses_broadcast_float64_and_modules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broadcast-target warning: the point of this case
        grads_match(lambda x, t: F.mse_loss(x, t), _t(4, 1, 3), _t(2, 3), **RED)
        grads_match(lambda x, t: F.huber_loss(x, t, reduction="none"), _t(3, dtype=np.float64),
                    _t(2, 3, dtype=np.float64), **RED)
    grads_match(lambda x, t: nn.SmoothL1Loss(beta=2.0)(x, t), _t(2, 6), _t(2, 6), **RED)
    grads_match(lambda x, t: nn.L1Loss(reduction="sum")(x, t), _t(2, 6, dtype=np.float64),
                _t(2, 6, dtype=np.float64), **RED)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(reduction, log_target):
    logq = F.log_softmax(_t(3, 4), dim=1)
    p = F.softmax(_t(3, 4), dim=1)
    p = ember.from_numpy(np.where(RNG.uniform(size=(3, 4)) < 0.3, 0.0, p.numpy()).astype(np.float32))
    target = ember.log(p + 1e-3) if log_target else p  # zeros in p: the t > 0 branch and its complement
    grads_match(lambda x, t: F.kl_div(x, t, reduction=reduction, log_target=log_target), logq, target, **RED)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy(reduction):
    x, t = _t(4, 3, lo=0.05, hi=0.95), _t(4, 3, lo=0, hi=1)
    w = _t(3, lo=0.5, hi=1.5)
    grads_match(lambda x, t: F.binary_cross_entropy(x, t, reduction=reduction), x, t, **RED)
    grads_match(lambda x, t: F.binary_cross_entropy(x, t, _on(w, x), reduction=reduction), x, t, **RED)


def test_binary_cross_entropy_clamps_at_the_ends():
    x = ember.from_numpy(np.array([0.0, 1.0, 0.5, 1.0], np.float32))
    t = ember.from_numpy(np.array([1.0, 0.0, 0.5, 1.0], np.float32))
    grads_match(lambda x: F.binary_cross_entropy(x, t.to(x.device), reduction="none"), x, **RED)
    grads_match(lambda x, t: nn.BCELoss()(x, t), _t(5, dtype=np.float64, lo=0.1, hi=0.9),
                _t(5, dtype=np.float64, lo=0, hi=1), **RED)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits(reduction):
    x, t = _t(4, 3, lo=-4, hi=4), _t(4, 3, lo=0, hi=1)
    w, pw = _t(4, 1, lo=0.5, hi=1.5), _t(3, lo=0.5, hi=3.0)
    grads_match(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction=reduction), x, t, **RED)
    grads_match(lambda x, t: F.binary_cross_entropy_with_logits(x, t, _on(w, x), reduction=reduction,
                                                                pos_weight=_on(pw, x)), x, t, **RED)
    grads_match(lambda x, t: nn.BCEWithLogitsLoss(pos_weight=_on(pw, x))(x, t), x, t, **RED)
