"""Tensor basics against torch: construction dtypes, formatting, views, new_* factories, grad mode."""
import numpy as np
import pytest
import torch

import ember


@pytest.mark.parametrize("data", [1.5, 2, True, [1.0, 2.0], [[1, 2]], np.float64(2.0), np.int32(3),
                                  np.array([1.0], np.float64), np.array(2.0, np.float32)])
def test_tensor_dtype_inference_matches_torch(data):
    assert ember.tensor(data).dtype.name == str(torch.tensor(data).dtype).replace("torch.", "")
    assert ember.tensor(data).shape == tuple(torch.tensor(data).shape)


def test_format_of_scalar_tensors_like_torch():
    e, t = ember.tensor(0.123456), torch.tensor(0.123456)
    assert f"{e:.4f}" == f"{t:.4f}"
    assert f"{ember.tensor([1.0, 2.0])}" == repr(ember.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="format"):
        f"{ember.tensor([1.0, 2.0]):.2f}"


def test_repr_like_torch():
    assert repr(ember.tensor([[1.0, 2.5], [3.0, 4.0]])) == repr(torch.tensor([[1.0, 2.5], [3.0, 4.0]]))
    assert repr(ember.tensor([1, 2])) == repr(torch.tensor([1, 2]))
    assert repr(ember.tensor([1, 2], dtype=ember.int32)).replace("ember", "torch") == repr(
        torch.tensor([1, 2], dtype=torch.int32))


def test_view_refuses_non_contiguous_like_torch_and_shares_memory_otherwise():
    x = ember.arange(6).view(2, 3)
    v = x.view(3, 2)
    v[0, 0] = 100
    assert x[0, 0].item() == 100
    with pytest.raises(RuntimeError, match="Use .reshape"):
        x.t().view(-1)
    with pytest.raises(RuntimeError):
        torch.arange(6).view(2, 3).t().view(-1)
    y = ember.arange(6).view(2, 3)
    np.testing.assert_array_equal(y.t().reshape(-1).numpy(), torch.arange(6).view(2, 3).t().reshape(-1).numpy())


def test_new_factories_keep_dtype():
    base = ember.zeros(2, dtype=ember.float64)
    assert base.new_zeros(3).dtype == ember.float64 and base.new_zeros(3).shape == (3,)
    assert base.new_ones((2, 2)).numpy().sum() == 4
    assert base.new_full((2,), 7).numpy().tolist() == [7.0, 7.0]
    assert base.new_tensor([1, 2]).dtype == ember.float64


def test_as_tensor_shares_memory_when_it_can():
    a = np.arange(3, dtype=np.float32)
    t = ember.as_tensor(a)
    a[0] = 5
    assert t[0].item() == 5
    assert ember.as_tensor(a, dtype=ember.float64).dtype == ember.float64


def test_randint_accepts_torch_signatures():
    ember.manual_seed(0)
    assert ember.randint(10, (5,)).shape == (5,)
    r = ember.randint(3, 7, (100,))
    assert r.dtype == ember.int64 and r.numpy().min() >= 3 and r.numpy().max() < 7


def test_to_accepts_non_blocking():
    x = ember.ones(2)
    assert x.to("cpu", non_blocking=True) is x


def test_set_grad_enabled_as_call_and_context_manager():
    x = ember.ones(1, requires_grad=True)
    with ember.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert ember.is_grad_enabled()
    ember.set_grad_enabled(False)
    try:
        assert not ember.is_grad_enabled()
    finally:
        ember.set_grad_enabled(True)
    assert (x * 2).requires_grad


def test_inference_mode_like_torch():
    x = ember.ones(1, requires_grad=True)
    with ember.inference_mode():
        assert not (x * 2).requires_grad
    with ember.inference_mode(False):
        assert (x * 2).requires_grad

    @ember.inference_mode()
    def f(v):
        return v * 2

    assert not f(x).requires_grad and ember.is_grad_enabled()
