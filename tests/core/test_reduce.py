"""Reductions and softmax against PyTorch: forward, gradients, dims, dtypes, ties, stability, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops import reduce as R
from ember.ops import softmax as S

from .oracle import check_against_torch, gradcheck

rng = np.random.default_rng(2)


def _r(*shape):
    return rng.standard_normal(shape).astype(np.float32)


SAME = [  # (name, fn) run with the same code on ember and torch tensors
    ("sum", lambda x: x.sum()),
    ("sum0", lambda x: x.sum(0)),
    ("sum_neg_keep", lambda x: x.sum(-1, keepdim=True)),
    ("sum_tuple", lambda x: x.sum((0, 2))),
    ("sum_tuple_keep", lambda x: x.sum(dim=(0, 1), keepdim=True)),
    ("mean", lambda x: x.mean()),
    ("mean1", lambda x: x.mean(1)),
    ("mean_tuple_keep", lambda x: x.mean((1, 2), keepdim=True)),
    ("var", lambda x: x.var()),
    ("var_dim", lambda x: x.var(1)),
    ("var_biased", lambda x: x.var(-1, unbiased=False, keepdim=True)),
    ("var_correction", lambda x: x.var((0, 2), correction=2)),
    ("std", lambda x: x.std()),
    ("std_dim", lambda x: x.std(0, keepdim=True)),
    ("amax", lambda x: x.amax(1)),
    ("amin_tuple", lambda x: x.amin((0, 2), keepdim=True)),
    ("max_full", lambda x: x.max()),
    ("min_full", lambda x: x.min()),
    ("max_dim", lambda x: tuple(x.max(1))),
    ("min_dim_keep", lambda x: tuple(x.min(-1, keepdim=True))),
    ("max_named", lambda x: x.max(dim=2).values * 2),
    ("logsumexp", lambda x: x.logsumexp(1)),
    ("logsumexp_tuple", lambda x: x.logsumexp((0, 2), keepdim=True)),
    ("softmax_last", lambda x: x.softmax(-1)),
    ("softmax_mid", lambda x: x.softmax(1)),
    ("log_softmax_last", lambda x: x.log_softmax(2)),
    ("log_softmax_first", lambda x: x.log_softmax(0)),
    ("prod", lambda x: x.prod()),
    ("prod_dim", lambda x: x.prod(1)),
    ("prod_keep", lambda x: x.prod(-1, keepdim=True)),
    ("cumsum", lambda x: x.cumsum(1)),
    ("cumsum_last", lambda x: x.cumsum(-1)),
    ("softmax_transposed", lambda x: x.transpose(0, 2).softmax(-1)),
    ("sum_transposed", lambda x: x.transpose(1, 2).sum(-1)),
]


@pytest.mark.parametrize("name,f", SAME, ids=[s[0] for s in SAME])
def test_reduction_vs_torch(name, f):
    x = _r(2, 3, 4)
    if name.startswith("prod"):
        x[0, 1, 2] = 0.0  # the gradient must stay exact with a zero present
        x[1, 0, :2] = 0.0
    check_against_torch(f, f, [x])


@pytest.mark.parametrize("name,f", SAME, ids=[s[0] for s in SAME])
def test_reduction_gradcheck(name, f):
    x = rng.standard_normal((2, 3, 2))
    if name.startswith("prod"):
        x[0, 1, 1] = 0.0
    gradcheck(f, [x])


def test_functional_forms_vs_torch():
    x = _r(3, 5)
    pairs = [
        (lambda t: R.sum(t, 1), lambda t: torch.sum(t, 1)),
        (lambda t: R.mean(t, dim=0, keepdim=True), lambda t: torch.mean(t, dim=0, keepdim=True)),
        (lambda t: R.var(t, 1, False), lambda t: torch.var(t, 1, False)),
        (lambda t: R.std(t, correction=0), lambda t: torch.std(t, correction=0)),
        (lambda t: R.max(t, t * 0.5), lambda t: torch.max(t, t * 0.5)),
        (lambda t: S.softmax(t, 1), lambda t: TF.softmax(t, 1)),
        (lambda t: S.log_softmax(t, dim=-1), lambda t: TF.log_softmax(t, dim=-1)),
        (lambda t: S.logsumexp(t, 1), lambda t: torch.logsumexp(t, 1)),
        (lambda t: ember.softmax(t, 0, dtype=ember.float64), lambda t: torch.softmax(t, 0, dtype=torch.float64)),
    ]
    for ef, tf in pairs:
        check_against_torch(ef, tf, [x])
    no_grad_pairs = [
        (lambda t: R.argmax(t, 1), lambda t: torch.argmax(t, 1)),
        (lambda t: R.argmin(t), lambda t: torch.argmin(t)),
        (lambda t: R.argmax(t, keepdim=True), lambda t: torch.argmax(t, keepdim=True)),
        (lambda t: R.argmin(t, 0, keepdim=True), lambda t: torch.argmin(t, 0, keepdim=True)),
        (lambda t: R.any(t > 1), lambda t: torch.any(t > 1)),
        (lambda t: R.all(t > -1, 1), lambda t: torch.all(t > -1, 1)),
        (lambda t: (t > 0).any(dim=(0, 1), keepdim=True), lambda t: (t > 0).any(dim=(0, 1), keepdim=True)),
    ]
    for ef, tf in no_grad_pairs:
        check_against_torch(ef, tf, [x], grad=False)


def test_ties_exact():
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, 2.0, 0.0, 2.0]], np.float32)
    exact = dict(atol=0, rtol=0, grad_atol=0, grad_rtol=0)
    for f in (lambda t: t.max(), lambda t: t.min(), lambda t: t.amax(1), lambda t: t.amax(0),
              lambda t: t.amin((0, 1)), lambda t: tuple(t.max(1)), lambda t: tuple(t.min(0))):
        check_against_torch(f, f, [x], **exact)
    for f in (lambda t: t.argmax(1), lambda t: t.argmin(0), lambda t: t.argmax()):
        check_against_torch(f, f, [x], grad=False)
    t = ember.tensor(x, requires_grad=True)
    t.max().backward()
    assert t.grad.tolist() == [[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_dtype_rules():
    b = ember.tensor([[True, False, True]])
    i32 = ember.tensor([1, 2, 3], dtype=ember.int32)
    assert R.sum(b).dtype == ember.int64 and R.sum(b).item() == 2
    assert R.sum(i32).dtype == ember.int64 and R.prod(i32).dtype == ember.int64
    assert R.cumsum(b, 1).dtype == ember.int64 and R.cumsum(b, 1).tolist() == [[1, 1, 2]]
    assert R.sum(ember.ones(3), dtype=ember.float64).dtype == ember.float64
    assert R.mean(i32, dtype=ember.float32).item() == 2.0
    assert R.max(i32).dtype == ember.int32 and R.argmax(i32).dtype == ember.int64
    assert S.logsumexp(ember.tensor([[1, 2]]), 1).dtype == ember.float32
    x = ember.ones(2, 3, requires_grad=True)
    y = R.sum(x, dtype=ember.float64)
    y.backward()
    assert x.grad.dtype == ember.float32 and x.grad.tolist() == [[1.0] * 3] * 2
    h = ember.ones(4, dtype=ember.float16)
    assert R.sum(h).dtype == ember.float16 and S.softmax(h, 0).dtype == ember.float16


def test_softmax_stability_vs_torch():
    big = np.array([[1000.0, 999.0, -1000.0], [-1e30, 0.0, 1e-30]], np.float32)
    inf = float("inf")
    masked = np.array([[-inf, -inf, -inf], [0.0, -inf, 1.0]], np.float32)
    for arr in (big, masked):
        for f in (lambda t: t.softmax(-1), lambda t: t.log_softmax(-1), lambda t: t.logsumexp(-1),
                  lambda t: t.softmax(0), lambda t: t.log_softmax(0)):
            check_against_torch(f, f, [arr], grad=False)
    check_against_torch(lambda t: t.logsumexp(1), lambda t: t.logsumexp(1), [np.array([[0.0, inf]], np.float32)],
                        grad=False)


def test_fused_and_numpy_softmax_paths_agree():
    x = _r(7, 33)
    fused = S._softmax.kernels["cpu"](x, dim=1)
    np.testing.assert_allclose(fused, S._softmax_np(x, 1, False), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(S._log_softmax.kernels["cpu"](x, dim=1), S._softmax_np(x, 1, True), rtol=1e-5, atol=1e-6)
    g = _r(7, 33)
    want = fused * (g - (g * fused).sum(1, keepdims=True))
    np.testing.assert_allclose(S._softmax_bw.kernels["cpu"](g, fused, dim=1), want, rtol=1e-5, atol=1e-6)


def test_unbroadcast_sum_keepdim():
    from ember.ops.util import unbroadcast

    g = ember.tensor(_r(4, 3, 5))
    out = unbroadcast(g, (3, 1))
    np.testing.assert_allclose(out.numpy(), g.numpy().sum(axis=(0, 2)).reshape(3, 1), rtol=1e-5)
    assert g.sum(dim=(0, 2), keepdim=True).shape == (1, 3, 1)


@settings(deadline=None, max_examples=20)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data(), st.sampled_from(["sum", "mean", "amax", "amin"]),
       st.booleans())
def test_dims_property(shape, data, op, keepdim):
    x = _r(*shape)
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    check_against_torch(lambda t: getattr(t, op)(dims, keepdim=keepdim),
                        lambda t: getattr(torch, op)(t, dims, keepdim=keepdim), [x])


def test_error_messages():
    with pytest.raises(IndexError, match=r"sum: dimension out of range \(expected to be in range of \[-2, 1\], "
                                         r"but got 3\)"):
        ember.ones(2, 3).sum(3)
    with pytest.raises(RuntimeError, match="mean: input dtype must be floating point, got ember.int64"):
        ember.tensor([1, 2]).mean()
    with pytest.raises(RuntimeError, match=r"max: cannot reduce over a zero-size dimension \(input shape \(0, 3\)\)"):
        ember.ones(0, 3).max(0)
    with pytest.raises(RuntimeError, match="amax: cannot reduce over a zero-size dimension"):
        ember.ones(0, 3).max()
    with pytest.raises(RuntimeError, match="softmax: expected a floating point tensor, got ember.int64"):
        ember.tensor([1, 2]).softmax(0)
    with pytest.raises(RuntimeError, match=r"sum: dim \(1, -1\) appears multiple times"):
        ember.ones(2, 3).sum((1, -1))
    assert ember.ones(0, 3).amax(1).shape == (0,) and ember.ones(0, 3).sum(0).tolist() == [0.0, 0.0, 0.0]


def test_zero_dim_inputs():
    s = ember.tensor(3.0)
    assert s.sum().shape == () and s.max().item() == 3.0 and s.softmax(0).item() == 1.0
    v, i = s.max(0)
    assert v.item() == 3.0 and i.item() == 0 and s.cumsum(0).item() == 3.0 and s.argmax().item() == 0
