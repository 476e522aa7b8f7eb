"""Index ops along one dim against PyTorch: gather, scatter(_add), index_select, index_add, take_along_dim, one_hot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ember
from ember.ops.gather import one_hot

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(2)


def rnd(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gather(dim):
    a = rnd(3, 4, 5)
    n = a.shape[dim]
    idx = RNG.integers(0, n, size=(2, 3, 4)) if dim != -1 else RNG.integers(0, n, size=(3, 2, 7))
    check_against_torch(lambda x, i: x.gather(dim, i), lambda x, i: x.gather(dim, i), [a, idx])
    gradcheck(lambda x: ember.gather(x, dim, ember.from_numpy(idx)), [a.astype(np.float64)])
    # a non-contiguous input (a permuted view)
    p_idx = RNG.integers(0, (5, 4, 3)[dim], size=(5, 4, 2))
    check_against_torch(lambda x, i: x.permute(2, 1, 0).gather(dim, i), lambda x, i: x.permute(2, 1, 0).gather(dim, i),
                        [a, p_idx])


def test_gather_errors():
    x = ember.zeros(3, 4)
    with pytest.raises(IndexError, match="gather: index 5 is out of bounds for dimension 1 with size 4"):
        x.gather(1, ember.tensor([[5]]))
    with pytest.raises(IndexError, match="gather: index -1 is out of bounds for dimension 1 with size 4"):
        x.gather(1, ember.tensor([[-1]]))
    with pytest.raises(RuntimeError, match="gather: index tensor must have the same number of dimensions as input"):
        x.gather(1, ember.tensor([1]))
    with pytest.raises(RuntimeError, match=r"expected index \(4, 1\) to be no larger than self \(3, 4\) apart from "
                                           r"dimension 1"):
        x.gather(1, ember.zeros(4, 1, dtype=ember.int64))
    with pytest.raises(RuntimeError, match="gather: expected index to be an integer tensor"):
        x.gather(1, ember.zeros(3, 1))


@pytest.mark.parametrize("dim", [0, 1])
def test_scatter_add_and_scatter(dim):
    a, src = rnd(3, 4), rnd(2, 3)
    idx = RNG.integers(0, a.shape[dim], size=(2, 3))
    check_against_torch(lambda x, i, s: x.scatter_add(dim, i, s), lambda x, i, s: x.scatter_add(dim, i, s), [a, idx, src])
    # unique positions per column so scatter's overwrite order does not matter
    uidx = np.stack([RNG.permutation(a.shape[dim])[:2] for _ in range(3)], 1)
    check_against_torch(lambda x, i, s: x.scatter(dim, i, s), lambda x, i, s: x.scatter(dim, i, s), [a, uidx, src])
    check_against_torch(lambda x, i: x.scatter(dim, i, value=-1.0), lambda x, i: x.scatter(dim, i, value=-1.0), [a, uidx])
    gradcheck(lambda x, s: ember.scatter_add(x, dim, ember.from_numpy(idx), s),
              [a.astype(np.float64), src.astype(np.float64)])
    # a larger src: only its leading index-shaped block is read (forward only: torch's backward rejects it)
    big = rnd(3, 4)
    check_against_torch(lambda x, i, s: x.scatter_add(dim, i, s), lambda x, i, s: x.scatter_add(dim, i, s),
                        [a, idx, big], grad=False)


def test_scatter_inplace():
    def fn(x, i):
        y = x * 1.0
        y.scatter_(1, i, 0.0)
        y.scatter_add_(0, i % 3, x[:2, :1].expand(2, 2) * 1.0)
        return y

    check_against_torch(fn, fn, [rnd(3, 4), np.array([[0, 3], [1, 1]])])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_index_select(dim, dtype):
    a = rnd(4, 3, 5, dtype=dtype)
    idx = RNG.integers(0, a.shape[dim], size=6)
    check_against_torch(lambda x, i: x.index_select(dim, i), lambda x, i: x.index_select(dim, i), [a, idx])
    check_against_torch(lambda x, i: ember.index_select(x, dim, i), lambda x, i: torch.index_select(x, dim, i),
                        [a, np.array(1)])


def test_index_select_parallel_kernel_path():
    # outer size 8 x 40 indices x 128 inner crosses the parallel threshold of the row-scatter kernel
    a, idx = rnd(8, 64, 128), RNG.integers(0, 64, size=40)
    check_against_torch(lambda x, i: x.index_select(1, i), lambda x, i: x.index_select(1, i), [a, idx])
    check_against_torch(lambda x, i: x[:, i], lambda x, i: x[:, i], [a, idx])


def test_index_select_errors_and_gradcheck():
    x = ember.zeros(3, 4)
    with pytest.raises(IndexError, match="index_select: index 5 is out of bounds for dimension 0 with size 3"):
        x.index_select(0, ember.tensor([5]))
    with pytest.raises(IndexError, match=r"index_select: index is supposed to be a vector, got shape \(1, 1\)"):
        x.index_select(0, ember.tensor([[1]]))
    gradcheck(lambda t: t.index_select(1, ember.tensor([3, 0, 3])), [rnd(2, 4, 3, dtype=np.float64)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_index_add(dtype):
    a, src = rnd(5, 3, dtype=dtype), rnd(4, 3, dtype=dtype)
    idx = np.array([0, 4, 0, 2])
    check_against_torch(lambda x, i, s: x.index_add(0, i, s), lambda x, i, s: x.index_add(0, i, s), [a, idx, src])
    check_against_torch(lambda x, i, s: x.index_add(1, i, s, alpha=2.0), lambda x, i, s: x.index_add(1, i, s, alpha=2.0),
                        [a, np.array([2, 2, 0, 1]), rnd(5, 4, dtype=dtype)])
    with pytest.raises(RuntimeError, match=r"index_add: source shape \(3, 3\) must be \(4, 3\)"):
        ember.zeros(5, 3).index_add(0, ember.tensor(idx), ember.zeros(3, 3))


def test_take_along_dim():
    a = rnd(3, 4)
    idx = np.argsort(a, axis=1)
    check_against_torch(lambda x, i: x.take_along_dim(i, 1), lambda x, i: x.take_along_dim(i, 1), [a, idx])
    check_against_torch(lambda x, i: ember.take_along_dim(x, i, 0), lambda x, i: torch.take_along_dim(x, i, 0),
                        [a, np.array([[2], [0]])])
    check_against_torch(lambda x, i: ember.take_along_dim(x, i), lambda x, i: torch.take_along_dim(x, i),
                        [a, np.array([11, 0, 5])])


def test_one_hot():
    x = np.array([[0, 3], [2, 1]])
    check_against_torch(lambda t: one_hot(t), lambda t: F.one_hot(t), [x])
    check_against_torch(lambda t: one_hot(t, 6), lambda t: F.one_hot(t, 6), [x])
    with pytest.raises(RuntimeError, match=r"class values must be smaller than num_classes \(3\)"):
        one_hot(ember.tensor([1, 5]), 3)
    with pytest.raises(RuntimeError, match="class values must be non-negative"):
        one_hot(ember.tensor([1, -1]), 3)
    with pytest.raises(RuntimeError, match="only applicable to integer"):
        one_hot(ember.tensor([1.0, 2.0]))
