"""tril/triu, sort/argsort, topk against torch: values, indices, gradients, NaN, ties, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
import ember.ops.sorting as S  # until the package imports it, this registers the ops

from .oracle import check_against_torch, gradcheck


def _distinct(*shape, seed=0):
    """Distinct values (no ties), shuffled, so sort/topk orders are unique."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.37 - 0.37 * n / 2 + 0.05).reshape(shape).astype(np.float32)


# ---- tril / triu ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tril", "triu"])
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 2), (2, 3, 4), (0, 3)])
@pytest.mark.parametrize("diagonal", [0, 1, -1, 3, -4])
def test_tril_triu_match_torch(name, shape, diagonal):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    check_against_torch(lambda t: getattr(S, name)(t, diagonal), lambda t: getattr(torch, name)(t, diagonal), [x])
    check_against_torch(lambda t: getattr(t, name)(diagonal=diagonal), lambda t: getattr(t, name)(diagonal=diagonal), [x])


@pytest.mark.parametrize("name", ["tril", "triu"])
def test_tril_triu_gradcheck_int_and_bool(name):
    gradcheck(lambda t: getattr(S, name)(t, 1), [np.random.default_rng(2).standard_normal((2, 3, 4))])
    for a in (np.arange(12).reshape(3, 4), np.ones((3, 3), bool)):
        e = getattr(ember.tensor(a), name)(-1)
        t = getattr(torch.tensor(a), name)(-1)
        assert e.dtype == ember.dtypes.from_numpy_dtype(a.dtype)
        np.testing.assert_array_equal(e.numpy(), t.numpy())


def test_tril_inplace_and_causal_mask():
    x = ember.ones(3, 3)
    assert x.tril_() is x
    np.testing.assert_array_equal(x.numpy(), np.tril(np.ones((3, 3), np.float32)))
    # the usual causal attention mask: masked_fill where the upper triangle is
    scores = np.random.default_rng(3).standard_normal((2, 4, 4)).astype(np.float32)
    mask_e = S.tril(ember.ones(4, 4)) == 0
    mask_t = torch.tril(torch.ones(4, 4)) == 0
    check_against_torch(lambda s: s.masked_fill(mask_e, float("-inf")).softmax(-1),
                        lambda s: s.masked_fill(mask_t, float("-inf")).softmax(-1), [scores])


def test_tril_errors():
    with pytest.raises(RuntimeError, match=r"tril: input tensor must have at least 2 dimensions, got shape \(3,\)"):
        S.tril(ember.ones(3))
    with pytest.raises(RuntimeError, match="triu: input tensor must have at least 2 dimensions"):
        ember.ones(()).triu()


# ---- sort / argsort -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1)])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_matches_torch(shape, dim, descending):
    x = _distinct(*shape)
    check_against_torch(lambda t: S.sort(t, dim=dim, descending=descending),
                        lambda t: torch.sort(t, dim=dim, descending=descending), [x])
    check_against_torch(lambda t: t.argsort(dim=dim, descending=descending),
                        lambda t: t.argsort(dim=dim, descending=descending), [x], grad=False)


def test_sort_result_type_and_method():
    out = ember.tensor([3.0, 1.0, 2.0]).sort()
    assert type(out).__name__ == "sort" and out._fields == ("values", "indices")
    values, indices = out
    assert values.tolist() == [1.0, 2.0, 3.0] and indices.tolist() == [1, 2, 0]
    assert indices.dtype == ember.int64 and not indices.requires_grad


@pytest.mark.parametrize("descending", [False, True])
def test_sort_stable_ties_and_nan(descending):
    x = np.array([[2.0, np.nan, 1.0, 2.0, -np.inf, 1.0, np.nan, 2.0]], np.float32)
    e = S.sort(ember.tensor(x), descending=descending, stable=True)
    t = torch.sort(torch.tensor(x), descending=descending, stable=True)
    np.testing.assert_array_equal(e.values.numpy(), t.values.numpy())
    np.testing.assert_array_equal(e.indices.numpy(), t.indices.numpy())
    a = S.argsort(ember.tensor(x), descending=descending, stable=True)
    np.testing.assert_array_equal(a.numpy(), torch.argsort(torch.tensor(x), descending=descending, stable=True))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_sort_integer_and_bool(dtype):
    x = np.array([[3, 0, 2, 2, 5], [1, 1, 0, 4, 3]]).astype(dtype)
    for desc in (False, True):
        e = ember.tensor(x).sort(dim=1, descending=desc, stable=True)
        t = torch.tensor(x).sort(dim=1, descending=desc, stable=True)
        assert e.values.dtype == ember.dtypes.from_numpy_dtype(np.dtype(dtype))
        np.testing.assert_array_equal(e.values.numpy(), t.values.numpy())
        np.testing.assert_array_equal(e.indices.numpy(), t.indices.numpy())


