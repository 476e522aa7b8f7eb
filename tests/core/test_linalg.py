"""matmul / mm / bmm / dot, the fused linear op and norms against PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops import linalg as L

from .oracle import check_against_torch, gradcheck

rng = np.random.default_rng(3)


def _r(*shape):
    return rng.standard_normal(shape).astype(np.float32)


MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((4,), (4,)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
    ((1, 3, 4), (2, 4, 5)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=str)
def test_matmul_vs_torch(sa, sb):
    check_against_torch(L.matmul, torch.matmul, [_r(*sa), _r(*sb)])
    check_against_torch(lambda a, b: a @ b, lambda a, b: a @ b, [_r(*sa), _r(*sb)])
    gradcheck(L.matmul, [rng.standard_normal(sa), rng.standard_normal(sb)])


def test_matmul_noncontiguous_and_variants():
    a, b = _r(5, 3), _r(4, 5)
    check_against_torch(lambda x, y: x.T @ y.T, lambda x, y: x.T @ y.T, [a, b])
    check_against_torch(lambda x, y: x[::2] @ y[:, 1:4], lambda x, y: x[::2] @ y[:, 1:4], [_r(6, 5), _r(5, 5)])
    check_against_torch(L.mm, torch.mm, [_r(3, 4), _r(4, 2)])
    check_against_torch(L.bmm, torch.bmm, [_r(2, 3, 4), _r(2, 4, 2)])
    check_against_torch(L.dot, torch.dot, [_r(5), _r(5)])
    check_against_torch(lambda x, y: x.matmul(y) + x.mm(y), lambda x, y: x.matmul(y) + x.mm(y), [_r(3, 3), _r(3, 3)])
    i = ember.tensor([[1, 2], [3, 4]])
    assert (i @ i).tolist() == [[7, 10], [15, 22]] and (i @ i).dtype == ember.int64
    check_against_torch(lambda x: x.T @ x, lambda x: x.T @ x, [_r(4, 3)])  # one input on both sides


@settings(deadline=None, max_examples=20)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.lists(st.integers(1, 2), max_size=2), st.lists(st.integers(1, 2), max_size=2))
def test_matmul_batch_broadcast_property(m, k, n, batch_a, batch_b):
    a, b = _r(*batch_a, m, k), _r(*batch_b, k, n)
    try:
        np.broadcast_shapes(tuple(batch_a), tuple(batch_b))
    except ValueError:
        with pytest.raises(RuntimeError, match="matmul"):
            L.matmul(ember.tensor(a), ember.tensor(b))
        return
    check_against_torch(L.matmul, torch.matmul, [a, b])


LINEAR_CASES = [((8, 5), (3, 5), (3,)), ((5,), (3, 5), (3,)), ((2, 4, 5), (3, 5), (3,)), ((8, 5), (3, 5), None),
                ((2, 2, 2, 5), (1, 5), (1,))]


@pytest.mark.parametrize("sx,sw,sb", LINEAR_CASES, ids=str)
def test_linear_vs_torch(sx, sw, sb):
    arrays = [_r(*sx), _r(*sw)] + ([_r(*sb)] if sb else [])
    check_against_torch(L.linear, TF.linear, arrays)
    gradcheck(L.linear, [a.astype(np.float64) for a in arrays])


def test_linear_partial_needs_and_noncontiguous():
    base = ember.tensor(_r(6, 4))
    w = ember.tensor(_r(3, 6), requires_grad=True)
    y = L.linear(base.T, w)  # input is a non-contiguous view
    y.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), np.ones((4, 3)).T @ base.numpy().T, rtol=1e-5)
    np.testing.assert_allclose(y.numpy(force=True), base.numpy().T @ w.numpy(force=True).T, rtol=1e-5, atol=1e-6)
    xg = ember.tensor(_r(2, 6), requires_grad=True)
    wf = ember.tensor(_r(3, 6))
    b = ember.tensor(_r(3), requires_grad=True)
    L.linear(xg, wf, b).sum().backward()
    assert wf.grad is None and xg.grad.shape == (2, 6) and b.grad.tolist() == pytest.approx([2.0] * 3)


def test_float32_stays_float32():
    x, w, b = ember.ones(2, 3), ember.ones(4, 3), ember.ones(4)
    assert L.linear(x, w, b).dtype == ember.float32 and (x @ w.T).dtype == ember.float32


def test_error_messages():
    with pytest.raises(RuntimeError,
                       match=r"linear: input has 783 features, weight expects 784 \(input shape \(32, 783\)\)"):
        L.linear(ember.ones(32, 783), ember.ones(10, 784))
    with pytest.raises(RuntimeError, match=r"linear: bias has shape \(5,\), expected \(10,\)"):
        L.linear(ember.ones(2, 4), ember.ones(10, 4), ember.ones(5))
    with pytest.raises(RuntimeError, match=r"linear: weight must be 2-D"):
        L.linear(ember.ones(2, 4), ember.ones(4))
    with pytest.raises(RuntimeError, match="linear: input, weight and bias must share one dtype"):
        L.linear(ember.ones(2, 4, dtype=ember.float64), ember.ones(3, 4))
    with pytest.raises(RuntimeError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) cannot be multiplied \(3 != 4\)"):
        ember.ones(2, 3) @ ember.ones(4, 5)
    with pytest.raises(RuntimeError, match=r"matmul: both arguments need to be at least 1-D"):
        L.matmul(ember.tensor(np.float32(2.0)).reshape(()), ember.ones(2))
    with pytest.raises(RuntimeError, match=r"not broadcastable"):
        ember.ones(2, 3, 4) @ ember.ones(3, 4, 5)
    with pytest.raises(RuntimeError, match="matmul: expected both operands to have the same dtype"):
        ember.ones(2, 2) @ ember.ones(2, 2, dtype=ember.float64)
    with pytest.raises(RuntimeError, match=r"mm: expected 2-D tensors, got shapes \(3,\) and \(3, 2\)"):
        L.mm(ember.ones(3), ember.ones(3, 2))
    with pytest.raises(RuntimeError, match="bmm: expected 3-D tensors with the same batch size"):
        L.bmm(ember.ones(2, 3, 4), ember.ones(3, 4, 2))
    with pytest.raises(RuntimeError, match=r"dot: expected 1-D tensors of the same size"):
        L.dot(ember.ones(3), ember.ones(4))


NORMS = [
    lambda t: t.norm(),
    lambda t: t.norm(2, dim=1),
    lambda t: t.norm(1, dim=(0, 1), keepdim=True),
    lambda t: t.norm(float("inf"), dim=0),
    lambda t: t.norm(-float("inf"), dim=0),
    lambda t: t.norm(3, dim=-1),
    lambda t: t.norm(0.5),
    lambda t: t.norm(p="fro", dim=1, keepdim=True),
]


@pytest.mark.parametrize("f", NORMS, ids=range(len(NORMS)))
def test_norm_vs_torch(f):
    check_against_torch(f, f, [_r(3, 4) + 0.1])
    gradcheck(f, [rng.standard_normal((2, 3)) + 0.1])


def test_norm_special_points():
    z = np.zeros((2, 3), np.float32)
    z[1] = [1.0, -3.0, 3.0]  # ties for the inf-norm, a zero row for the 2-norm
    for f in (lambda t: t.norm(dim=1), lambda t: t.norm(), lambda t: t.norm(float("inf"), dim=1),
              lambda t: t.norm(0, dim=1), lambda t: t.norm(1)):
        check_against_torch(f, f, [z])
    with pytest.raises(RuntimeError, match="norm: expected a floating point tensor"):
        ember.tensor([1, 2]).norm()
