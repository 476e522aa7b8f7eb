"""CUDA reductions against the CPU backend: sum, mean, prod (+ prod_backward), amax/amin, max/min along a dim,
argmax/argmin, all/any, var/std, norm, logsumexp, softmax/log_softmax (+ softmax_backward).

Shapes are chosen to reach each launch path on the simulator: a reduced length <= 4 runs one thread per
output, a longer one a block per output (R > 64 also strides inside the block), reduced dims that are not one
run go through the gather first."""
import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops.registry import get_op

from .conftest import grads_match, same

_rng = np.random.default_rng(3)
RT, AT = 1e-4, 1e-5


def _t(*shape, dtype="float32"):
    if dtype == "bool":
        return ember.from_numpy(np.asarray(_rng.random(shape) > 0.5))
    if np.dtype(dtype).kind in "iu":
        return ember.from_numpy(np.asarray(_rng.integers(-4, 5, shape), dtype))
    return ember.from_numpy(np.asarray(_rng.standard_normal(shape), dtype))


def _check(fn, *inputs):
    same(fn(*inputs), fn(*(x.cuda() for x in inputs)), RT, AT)


def _needs_cuda(op):
    """Skip a gradient whose backward runs an op of another kernel family not on CUDA yet."""
    ember.cuda._backend()
    if "cuda" not in get_op(op).kernels:
        pytest.skip(f"the backward needs {op!r} on CUDA")


# (shape, dim): one thread per output (short R, inner 1 and > 1), gathered non-adjacent dims, size-1 dims
# skipped, everything; then a block per output (R 6, inner 1 and > 1; R 72 > the simulator's block of 64);
# then column tiles (folds with a long R and inner >= 4: one tile, two tiles with idle lanes)
THREAD_CASES = [((2, 3, 4), 2), ((2, 3, 4), (0,)), ((2, 3, 4), (0, 2)), ((3, 1, 4), (0, 2)), ((2, 3, 4), None),
                ((2, 3, 4), -2)]
BLOCK_CASES = [((2, 6), 1), ((6, 2), 0), ((1, 72), 1)]
COLUMN_CASES = [((2, 6, 5), 1), ((6, 10), 0)]


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("shape,dim", THREAD_CASES + BLOCK_CASES + COLUMN_CASES)
def test_sum_mean_forward(shape, dim, keepdim):
    x = _t(*shape)
    _check(lambda a: a.sum(dim, keepdim=keepdim), x)
    _check(lambda a: a.mean(dim, keepdim=keepdim), x)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "float64"])
def test_sum_dtypes(dtype):
    x = _t(2, 3, 4, dtype=dtype)
    _check(lambda a: a.sum(), x)  # bool / int -> int64
    _check(lambda a: a.sum((0, 2), keepdim=True), x)
    _check(lambda a: ember.sum(a, 1, dtype=ember.float32), x)  # int -> float32 casts before summing
    _check(lambda a: ember.mean(a, 1, dtype=ember.float64), x)


def test_sum_mean_special():
    x = _t(2, 3)
    x[0, 1] = math.nan
    _check(lambda a: a.sum(1), x)
    _check(lambda a: ember.sum(a, 0, dtype=ember.float64), x)
    e = _t(0, 3)
    _check(lambda a: a.sum(0), e)  # zeros
    _check(lambda a: a.mean(0), e)  # NaN, as numpy
    _check(lambda a: a.sum(1), e)  # an empty output
    _check(lambda a: a.sum(), _t())  # 0-d


def test_folds_in_chunks():
    """Few long outputs: R cut into chunks folded in two passes (column tiles, then a block per chunk)."""
    for x, dim in ((_t(40, 6), 0), (_t(96), 0)):
        if x.ndim == 1:
            x[3] = math.nan
        _check(lambda a: a.sum(dim), x)
        _check(lambda a: a.mean(dim, keepdim=True), x)  # divides by all of R, not by the chunk count
        _check(lambda a: a.norm(2, dim), x)  # squares once
        _check(lambda a: a.norm(3, dim), x)
        _check(lambda a: ember.amax(a, dim), x)
        _check(lambda a: (a > -2).all(dim), x)
    _check(lambda a: a.prod(0), ember.from_numpy(_rng.uniform(0.8, 1.2, (40, 6)).astype(np.float32)))
    _check(lambda a: a.sum(), _t(96, dtype="int32"))


@pytest.mark.parametrize("shape,dim", [((2, 3, 4), (0, 2)), ((2, 3, 4), None), ((2, 6), 1), ((6, 5), 0), ((40, 6), 0)])
def test_sum_mean_grad(shape, dim):
    grads_match(lambda a: a.sum(dim), _t(*shape))
    grads_match(lambda a: a.mean(dim, keepdim=True), _t(*shape))


