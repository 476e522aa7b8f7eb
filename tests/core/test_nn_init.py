"""nn.init against torch.nn.init's formulas: gains, fans, bounds and sample statistics (fixed seeds)."""
import math
import warnings

import numpy as np
import pytest
import torch

import ember
from ember.nn import init
from ember.nn.parameter import Parameter

NONLINEARITIES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "selu"]


@pytest.mark.parametrize("name", NONLINEARITIES)
def test_calculate_gain_matches_torch(name):
    assert init.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))


@pytest.mark.parametrize("param", [None, 0.2, 1, 0.0])
def test_calculate_gain_leaky_relu(param):
    assert init.calculate_gain("leaky_relu", param) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", param))


def test_calculate_gain_errors():
    with pytest.raises(ValueError, match="Unsupported nonlinearity softsign"):
        init.calculate_gain("softsign")
    with pytest.raises(ValueError, match="negative_slope True not a valid number"):
        init.calculate_gain("leaky_relu", True)


@pytest.mark.parametrize("shape", [(5, 3), (7, 4, 3, 2), (2, 6, 5), (1, 1)])
def test_fan_in_fan_out_matches_torch(shape):
    ours = init._calculate_fan_in_and_fan_out(ember.zeros(*shape))
    theirs = torch.nn.init._calculate_fan_in_and_fan_out(torch.zeros(*shape))
    assert ours == theirs


def test_fan_needs_two_dims():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(ember.zeros(4))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(ember.zeros(4))


def _sample(fn, shape, *args, seed=0, **kwargs):
    ember.manual_seed(seed)
    t = ember.zeros(*shape)
    out = fn(t, *args, **kwargs)
    assert out is t, "initialisers return the tensor they fill"
    return t.numpy().astype(np.float64)


# Uniform on [-b, b] has std b/sqrt(3); with n samples the sample std is within a few 1/sqrt(n) (relative).
@pytest.mark.parametrize("shape,a,mode,nonlinearity", [
    ((256, 128), 0, "fan_in", "leaky_relu"),
    ((64, 32, 3, 3), math.sqrt(5), "fan_in", "leaky_relu"),
    ((128, 256), 0, "fan_out", "relu"),
    ((64, 16, 5, 5), 0.1, "fan_out", "leaky_relu"),
    ((300, 100), 0, "fan_in", "tanh"),
])
def test_kaiming_uniform_bounds_and_std(shape, a, mode, nonlinearity):
    v = _sample(init.kaiming_uniform_, shape, a=a, mode=mode, nonlinearity=nonlinearity)
    t = torch.empty(*shape)
    fan = torch.nn.init._calculate_correct_fan(t, mode)
    bound = math.sqrt(3.0) * torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    assert v.min() >= -bound - 1e-6 and v.max() <= bound + 1e-6
    assert v.min() < -0.98 * bound and v.max() > 0.98 * bound  # fills the whole interval
    assert abs(v.std() - bound / math.sqrt(3)) < 0.02 * bound
    assert abs(v.mean()) < 0.02 * bound
    torch.manual_seed(0)
    tv = torch.nn.init.kaiming_uniform_(t, a=a, mode=mode, nonlinearity=nonlinearity).numpy()
    assert abs(v.std() - tv.std()) < 0.03 * tv.std()


@pytest.mark.parametrize("shape,mode,nonlinearity", [((256, 128), "fan_in", "relu"), ((64, 32, 3, 3), "fan_out", "relu"),
                                                     ((200, 150), "fan_in", "leaky_relu")])
def test_kaiming_normal_std(shape, mode, nonlinearity):
    v = _sample(init.kaiming_normal_, shape, mode=mode, nonlinearity=nonlinearity, seed=1)
    fan = torch.nn.init._calculate_correct_fan(torch.empty(*shape), mode)
    std = torch.nn.init.calculate_gain(nonlinearity, 0) / math.sqrt(fan)
    assert abs(v.std() - std) < 0.02 * std
    assert abs(v.mean()) < 0.02 * std


@pytest.mark.parametrize("shape,gain", [((256, 128), 1.0), ((32, 16, 3, 3), 2.0), ((100, 400), 0.5)])
def test_xavier_uniform_and_normal(shape, gain):
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(*shape))
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    u = _sample(init.xavier_uniform_, shape, gain=gain, seed=2)
    assert u.min() >= -bound - 1e-6 and u.max() <= bound + 1e-6
    assert abs(u.std() - std) < 0.02 * std
    n = _sample(init.xavier_normal_, shape, gain=gain, seed=3)
    assert abs(n.std() - std) < 0.02 * std
    assert abs(n.mean()) < 0.02 * std


def test_uniform_normal_constant():
    u = _sample(init.uniform_, (200, 200), -2.0, 3.0)
    assert u.min() >= -2.0 and u.max() <= 3.0
    assert abs(u.mean() - 0.5) < 0.03 and abs(u.std() - 5 / math.sqrt(12)) < 0.02
    n = _sample(init.normal_, (200, 200), 1.5, 0.25)
    assert abs(n.mean() - 1.5) < 0.005 and abs(n.std() - 0.25) < 0.005
    assert np.all(_sample(init.constant_, (3, 4), 0.7) == np.float32(0.7))
    assert np.all(_sample(init.ones_, (3, 4)) == 1)
    assert np.all(_sample(init.zeros_, (3, 4)) == 0)
    np.testing.assert_array_equal(_sample(init.eye_, (3, 5)), np.eye(3, 5))


def test_trunc_normal_stays_in_bounds():
    v = _sample(init.trunc_normal_, (200, 100), mean=0.5, std=1.0, a=-1.0, b=1.5)
    assert v.min() >= -1.0 and v.max() <= 1.5
    t = torch.nn.init.trunc_normal_(torch.empty(200, 100), mean=0.5, std=1.0, a=-1.0, b=1.5).numpy()
    assert abs(v.mean() - t.mean()) < 0.03 and abs(v.std() - t.std()) < 0.03
    with pytest.raises(ValueError, match="a < b"):
        init.trunc_normal_(ember.zeros(3), a=1.0, b=0.0)


def test_orthogonal_is_orthogonal():
    for shape in [(6, 4), (4, 6), (3, 2, 2)]:
        w = _sample(init.orthogonal_, shape, gain=2.0).reshape(shape[0], -1)
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w
        np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-5)


def test_reproducible_with_manual_seed_and_generator():
    a = _sample(init.kaiming_uniform_, (8, 8), seed=42)
    b = _sample(init.kaiming_uniform_, (8, 8), seed=42)
    c = _sample(init.kaiming_uniform_, (8, 8), seed=43)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    g1, g2 = ember.Generator(7), ember.Generator(7)
    x, y = ember.zeros(5, 5), ember.zeros(5, 5)
    init.normal_(x, generator=g1)
    init.normal_(y, generator=g2)
    np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_in_place_on_parameter_without_graph():
    p = Parameter(ember.zeros(4, 3))
    v0 = p._version
    out = init.xavier_uniform_(p)
    assert out is p and p.requires_grad and p.grad_fn is None and p.is_leaf
    assert p._version > v0
    assert np.any(p.detach().numpy() != 0)
    d = Parameter(ember.zeros(4, 3, dtype=ember.float64))
    init.normal_(d)
    assert d.dtype == ember.float64


def test_kaiming_errors_and_empty():
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_uniform_(ember.zeros(3, 3), mode="fan_avg")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = ember.zeros(0, 3)
        assert init.kaiming_uniform_(t) is t
    assert any("zero-element" in str(x.message) for x in w)
