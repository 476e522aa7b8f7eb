"""nn against torch, part 2: losses, default initialisation, whole models, nn.utils and the
functional namespace (helpers shared with test_nn_layers.py)."""
import math  # noqa: F401
import warnings  # noqa: F401

import numpy as np
import pytest
import torch

import ember
from ember import nn
from ember.nn import functional as F

from .test_nn_layers import ATOL, RTOL, _ember_in, compare, randn, tnn  # noqa: F401


# ---- losses -----------------------------------------------------------------------------------------

def _logits_targets():
    return randn(6, 4), np.array([0, 3, 1, 1, 2, 3], np.int64)


@pytest.mark.parametrize("kw", [{}, dict(reduction="sum"), dict(reduction="none"), dict(ignore_index=1),
                                dict(label_smoothing=0.1), "weight"])
def test_cross_entropy_and_nll(kw):
    x, y = _logits_targets()
    if kw == "weight":
        w = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
        e, t = nn.CrossEntropyLoss(weight=ember.tensor(w)), tnn.CrossEntropyLoss(weight=torch.tensor(w))
        assert list(e.state_dict()) == list(t.state_dict()) == ["weight"]
        compare(e, t, x, y)
        compare(nn.NLLLoss(weight=ember.tensor(w)), tnn.NLLLoss(weight=torch.tensor(w)),
                np.log(np.abs(x) + 0.1), y)
        return
    compare(nn.CrossEntropyLoss(**kw), tnn.CrossEntropyLoss(**kw), x, y)
    if "label_smoothing" not in kw:
        compare(nn.NLLLoss(**kw), tnn.NLLLoss(**kw), np.log(np.abs(x) + 0.1), y)


def test_cross_entropy_probability_targets():
    x = randn(5, 3)
    p = np.abs(randn(5, 3, seed=1))
    p /= p.sum(1, keepdims=True)
    compare(nn.CrossEntropyLoss(), tnn.CrossEntropyLoss(), x, p)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_and_binary_losses(reduction):
    x, y = randn(4, 3), randn(4, 3, seed=1)
    compare(nn.MSELoss(reduction=reduction), tnn.MSELoss(reduction=reduction), x, y)
    compare(nn.L1Loss(reduction=reduction), tnn.L1Loss(reduction=reduction), x, y)
    prob = 1 / (1 + np.exp(-x))
    target = (y > 0).astype(np.float32)
    compare(nn.BCELoss(reduction=reduction), tnn.BCELoss(reduction=reduction), prob, target)
    compare(nn.BCEWithLogitsLoss(reduction=reduction), tnn.BCEWithLogitsLoss(reduction=reduction), x, target)
    w = np.array([0.5, 1.0, 2.0], np.float32)
    compare(nn.BCELoss(weight=ember.tensor(w), reduction=reduction),
            tnn.BCELoss(weight=torch.tensor(w), reduction=reduction), prob, target)
    compare(nn.BCEWithLogitsLoss(pos_weight=ember.tensor(w), reduction=reduction),
            tnn.BCEWithLogitsLoss(pos_weight=torch.tensor(w), reduction=reduction), x, target)


