"""Autograd engine behaviour against torch: accumulation, retain_graph, autograd.grad, custom Functions."""
import numpy as np
import pytest
import torch

import ember


def test_leaf_grad_accumulates_across_backward_calls_like_torch():
    a = np.array([1.0, -2.0, 3.0], np.float32)
    e = ember.tensor(a, requires_grad=True)
    t = torch.tensor(a, requires_grad=True)
    for _ in range(3):
        (e * e).sum().backward()
        (t * t).sum().backward()
    np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy())


def test_shared_gradient_buffers_are_not_aliased_between_leaves():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    b = ember.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad.mul_(10)  # must not change b.grad
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 1.0])


def test_retain_graph_allows_second_backward_and_default_refuses():
    x = ember.tensor([2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [8.0])
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_autograd_grad_matches_torch_and_leaves_grad_untouched():
    a = np.array([[0.5, -1.5], [2.0, 0.25]], np.float32)
    e = ember.tensor(a, requires_grad=True)
    t = torch.tensor(a, requires_grad=True)
    eh = (e.exp() * e).sum(dim=1)
    th = (t.exp() * t).sum(dim=1)
    w = np.array([1.0, -2.0], np.float32)
    (eg,) = ember.autograd.grad(eh, e, ember.tensor(w))
    (tg,) = torch.autograd.grad(th, t, torch.tensor(w))
    np.testing.assert_allclose(eg.numpy(), tg.numpy(), rtol=1e-6)
    assert e.grad is None


def test_grad_of_non_leaf_input_and_unused_input():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    u = ember.tensor([1.0], requires_grad=True)
    h = x * 3
    out = (h * h).sum()
    gh, gu = ember.autograd.grad(out, (h, u), allow_unused=True)
    np.testing.assert_allclose(gh.numpy(), [6.0, 12.0])
    assert gu is None
    with pytest.raises(RuntimeError, match="not used"):
        ember.autograd.grad((x * 2).sum(), (x, u))


def test_retain_grad_on_non_leaf():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), [6.0, 12.0])


def test_create_graph_is_refused_clearly():
    x = ember.tensor([1.0], requires_grad=True)
    with pytest.raises(NotImplementedError, match="create_graph"):
        (x * x).sum().backward(create_graph=True)


def test_custom_function_matches_torch():
    class Cube(ember.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            ctx.save_for_backward(x)
            ctx.k = k
            return x * x * x * k

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * 3 * x * x * ctx.k, None

    a = np.array([0.5, -1.0, 2.0], np.float32)
    e = ember.tensor(a, requires_grad=True)
    y = Cube.apply(e, 2.0)
    assert y.grad_fn is not None and y.grad_fn.name() == "CubeBackward"
    y.sum().backward()
    t = torch.tensor(a, requires_grad=True)
    (t ** 3 * 2.0).sum().backward()
    np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-6)


def test_no_grad_and_enable_grad_as_context_and_decorator():
    x = ember.tensor([1.0], requires_grad=True)
    with ember.no_grad():
        assert not (x * 2).requires_grad
        with ember.enable_grad():
            assert (x * 2).requires_grad

    @ember.no_grad()
    def f(v):
        return v * 2

    assert not f(x).requires_grad
    assert (x * 2).requires_grad


def test_backward_errors_are_clear():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        ember.tensor([1.0]).sum().backward()
    with pytest.raises(RuntimeError, match="floating point"):
        ember.tensor([1, 2]).requires_grad_()


def test_detach_shares_storage_and_has_no_history():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    d = (x * 2).detach()
    assert d.grad_fn is None and not d.requires_grad
    y = x * 1
    yd = y.detach()
    yd.zero_()
    np.testing.assert_allclose(y.detach().numpy(), [0.0, 0.0])


def test_register_hook_on_leaf_and_non_leaf_matches_torch():
    a = np.array([1.0, -2.0, 3.0], np.float32)
    seen = {}
    results = []
    for lib in (ember, torch):
        x = lib.tensor(a, requires_grad=True)
        h = x * 2

        def triple(g, name=lib.__name__):
            seen[name] = g.detach().numpy().copy()
            return g * 3

        h.register_hook(triple)
        handle = x.register_hook(lambda g: g + 1)
        (h * h).sum().backward()
        results.append(x.grad.detach().numpy().copy())
        handle.remove()
        x.grad = None
        (x * 1).sum().backward()
        results.append(x.grad.detach().numpy().copy())
    np.testing.assert_allclose(results[0], results[2])
    np.testing.assert_allclose(results[1], results[3])
    np.testing.assert_allclose(seen["ember"], seen["torch"])
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        ember.ones(2).register_hook(lambda g: g)