def test_sort_zero_dim_and_empty():
    v, i = S.sort(ember.tensor(2.5))
    assert v.shape == () and i.shape == () and v.item() == 2.5 and i.item() == 0
    v, i = S.sort(ember.zeros(3, 0), dim=1)
    assert v.shape == (3, 0) and i.shape == (3, 0)


def test_sort_gradcheck():
    gradcheck(lambda t: S.sort(t, dim=1, descending=True).values, [_distinct(3, 4).astype(np.float64)])
    gradcheck(lambda t: S.sort(t, dim=0)[0], [_distinct(4, 2).astype(np.float64)])


@settings(deadline=None, max_examples=20)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_sort_hypothesis_noncontiguous(shape, data):
    x = _distinct(*shape, seed=data.draw(st.integers(0, 100)))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    desc = data.draw(st.booleans())
    # a transposed (non-contiguous) view as input
    check_against_torch(lambda t: S.sort(t.mT if t.ndim > 1 else t, dim, desc),
                        lambda t: torch.sort(t.mT if t.ndim > 1 else t, dim, desc), [x])


# ---- topk -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,k,dim", [((7,), 3, 0), ((3, 5), 2, -1), ((3, 5), 3, 0), ((2, 3, 4), 4, 2),
                                         ((3, 5), 5, 1), ((3, 5), 0, 1)])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_torch(shape, k, dim, largest):
    x = _distinct(*shape, seed=k)
    check_against_torch(lambda t: S.topk(t, k, dim=dim, largest=largest),
                        lambda t: torch.topk(t, k, dim=dim, largest=largest), [x])
    check_against_torch(lambda t: t.topk(k, dim, largest), lambda t: t.topk(k, dim, largest), [x])


def test_topk_result_type_nan_and_zero_dim():
    out = S.topk(ember.tensor([0.5, 3.0, -1.0, 2.0]), 2)
    assert type(out).__name__ == "topk" and out._fields == ("values", "indices")
    assert out.values.tolist() == [3.0, 2.0] and out.indices.tolist() == [1, 3]
    x = np.array([1.0, np.nan, 3.0, -2.0], np.float32)
    for largest in (True, False):
        e, t = S.topk(ember.tensor(x), 2, largest=largest), torch.topk(torch.tensor(x), 2, largest=largest)
        np.testing.assert_array_equal(e.values.numpy(), t.values.numpy())
        np.testing.assert_array_equal(e.indices.numpy(), t.indices.numpy())
    v, i = S.topk(ember.tensor(4.0), 1)
    assert v.shape == () and i.shape == () and v.item() == 4.0


def test_topk_gradcheck_and_unsorted_request():
    gradcheck(lambda t: S.topk(t, 2, dim=1).values, [_distinct(3, 4).astype(np.float64)])
    gradcheck(lambda t: S.topk(t, 3, dim=0, largest=False)[0], [_distinct(4, 3).astype(np.float64)])
    # sorted=False: torch leaves the order open; the same set of elements must come back
    x = _distinct(4, 6)
    e = S.topk(ember.tensor(x), 3, sorted=False)
    t = torch.topk(torch.tensor(x), 3, sorted=False)
    np.testing.assert_array_equal(np.sort(e.indices.numpy(), 1), np.sort(t.indices.numpy(), 1))


def test_topk_sampling_idiom():
    # logits[logits < v[:, [-1]]] = -inf, then softmax: the top-k sampling step of a GPT script
    logits = _distinct(2, 10)

    def run(lib, t):
        v, _ = lib.topk(t, 3) if lib is torch else S.topk(t, 3)
        return (t - 0).masked_fill(t < v[:, [-1]], float("-inf")).softmax(-1)

    check_against_torch(lambda t: run(ember, t), lambda t: run(torch, t), [logits])


def test_topk_errors():
    with pytest.raises(RuntimeError, match=r"topk: k \(5\) is out of range for dimension 1 of size 4"):
        S.topk(ember.ones(2, 4), 5)
    with pytest.raises(IndexError, match="topk: dimension out of range"):
        S.topk(ember.ones(2, 4), 1, dim=2)
