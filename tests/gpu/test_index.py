"""CUDA index ops against the CPU backend: gather / scatter / scatter_add, index_select / index_add,
max/min along a dim (select_along_backward), embedding, one_hot, nonzero, sort / topk, and advanced
indexing (index, index_put through setitem), forward and backward. Accumulating ops (scatter_add,
index_add and the gradients of gather, index_select, embedding, indexing) use atomics on CUDA, so
their float results are compared with the reduction tolerance."""
import numpy as np
import pytest

import ember
import ember.nn.functional as F

from .conftest import grads_match, same

RNG = np.random.default_rng(0)
TOL = dict(rtol=1e-4, atol=1e-5)


def _t(*shape, dtype=np.float32):
    return ember.from_numpy(RNG.uniform(-2.0, 2.0, shape).astype(dtype))


def _ints(hi, *shape, dtype=np.int64):
    return ember.from_numpy(RNG.integers(0, hi, shape).astype(dtype))


def _both(fn, *inputs):
    """fn on the CPU inputs and on CUDA copies of them."""
    return fn(*inputs), fn(*[x.cuda() for x in inputs])


# ---- gather / scatter / scatter_add -------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_gather_forward_and_backward(dim):
    x = _t(3, 4, 5)
    ishape = [3, 4, 5]
    ishape[dim] = 6  # longer than the dim: indices repeat, so the gradient sums
    idx = _ints(x.shape[dim], *ishape)
    grads_match(lambda a: ember.gather(a, dim, idx.to(a.device)), x, **TOL)
    small = _ints(x.shape[dim], 2, 2, 2, dtype=np.int32)  # smaller than x in the other dims too
    same(*_both(lambda a, i: a.gather(dim, i), x, small))


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_, np.float64])
def test_gather_dtypes_and_take_along_dim(dtype):
    x = _t(4, 6, dtype=dtype) if dtype != np.bool_ else ember.from_numpy(RNG.random((4, 6)) > 0.5)
    idx = _ints(6, 4, 3)
    same(*_both(lambda a, i: ember.gather(a, 1, i), x, idx))
    same(*_both(lambda a, i: ember.take_along_dim(a, i, 1), x, idx))
    same(*_both(lambda a, i: ember.take_along_dim(a, i), x, _ints(24, 5)))


@pytest.mark.parametrize("dim", [0, 1])
def test_scatter_last_write_wins_and_grads(dim):
    x, src = _t(4, 5), _t(4, 5)
    idx = ember.from_numpy(np.array([[0, 1, 2, 3, 0], [0, 1, 2, 3, 4], [1, 1, 1, 1, 1], [3, 0, 2, 1, 0]])
                           % x.shape[dim])
    grads_match(lambda a, s: ember.scatter(a, dim, idx.to(a.device), s), x, src)
    same(*_both(lambda a, i: a.scatter(dim, i, value=7.5), x, idx))
    same(*_both(lambda a, i: a.scatter(dim, i[:2, :3], 9.0), x, idx))  # a smaller index, scalar src


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_scatter_int_and_bool(dtype):
    x = ember.from_numpy(np.zeros((3, 4), dtype))
    src = ember.from_numpy(RNG.integers(0, 5, (3, 4)).astype(dtype))
    same(*_both(lambda a, i, s: ember.scatter(a, 1, i, s), x, _ints(4, 3, 4), src))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_scatter_add_forward_and_backward(dim):
    x = _t(3, 4, 2)
    ishape = [3, 4, 2]
    ishape[dim] = 7
    idx = _ints(x.shape[dim], *ishape)
    src = _t(*ishape)
    grads_match(lambda a, s: ember.scatter_add(a, dim, idx.to(a.device), s), x, src, **TOL)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int8, np.uint8, np.bool_, np.float64])
def test_scatter_add_dtypes(dtype):
    x = ember.from_numpy(RNG.integers(0, 3, (3, 5)).astype(dtype))
    src = ember.from_numpy(RNG.integers(0, 3, (6, 5)).astype(dtype))
    same(*_both(lambda a, i, s: a.scatter_add(0, i, s), x, _ints(3, 6, 5), src))


def test_inplace_scatter_variants():
    def fn(a, i, s):
        a = a.clone()
        a.scatter_add_(1, i, s)
        return a.scatter_(0, i[:1], 2.0)

    same(*_both(fn, _t(3, 4), _ints(3, 3, 4), _t(3, 4)), **TOL)


# ---- index_select / index_add -----------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_index_select_forward_and_backward(dim):
    x = _t(3, 4, 5)
    idx = ember.from_numpy(np.array([2, 0, 2, 1, 2]))  # repeated: the gradient sums
    grads_match(lambda a: ember.index_select(a, dim, idx.to(a.device)), x, **TOL)
    same(*_both(lambda a, i: a.index_select(dim, i), x, ember.from_numpy(np.array(1, np.int32))))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_])
