"""CUDA tensors: the device API, copies between devices, factories, errors, and the elementwise ops
forward and backward against the CPU backend."""
import numpy as np
import pytest

import ember
import ember.nn as nn

from .conftest import grads_match, same

RNG = np.random.default_rng(0)


def _t(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return ember.from_numpy(RNG.uniform(lo, hi, shape).astype(dtype))


def test_device_api():
    assert ember.cuda.is_available() and ember.cuda.device_count() >= 1
    assert isinstance(ember.cuda.get_device_name(), str)
    x = ember.ones(2, 3, device="cuda")
    assert x.is_cuda and x.device == "cuda:0" and x.device == ember.device("cuda")
    assert "device='cuda:0'" in repr(x)
    ember.cuda.synchronize()
    with pytest.raises(RuntimeError, match="CUDA device 7 does not exist"):
        ember.zeros(2, device="cuda:7")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_])
def test_round_trip_keeps_values_and_dtype(dtype):
    a = (RNG.uniform(-50, 50, (3, 4)) > 0) if dtype is np.bool_ else RNG.uniform(-50, 50, (3, 4)).astype(dtype)
    t = ember.from_numpy(a)
    g = t.to("cuda")
    assert g.dtype == t.dtype and g.shape == (3, 4) and g.is_cuda
    back = g.cpu()
    assert not back.is_cuda
    np.testing.assert_array_equal(back.numpy(), a)
    assert g.tolist() == a.tolist()
    assert ember.tensor(a, device="cuda").cpu().numpy().tolist() == a.tolist()


def test_scalars_and_empty_tensors():
    s = ember.tensor(3.5, device="cuda")
    assert s.shape == () and s.item() == 3.5 and float(s) == 3.5 and bool(s)
    e = ember.zeros(0, 4, device="cuda")
    assert e.shape == (0, 4) and e.cpu().numpy().shape == (0, 4)
    assert (e + 1).shape == (0, 4)


def test_conversions_refused_with_reasons():
    g = ember.ones(2, device="cuda")
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu"):
        g.numpy()
    np.testing.assert_array_equal(g.numpy(force=True), np.ones(2, np.float32))
    with pytest.raises(TypeError, match="float16 tensors are not supported on CUDA"):
        ember.ones(2, dtype=ember.float16).cuda()
    with pytest.raises(RuntimeError, match="add: expected all tensors to be on the same device.*cuda:0 and cpu"):
        g + ember.ones(2)
    with pytest.raises(TypeError, match="cannot be used as a host"):
        np.asarray(g._data)


def test_python_scalars_and_0d_cpu_tensors_join_cuda_tensors():
    g = _t(2, 3).cuda()
    same(g.cpu() * 2.5 + 1, g * 2.5 + 1)
    same(g.cpu() * ember.tensor(3.0), g * ember.tensor(3.0))
    same(1 - g.cpu(), 1 - g)


def test_factories_on_cuda_match_cpu():
    for fn in (lambda d: ember.zeros(2, 3, device=d), lambda d: ember.ones(4, dtype=ember.int64, device=d),
               lambda d: ember.full((2, 2), 7.0, device=d), lambda d: ember.arange(0, 10, 3, device=d),
               lambda d: ember.eye(3, device=d), lambda d: ember.linspace(0, 1, 5, device=d)):
        same(fn("cpu"), fn("cuda"))
    ember.manual_seed(3)
    c = ember.randn(3, 3)
    ember.manual_seed(3)
    g = ember.randn(3, 3, device="cuda")
    same(c, g)
    assert ember.zeros_like(g).is_cuda and ember.ones_like(g).is_cuda and ember.full_like(g, 2.0).is_cuda
    assert g.new_zeros(2).is_cuda and g.new_tensor([1.0, 2.0]).is_cuda


_UNARY = ["neg", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tanh", "square",
          "reciprocal", "sigmoid", "relu", "sign", "floor", "ceil", "round"]


@pytest.mark.parametrize("name", _UNARY)
def test_unary_forward_and_backward(name):
    x = _t(3, 4, lo=0.1, hi=2.0) if name in ("log", "sqrt", "rsqrt", "log1p") else _t(3, 4)
    grads_match(lambda t: getattr(ember, name)(t), x)


@pytest.mark.parametrize("fn", [
    lambda t: ember.nn.functional.gelu(t), lambda t: ember.nn.functional.gelu(t, approximate="tanh"),
    lambda t: ember.nn.functional.silu(t), lambda t: ember.nn.functional.leaky_relu(t, 0.2),
    lambda t: t.clamp(-0.5, 0.7), lambda t: t.clamp(min=0.0), lambda t: t.clamp(max=0.3),
    lambda t: t ** 3, lambda t: 2.0 ** t, lambda t: t.round(decimals=1),
], ids=["gelu", "gelu_tanh", "silu", "leaky", "clamp", "clamp_min", "clamp_max", "pow", "rpow", "round1"])
def test_activations_and_clamp(fn):
    grads_match(fn, _t(4, 5))


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3)), ((), (2, 2))])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_broadcasting_forward_and_backward(op, shapes):
    a, b = _t(*shapes[0]), _t(*shapes[1], lo=0.5, hi=2.0)
    grads_match(lambda x, y: getattr(ember, op)(x, y), a, b)


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"])
def test_comparisons_and_logic(op):
    a = ember.from_numpy(RNG.integers(-2, 3, (3, 4)).astype(np.float32))
    b = ember.from_numpy(RNG.integers(-2, 3, (4,)).astype(np.float32))
    same(getattr(ember, op)(a, b), getattr(ember, op)(a.cuda(), b.cuda()))
    same(getattr(ember, op)(a, 1.0), getattr(ember, op)(a.cuda(), 1.0))


