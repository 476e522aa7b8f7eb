"""linear_relu (a Linear and its ReLU as one op) and nn.Sequential's use of it, against PyTorch: values, every
gradient (ReLU's kink at 0 included: gradient 0, as torch's threshold_backward), NaN, float32 and float64, with and
without bias; and where Sequential must keep the modules apart (hooks, tracing, other dtypes and ranks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
import ember.nn.functional as F
from ember import nn
from ember.ops import linear_relu as lr
from ember.serialize import trace

RNG = np.random.default_rng(5)


def _pair(dtype, bias=True, sizes=(7, 9, 6, 4)):
    """An ember Sequential (Linear, ReLU, Linear, ReLU, Linear) and torch's with the same weights."""
    layers, tlayers = [], []
    for i, (k, n) in enumerate(zip(sizes, sizes[1:])):
        w, b = RNG.standard_normal((n, k)), RNG.standard_normal(n)
        el, tl = nn.Linear(k, n, bias=bias), torch.nn.Linear(k, n, bias=bias)
        el.weight.data = ember.from_numpy(w.astype(dtype))
        tl.weight.data = torch.from_numpy(w.astype(dtype))
        if bias:
            el.bias.data = ember.from_numpy(b.astype(dtype))
            tl.bias.data = torch.from_numpy(b.astype(dtype))
        layers.append(el)
        tlayers.append(tl)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            tlayers.append(torch.nn.ReLU())
    return nn.Sequential(*layers), torch.nn.Sequential(*tlayers)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_sequential_matches_torch(dtype, tol, bias):
    m, tm = _pair(dtype, bias)
    x = RNG.standard_normal((11, 7)).astype(dtype)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    h = m[1](m[0](ex))  # (the modules one by one: the unfused reference inside ember)
    assert h.grad_fn.__class__.__name__ != "LinearReluBackward0"
    fused = m[:2](ex)
    assert fused.grad_fn.name() == "LinearReluBackward0"
    np.testing.assert_array_equal(fused.detach().numpy(), h.detach().numpy())  # the same float operations
    y, ty = m(ex), tm(tx)
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=tol, atol=tol)
    w = RNG.standard_normal(y.shape).astype(dtype)
    (y * ember.from_numpy(w)).sum().backward()
    (ty * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=tol * 10, atol=tol * 10)
    for (name, p), tp in zip(m.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=tol * 10, atol=tol * 10, err_msg=name)


def test_kink_and_nan_match_torch():
    """Pre-activations exactly 0 (gradient 0 there) and NaN (kept, with its gradient passed through like torch)."""
    w = np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 0.0]], np.float32)
    b = np.array([0.0, -1.0, 0.25], np.float32)
    x = np.array([[1.0, 1.0], [0.5, 0.0], [np.nan, 1.0], [-3.0, 2.0]], np.float32)
    ew, eb = ember.tensor(w, requires_grad=True), ember.tensor(b, requires_grad=True)
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    y = lr.linear_relu(ex, ew, eb)
    ty = torch.relu(torch.nn.functional.linear(tx, tw, tb))
    np.testing.assert_array_equal(y.detach().numpy(), ty.detach().numpy())
    g = RNG.standard_normal(y.shape).astype(np.float32)
    y.backward(ember.from_numpy(g))
    ty.backward(torch.from_numpy(g))
    for e, t in ((ex, tx), (ew, tw), (eb, tb)):
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_training_steps_match_torch():
    """20 SGD-momentum steps of an mlp through Sequential (Linear -> ReLU fused) against torch's on the same batches.
    (With unit-normal weights the float32 roundings grew past 1e-4 for some batches: worst over 15 draws now 3e-8.)"""
    m, tm = _pair(np.float32, sizes=(16, 32, 24, 5))
    with torch.no_grad():  # weights of a trainable scale (unit-normal ones blow the logits up: chaotic float32 drift)
        for (name, a), b in zip(m.named_parameters(), tm.parameters()):
            scaled = b.numpy() / np.float32(np.sqrt(b.shape[-1]))
            a.data, b.data = ember.from_numpy(scaled.copy()), torch.from_numpy(scaled.copy())
    o1 = ember.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    o2 = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(5)  # (its own batches, whichever tests ran before it in this process)
    for step in range(20):
        x = rng.standard_normal((12, 16)).astype(np.float32)
        t = rng.integers(0, 5, 12)
        o1.zero_grad()
        out = m(ember.from_numpy(x))
        assert out.grad_fn is not None
        F.cross_entropy(out, ember.from_numpy(t)).backward()
        o1.step()
        o2.zero_grad()
        torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(t)).backward()
        o2.step()
    for (name, a), b in zip(m.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_sequential_keeps_the_modules_apart_where_it_must():
    m, _ = _pair(np.float32)
    x = ember.from_numpy(RNG.standard_normal((3, 7)).astype(np.float32)).requires_grad_()
    seen = []
    handle = m[1].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    assert m[:2](x).grad_fn.name() == "ReluBackward0" and seen == [(3, 9)]  # the hook sees the ReLU run
    handle.remove()
    x3 = ember.from_numpy(RNG.standard_normal((2, 3, 7)).astype(np.float32)).requires_grad_()
    assert m[:2](x3).grad_fn.name() == "ReluBackward0"  # 3-d input: linear and relu as they are
    prog = trace(m.eval(), ember.from_numpy(RNG.standard_normal((2, 7)).astype(np.float32)))
    ops = [n.op for n in prog.graph.nodes]
    assert "linear_relu" not in ops and ops.count("linear") == 3 and ops.count("relu") == 2, ops


def test_direct_call_names_what_it_takes():
    x = ember.from_numpy(np.ones((2, 3, 4), np.float32))
    w = ember.from_numpy(np.ones((5, 4), np.float32))
    with pytest.raises(RuntimeError, match=r"linear_relu: expects 2-d float32 or float64 input"):
        lr.linear_relu(x, w)
    with pytest.raises(RuntimeError, match=r"input has 3 features, weight expects 4"):
        lr.linear_relu(ember.from_numpy(np.ones((2, 3), np.float32)), w)
