"""Module behaviour against torch, part 2: hooks and __call__, repr, containers."""
import copy  # noqa: F401
import pickle  # noqa: F401
from collections import OrderedDict  # noqa: F401

import numpy as np
import pytest
import torch

import ember
from ember import nn

from .test_nn_module import _copy_torch_into_ember, _Net, _tiny_cnn, tnn  # noqa: F401


# ---- hooks and __call__ -----------------------------------------------------------------------------

def test_forward_hooks_modify_and_remove():
    m = nn.Linear(2, 2)
    nn.init.eye_(m.weight)
    nn.init.zeros_(m.bias)
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    h2 = m.register_forward_hook(lambda mod, args, out: out + 1)
    h3 = m.register_forward_hook(lambda mod, args, out: calls.append(("after", mod is m, len(args))))
    h4 = m.register_forward_hook(lambda mod, args, out: calls.append("first"), prepend=True)
    x = ember.tensor([[1.0, 2.0]])
    assert m(x).tolist() == [[3.0, 5.0]]
    assert calls == ["first", ("after", True, 1)]
    h1.remove()
    assert m(x).tolist() == [[2.0, 3.0]]
    h2.remove()
    h3.remove()
    h4.remove()
    h2.remove()  # removing twice is harmless
    assert m(x).tolist() == [[1.0, 2.0]]
    assert len(calls) == 4
    with m.register_forward_pre_hook(lambda mod, args: args[0] * 0):  # non-tuple return gets wrapped
        assert m(x).tolist() == [[0.0, 0.0]]
    assert m(x).tolist() == [[1.0, 2.0]]


def test_forward_hooks_with_kwargs():
    class Scale(nn.Module):
        def forward(self, x, factor=1.0):
            return x * factor

    m = Scale()
    m.register_forward_pre_hook(lambda mod, args, kwargs: (args, {"factor": 3.0}), with_kwargs=True)
    seen = []
    m.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs["factor"]), with_kwargs=True)
    assert m(ember.tensor([1.0])).tolist() == [3.0]
    assert seen == [3.0]


# ---- repr -------------------------------------------------------------------------------------------

def test_repr_matches_torch():
    assert repr(_Net.make(nn)) == repr(_Net.make(tnn))
    assert repr(_tiny_cnn(nn)) == repr(_tiny_cnn(tnn))
    assert repr(nn.Linear(784, 512)) == "Linear(in_features=784, out_features=512, bias=True)"
    assert repr(nn.Sequential()) == repr(tnn.Sequential()) == "Sequential()"
    assert repr(nn.ModuleList()) == repr(tnn.ModuleList())
    ml = [nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)]),
          tnn.ModuleList([tnn.Linear(2, 2), tnn.Linear(2, 2), tnn.Linear(2, 2), tnn.ReLU(), tnn.Linear(2, 2)])]
    assert repr(ml[0]) == repr(ml[1])

    class Custom(nn.Module):
        def extra_repr(self):
            return "a=1\nb=2"

    assert repr(Custom()) == "Custom(\n  a=1\n  b=2\n)"
    assert "in_features" in dir(nn.Linear(2, 2)) or "weight" in dir(nn.Linear(2, 2))


# ---- containers -------------------------------------------------------------------------------------

def test_sequential_indexing_slicing_and_editing():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.Tanh()]
    seq = nn.Sequential(*layers)
    assert len(seq) == 4 and seq[0] is layers[0] and seq[-1] is layers[3]
    assert list(seq) == layers
    sub = seq[1:3]
    assert isinstance(sub, nn.Sequential) and list(sub) == layers[1:3]
    assert list(sub._modules) == ["1", "2"]  # torch keeps the original names in a slice
    assert [n for n, _ in sub.named_children()] == [n for n, _ in tnn.Sequential(*[tnn.ReLU() for _ in range(4)])[1:3].named_children()]
    with pytest.raises(IndexError):
        seq[4]
    seq.append(nn.Sigmoid())
    assert len(seq) == 5 and isinstance(seq[4], nn.Sigmoid)
    seq[1] = nn.GELU()
    assert isinstance(seq[1], nn.GELU)
    del seq[1]
    assert len(seq) == 4 and list(seq._modules) == ["0", "1", "2", "3"] and seq[1] is layers[2]
    seq.insert(1, nn.ReLU())
    assert isinstance(seq[1], nn.ReLU) and seq[2] is layers[2]
    popped = seq.pop(1)
    assert isinstance(popped, nn.ReLU) and len(seq) == 4
    seq.extend([nn.Identity()])
    assert isinstance(seq[-1], nn.Identity)
    x = ember.randn(5, 2)
    assert seq(x).shape == (5, 4)
    both = nn.Sequential(nn.ReLU()) + nn.Sequential(nn.Tanh())
    assert [type(m).__name__ for m in both] == ["ReLU", "Tanh"]
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"] and named.fc is named[0]