def test_integer_arithmetic_and_division_modes():
    a = ember.from_numpy(RNG.integers(-20, 20, (3, 5)))
    b = ember.from_numpy(RNG.integers(1, 6, (3, 5)) * np.where(RNG.random((3, 5)) < 0.5, -1, 1))
    ga, gb = a.cuda(), b.cuda()
    for fn in (lambda x, y: x + y, lambda x, y: x * y, lambda x, y: x - 3, lambda x, y: x / y,
               lambda x, y: ember.div(x, y, rounding_mode="floor"), lambda x, y: ember.div(x, y, rounding_mode="trunc"),
               lambda x, y: x % y, lambda x, y: x // y, lambda x, y: x & y, lambda x, y: x | y, lambda x, y: x ^ y,
               lambda x, y: ~x, lambda x, y: x.abs(), lambda x, y: -x, lambda x, y: ember.maximum(x, y)):
        same(fn(a, b), fn(ga, gb))
    f, g = _t(3, 5) * 4, _t(3, 5) + 3
    for mode in ("floor", "trunc"):
        same(ember.div(f, g, rounding_mode=mode), ember.div(f.cuda(), g.cuda(), rounding_mode=mode))
    same(f % g, f.cuda() % g.cuda())


def test_nan_inf_masks_and_where():
    x = ember.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    g = x.cuda()
    for fn in (ember.isnan, ember.isinf, ember.isfinite, lambda t: ember.maximum(t, ember.zeros_like(t)),
               lambda t: ember.logical_not(t)):
        same(fn(x), fn(g))
    c = _t(3, 4) > 0
    a, b = _t(3, 4), _t(4)
    grads_match(lambda p, q: ember.where(c.to(p.device), p, q), a, b)
    m = _t(3, 4) > 0.5
    grads_match(lambda p: p.masked_fill(m.to(p.device), -1.5), a)


def test_cast_and_clone():
    x = _t(3, 4) * 10
    for dt in (ember.int64, ember.int32, ember.uint8, ember.bool, ember.float64):
        same(x.to(dt), x.cuda().to(dt))
    grads_match(lambda t: t.double() * 2, x)
    g = x.cuda()
    c = g.clone()
    assert c._data.d is not g._data.d
    same(x, c)


def test_gradient_flows_across_a_device_copy():
    w = _t(3, 4).requires_grad_()
    y = (w.cuda() * 3.0).sigmoid()
    y.backward(ember.ones(3, 4, device="cuda"))
    assert w.grad is not None and not w.grad.is_cuda
    w2 = w.detach().clone().requires_grad_()
    (w2 * 3.0).sigmoid().backward(ember.ones(3, 4))
    np.testing.assert_allclose(w.grad.numpy(), w2.grad.numpy(), rtol=1e-6)


def test_in_place_ops_on_cuda():
    x = _t(3, 4)
    g = x.cuda()
    x2 = x.clone()
    for fn in (lambda t: t.add_(1.5), lambda t: t.mul_(2.0), lambda t: t.clamp_(-1.0, 1.0)):
        fn(x2), fn(g)
        same(x2, g)
    src = _t(4)
    x2.copy_(src), g.copy_(src)  # copy_ from a CPU tensor into a CUDA one, as torch allows
    same(x2, g)
    x2.fill_(2.5), g.fill_(2.5)
    same(x2, g)
    g.zero_()
    assert g.cpu().numpy().sum() == 0
    ember.manual_seed(1)
    x2.uniform_(-1, 1)
    ember.manual_seed(1)
    g.uniform_(-1, 1)
    same(x2, g)
    leaf = g.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        leaf.add_(1.0)


def test_module_to_cuda_moves_parameters_and_buffers_in_place():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    w = m[0].weight
    assert m.to("cuda") is m
    assert m[0].weight is w and w.is_cuda and m[1].running_mean.is_cuda
    assert all(p.is_cuda for p in m.parameters()) and all(b.is_cuda for b in m.buffers())
    sd = m.state_dict()
    assert all(v.is_cuda for v in sd.values())
    m.cpu()
    assert not w.is_cuda and not m[1].running_var.is_cuda
    m.cuda()
    assert w.is_cuda


def test_checkpoints_of_cuda_models(tmp_path):
    m = nn.Linear(3, 2).cuda()
    ember.save({"model": m.state_dict(), "step": 3}, tmp_path / "ck.pt")
    ck = ember.load(tmp_path / "ck.pt")
    assert ck["step"] == 3 and not ck["model"]["weight"].is_cuda  # host copies, as torch's map_location="cpu"
    on_gpu = ember.load(tmp_path / "ck.pt", map_location="cuda")["model"]
    assert on_gpu["weight"].is_cuda and on_gpu["weight"].is_leaf
    for sd, target in ((ck["model"], nn.Linear(3, 2).cuda()), (m.state_dict(), nn.Linear(3, 2)),
                       (on_gpu, nn.Linear(3, 2).cuda())):
        target.load_state_dict(sd)
        same(m.weight.detach().cpu(), target.weight.detach().cuda())
    t = nn.Linear(3, 2).cuda()
    t.load_state_dict(ck["model"], assign=True)
    assert t.weight.is_cuda
