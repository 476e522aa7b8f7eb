"""In-place elementwise methods: torch's autograd rules, gradients against torch, the no-autograd
fast path, fills, copy_ and random initialisers."""
import numpy as np
import pytest
import torch

import ember

from .oracle import check_against_torch

rng = np.random.default_rng(1)


def _r(*shape):
    return rng.uniform(-2, 2, shape).astype(np.float32)


def test_inplace_on_leaf_requiring_grad_raises():
    w = ember.ones(3, requires_grad=True)
    for op in (lambda: w.add_(1), lambda: w.mul_(2), lambda: w.relu_(), lambda: w.zero_(), lambda: w.uniform_(),
               lambda: w.copy_(ember.zeros(3))):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad is being used in an in-place"):
            op()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        w += 1
    with ember.no_grad():
        v = w._version
        w.add_(1).mul_(2)
        w -= 1
        assert w._version == v + 3
    assert w.tolist() == [3.0, 3.0, 3.0] and w.grad_fn is None and w.requires_grad


def test_modified_saved_input_raises():
    x = ember.ones(3, requires_grad=True)
    w = ember.full((3,), 2.0, requires_grad=True)
    a = x * 1
    b = a * w  # mul saves a
    a.add_(1)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        b.sum().backward()


@pytest.mark.parametrize("f", [lambda x: x.exp(), lambda x: x.relu(), lambda x: x.sigmoid(), lambda x: x.softmax(0)])
def test_modified_saved_output_raises(f):
    x = ember.tensor([0.5, -1.0, 2.0], requires_grad=True)
    y = f(x)  # these ops save their output
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        y.sum().backward()


INPLACE_CHAINS = [  # same code for both libraries
    lambda x, w: (x * 2).add_(w).mul_(3).relu_(),
    lambda x, w: (x + 0).sub_(w, alpha=0.5).div_(w).clamp_(-1.0, 1.0),
    lambda x, w: (x * 1).pow_(2).neg_().exp_(),
    lambda x, w: (x * 1).abs_().sqrt_() + (x * 1).sigmoid_() + (w * 1).tanh_(),
    lambda x, w: _iops(x * 1, w),
    lambda x, w: (x.detach() + 1).mul_(x),  # self has no history, the other operand has
    lambda x, w: (x.detach() + 1).add_(w, alpha=2).div_(x),
    lambda x, w: (x * 2).fill_(3.0) * x,  # filled: zero gradient to the old history
    lambda x, w: (x * 2).zero_() + x,
    lambda x, w: (x * 2).copy_(w),
    lambda x, w: (x * 2).copy_(w[0]) * x,  # broadcast source
    lambda x, w: x.detach().clone().copy_(w * 3),
    lambda x, w: (x * 1).clamp_(min=0.0).mul_(w).sub_(1),
]


def _iops(y, w):
    y += w
    y -= 1.5
    y *= w
    y /= 2
    return y


@pytest.mark.parametrize("f", INPLACE_CHAINS, ids=range(len(INPLACE_CHAINS)))
def test_inplace_chain_gradients_vs_torch(f):
    x = _r(3, 4)
    w = _r(3, 4) + np.sign(_r(3, 4)) * 2.5  # away from 0 for div_
    check_against_torch(f, f, [x, w])


def test_fast_path_no_autograd():
    p = ember.tensor(_r(4, 3))
    g = ember.tensor(_r(4, 3))
    want = p.numpy() - 0.1 * g.numpy()
    ident = id(p._data)
    p.add_(g, alpha=-0.1)
    np.testing.assert_allclose(p.numpy(), want, rtol=1e-6)
    assert id(p._data) == ident and p.dtype == ember.float32
    p.mul_(0.5).div_(ember.tensor([1.0, 2.0, 4.0])).sub_(1)
    np.testing.assert_allclose(p.numpy(), (want * 0.5) / [1.0, 2.0, 4.0] - 1, rtol=1e-6)
    q = p
    q += 1
    assert q is p
    i = ember.tensor([1, 2])
    i += 3
    assert i.tolist() == [4, 5] and i.dtype == ember.int64


def test_inplace_errors():
    i = ember.tensor([1, 2])
    with pytest.raises(RuntimeError, match="add_: result type ember.float32 can't be cast to the desired output type "
                                           "ember.int64"):
        i.add_(1.5)
    with pytest.raises(RuntimeError, match="div_: result type"):
        i.div_(2)
    with pytest.raises(RuntimeError,
                       match=r"add_: output with shape \(3,\) doesn't match the broadcast shape \(2, 3\)"):
        ember.zeros(3).add_(ember.ones(2, 3))
    with pytest.raises(RuntimeError, match="read-only"):
        ember.zeros(3).expand(2, 3).add_(1)
    with pytest.raises(RuntimeError, match=r"copy_: the source of shape \(4,\) can't be broadcast to the tensor's "
                                           r"shape \(2, 3\)"):
        ember.zeros(2, 3).copy_(ember.ones(4))
    with pytest.raises(TypeError, match="add_: unsupported operand type list"):
        ember.zeros(2).add_([1, 2])


def test_copy_and_fill_casts_like_torch():
    for src in (np.array([1.7, -2.7, 3.2], np.float32), np.array([True, False, True])):
        e = ember.zeros(2, 3, dtype=ember.int64).copy_(ember.tensor(src))
        t = torch.zeros(2, 3, dtype=torch.int64).copy_(torch.tensor(src))
        assert e.tolist() == t.tolist()
    assert ember.zeros(2).fill_(ember.tensor(2.5)).tolist() == [2.5, 2.5]
    assert ember.zeros(2, dtype=ember.int32).fill_(7).tolist() == [7, 7]


def test_random_fills():
    ember.manual_seed(3)
    a = ember.empty(2000).uniform_(-0.5, 1.5)
    ember.manual_seed(3)
    b = ember.empty(2000).uniform_(-0.5, 1.5)
    assert np.array_equal(a.numpy(), b.numpy()) and a.dtype == ember.float32
    assert a.numpy().min() >= -0.5 and a.numpy().max() < 1.5 and abs(a.numpy().mean() - 0.5) < 0.05
    n = ember.empty(4000, dtype=ember.float64).normal_(2.0, 0.5)
    assert n.dtype == ember.float64 and abs(n.numpy().mean() - 2.0) < 0.05 and abs(n.numpy().std() - 0.5) < 0.05
    gen = ember.Generator(5)
    c = ember.empty(3).normal_(generator=gen)
    d = ember.empty(3).normal_(generator=ember.Generator(5))
    assert np.array_equal(c.numpy(), d.numpy())
    with pytest.raises(RuntimeError, match="uniform_: expected a floating point tensor"):
        ember.zeros(3, dtype=ember.int64).uniform_()
    w = ember.empty(3, requires_grad=True)
    with ember.no_grad():
        w.normal_()
    assert w.requires_grad and w.grad_fn is None