def test_index_select_dtypes(dtype):
    x = ember.from_numpy(RNG.integers(0, 2, (4, 3)).astype(dtype))
    same(*_both(lambda a, i: ember.index_select(a, 0, i), x, _ints(4, 6)))
    same(*_both(lambda a, i: ember.index_select(a, 0, i), x, ember.from_numpy(np.zeros(0, np.int64))))


@pytest.mark.parametrize("dim,alpha", [(0, 1), (1, 2.5), (2, -1)])
def test_index_add_forward_and_backward(dim, alpha):
    x = _t(3, 4, 2)
    n = 6
    idx = _ints(x.shape[dim], n)
    sshape = list(x.shape)
    sshape[dim] = n
    grads_match(lambda a, s: ember.index_add(a, dim, idx.to(a.device), s, alpha=alpha), x, _t(*sshape), **TOL)


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.float64])
def test_index_add_dtypes_and_inplace(dtype):
    x = ember.from_numpy(RNG.integers(-3, 3, (4, 3)).astype(dtype))
    s = ember.from_numpy(RNG.integers(-3, 3, (5, 3)).astype(dtype))
    same(*_both(lambda a, i, b: a.index_add(0, i, b, alpha=3), x, _ints(4, 5), s))
    same(*_both(lambda a, i, b: a.clone().index_add_(0, i, b), x, _ints(4, 5), s))


# ---- max / min along a dim: select_along_backward ------------------------------------------------
@pytest.mark.parametrize("dim,keepdim", [(0, False), (1, True), (-1, False)])
def test_max_min_dim_backward(dim, keepdim):
    x = _t(3, 4, 5)
    grads_match(lambda a: ember.max(a, dim=dim, keepdim=keepdim).values, x)
    grads_match(lambda a: a.min(dim=dim, keepdim=keepdim).values * 2, x)
    grads_match(lambda a: ember.max(a, dim=0).values, _t(7))  # a 1-D input: 0-d gradient


# ---- embedding, one_hot ---------------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx,scale", [(None, False), (2, False), (None, True), (-1, True)])
def test_embedding_forward_and_backward(padding_idx, scale):
    w = _t(6, 4)
    idx = ember.from_numpy(np.array([[0, 2, 2, 5], [1, 2, 0, 0], [5, 5, 5, 3]]))
    grads_match(lambda a: F.embedding(idx.to(a.device), a, padding_idx=padding_idx, scale_grad_by_freq=scale),
                w, **TOL)