def test_loss_reduction_validation_and_legacy_flags():
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        nn.MSELoss(reduction="avg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert nn.MSELoss(size_average=False).reduction == "sum"
        assert nn.L1Loss(reduce=False).reduction == "none"
    assert repr(nn.CrossEntropyLoss()) == repr(tnn.CrossEntropyLoss()) == "CrossEntropyLoss()"


# ---- default initialisation -------------------------------------------------------------------------

def test_default_init_bounds_follow_torch():
    ember.manual_seed(0)
    lin = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    assert w.min() >= -bound and w.max() <= bound and w.max() > 0.99 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    assert b.min() >= -bound and b.max() <= bound
    conv = nn.Conv2d(16, 32, 3)
    cb = 1 / math.sqrt(16 * 9)
    cw = conv.weight.detach().numpy()
    assert conv.weight.shape == (32, 16, 3, 3) and cw.min() >= -cb and cw.max() <= cb
    assert abs(cw.std() - cb / math.sqrt(3)) < 0.03 * cb
    tw = tnn.Linear(400, 300).weight.detach().numpy()
    assert abs(w.std() - tw.std()) < 0.01 * bound
    bn, ln = nn.BatchNorm2d(3), nn.LayerNorm(4)
    assert bn.weight.tolist() == [1.0] * 3 and bn.bias.tolist() == [0.0] * 3
    assert bn.running_var.tolist() == [1.0] * 3 and bn.num_batches_tracked.item() == 0
    assert ln.weight.tolist() == [1.0] * 4 and ln.bias.tolist() == [0.0] * 4


def test_init_reproducible_and_dtype():
    ember.manual_seed(3)
    a = nn.Linear(5, 4).weight.detach().numpy().copy()
    ember.manual_seed(3)
    b = nn.Linear(5, 4).weight.detach().numpy()
    np.testing.assert_array_equal(a, b)
    d = nn.Linear(3, 2, dtype=ember.float64)
    assert d.weight.dtype == ember.float64 and d.bias.dtype == ember.float64
    assert nn.BatchNorm1d(2, dtype=ember.float64).running_mean.dtype == ember.float64


# ---- whole models -----------------------------------------------------------------------------------

def _all_layers(lib):
    return lib.Sequential(
        lib.Conv2d(1, 4, 3, padding=1), lib.BatchNorm2d(4), lib.ReLU(), lib.MaxPool2d(2),
        lib.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False),
        lib.AvgPool2d(2, stride=1), lib.AdaptiveAvgPool2d((2, 2)), lib.Flatten(), lib.Unflatten(1, (4, 4)),
        lib.Flatten(), lib.Linear(16, 8), lib.LayerNorm(8), lib.GELU(approximate="tanh"), lib.Dropout(0.1),
        lib.Linear(8, 8), lib.BatchNorm1d(8, momentum=None), lib.SiLU(), lib.LeakyReLU(0.1), lib.Tanh(),
        lib.Sigmoid(), lib.Identity(), lib.Linear(8, 3), lib.LogSoftmax(dim=1),
    )


def test_repr_of_all_layers_matches_torch():
    assert repr(_all_layers(nn)) == repr(_all_layers(tnn))
    extras = [
        (nn.Embedding(10, 3, padding_idx=2, max_norm=1.0), tnn.Embedding(10, 3, padding_idx=2, max_norm=1.0)),
        (nn.Conv2d(2, 4, (1, 3), dilation=(2, 1), padding_mode="circular", padding=1),
         tnn.Conv2d(2, 4, (1, 3), dilation=(2, 1), padding_mode="circular", padding=1)),
        (nn.BatchNorm1d(3, affine=False, track_running_stats=False),
         tnn.BatchNorm1d(3, affine=False, track_running_stats=False)),
        (nn.LayerNorm((2, 3), elementwise_affine=False), tnn.LayerNorm((2, 3), elementwise_affine=False)),
        (nn.Softmax(dim=-1), tnn.Softmax(dim=-1)), (nn.Conv2d(2, 2, 3, padding="same"), tnn.Conv2d(2, 2, 3, padding="same")),
    ]
    for e, t in extras:
        assert repr(e) == repr(t)


def test_whole_model_forward_backward_train_and_eval():
    e, t = _all_layers(nn), _all_layers(tnn)
    x = randn(4, 1, 8, 8)
    e[13].p = t[13].p = 0.0  # dropout off so train mode is deterministic
    compare(e, t, x, atol=1e-4)
    e.eval()
    t.eval()
    e.zero_grad()
    t.zero_grad()
    compare(e, t, randn(3, 1, 8, 8, seed=1), load=False, atol=1e-4)


def test_sgd_steps_track_torch():
    """Three manual SGD steps on an MLP: losses and weights stay equal to torch's."""
    e = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    t = tnn.Sequential(tnn.Linear(6, 16), tnn.ReLU(), tnn.Linear(16, 3))
    e.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    x, y = randn(8, 6), np.arange(8) % 3
    e_loss_fn, t_loss_fn = nn.CrossEntropyLoss(), tnn.CrossEntropyLoss()
    for _ in range(3):
        el = e_loss_fn(e(ember.tensor(x)), ember.tensor(y))
        tl = t_loss_fn(t(torch.tensor(x)), torch.tensor(y))
        assert el.item() == pytest.approx(tl.item(), rel=1e-5)
        e.zero_grad()
        t.zero_grad()
        el.backward()
        tl.backward()
        with ember.no_grad():
            for p in e.parameters():
                p -= 0.5 * p.grad
        with torch.no_grad():
            for p in t.parameters():
                p -= 0.5 * p.grad
    for k, v in t.state_dict().items():
        np.testing.assert_allclose(e.state_dict()[k].numpy(), v.numpy(), atol=1e-5, rtol=1e-4)


