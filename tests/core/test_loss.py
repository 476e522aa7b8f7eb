"""Losses against PyTorch (every reduction, weights, ignore_index, label smoothing, probability
targets), float64 central differences, and error messages."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import ember
from ember.ops import loss as L

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(1)
REDUCTIONS = ["none", "mean", "sum"]


def _rand(*shape, dtype=np.float32, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def _targets(n, c, ignore=()):
    t = RNG.integers(0, c, size=n)
    for i in ignore:
        t[i] = -100
    return t


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_class_indices(reduction, weighted, smoothing, dtype):
    x, t = _rand(7, 5, dtype=dtype, scale=3.0), _targets(7, 5, ignore=(2,))
    arrays = [x, t] + ([RNG.random(5).astype(dtype) + 0.1] if weighted else [])
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    check_against_torch(lambda x, t, *w: L.cross_entropy(x, t, *w, **kw),
                        lambda x, t, *w: F.cross_entropy(x, t, *w, **kw), arrays, grad_inputs=[0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_custom_ignore_index_and_parallel_rows(reduction):
    x, t = _rand(512, 64, scale=4.0), _targets(512, 64)  # 32768 logits: the parallel kernels
    t[::7] = 3
    check_against_torch(lambda x, t: L.cross_entropy(x, t, ignore_index=3, reduction=reduction),
                        lambda x, t: F.cross_entropy(x, t, ignore_index=3, reduction=reduction), [x, t])


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("fn", [L.cross_entropy, L.nll_loss])
@pytest.mark.parametrize("dtype", [ember.float32, ember.float64])
def test_all_targets_ignored_gives_nan_loss_and_zero_grad_like_torch(fn, dtype):
    x, t = ember.randn(3, 4, dtype=dtype, requires_grad=True), ember.tensor([-100, -100, -100])
    loss = fn(x, t)
    assert np.isnan(loss.item())
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0)
    assert fn(x, t, reduction="sum").item() == 0.0


def test_cross_entropy_common_case_is_one_fused_op(monkeypatch):
    """One op forward; its backward one call of the fused (softmax - onehot) kernel, with no op dispatched."""
    from ember.backends.cpu import loss_kernels

    ops, calls, fused = [], [], loss_kernels.ce_backward
    monkeypatch.setattr(loss_kernels, "ce_backward", lambda *a: calls.append(1) or fused(*a))
    prev = ember.ops.set_trace_hook(lambda op, inputs, attrs, outputs: ops.append(op.name))
    try:
        x = ember.randn(4, 3, requires_grad=True)
        loss = L.cross_entropy(x, ember.tensor([0, 2, 1, 1]))
        loss.backward()
    finally:
        ember.ops.set_trace_hook(prev)
    assert ops == ["cross_entropy"] and len(calls) == 1
    p = np.exp(x.detach().numpy()) / np.exp(x.detach().numpy()).sum(1, keepdims=True)
    p[np.arange(4), [0, 2, 1, 1]] -= 1
    np.testing.assert_allclose(x.grad.numpy(), p / 4, rtol=1e-5, atol=1e-7)


def test_cross_entropy_non_contiguous_logits():
    x = _rand(5, 7, scale=2.0)
    check_against_torch(lambda x, t: L.cross_entropy(x.transpose(0, 1), t, label_smoothing=0.1),
                        lambda x, t: F.cross_entropy(x.transpose(0, 1), t, label_smoothing=0.1),
                        [x, RNG.integers(0, 5, size=7)])


def test_cross_entropy_extreme_logits_are_stable():
    x = np.array([[1000.0, -1000.0, 0.0], [-500.0, 500.0, 499.0]], np.float32)
    check_against_torch(lambda x, t: L.cross_entropy(x, t), lambda x, t: F.cross_entropy(x, t), [x, np.array([1, 2])])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_spatial_targets(reduction, weighted):
    x, t = _rand(2, 4, 3, 5), RNG.integers(0, 4, size=(2, 3, 5))
    t[0, 1, 2] = -100
    arrays = [x, t] + ([RNG.random(4).astype(np.float32)] if weighted else [])
    check_against_torch(lambda x, t, *w: L.cross_entropy(x, t, *w, reduction=reduction, label_smoothing=0.1),
                        lambda x, t, *w: F.cross_entropy(x, t, *w, reduction=reduction, label_smoothing=0.1),
                        arrays, grad_inputs=[0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_unbatched(reduction):
    x = _rand(6)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    e = L.cross_entropy(ex, ember.from_numpy(np.array(4)), reduction=reduction)  # a 0-d class index
    t = F.cross_entropy(tx, torch.tensor(4), reduction=reduction)
    assert e.shape == () and e.dtype == ember.float32
    np.testing.assert_allclose(e.item(), t.item(), rtol=1e-5)
    e.backward()
    t.backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets(reduction, weighted, smoothing):
    x = _rand(5, 4, scale=2.0)
    p = RNG.random((5, 4)).astype(np.float32)
    p /= p.sum(axis=1, keepdims=True)
    arrays = [x, p] + ([RNG.random(4).astype(np.float32)] if weighted else [])
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    check_against_torch(lambda x, t, *w: L.cross_entropy(x, t, *w, **kw),
                        lambda x, t, *w: F.cross_entropy(x, t, *w, **kw), arrays, grad_inputs=[0, 1])


def test_cross_entropy_probability_targets_spatial():
    x, p = _rand(2, 3, 4), RNG.random((2, 3, 4)).astype(np.float32)
    for red in REDUCTIONS:
        check_against_torch(lambda x, t: L.cross_entropy(x, t, reduction=red),
                            lambda x, t: F.cross_entropy(x, t, reduction=red), [x, p])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradcheck_float64(smoothing):
    w = ember.tensor(RNG.random(4) + 0.5, dtype=ember.float64)
    gradcheck(lambda x, t: L.cross_entropy(x, t, w, label_smoothing=smoothing),
              [_rand(5, 4, dtype=np.float64), np.array([0, 3, -100, 1, 1])])
    p = RNG.random((3, 4))
    gradcheck(lambda x, t: L.cross_entropy(x, t, label_smoothing=smoothing, reduction="none"),
              [_rand(3, 4, dtype=np.float64), p])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss(reduction, weighted):
    x = np.log(RNG.random((6, 5)).astype(np.float32) + 0.05)
    t = _targets(6, 5, ignore=(4,))
    arrays = [x, t] + ([RNG.random(5).astype(np.float32)] if weighted else [])
    check_against_torch(lambda x, t, *w: L.nll_loss(x, t, *w, reduction=reduction),
                        lambda x, t, *w: F.nll_loss(x, t, *w, reduction=reduction), arrays, grad_inputs=[0])


def test_nll_loss_spatial_and_ignore_index():
    x, t = _rand(2, 3, 4), RNG.integers(0, 3, size=(2, 4))
    for red in REDUCTIONS:
        check_against_torch(lambda x, t: L.nll_loss(x, t, ignore_index=1, reduction=red),
                            lambda x, t: F.nll_loss(x, t, ignore_index=1, reduction=red), [x, t])
    gradcheck(lambda x, t: L.nll_loss(x, t), [_rand(2, 3, 4, dtype=np.float64), t])


def test_class_index_errors():
    x = ember.randn(4, 10)
    with pytest.raises(IndexError, match="cross_entropy: target 12 is out of bounds for 10 classes"):
        L.cross_entropy(x, ember.tensor([1, 2, 12, 3]))
    with pytest.raises(IndexError, match="cross_entropy: target -3 is out of bounds for 10 classes"):
        L.cross_entropy(x.double(), ember.tensor([1, 2, -3, 3]))
    with pytest.raises(IndexError, match="nll_loss: target 10 is out of bounds for 10 classes"):
        L.nll_loss(x, ember.tensor([1, 10, 0, 3]))
    with pytest.raises(ValueError, match=r"input batch_size \(4\) to match target batch_size \(3\)"):
        L.cross_entropy(x, ember.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"expected target shape \(4, 5\) for input shape \(4, 10, 5\), got \(4, 6\)"):
        L.cross_entropy(ember.randn(4, 10, 5), ember.zeros(4, 6, dtype=ember.int64))
    with pytest.raises(ValueError, match=r"cross_entropy: reduction='avg' is not valid"):
        L.cross_entropy(x, ember.tensor([1, 2, 3, 4]), reduction="avg")
    with pytest.raises(RuntimeError, match=r"weight should have shape \(10,\) for 10 classes, got \(3,\)"):
        L.cross_entropy(x, ember.tensor([1, 2, 3, 4]), weight=ember.ones(3))
    with pytest.raises(ValueError, match=r"probability\) target shape \(4, 9\) must match input shape \(4, 10\)"):
        L.cross_entropy(x, ember.rand(4, 9))
    with pytest.raises(RuntimeError, match="not differentiable with respect to weight"):
        L.cross_entropy(x, ember.tensor([1, 2, 3, 4]), weight=ember.ones(10, requires_grad=True))


# ---- pointwise losses --------------------------------------------------------------------------------

POINTWISE = [
    ("mse_loss", {}, lambda: _rand(3, 4), lambda: _rand(3, 4)),
    ("l1_loss", {}, lambda: _rand(3, 4), lambda: _rand(3, 4)),
    ("smooth_l1_loss", {"beta": 0.5}, lambda: _rand(3, 4), lambda: _rand(3, 4)),
    ("smooth_l1_loss", {"beta": 0.0}, lambda: _rand(3, 4), lambda: _rand(3, 4)),
    ("huber_loss", {"delta": 0.7}, lambda: _rand(3, 4), lambda: _rand(3, 4)),
    ("kl_div", {}, lambda: _rand(3, 4), lambda: RNG.random((3, 4)).astype(np.float32) + 0.01),
    ("kl_div", {"log_target": True}, lambda: _rand(3, 4), lambda: _rand(3, 4)),
    ("binary_cross_entropy", {}, lambda: RNG.uniform(0.02, 0.98, (3, 4)).astype(np.float32),
     lambda: RNG.random((3, 4)).astype(np.float32)),
    ("binary_cross_entropy_with_logits", {}, lambda: _rand(3, 4, scale=5.0),
     lambda: RNG.random((3, 4)).astype(np.float32)),
]


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # torch's kl_div notice
@pytest.mark.parametrize("name,kw,make_x,make_t", POINTWISE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pointwise_losses(name, kw, make_x, make_t, reduction):
    check_against_torch(lambda x, t: getattr(L, name)(x, t, reduction=reduction, **kw),
                        lambda x, t: getattr(F, name)(x, t, reduction=reduction, **kw), [make_x(), make_t()])


@pytest.mark.parametrize("name,kw,make_x,make_t", POINTWISE)
def test_pointwise_losses_gradcheck_float64(name, kw, make_x, make_t):
    x, t = make_x().astype(np.float64), make_t().astype(np.float64)
    gradcheck(lambda x, t: getattr(L, name)(x, t, reduction="sum", **kw), [x, t])


def test_kl_div_batchmean():
    x, t = _rand(4, 3), RNG.random((4, 3)).astype(np.float32)
    check_against_torch(lambda x, t: L.kl_div(x, t, reduction="batchmean"),
                        lambda x, t: F.kl_div(x, t, reduction="batchmean"), [x, t])


def test_l1_kink_gradient_is_zero_like_torch():
    x = np.array([1.0, 2.0, -3.0], np.float32)
    check_against_torch(lambda x, t: L.l1_loss(x, t), lambda x, t: F.l1_loss(x, t), [x, x.copy()])


def test_binary_cross_entropy_clamps_log_at_edges():
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.5], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.3], np.float32)
    for red in REDUCTIONS:
        check_against_torch(lambda x, t: L.binary_cross_entropy(x, t, reduction=red),
                            lambda x, t: F.binary_cross_entropy(x, t, reduction=red), [x, t])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_weight(reduction):
    x, t, w = RNG.uniform(0.05, 0.95, (3, 4)).astype(np.float32), RNG.random((3, 4)).astype(np.float32), _rand(4)
    check_against_torch(lambda x, t, w: L.binary_cross_entropy(x, t, w, reduction=reduction),
                        lambda x, t, w: F.binary_cross_entropy(x, t, w, reduction=reduction), [x, t, w],
                        grad_inputs=[0, 1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", [False, True])
def test_bce_with_logits_pos_weight(reduction, use_weight):
    x, t = _rand(3, 4, scale=30.0), RNG.random((3, 4)).astype(np.float32)  # large logits: stability
    pw, w = RNG.random(4).astype(np.float32) * 3, RNG.random((3, 1)).astype(np.float32)

    def e_fn(x, t, pw, w):
        return L.binary_cross_entropy_with_logits(x, t, w if use_weight else None, reduction, pos_weight=pw)

    def t_fn(x, t, pw, w):
        return F.binary_cross_entropy_with_logits(x, t, w if use_weight else None, reduction=reduction, pos_weight=pw)

    check_against_torch(e_fn, t_fn, [x, t, pw, w], grad_inputs=[0, 1])


@pytest.mark.filterwarnings("ignore:Using a target size")  # torch's own broadcast warning
def test_mse_broadcast_warns_and_matches_torch():
    x, t = _rand(3, 4), _rand(4)
    with pytest.warns(UserWarning, match=r"mse_loss: target shape \(4,\) differs from input shape \(3, 4\)"):
        check_against_torch(lambda x, t: L.mse_loss(x, t), lambda x, t: F.mse_loss(x, t), [x, t])


@settings(deadline=None, max_examples=20)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), transposed=st.booleans(),
       name=st.sampled_from(["mse_loss", "l1_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits"]))
def test_pointwise_losses_strided_inputs(shape, transposed, name):
    x, t = _rand(*shape, scale=2.0), RNG.random(shape).astype(np.float32)

    def prep(a):
        return a.transpose(0, a.ndim - 1) if transposed else a

    check_against_torch(lambda x, t: getattr(L, name)(prep(x), prep(t)),
                        lambda x, t: getattr(F, name)(prep(x), prep(t)), [x, t])


def test_pointwise_errors():
    with pytest.raises(ValueError, match=r"binary_cross_entropy: target shape \(3, 1\) must be the same as input"):
        L.binary_cross_entropy(ember.rand(3), ember.rand(3, 1))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: target shape \(2,\) must be the same"):
        L.binary_cross_entropy_with_logits(ember.rand(3), ember.rand(2))
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        L.binary_cross_entropy(ember.tensor([1.5, 0.2]), ember.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"mse_loss: target shape \(2,\) and input shape \(3,\) are not broadcastable"):
        L.mse_loss(ember.rand(3), ember.rand(2))
    with pytest.raises(ValueError, match=r"l1_loss: reduction='batchmean' is not valid"):
        L.l1_loss(ember.rand(3), ember.rand(3), reduction="batchmean")
    with pytest.raises(RuntimeError, match=r"pos_weight of shape \(5,\) does not broadcast to the input shape"):
        L.binary_cross_entropy_with_logits(ember.rand(3, 4), ember.rand(3, 4), pos_weight=ember.ones(5))
