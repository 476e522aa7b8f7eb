"""CUDA shape-family ops against the CPU backend: reshape, permute, expand, narrow, flip, repeat, cat, stack,
pad (all modes, + pad_backward), tril/triu, cumsum, getitem and getitem_backward (basic and tensor indices)."""
import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops.registry import apply, get_op

from .conftest import grads_match, same

_rng = np.random.default_rng(1)


def _t(*shape, dtype="float32"):
    if dtype == "bool":
        return ember.from_numpy(np.asarray(_rng.random(shape) > 0.5))
    if np.dtype(dtype).kind in "iu":
        return ember.from_numpy(np.asarray(_rng.integers(-5, 6, shape), dtype))
    return ember.from_numpy(np.asarray(_rng.standard_normal(shape), dtype))


def _check(fn, *inputs):
    same(fn(*inputs), fn(*(x.cuda() for x in inputs)))


def _needs_cuda(op):
    """Skip a gradient whose backward runs an op of another kernel family not on CUDA yet."""
    ember.cuda._backend()
    if "cuda" not in get_op(op).kernels:
        pytest.skip(f"the backward needs {op!r} on CUDA")


DTYPES = ["float32", "float64", "int64", "int32", "bool"]


# ---- reshape, permute, expand -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_family(dtype):
    x = _t(2, 3, 4, dtype=dtype)
    _check(lambda a: a.reshape(4, -1), x)
    _check(lambda a: a.flatten(1), x)
    _check(lambda a: a.unsqueeze(1).squeeze(), x)
    g = x.cuda()
    r = g.reshape(6, 4)
    assert r._data.d is g._data.d  # a view of the same buffer, as on the CPU


