"""CUDA pooling, normalisation and dropout against the CPU backend, forward and backward, through
ember.nn.functional and the nn modules (BatchNorm2d running statistics in train and eval mode)."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F

from .conftest import grads_match, same

RNG = np.random.default_rng(0)
RED = dict(rtol=1e-4, atol=1e-5)  # reductions: the summation order differs from the CPU's


def _t(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return ember.from_numpy(RNG.uniform(lo, hi, shape).astype(dtype))


# ---- max_pool2d ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1, padding=1),  # overlapping windows: the backward adds into shared pixels
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
])
def test_max_pool2d(kw):
    x = _t(2, 2, 5, 6)
    grads_match(lambda a: F.max_pool2d(a, **kw), x)
    same(F.max_pool2d(x, return_indices=True, **kw), F.max_pool2d(x.cuda(), return_indices=True, **kw))


def test_max_pool2d_ties_nan_unbatched_and_float64():
    a = RNG.integers(0, 3, (2, 4, 4)).astype(np.float64)  # many ties: the first in row-major order wins
    a[0, 1, 1] = np.nan
    x = ember.from_numpy(a)
    same(F.max_pool2d(x, 2, return_indices=True), F.max_pool2d(x.cuda(), 2, return_indices=True))
    grads_match(lambda t: F.max_pool2d(t, 2, 1), ember.from_numpy(RNG.integers(0, 3, (2, 4, 4)).astype(np.float64)))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_max_pool2d_integers(dtype):
    x = ember.from_numpy(RNG.integers(0, 100, (1, 2, 5, 5)).astype(dtype))
    same(F.max_pool2d(x, 3, 2, 1, return_indices=True), F.max_pool2d(x.cuda(), 3, 2, 1, return_indices=True))


# ---- avg_pool2d ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=1, padding=(1, 1), divisor_override=5),
])
def test_avg_pool2d(kw):
    grads_match(lambda a: F.avg_pool2d(a, **kw), _t(2, 2, 5, 6))


def test_avg_pool2d_float64_unbatched():
    grads_match(lambda a: F.avg_pool2d(a, 2, 1), _t(3, 4, 4, dtype=np.float64))


# ---- adaptive pooling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, (2, 3), (7, 4), (None, 2)])
def test_adaptive_avg_pool2d(size):
    grads_match(lambda a: F.adaptive_avg_pool2d(a, size), _t(2, 2, 5, 3))


@pytest.mark.parametrize("size", [1, (2, 3), (7, 4)])
def test_adaptive_max_pool2d(size):
    x = _t(2, 2, 5, 3)
    grads_match(lambda a: F.adaptive_max_pool2d(a, size), x)
    same(F.adaptive_max_pool2d(x, size, return_indices=True),
         F.adaptive_max_pool2d(x.cuda(), size, return_indices=True))


def test_adaptive_pools_float64_and_modules():
    x = _t(3, 6, 5, dtype=np.float64)
    grads_match(lambda a: nn.AdaptiveAvgPool2d((4, 2))(a), x)
    grads_match(lambda a: nn.AdaptiveMaxPool2d(2)(a), x)
    grads_match(lambda a: nn.MaxPool2d(2)(a), x)
    grads_match(lambda a: nn.AvgPool2d(3, 1, 1)(a), x)


# ---- batch norm ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 4, 4)])
def test_batch_norm_training_batch_statistics(shape):
    c = shape[1]
    w, b = _t(c), _t(c)
    grads_match(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), _t(*shape), w, b, **RED)


def test_batch_norm_eval_running_statistics():
    rm, rv = _t(3), _t(3, lo=0.5, hi=2.0)

    def fn(x, w, b):
        return F.batch_norm(x, rm.to(x.device), rv.to(x.device), w, b, training=False, eps=1e-3)

    grads_match(fn, _t(2, 3, 3, 4), _t(3), _t(3), **RED)
    grads_match(fn, _t(4, 3, dtype=np.float64), _t(3, dtype=np.float64), _t(3, dtype=np.float64), **RED)


def test_batch_norm_float64_and_group_norm():
    grads_match(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), _t(3, 2, 4, dtype=np.float64),
                _t(2, dtype=np.float64), _t(2, dtype=np.float64), **RED)
    grads_match(lambda x: F.group_norm(x, 2), _t(2, 4, 3, 2), **RED)


def test_batch_norm2d_module_train_then_eval():
    x = _t(2, 3, 4, 4)
    mc = nn.BatchNorm2d(3, momentum=0.2)
    with ember.no_grad():
        mc.weight.copy_(_t(3))
        mc.bias.copy_(_t(3))
    mg = nn.BatchNorm2d(3, momentum=0.2)
    mg.load_state_dict(mc.state_dict())
    mg.cuda()
    outs = []
    for m, xi in ((mc, x.clone()), (mg, x.cuda())):
        xi.requires_grad_(True)
        m.train()
        m(xi)
        y = m(xi)  # a second step: the running statistics move twice
        (y * y).sum().backward()
        m.eval()
        outs.append((y, xi.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var, m(xi)))
    same(*outs, **RED)
    assert mg.running_mean.is_cuda and int(mg.num_batches_tracked.item()) == 2


# ---- layer norm ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, normalized", [((4, 6), (6,)), ((2, 3, 5), (3, 5)), ((3, 40), (40,))])
def test_layer_norm(shape, normalized):
    grads_match(lambda x, w, b: F.layer_norm(x, normalized, w, b, eps=1e-4), _t(*shape), _t(*normalized),
                _t(*normalized), **RED)


def test_layer_norm_float64_module_and_no_affine():
    grads_match(lambda x, w, b: F.layer_norm(x, 5, w, b), _t(3, 5, dtype=np.float64), _t(5, dtype=np.float64),
                _t(5, dtype=np.float64), **RED)
    mc, mg = nn.LayerNorm(4), nn.LayerNorm(4)
    with ember.no_grad():
        mc.weight.copy_(_t(4))
    mg.load_state_dict(mc.state_dict())
    mg.cuda()
    xc = _t(3, 2, 4)
    grads_match(lambda x: (mg if x.is_cuda else mc)(x), xc, **RED)
    same(mc.weight.grad, mg.weight.grad, **RED)
    grads_match(lambda x: F.layer_norm(x, (2, 4)), xc, **RED)


# ---- dropout -------------------------------------------------------------------------------------------

def _seeded_dropout(p, **kw):
    def fn(x):
        ember.manual_seed(3)
        return F.dropout(x, p, **kw)

    return fn


@pytest.mark.parametrize("p, dtype", [(0.3, np.float32), (0.7, np.float64), (1.0, np.float32)])
def test_dropout_draws_the_cpu_mask(p, dtype):
    x = _t(4, 30, dtype=dtype)
    grads_match(_seeded_dropout(p), x, rtol=1e-6, atol=0)
    y = _seeded_dropout(p)(x.cuda()).cpu().numpy()
    kept = y != 0
    assert 0 < kept.mean() < 1 if p < 1 else not kept.any()


def test_dropout_inplace_and_module():
    x = _t(3, 10)
    c, g = x.clone(), x.cuda()
    _seeded_dropout(0.5, inplace=True)(c)
    _seeded_dropout(0.5, inplace=True)(g)
    same(c, g)
    m = nn.Dropout(0.25)
    ember.manual_seed(1)
    yc = m(x)
    ember.manual_seed(1)
    same(yc, m(x.cuda()))
    m.eval()
    same(x, m(x.cuda()))
