"""Composed nn.functional extras (activations, normalize, cosine_similarity) and their Modules, plus the
SmoothL1/Huber/KLDiv loss Modules, against torch: forward, gradients, kinks, broadcasting, reprs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
import ember.nn.functional as F

from .oracle import check_against_torch, gradcheck

_rng = np.random.default_rng(0)

# name, ember fn, torch fn: each on a (3, 5) float32 input spanning the interesting range
ACTIVATIONS = [
    ("elu", lambda x: F.elu(x), TF.elu),
    ("elu_alpha", lambda x: F.elu(x, alpha=0.7), lambda x: TF.elu(x, alpha=0.7)),
    ("softplus", lambda x: F.softplus(x), TF.softplus),
    ("softplus_beta", lambda x: F.softplus(x, beta=2.0, threshold=5.0), lambda x: TF.softplus(x, beta=2.0, threshold=5.0)),
    ("relu6", F.relu6, TF.relu6),
    ("hardtanh", F.hardtanh, TF.hardtanh),
    ("hardtanh_range", lambda x: F.hardtanh(x, -2.0, 0.5), lambda x: TF.hardtanh(x, -2.0, 0.5)),
    ("logsigmoid", F.logsigmoid, TF.logsigmoid),
    ("mish", F.mish, TF.mish),
    ("hardswish", F.hardswish, TF.hardswish),
]
_IDS = [a[0] for a in ACTIVATIONS]


def _spread(*shape):
    """Values over [-8, 8], none at a kink (0, +-1, +-3, 6)."""
    return (_rng.uniform(-8, 8, shape) + 0.013).astype(np.float32)


@pytest.mark.parametrize("name,efn,tfn", ACTIVATIONS, ids=_IDS)
def test_activation_matches_torch(name, efn, tfn):
    check_against_torch(efn, tfn, [_spread(3, 5)])


@pytest.mark.parametrize("name,efn,tfn", ACTIVATIONS, ids=_IDS)
def test_activation_gradcheck(name, efn, tfn):
    gradcheck(efn, [_spread(2, 4).astype(np.float64)])


@pytest.mark.parametrize("name,efn,tfn", ACTIVATIONS, ids=_IDS)
def test_activation_at_kinks_and_extremes(name, efn, tfn):
    # exact torch gradients at the kinks; no overflow / NaN far out (float32 exp overflows past ~88)
    x = np.array([-200.0, -20.5, -6.0, -3.0, -2.0, -1.0, 0.0, 0.5, 1.0, 2.5, 3.0, 6.0, 10.0, 20.0, 200.0], np.float32)
    check_against_torch(efn, tfn, [x])
    e = efn(ember.tensor(x))
    assert np.isfinite(e.numpy()).all()


def test_activation_nan_passes_through():
    x = np.array([np.nan, 1.0], np.float32)
    for _, efn, tfn in ACTIVATIONS:
        np.testing.assert_array_equal(np.isnan(efn(ember.tensor(x)).numpy()), np.isnan(tfn(torch.tensor(x)).numpy()))


@pytest.mark.parametrize("name", ["elu", "relu6", "hardtanh", "mish", "hardswish"])
def test_activation_inplace(name):
    x = _spread(2, 3)
    e = ember.tensor(x)
    assert getattr(F, name)(e, inplace=True) is e
    np.testing.assert_allclose(e.numpy(), getattr(TF, name)(torch.tensor(x)).numpy(), atol=1e-6, rtol=1e-5)
    # in place on a non-leaf keeps the gradient right
    check_against_torch(lambda t: getattr(F, name)(t * 1.0, inplace=True),
                        lambda t: getattr(TF, name)(t * 1.0, inplace=True), [x])


MODULES = [
    ("ELU", dict(alpha=0.5), "ELU(alpha=0.5)"),
    ("Softplus", dict(beta=1.5, threshold=10.0), "Softplus(beta=1.5, threshold=10.0)"),
    ("ReLU6", {}, "ReLU6()"),
    ("ReLU6", dict(inplace=True), "ReLU6(inplace=True)"),
    ("Hardtanh", dict(min_val=-0.5, max_val=2.0), "Hardtanh(min_val=-0.5, max_val=2.0)"),
    ("Mish", {}, "Mish()"),
    ("Hardswish", {}, "Hardswish()"),
    ("LogSigmoid", {}, "LogSigmoid()"),
]


@pytest.mark.parametrize("name,kwargs,rep", MODULES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MODULES)])
def test_activation_modules_match_torch(name, kwargs, rep):
    em, tm = getattr(ember.nn, name)(**kwargs), getattr(torch.nn, name)(**kwargs)
    assert repr(em) == repr(tm) == rep
    check_against_torch(lambda t: em(t * 1.0), lambda t: tm(t * 1.0), [_spread(4, 3)])


def test_hardtanh_bounds_error():
    with pytest.raises(ValueError, match=r"hardtanh: min_val \(2\) cannot be greater than max_val \(1\)"):
        F.hardtanh(ember.ones(2), 2, 1)


# ---- normalize / cosine_similarity -------------------------------------------------------------------

@pytest.mark.parametrize("p,dim", [(2.0, 1), (1.0, 0), (3.0, -1), (2, 2)])
def test_normalize_matches_torch(p, dim):
    x = _rng.standard_normal((3, 4, 2)).astype(np.float32)
    check_against_torch(lambda t: F.normalize(t, p=p, dim=dim), lambda t: TF.normalize(t, p=p, dim=dim), [x])
    gradcheck(lambda t: F.normalize(t, p=p, dim=dim), [x.astype(np.float64)])


def test_normalize_zero_rows_use_eps():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], np.float32)
    check_against_torch(lambda t: F.normalize(t), lambda t: TF.normalize(t), [x])
    check_against_torch(lambda t: F.normalize(t, eps=10.0), lambda t: TF.normalize(t, eps=10.0), [x])


@pytest.mark.parametrize("s1,s2,dim", [((4, 8), (4, 8), 1), ((4, 8), (8,), -1), ((2, 1, 5), (3, 5), 2),
                                       ((3, 4), (3, 1), 0), ((5, 3), (5, 3), 0)])
def test_cosine_similarity_matches_torch(s1, s2, dim):
    a, b = _rng.standard_normal(s1).astype(np.float32), _rng.standard_normal(s2).astype(np.float32)
    check_against_torch(lambda x, y: F.cosine_similarity(x, y, dim=dim),
                        lambda x, y: TF.cosine_similarity(x, y, dim=dim), [a, b])
    gradcheck(lambda x, y: F.cosine_similarity(x, y, dim=dim), [a.astype(np.float64), b.astype(np.float64)])


def test_cosine_similarity_zero_vector_and_errors():
    a = np.array([[0.0, 0.0], [1.0, 2.0]], np.float32)
    b = np.array([[1.0, 1.0], [2.0, 4.0]], np.float32)
    check_against_torch(lambda x, y: F.cosine_similarity(x, y), lambda x, y: TF.cosine_similarity(x, y), [a, b])
    with pytest.raises(RuntimeError, match=r"cosine_similarity: shapes \(2, 3\) and \(2, 4\) are not broadcastable"):
        F.cosine_similarity(ember.ones(2, 3), ember.ones(2, 4))


@settings(deadline=None, max_examples=15)
@given(rows=st.integers(1, 4), cols=st.integers(1, 5), seed=st.integers(0, 50), transposed=st.booleans())
def test_normalize_cosine_noncontiguous(rows, cols, seed, transposed):
    r = np.random.default_rng(seed)
    a, b = r.standard_normal((rows, cols)).astype(np.float32), r.standard_normal((rows, cols)).astype(np.float32)

    def run(f, x, y):
        if transposed:
            x, y = x.t(), y.t()
        return f.normalize(x, dim=0) * 2.0 + f.cosine_similarity(x, y, dim=0).sum()

    check_against_torch(lambda x, y: run(F, x, y), lambda x, y: run(TF, x, y), [a, b])


# ---- loss modules ------------------------------------------------------------------------------------

def _loss_inputs():
    return [_rng.standard_normal((4, 5)).astype(np.float32) * 2, _rng.standard_normal((4, 5)).astype(np.float32)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,kwargs", [("SmoothL1Loss", {}), ("SmoothL1Loss", dict(beta=0.5)),
                                         ("HuberLoss", {}), ("HuberLoss", dict(delta=0.7))])
def test_regression_loss_modules(name, kwargs, reduction):
    em = getattr(ember.nn, name)(reduction=reduction, **kwargs)
    tm = getattr(torch.nn, name)(reduction=reduction, **kwargs)
    check_against_torch(em, tm, _loss_inputs())


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # torch's own warning
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none", "mean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_loss_module(reduction, log_target):
    x, y = _loss_inputs()
    em, tm = ember.nn.KLDivLoss(reduction=reduction, log_target=log_target), torch.nn.KLDivLoss(reduction=reduction,
                                                                                               log_target=log_target)
    assert em.reduction == tm.reduction
    with torch.no_grad():
        tgt = TF.log_softmax(torch.tensor(y), 1) if log_target else TF.softmax(torch.tensor(y), 1)
    check_against_torch(lambda a, t: em(F.log_softmax(a, 1), t), lambda a, t: tm(TF.log_softmax(a, 1), t),
                        [x, tgt.numpy()], grad_inputs=[0])


def test_loss_module_errors_and_state():
    with pytest.raises(ValueError, match="bogus is not a valid value for reduction"):
        ember.nn.HuberLoss(reduction="bogus")
    with pytest.raises(ValueError, match="bogus is not a valid value for reduction"):
        ember.nn.KLDivLoss(reduction="bogus")
    assert ember.nn.SmoothL1Loss(beta=0.25).beta == 0.25 and ember.nn.HuberLoss(delta=2.0).delta == 2.0
    assert list(ember.nn.KLDivLoss().state_dict()) == []