# ---- prod --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,keepdim", [(None, False), (None, True), (0, False), (1, True), (-1, False)])
def test_prod_forward(dim, keepdim):
    x = _t(2, 3, 4)
    _check(lambda a: a.prod(dim, keepdim=keepdim), x)
    _check(lambda a: a.prod(dim, keepdim=keepdim), _t(2, 3, 4, dtype="int32"))  # -> int64
    _check(lambda a: a.prod(dim, keepdim=keepdim), _t(2, 3, 4, dtype="bool"))


def test_prod_block_and_dtype():
    _check(lambda a: a.prod(1), ember.from_numpy(_rng.uniform(0.5, 1.5, (2, 70)).astype(np.float32)))
    _check(lambda a: ember.prod(a, 0, dtype=ember.float64), _t(3, 2))


@pytest.mark.parametrize("dim", [None, 0, 1, 2])
def test_prod_grad_with_zeros(dim):
    x = _t(2, 3, 4)
    x[0, 1, 2] = 0.0
    x[1, 2, 0] = 0.0
    x[1, 2, 3] = 0.0  # two zeros in one row along dims 2: a zero gradient there
    grads_match(lambda a: a.prod(dim), x)
    grads_match(lambda a: a.prod(dim, keepdim=True), x)


# ---- amax / amin, max / min along a dim, argmax / argmin ----------------------------------------------
def _ties_nan():
    x = ember.from_numpy(np.asarray(_rng.integers(-2, 3, (2, 4, 4)), np.float32))
    x[0, 1, 2] = math.nan
    x[1, 0, 0] = math.nan
    x[1, 0, 3] = math.nan
    return x


@pytest.mark.parametrize("dim", [(1,), (0, 2), ()])
def test_amax_amin_forward(dim):
    for x in (_ties_nan(), _t(2, 4, 2, dtype="int32"), _t(2, 4, 2, dtype="bool")):
        _check(lambda a: ember.amax(a, dim), x)
        _check(lambda a: ember.amin(a, dim, keepdim=True), x)
    _check(lambda a: ember.amax(a, 1), _ties_nan().reshape(4, 8))  # a block per output
    _check(lambda a: ember.amin(a, 0), _ties_nan().reshape(8, 4))  # a column tile


@pytest.mark.parametrize("dim", [1, (0, 2)])
def test_amax_amin_grad_ties(dim):
    x = ember.from_numpy(np.asarray(_rng.integers(-2, 3, (3, 4, 2)), np.float32))  # many ties: shared evenly
    grads_match(lambda a: ember.amax(a, dim), x)
    grads_match(lambda a: ember.amin(a, dim, keepdim=True), x)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_max_min_dim(dim):
    for x in (_ties_nan(), _t(2, 3, 4, dtype="int64"), _t(2, 3, 4, dtype="bool")):
        _check(lambda a: tuple(a.max(dim)), x)
        _check(lambda a: tuple(a.min(dim, keepdim=True)), x)


def test_max_min_dim_block_and_scalar():
    x = _ties_nan().reshape(4, 8)
    _check(lambda a: tuple(a.max(1)), x)
    _check(lambda a: tuple(a.min(1)), x)
    _check(lambda a: tuple(a.max(1)), ember.from_numpy(np.asarray(_rng.integers(0, 3, (1, 80)), np.int32)))
    _check(lambda a: tuple(a.max(0)), ember.tensor(2.5))


def test_max_min_dim_grad():
    _needs_cuda("select_along_backward")
    x = ember.from_numpy(np.asarray(_rng.integers(-2, 3, (3, 4)), np.float32))
    grads_match(lambda a: a.max(1).values, x)
    grads_match(lambda a: a.min(0, keepdim=True).values, x)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (None, True), (0, False), (2, True), (-2, False)])
def test_argmax_argmin(dim, keepdim):
    for x in (_ties_nan(), _t(2, 3, 4, dtype="int32"), _t(2, 3, 4, dtype="bool")):
        _check(lambda a: a.argmax(dim, keepdim=keepdim), x)
        _check(lambda a: a.argmin(dim, keepdim=keepdim), x)


def test_argmax_block_paths():
    x = ember.from_numpy(np.asarray(_rng.integers(0, 4, (2, 90)), np.float32))  # ties across the block's threads
    _check(lambda a: a.argmax(1), x)
    _check(lambda a: a.argmin(), x)
    x[1, 70] = math.nan
    x[1, 5] = math.nan
    _check(lambda a: a.argmax(1), x)  # the first NaN wins
    _check(lambda a: a.argmin(), ember.tensor(3.0))


# ---- all / any -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bool", "float32", "int32"])
@pytest.mark.parametrize("dim", [None, 1, (0, 2)])
def test_all_any(dtype, dim):
    x = _t(3, 4, 2, dtype=dtype)
    if dtype == "float32":
        x[0, 1, 0] = math.nan  # nonzero
        x[1] = 0.0
    _check(lambda a: a.all(dim), x)
    _check(lambda a: a.any(dim, keepdim=True), x)