def test_embedding_int32_indices_and_float64():
    same(*_both(lambda i, a: F.embedding(i, a), _ints(6, 5, dtype=np.int32), _t(6, 3, dtype=np.float64)))
    same(*_both(lambda i, a: F.embedding(i, a), ember.from_numpy(np.array(4)), _t(6, 3)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_one_hot(dtype):
    x = _ints(5, 3, 4, dtype=dtype)
    same(*_both(lambda a: F.one_hot(a, 5), x))
    same(*_both(lambda a: F.one_hot(a, num_classes=7), x[0]))


# ---- nonzero ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_nonzero_across_blocks(dtype):
    a = RNG.integers(0, 3, (10, 25)).astype(dtype)  # 250 elements: several blocks of threads
    x = ember.from_numpy(a)
    same(*_both(ember.nonzero, x))
    same(*_both(lambda t: t.argwhere(), ember.from_numpy(a.reshape(2, 5, 25))))
    for c, g in zip(*_both(lambda t: t.nonzero(as_tuple=True), x)):
        same(c, g)


def test_nonzero_edge_cases():
    same(*_both(ember.nonzero, ember.from_numpy(np.zeros((3, 4), np.float32))))
    same(*_both(ember.nonzero, ember.from_numpy(np.array([0.0, np.nan, -0.0, 1.0], np.float32))))
    same(*_both(ember.nonzero, ember.from_numpy(np.zeros((0, 3), np.int64))))
    same(*_both(ember.nonzero, ember.from_numpy(np.array(5.0, np.float32))))
    same(*_both(ember.nonzero, ember.from_numpy(np.array(0, np.int64))))


def test_masked_select_and_mask_index():
    x = _t(4, 5)
    m = ember.from_numpy(RNG.random((4, 5)) > 0.5)
    grads_match(lambda a: ember.masked_select(a, m.to(a.device)), x, **TOL)
    grads_match(lambda a: a[:, m[0].to(a.device)], x, **TOL)


# ---- sort / topk ----------------------------------------------------------------------------------
def _ties(*shape, dtype=np.float32):
    return ember.from_numpy(RNG.integers(-3, 3, shape).astype(dtype))


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_stable_with_ties(dim, descending):
    x = _ties(5, 6, 4)
    same(*_both(lambda a: ember.sort(a, dim=dim, descending=descending), x))
    grads_match(lambda a: ember.sort(a, dim=dim, descending=descending).values, x)
    same(*_both(lambda a: a.argsort(dim=dim, descending=descending), x))


@pytest.mark.parametrize("descending", [False, True])
def test_sort_nan_and_dtypes(descending):
    a = np.array([[1.0, np.nan, -2.0, np.nan, 1.0, 0.0, -np.inf, np.inf]], np.float32)
    same(*_both(lambda t: t.sort(descending=descending), ember.from_numpy(a)))
    for dtype in (np.int64, np.int8, np.uint8, np.float64):
        same(*_both(lambda t: ember.sort(t, descending=descending), _ties(3, 17, dtype=dtype) if dtype != np.uint8
                    else ember.from_numpy(RNG.integers(0, 4, (3, 17)).astype(dtype))))
    same(*_both(lambda t: t.sort(descending=descending), ember.from_numpy(RNG.random((2, 9)) > 0.5)))
    same(*_both(lambda t: ember.sort(t), ember.from_numpy(np.array(3.0, np.float32))))
    same(*_both(lambda t: ember.sort(t, dim=0), ember.from_numpy(np.zeros((0, 3), np.float32))))


@pytest.mark.parametrize("k,dim,largest", [(1, -1, True), (3, -1, False), (4, 0, True), (0, 1, True), (5, 1, False)])
def test_topk(k, dim, largest):
    x = _ties(4, 5, 3)
    same(*_both(lambda a: ember.topk(a, k, dim=dim, largest=largest), x))
    grads_match(lambda a: a.topk(k, dim=dim, largest=largest).values, x)
    nan = ember.from_numpy(np.array([[2.0, np.nan, 1.0, 2.0, np.nan]], np.float32))
    same(*_both(lambda a: ember.topk(a, 2, largest=largest), nan))


# ---- advanced indexing: index, index_put ------------------------------------------------------------
_I = ember.from_numpy(np.array([[2, 0], [-1, 2]]))  # negative positions count from the end
_J = ember.from_numpy(np.array([1, 0]))


@pytest.mark.parametrize("key", [
    lambda i, j: (i,),
    lambda i, j: (slice(None), i),
    lambda i, j: (Ellipsis, j),
    lambda i, j: (i, slice(1, None), j),          # split advanced indices: the broadcast dims come first
    lambda i, j: (slice(None, None, 2), i, j),    # adjacent: they stay in place
    lambda i, j: (i, 1),                          # an int among tensors joins them
    lambda i, j: (None, j, slice(None), -1),
    lambda i, j: (1, slice(None), i),
])
def test_index_forward_and_backward(key):
    x = _t(3, 3, 4)

    def fn(a):
        dev = a.device
        return a[key(_I.to(dev), _J.to(dev))]

    grads_match(fn, x, **TOL)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_index_int_and_bool_data(dtype):
    x = ember.from_numpy(RNG.integers(0, 2, (4, 3)).astype(dtype))
    same(*_both(lambda a, i: a[i, :2], x, ember.from_numpy(np.array([3, 1, 3], np.int32))))
    same(*_both(lambda a, i: a[i], x, ember.from_numpy(np.zeros((0, 2), np.int64))))


@pytest.mark.parametrize("key", [
    lambda i, j, m: (i,),
    lambda i, j, m: (slice(None), j),
    lambda i, j, m: (i, slice(1, 3), j),
    lambda i, j, m: (slice(1, None), 2),   # basic only
    lambda i, j, m: (m,),                  # a boolean mask
    lambda i, j, m: (Ellipsis, m[0], slice(None)),
])
def test_index_put_through_setitem(key):
    x = _t(3, 4, 5)
    mask = ember.from_numpy(RNG.random((3, 4)) > 0.4)

    def fn(a, v):
        dev = a.device
        y = a * 1
        y[key(_I.to(dev) % 3, _J.to(dev), mask.to(dev))] = v
        return y

    last = x[key(_I % 3, _J, mask)].shape[-1]
    grads_match(fn, x, _t(last), **TOL)  # the value broadcasts over the leading selected dims


def test_index_put_repeated_positions_last_wins():
    idx = ember.from_numpy(np.array([0, 2, 0, 0, 1]))
    vals = ember.from_numpy(np.arange(5, dtype=np.float32))

    def fn(a, v):
        y = a * 1
        y[idx.to(a.device)] = v
        return y

    grads_match(fn, _t(4), vals)


def test_index_put_scalar_value_and_shape_error():
    def fn(a):
        y = a * 1
        y[1:, _J.to(a.device)] = 5.0
        return y

    grads_match(fn, _t(3, 2))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        y = _t(3, 4).cuda().requires_grad_() * 1
        y[_J.cuda()] = _t(3, 4).cuda()


def test_index_put_zero_d_masks():
    def fn(a):
        a = a.detach().requires_grad_()  # setitem under autograd: the index_put op
        y = a * 1
        y[True] = a * 2
        y[False] = 0.0
        return y

    same(*_both(fn, _t(3, 2)))
