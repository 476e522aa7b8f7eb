"""dropout (statistics, gradient = mask / (1 - p), seeding) and embedding (against PyTorch)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ember
from ember.ops.nn_misc import dropout, embedding

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(2)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [ember.float32, ember.float64])
def test_dropout_statistics_and_scale(p, dtype):
    ember.manual_seed(0)
    x = ember.ones(200, 300, dtype=dtype) * 3.0  # 60000 elements: the parallel kernel
    y = dropout(x, p).numpy()
    zero = y == 0
    # 60000 Bernoulli(p) draws: the zeroed fraction is within 5 standard deviations of p
    assert abs(zero.mean() - p) < 5 * np.sqrt(p * (1 - p) / zero.size)
    np.testing.assert_allclose(y[~zero], 3.0 / (1 - p), rtol=1e-6)
    assert y.dtype == dtype.np


@pytest.mark.parametrize("shape", [(7,), (4, 5), (64, 600)])
def test_dropout_gradient_is_mask_over_keep_prob(shape):
    p = 0.3
    x = ember.tensor(RNG.standard_normal(shape).astype(np.float32) + 5.0, requires_grad=True)  # never exactly 0
    y = dropout(x, p)
    g = RNG.standard_normal(shape).astype(np.float32)
    y.backward(ember.tensor(g))
    kept = y.detach().numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), np.where(kept, g / (1 - p), 0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y.detach().numpy(), np.where(kept, x.detach().numpy() / (1 - p), 0), rtol=1e-6)


def test_dropout_reproducible_with_manual_seed():
    x = ember.randn(50, 40)
    ember.manual_seed(123)
    a = dropout(x, 0.4).numpy().copy()
    b = dropout(x, 0.4).numpy().copy()
    ember.manual_seed(123)
    c = dropout(x, 0.4).numpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)


def test_dropout_identity_cases_and_p_one():
    x = ember.randn(3, 4, requires_grad=True)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.7, training=False) is x
    y = dropout(x, 1.0)
    assert np.all(y.detach().numpy() == 0)
    y.backward(ember.ones(3, 4))
    assert np.all(x.grad.numpy() == 0)


def test_dropout_inplace():
    ember.manual_seed(5)
    x = ember.randn(20, 30) + 10.0
    ref = x.clone()
    out = dropout(x, 0.5, inplace=True)
    assert out is x
    kept = x.numpy() != 0
    assert 0 < kept.mean() < 1
    np.testing.assert_allclose(x.numpy()[kept], ref.numpy()[kept] * 2, rtol=1e-6)


def test_dropout_gradcheck_float64_with_fixed_mask():
    # the mask is redrawn each call: reseed inside so every evaluation sees the same mask
    def fn(x):
        ember.manual_seed(9)
        return dropout(x, 0.5)

    gradcheck(fn, [RNG.standard_normal((4, 5))])


def test_dropout_errors():
    with pytest.raises(ValueError, match="dropout: probability has to be between 0 and 1, but got 1.5"):
        dropout(ember.randn(3), 1.5)
    with pytest.raises(ValueError, match="but got -0.1"):
        dropout(ember.randn(3), -0.1)


# ---- embedding ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("idx_shape", [(5,), (3, 4), (2, 2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_matches_torch(idx_shape, dtype):
    w = RNG.standard_normal((10, 4)).astype(dtype)
    idx = RNG.integers(0, 10, size=idx_shape)
    idx.reshape(-1)[:2] = 7  # repeated rows accumulate
    check_against_torch(lambda i, w: embedding(i, w), lambda i, w: F.embedding(i, w), [idx, w])


def test_embedding_padding_idx_gets_no_gradient():
    w = RNG.standard_normal((6, 3)).astype(np.float32)
    idx = np.array([[0, 2, 5], [2, 2, 1]])
    for pad in (2, -1):
        check_against_torch(lambda i, w: embedding(i, w, padding_idx=pad),
                            lambda i, w: F.embedding(i, w, padding_idx=pad), [idx, w])


def test_embedding_scale_grad_by_freq():
    w = RNG.standard_normal((6, 3)).astype(np.float32)
    idx = np.array([[0, 2, 5], [2, 2, 1]])
    check_against_torch(lambda i, w: embedding(i, w, scale_grad_by_freq=True),
                        lambda i, w: F.embedding(i, w, scale_grad_by_freq=True), [idx, w])


def test_embedding_max_norm_renormalises_rows_in_place():
    w = (RNG.standard_normal((6, 3)) * 3).astype(np.float32)
    idx = np.array([1, 4, 4, 0])
    ew, tw = ember.tensor(w), torch.tensor(w)
    e = embedding(ember.tensor(idx), ew, max_norm=1.5)
    t = F.embedding(torch.tensor(idx), tw, max_norm=1.5)
    np.testing.assert_allclose(e.numpy(), t.numpy(), atol=1e-6)
    np.testing.assert_allclose(ew.numpy(), tw.numpy(), atol=1e-6)


def test_embedding_gradcheck_float64():
    # no padding_idx here: its zeroed gradient is a convention, not the derivative
    gradcheck(lambda i, w: embedding(i, w), [np.array([[1, 3], [3, 0]]), RNG.standard_normal((4, 2))])


def test_embedding_large_scatter():
    w = RNG.standard_normal((50, 16)).astype(np.float32)
    idx = RNG.integers(0, 50, size=(64, 20))
    check_against_torch(lambda i, w: embedding(i, w), lambda i, w: F.embedding(i, w), [idx, w])


def test_embedding_errors():
    w = ember.randn(10, 3)
    with pytest.raises(IndexError, match=r"embedding: index 12 is out of range for num_embeddings=10"):
        embedding(ember.tensor([1, 12]), w)
    with pytest.raises(IndexError, match=r"embedding: index -1 is out of range for num_embeddings=10"):
        embedding(ember.tensor([[1, -1]]), w)
    with pytest.raises(TypeError, match="embedding: indices must be an integer tensor, got ember.float32"):
        embedding(ember.tensor([1.0]), w)
    with pytest.raises(ValueError, match="padding_idx 10 must be within num_embeddings=10"):
        embedding(ember.tensor([1]), w, padding_idx=10)
    with pytest.raises(RuntimeError, match=r"weight must be 2-D .* got shape \(10,\)"):
        embedding(ember.tensor([1]), ember.randn(10))
    with pytest.raises(NotImplementedError, match="sparse gradients are not supported yet"):
        embedding(ember.tensor([1]), w, sparse=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy's inf * 0 notice under NUMBA_DISABLE_JIT
def test_dropout_propagates_nan_like_torch():
    ember.manual_seed(1)
    x = ember.full((100,), float("inf"))
    y = dropout(x, 0.5).numpy()
    assert np.isnan(y).any() and np.isinf(y).any()  # dropped infs become nan (inf * 0), kept stay inf