def test_all_any_block_and_empty():
    x = ember.ones(2, 9, dtype=ember.bool)
    x[1, 7] = False
    _check(lambda a: a.all(1), x)
    _check(lambda a: a.any(1), ember.logical_not(x))
    _check(lambda a: a.all(0), x.reshape(6, 3))
    e = _t(0, 3, dtype="bool")
    _check(lambda a: a.all(0), e)  # True
    _check(lambda a: a.any(0), e)  # False


# ---- var / std ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,dim", THREAD_CASES[1:4] + BLOCK_CASES)
def test_var_std_forward(shape, dim):
    x = _t(*shape, dtype="float64" if dim == 1 else "float32")
    _check(lambda a: a.var(dim), x)
    _check(lambda a: a.std(dim, keepdim=True, correction=0), x)


def test_var_std_dof():
    x = _t(2, 3)
    _check(lambda a: a.var(1, correction=3), x)  # dof 0: inf
    _check(lambda a: a.std(0, correction=2), x)
    _check(lambda a: a.var(1, correction=5), ember.zeros(2, 3))  # 0 / 0: NaN


@pytest.mark.parametrize("dim", [1, (0, 2), None])
def test_var_std_grad(dim):
    x = _t(2, 3, 4)
    grads_match(lambda a: a.var(dim), x)
    grads_match(lambda a: a.std(dim, keepdim=True), x)


# ---- norm ----------------------------------------------------------------------------------------------------
PS = [2, 1, math.inf, -math.inf, 0, 3, 0.5]


@pytest.mark.parametrize("p", PS)
def test_norm_forward(p):
    x = _t(2, 3, 4)
    x[0, 0, 1] = 0.0
    _check(lambda a: a.norm(p), x)
    _check(lambda a: a.norm(p, dim=(0, 2), keepdim=True), x)
    _check(lambda a: ember.norm(a, p, dim=1), _t(2, 7, dtype="float64"))  # a block per output
    _check(lambda a: ember.norm(a, p, dim=0), _t(7, 4))  # a column tile


@pytest.mark.parametrize("p", [2, 1, math.inf, 3])
def test_norm_grad(p):
    grads_match(lambda a: a.norm(p, dim=1), _t(3, 4))
    grads_match(lambda a: a.norm(p), _t(3, 4))


# ---- logsumexp ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,keepdim", [(1, False), ((0, 2), True), ((0, 1, 2), False), (-1, True)])
def test_logsumexp_forward(dim, keepdim):
    x = _t(3, 4, 2)
    x[0, :, 0] = -math.inf  # all -inf along dim 1: -inf
    x[1, 2, 1] = math.inf
    x[2, 0, 0] = math.nan
    _check(lambda a: a.logsumexp(dim, keepdim=keepdim), x)
    _check(lambda a: a.logsumexp(dim), _t(3, 4, 2, dtype="int32"))  # -> float32


def test_logsumexp_block_and_empty():
    x = _t(2, 70)
    x[1] = -math.inf
    _check(lambda a: a.logsumexp(1), x)
    _check(lambda a: a.logsumexp(0), _t(7, 3, dtype="float64"))
    _check(lambda a: a.logsumexp(0), _t(0, 3))


@pytest.mark.parametrize("dim", [1, (0, 2)])
def test_logsumexp_grad(dim):
    grads_match(lambda a: a.logsumexp(dim), _t(3, 4, 2))
    grads_match(lambda a: a.logsumexp(1), _t(2, 9))


# ---- softmax / log_softmax ----------------------------------------------------------------------------------
SOFTMAX_CASES = [((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 4), 0), ((2, 9), 1), ((9, 2), 0), ((1, 75), 1)]


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
def test_softmax_forward(shape, dim):
    x = _t(*shape)
    _check(lambda a: a.softmax(dim), x)
    _check(lambda a: F.log_softmax(a, dim), x)


def test_softmax_special():
    x = _t(4, 3)
    x[0] = -math.inf  # NaN row, as on the CPU
    x[1, 1] = math.inf
    x[2, 2] = math.nan
    for dim in (0, 1):
        _check(lambda a: ember.softmax(a, dim), x)
        _check(lambda a: ember.log_softmax(a, dim), x)
    _check(lambda a: a.softmax(1), _t(2, 3, dtype="float64"))
    _check(lambda a: a.softmax(0, dtype=ember.float32), _t(3, 2, dtype="int32"))
    _check(lambda a: a.log_softmax(0), ember.tensor(0.3))
    _check(lambda a: a.softmax(1), _t(0, 3))


@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES[:1] + SOFTMAX_CASES[2:5])
def test_softmax_grad(shape, dim):
    grads_match(lambda a: F.softmax(a, dim), _t(*shape))
    grads_match(lambda a: F.log_softmax(a, dim), _t(*shape))


def test_softmax_grad_float64_and_scalar():
    grads_match(lambda a: a.softmax(1), _t(2, 3, dtype="float64"))
    grads_match(lambda a: a.log_softmax(0), ember.tensor(0.7))
