"""batch_norm / layer_norm / group_norm against PyTorch, float64 central differences and error messages."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import ember
from ember.ops.norm import batch_norm, group_norm, layer_norm

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(0)
BN_SHAPES = [(8, 3), (4, 3, 5), (2, 3, 4, 4), (64, 8, 8, 8)]  # the last one takes the parallel path


def _rand(*shape, dtype=np.float32, scale=1.0, shift=0.0):
    return (RNG.standard_normal(shape) * scale + shift).astype(dtype)


def _stats(c, dtype=np.float32):
    return _rand(c, dtype=dtype, scale=0.1), (RNG.random(c) + 0.5).astype(dtype)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_torch(shape, affine):
    c = shape[1]
    rm, rv = _stats(c)
    arrays = [_rand(*shape, scale=2.0, shift=1.0)] + ([_rand(c), _rand(c)] if affine else [])
    e_stats = [ember.tensor(rm), ember.tensor(rv)]
    t_stats = [torch.tensor(rm), torch.tensor(rv)]

    def e_fn(x, *wb):
        return batch_norm(x, *e_stats, *wb, training=True, momentum=0.3)

    def t_fn(x, *wb):
        return F.batch_norm(x, *t_stats, *wb, training=True, momentum=0.3)

    check_against_torch(e_fn, t_fn, arrays)
    for e, t in zip(e_stats, t_stats):  # updated once by each library
        np.testing.assert_allclose(e.numpy(), t.numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", BN_SHAPES[:3])
def test_batch_norm_running_stats_after_several_steps(shape):
    c = shape[1]
    e_rm, e_rv = ember.zeros(c), ember.ones(c)
    t_rm, t_rv = torch.zeros(c), torch.ones(c)
    w, b = _rand(c), _rand(c)
    versions = e_rm._version
    for step in range(4):
        x = _rand(*shape, scale=1.0 + step, shift=step - 1.0)
        e = batch_norm(ember.tensor(x), e_rm, e_rv, ember.tensor(w), ember.tensor(b), training=True)
        t = F.batch_norm(torch.tensor(x), t_rm, t_rv, torch.tensor(w), torch.tensor(b), training=True)
        np.testing.assert_allclose(e.numpy(), t.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(e_rm.numpy(), t_rm.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(e_rv.numpy(), t_rv.numpy(), atol=1e-5, rtol=1e-4)
    assert e_rm._version == versions + 4
    assert e_rm.grad_fn is None and not e_rm.requires_grad
    # eval with the accumulated statistics
    x = _rand(*shape)
    e = batch_norm(ember.tensor(x), e_rm, e_rv, ember.tensor(w), ember.tensor(b), training=False)
    t = F.batch_norm(torch.tensor(x), t_rm, t_rv, torch.tensor(w), torch.tensor(b), training=False)
    np.testing.assert_allclose(e.numpy(), t.numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_eval_matches_torch(shape, affine):
    c = shape[1]
    rm, rv = _stats(c)
    arrays = [_rand(*shape), rm, rv] + ([_rand(c), _rand(c)] if affine else [])
    grad_inputs = [0, 3, 4] if affine else [0]
    check_against_torch(lambda x, m, v, *wb: batch_norm(x, m, v, *wb, training=False, eps=1e-3),
                        lambda x, m, v, *wb: F.batch_norm(x, m, v, *wb, training=False, eps=1e-3),
                        arrays, grad_inputs=grad_inputs)


def test_batch_norm_without_running_stats_in_training():
    x, w, b = _rand(6, 4), _rand(4), _rand(4)
    check_against_torch(lambda x, w, b: batch_norm(x, None, None, w, b, training=True),
                        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [x, w, b])


def test_batch_norm_only_weight():
    x, w = _rand(5, 3, 2), _rand(3)
    check_against_torch(lambda x, w: batch_norm(x, None, None, w, training=True),
                        lambda x, w: F.batch_norm(x, None, None, w, training=True), [x, w])


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck_float64(training):
    rm, rv = _stats(3, np.float64)
    arrays = [_rand(4, 3, 2, dtype=np.float64), _rand(3, dtype=np.float64), _rand(3, dtype=np.float64)]

    def fn(x, w, b):
        return batch_norm(x, ember.tensor(rm, dtype=ember.float64), ember.tensor(rv, dtype=ember.float64), w, b,
                          training=training)

    gradcheck(fn, arrays)


@settings(deadline=None, max_examples=15)
@given(n=st.integers(2, 5), c=st.integers(1, 4), sp=st.integers(1, 6), transposed=st.booleans())
def test_batch_norm_shapes_and_strides(n, c, sp, transposed):
    x = _rand(n, sp, c, scale=3.0) if transposed else _rand(n, c, sp, scale=3.0)
    w, b = _rand(c), _rand(c)

    def prep(lib_x):
        return lib_x.transpose(1, 2) if transposed else lib_x

    check_against_torch(lambda x, w, b: batch_norm(prep(x), None, None, w, b, training=True),
                        lambda x, w, b: F.batch_norm(prep(x), None, None, w, b, training=True), [x, w, b])


def test_batch_norm_errors():
    x = ember.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"batch_norm: running_mean should have shape \(3,\).*got \(4,\)"):
        batch_norm(x, ember.zeros(4), ember.ones(3), training=True)
    with pytest.raises(RuntimeError, match="running_mean and running_var must be given in evaluation mode"):
        batch_norm(x, None, None)
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training, got input shape \(1, 3\)"):
        batch_norm(ember.randn(1, 3), ember.zeros(3), ember.ones(3), training=True)
    with pytest.raises(ValueError, match=r"batch_norm: expected an input of shape \(N, C, \*\), got shape \(3,\)"):
        batch_norm(ember.randn(3), None, None, training=True)
    with pytest.raises(RuntimeError, match=r"weight should have shape \(3,\)"):
        batch_norm(x, None, None, ember.ones(2), training=True)


LN_CASES = [((4, 6), (6,)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((256, 128), (128,)), ((5,), (5,))]


@pytest.mark.parametrize("shape,ns", LN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(shape, ns, affine):
    arrays = [_rand(*shape, scale=2.0, shift=0.5)] + ([_rand(*ns), _rand(*ns)] if affine else [])
    check_against_torch(lambda x, *wb: layer_norm(x, ns, *wb, eps=1e-5),
                        lambda x, *wb: F.layer_norm(x, ns, *wb, eps=1e-5), arrays)


def test_layer_norm_int_shape_and_weight_only():
    x, w = _rand(3, 7), _rand(7)
    check_against_torch(lambda x, w: layer_norm(x, 7, w), lambda x, w: F.layer_norm(x, (7,), w), [x, w])


def test_layer_norm_gradcheck_float64():
    arrays = [_rand(3, 2, 4, dtype=np.float64), _rand(2, 4, dtype=np.float64), _rand(2, 4, dtype=np.float64)]
    gradcheck(lambda x, w, b: layer_norm(x, (2, 4), w, b), arrays)


@settings(deadline=None, max_examples=15)
@given(rows=st.integers(1, 6), k=st.integers(1, 9), transposed=st.booleans())
def test_layer_norm_strides(rows, k, transposed):
    x = _rand(k, rows) if transposed else _rand(rows, k)
    w, b = _rand(k), _rand(k)

    def prep(lib_x):
        return lib_x.transpose(0, 1) if transposed else lib_x

    check_against_torch(lambda x, w, b: layer_norm(prep(x), (k,), w, b),
                        lambda x, w, b: F.layer_norm(prep(x), (k,), w, b), [x, w, b])


def test_layer_norm_errors():
    msg = r"normalized_shape=\[5\], expected input with shape \[\*, 5\], but got input of size \[3, 4\]"
    with pytest.raises(RuntimeError, match=msg):
        layer_norm(ember.randn(3, 4), (5,))
    with pytest.raises(RuntimeError, match=r"layer_norm: weight should have shape \(4,\)"):
        layer_norm(ember.randn(3, 4), (4,), ember.ones(3))


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(affine):
    arrays = [_rand(2, 6, 3, 2)] + ([_rand(6), _rand(6)] if affine else [])
    check_against_torch(lambda x, *wb: group_norm(x, 3, *wb), lambda x, *wb: F.group_norm(x, 3, *wb), arrays)


def test_group_norm_errors():
    with pytest.raises(RuntimeError, match=r"number of channels \(6\) to be divisible by num_groups \(4\)"):
        group_norm(ember.randn(2, 6, 3), 4)