def test_module_list():
    ml = nn.ModuleList([nn.Linear(2, 2)])
    ml.append(nn.ReLU())
    ml.extend([nn.Tanh(), nn.Sigmoid()])
    ml += [nn.Identity()]
    assert len(ml) == 5 and isinstance(ml[-1], nn.Identity)
    assert [type(m).__name__ for m in ml[1:3]] == ["ReLU", "Tanh"]
    assert isinstance(ml[1:3], nn.ModuleList)
    ml.insert(0, nn.GELU())
    assert isinstance(ml[0], nn.GELU) and list(ml._modules) == [str(i) for i in range(6)]
    del ml[0]
    assert isinstance(ml[0], nn.Linear) and list(ml._modules) == [str(i) for i in range(5)]
    ml[1] = nn.SiLU()
    assert isinstance(ml[1], nn.SiLU)
    assert isinstance(ml.pop(), nn.Identity) and len(ml) == 4
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias"]
    with pytest.raises(TypeError, match="iterable"):
        ml.extend(nn.ReLU())
    with pytest.raises(NotImplementedError):
        ml(ember.zeros(1))


def test_module_dict():
    md = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.ReLU()})
    md["c"] = nn.Tanh()
    md.update([("d", nn.Sigmoid())])
    assert list(md) == list(md.keys()) == ["a", "b", "c", "d"]
    assert "a" in md and "z" not in md and len(md) == 4
    assert [type(v).__name__ for v in md.values()] == ["Linear", "ReLU", "Tanh", "Sigmoid"]
    assert md.pop("b").__class__ is nn.ReLU and "b" not in md
    del md["c"]
    assert [k for k, _ in md.items()] == ["a", "d"]
    assert list(md.state_dict()) == ["a.weight", "a.bias"]
    md.clear()
    assert len(md) == 0
    t = tnn.ModuleDict({"a": tnn.Linear(2, 2), "b": tnn.ReLU()})
    assert repr(nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.ReLU()})) == repr(t)


# ---- Sequential runs ReLU -> MaxPool2d as the pool, then the ReLU ---------------------------------------------

def _conv_relu_pool(pool_kwargs, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 2, 9, 10)).astype(np.float32)
    x[0, 0, :4, :4] = -1.0  # windows whose max is negative, and ties at zero after the ReLU
    x[1, 1, 2:6, 2:6] = 0.0
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    em = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(**pool_kwargs))
    tm = tnn.Sequential(tnn.Conv2d(2, 4, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(**pool_kwargs))
    with torch.no_grad():
        tm[0].weight.copy_(torch.from_numpy(w))
        tm[0].bias.copy_(torch.from_numpy(rng.standard_normal(4).astype(np.float32)))
    em[0].weight.data = ember.from_numpy(tm[0].weight.detach().numpy().copy())
    em[0].bias.data = ember.from_numpy(tm[0].bias.detach().numpy().copy())
    return x, em, tm


def _run(model, lib, x):
    xt = lib.from_numpy(x.copy()).requires_grad_(True)
    y = model(xt)
    g = np.random.default_rng(1).standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(lib.from_numpy(g))
    return y.detach().numpy(), xt.grad.numpy(), model[0].weight.grad.numpy()


@pytest.mark.parametrize("pool_kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                         dict(kernel_size=2, ceil_mode=True)])
def test_sequential_relu_maxpool_order_keeps_values_and_gradients(pool_kwargs, monkeypatch):
    from ember.nn import container

    x, em, tm = _conv_relu_pool(pool_kwargs)
    swapped = _run(em, ember, x)
    for got, want in zip(swapped, _run(tm, torch, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    em.zero_grad()
    monkeypatch.setattr(container, "_pool_first", lambda relu, pool: False)  # the modules one by one
    for got, want in zip(swapped, _run(em, ember, x)):
        np.testing.assert_array_equal(got, want)


def test_sequential_relu_maxpool_kept_in_order_with_hooks_indices_or_tracing():
    from ember import serialize

    x, em, _ = _conv_relu_pool(dict(kernel_size=2))
    seen = []
    h = em[1].register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    em(ember.from_numpy(x))
    assert seen == [(3, 4, 9, 10)]  # the hook saw the full-size ReLU output: no reordering with hooks
    h.remove()
    em[2].return_indices = True
    em_out = nn.Sequential(em[0], em[1], em[2])(ember.from_numpy(x))
    assert isinstance(em_out, tuple)
    em[2].return_indices = False
    code = serialize.trace(em.eval(), ember.from_numpy(x)).code
    assert code.index("relu(") < code.index("max_pool2d(")  # traced in the module order (the runtime fuses it)