def test_reshape_grad():
    grads_match(lambda a: a.reshape(3, 8).unflatten(0, (1, 3)), _t(2, 3, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_permute_forward(dtype):
    x = _t(2, 3, 4, 2, dtype=dtype)
    for dims in [(3, 2, 1, 0), (0, 2, 1, 3), (1, 3, 0, 2)]:
        _check(lambda a: a.permute(*dims), x)
    _check(lambda a: a.T, _t(3, 5, dtype=dtype))


def test_permute_grad():
    grads_match(lambda a: a.permute(2, 0, 1), _t(2, 3, 4))
    grads_match(lambda a: a.transpose(0, -1).mT, _t(2, 3, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_forward(dtype):
    _check(lambda a: a.expand(2, 3, 4), _t(3, 1, dtype=dtype))
    _check(lambda a: a.expand(3, -1, 2), _t(1, 4, 1, dtype=dtype))
    _check(lambda a: a.expand(5), _t(dtype=dtype))


def test_expand_grad():
    _needs_cuda("sum")
    grads_match(lambda a: a.expand(2, 3, 4), _t(3, 1))


# ---- narrow, flip, repeat ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_narrow_forward(dtype):
    x = _t(4, 5, 3, dtype=dtype)
    _check(lambda a: a.narrow(1, 1, 3), x)
    _check(lambda a: a.narrow(-1, 2, 1), x)
    _check(lambda a: a.narrow(0, 4, 0), x)
    _check(lambda a: a.split([2, 3], dim=1), x)
    _check(lambda a: a.chunk(2, dim=0), x)


def test_narrow_grad():
    grads_match(lambda a: a.narrow(1, 1, 3), _t(4, 5, 3))
    grads_match(lambda a: a.narrow(-1, 0, 2), _t(4, 5, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_forward(dtype):
    x = _t(2, 3, 4, dtype=dtype)
    for dims in [(0,), (1, 2), (0, 1, 2), (-1,)]:
        _check(lambda a: a.flip(dims), x)
    _check(lambda a: a.flip(()), _t(dtype=dtype))


def test_flip_grad():
    grads_match(lambda a: a.flip(0, 2), _t(2, 3, 4))


@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_repeat_forward(dtype):
    x = _t(2, 3, dtype=dtype)
    _check(lambda a: a.repeat(2, 3), x)
    _check(lambda a: a.repeat(2, 1, 2), x)
    _check(lambda a: a.repeat(0, 2), x)
    _check(lambda a: a.tile((3,)), x)


def test_repeat_grad():
    _needs_cuda("sum")
    grads_match(lambda a: a.repeat(2, 1, 3), _t(2, 3))


# ---- cat, stack -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_cat_stack_forward(dtype):
    a, b, c = _t(2, 3, dtype=dtype), _t(2, 1, dtype=dtype), _t(2, 4, dtype=dtype)
    _check(lambda *xs: ember.cat(xs, dim=1), a, b, c)
    _check(lambda *xs: ember.cat(xs, dim=0), a, _t(3, 3, dtype=dtype))
    _check(lambda *xs: ember.cat(xs, dim=0), a, _t(0, 3, dtype=dtype))
    for dim in (0, 1, 2, -1):
        _check(lambda *xs: ember.stack(xs, dim=dim), a, _t(2, 3, dtype=dtype), _t(2, 3, dtype=dtype))


def test_cat_promotes_and_skips_empty():
    _check(lambda *xs: ember.cat(xs), _t(3, dtype="int32"), _t(2), _t(0))
    _check(lambda *xs: ember.cat(xs, dim=1), _t(2, 2, dtype="bool"), _t(2, 3, dtype="int64"))


def test_cat_stack_grad():
    grads_match(lambda a, b: ember.cat([a, b], dim=1), _t(2, 3, 2), _t(2, 1, 2))
    grads_match(lambda a, b: ember.cat([a, b], dim=-1), _t(2, 3), _t(2, 2))
    grads_match(lambda a, b: ember.stack([a, b], dim=1), _t(2, 3), _t(2, 3))
    grads_match(lambda a, b: ember.stack([a, b], dim=2), _t(2, 3), _t(2, 3))


# ---- pad, pad_backward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "bool"])
def test_pad_constant_forward(dtype):
    x = _t(2, 3, 4, dtype=dtype)
    _check(lambda a: F.pad(a, (1, 2)), x)
    _check(lambda a: F.pad(a, (0, 1, 2, 0, 1, 1), value=1), x)
    _check(lambda a: F.pad(a, (-1, 2, 1, -2)), x)  # negative pads crop
    _check(lambda a: F.pad(a, (1, 1)), _t(0, 2, dtype=dtype))


def test_pad_constant_value_and_grad():
    _check(lambda a: F.pad(a, (2, 1, 1, 0), value=-2.5), _t(2, 3))
    grads_match(lambda a: F.pad(a, (1, 2, 0, 1), value=3.0), _t(2, 3, 4))
    grads_match(lambda a: F.pad(a, (-1, 1, 2, -1)), _t(2, 3, 4))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_modes(mode):
    for shape, pad in [((2, 5), (2, 3)), ((2, 2, 4), (3, 1)), ((1, 2, 3, 4), (1, 2, 2, 1)),
                       ((1, 2, 3, 3, 3), (1, 1, 2, 0, 1, 2)), ((2, 2, 5), (-1, 2))]:
        x = _t(*shape)
        _check(lambda a: F.pad(a, pad, mode=mode), x)
        _check(lambda a: F.pad(a, pad, mode=mode), x.to(ember.int64))
        grads_match(lambda a: F.pad(a, pad, mode=mode), x)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_backward_op(mode):
    # pad_backward directly (it is also differentiable: its gradient is pad), with float64 gradients
    g = _t(2, 3, 6, 7, dtype="float64")
    pad, shape = (2, 1, 1, 2), (2, 3, 3, 4)
    same(apply("pad_backward", g, pad=pad, mode=mode, shape=shape),
         apply("pad_backward", g.cuda(), pad=pad, mode=mode, shape=shape), 1e-12, 1e-12)
    gg = _t(2, 3, 3, 4)
    grads_match(lambda a: apply("pad_backward", a, pad=pad, mode=mode, shape=shape), _t(2, 3, 6, 7), grad=gg)


# ---- tril, triu -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_tril_triu_forward(dtype):
    for shape in [(4, 5), (2, 3, 4), (5, 2)]:
        x = _t(*shape, dtype=dtype)
        for k in (-1, 0, 2):
            _check(lambda a: ember.tril(a, k), x)
            _check(lambda a: ember.triu(a, diagonal=k), x)


def test_tril_triu_grad():
    grads_match(lambda a: ember.tril(a, -1), _t(2, 4, 4))
    grads_match(lambda a: ember.triu(a, 1), _t(3, 5))


# ---- cumsum -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_cumsum_forward(dtype):
    x = _t(3, 4, 5, dtype=dtype)
    for dim in (0, 1, 2, -1):
        same(ember.cumsum(x, dim), ember.cumsum(x.cuda(), dim), 1e-4, 1e-5)
    _check(lambda a: ember.cumsum(a, 0), _t(dtype=dtype))
    _check(lambda a: ember.cumsum(a, 1), _t(2, 0, dtype=dtype))


def test_cumsum_dtype_and_reverse():
    x = _t(4, 6) * 3
    for dt in (ember.float64, ember.int64, ember.int32):
        same(ember.cumsum(x, 1, dtype=dt), ember.cumsum(x.cuda(), 1, dtype=dt), 1e-4, 1e-5)
    same(ember.cumsum(x, 0, dtype=ember.float64), ember.cumsum(x.cuda(), 0, dtype=ember.float64), 1e-12, 1e-12)
    for dim in (0, 1):
        same(apply("cumsum", x, dim=dim, reverse=True), apply("cumsum", x.cuda(), dim=dim, reverse=True), 1e-4, 1e-5)


@pytest.mark.parametrize("shape, dim", [((2, 150), 1), ((130,), 0), ((100, 2), 0)])
def test_cumsum_long_rows(shape, dim):
    # rows longer than a block: the one-block-per-row shared-memory scan, over several tiles
    x = _t(*shape)
    same(ember.cumsum(x, dim), ember.cumsum(x.cuda(), dim), 1e-4, 1e-5)
    same(apply("cumsum", x, dim=dim, reverse=True), apply("cumsum", x.cuda(), dim=dim, reverse=True), 1e-4, 1e-5)
    xi = _t(*shape, dtype="int64")
    same(ember.cumsum(xi, dim), ember.cumsum(xi.cuda(), dim))
    grads_match(lambda a: ember.cumsum(a, dim), x)


def test_cumsum_grad():
    grads_match(lambda a: ember.cumsum(a, 1), _t(3, 4, 2))
    grads_match(lambda a: ember.cumsum(a, -1, dtype=ember.float64), _t(3, 4))


# ---- getitem, getitem_backward ----------------------------------------------------------------------------
_BASIC = [
    (1,), (-1,), (slice(None), 2), (1, slice(None, None, 2)), (slice(1, None), slice(None, -1), slice(None, None, 3)),
    (None, 0, None), (Ellipsis, 1), (0, Ellipsis, None), (slice(5, 9),), (slice(-2, None, 2), -3, 1),
    (slice(None, None, 4), None, slice(1, 3)), (2, 1, 3), (Ellipsis,),
]


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_getitem_basic_forward(dtype):
    x = _t(3, 4, 5, dtype=dtype)
    for idx in _BASIC:
        _check(lambda a: a[idx], x)
    _check(lambda a: a.select(1, -2), x)
    _check(lambda a: a.unbind(2), x)
    _check(lambda a: a[None, ...], _t(dtype=dtype))


def test_getitem_basic_grad():
    for idx in _BASIC:
        grads_match(lambda a: a[idx], _t(3, 4, 5))
    grads_match(lambda a: ember.stack(a.unbind(1), dim=0), _t(2, 3))


def test_getitem_tensor_index_grad():
    # the index op's gradient: getitem_backward with index tensors, repeated positions summed atomically
    x = _t(4, 5, 3)
    i = ember.tensor([0, 2, 2, -1, 0])
    j = ember.tensor([[1], [3], [-4]])
    grads_match(lambda a, i: a[i], x, i)
    grads_match(lambda a, i: a[:, i], x, i)
    grads_match(lambda a, i, j: a[j, i], x, i, j)  # broadcast (3, 5) index
    grads_match(lambda a, i, j: a[j, 1:, i], x, i, j)  # split advanced items: the index dims go first
    grads_match(lambda a, i: a[None, 2, i, ::2], x, i)  # an int joins the advanced items
    grads_match(lambda a, i: a[..., i], x, ember.tensor([2, 0, 2]))
    grads_match(lambda a, i: a[i], x.double(), ember.tensor([3, 3, 3], dtype=ember.int32))


def test_getitem_mask_grad():
    _needs_cuda("nonzero")
    x = _t(3, 4)
    grads_match(lambda a, m: a[m], x, x > 0)
    grads_match(lambda a, m: a[:, m], x, ember.tensor([True, False, True, True]))


def test_getitem_backward_op():
    # getitem_backward called as the index op's backward would, also with an empty index and an int gradient
    i = ember.tensor([1, -1, 1])
    for gg, idx, items, shape in [(_t(3, 3), i, ("tensor", (None, None, None)), (4, 3)),
                                  (_t(2, 3, dtype="int64"), i, ((None, None, None), "tensor"), (2, 5)),
                                  (_t(0, 3), ember.tensor([], dtype=ember.int64), ("tensor",), (4, 3))]:
        same(apply("getitem_backward", gg, idx, index=items, shape=shape),
             apply("getitem_backward", gg.cuda(), idx.cuda(), index=items, shape=shape))