# ---- nn.utils and nn.functional ---------------------------------------------------------------------

def _grads_pair(seed=0):
    e = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    t = tnn.Sequential(tnn.Linear(4, 5), tnn.Linear(5, 2))
    e.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    x = randn(3, 4, seed=seed) * 3
    (e(ember.tensor(x)) ** 2).sum().backward()
    (t(torch.tensor(x)) ** 2).sum().backward()
    return e, t


@pytest.mark.parametrize("norm_type", [2.0, 1, float("inf"), 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])
def test_clip_grad_norm(norm_type, max_norm):
    e, t = _grads_pair()
    en = nn.utils.clip_grad_norm_(e.parameters(), max_norm, norm_type=norm_type)
    tn = torch.nn.utils.clip_grad_norm_(t.parameters(), max_norm, norm_type=norm_type)
    assert en.item() == pytest.approx(tn.item(), rel=1e-5)
    for ep, tp in zip(e.parameters(), t.parameters()):
        np.testing.assert_allclose(ep.grad.numpy(), tp.grad.numpy(), atol=1e-6, rtol=1e-5)


def test_clip_grad_norm_edge_cases():
    p = nn.Parameter(ember.zeros(3))
    assert nn.utils.clip_grad_norm_([p], 1.0).item() == 0.0  # no grads at all
    p.grad = ember.tensor([float("nan"), 1.0, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)


def test_clip_grad_value_and_vectors():
    e, t = _grads_pair(seed=1)
    nn.utils.clip_grad_value_(e.parameters(), 0.3)
    torch.nn.utils.clip_grad_value_(t.parameters(), 0.3)
    for ep, tp in zip(e.parameters(), t.parameters()):
        assert np.abs(ep.grad.numpy()).max() <= np.float32(0.3)
        np.testing.assert_allclose(ep.grad.numpy(), tp.grad.numpy(), atol=1e-6, rtol=1e-5)
    vec = nn.utils.parameters_to_vector(e.parameters())
    np.testing.assert_allclose(vec.detach().numpy(),
                               torch.nn.utils.parameters_to_vector(t.parameters()).detach().numpy())
    nn.utils.vector_to_parameters(vec * 2, e.parameters())
    np.testing.assert_allclose(e[0].weight.detach().numpy(), 2 * t[0].weight.detach().numpy(), rtol=1e-6)


def test_functional_namespace():
    x = randn(3, 4)
    for name in ["relu", "gelu", "silu", "sigmoid", "tanh"]:
        np.testing.assert_allclose(getattr(F, name)(ember.tensor(x)).numpy(),
                                   getattr(torch.nn.functional, name)(torch.tensor(x)).numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(F.softmax(ember.tensor(x), dim=1).numpy(),
                               torch.softmax(torch.tensor(x), 1).numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(F.log_softmax(ember.tensor(x), 0, dtype=ember.float64).numpy(),
                               torch.log_softmax(torch.tensor(x), 0, dtype=torch.float64).numpy(), atol=1e-6)
    np.testing.assert_allclose(F.leaky_relu(ember.tensor(x), 0.3).numpy(),
                               torch.nn.functional.leaky_relu(torch.tensor(x), 0.3).numpy(), atol=ATOL)
    h = ember.tensor(x)
    assert F.relu(h, inplace=True) is h and h.numpy().min() >= 0
    assert F.one_hot(ember.tensor([0, 2]), 3).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert F.pad(ember.ones(1, 2), (1, 1)).tolist() == [[0.0, 1.0, 1.0, 0.0]]
    for name in ["linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "layer_norm",
                 "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "binary_cross_entropy",
                 "binary_cross_entropy_with_logits", "dropout", "embedding", "logsumexp"]:
        assert callable(getattr(F, name)), name


def test_adaptive_max_pool2d_module_matches_torch():
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 9)).astype(np.float32)
    e = nn.AdaptiveMaxPool2d((3, 4))(ember.from_numpy(x))
    t = torch.nn.AdaptiveMaxPool2d((3, 4))(torch.from_numpy(x))
    np.testing.assert_allclose(e.numpy(), t.numpy())
    assert repr(nn.AdaptiveMaxPool2d((3, 4))) == repr(torch.nn.AdaptiveMaxPool2d((3, 4)))
