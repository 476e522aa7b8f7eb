"""nn.Module mechanics against torch.nn.Module: registration, traversal, state_dict, hooks, modes, repr."""
import copy
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

import ember
from ember import nn

tnn = torch.nn


def _tiny_cnn(lib):
    return lib.Sequential(
        lib.Conv2d(3, 4, 3, padding=1), lib.BatchNorm2d(4), lib.ReLU(), lib.MaxPool2d(2),
        lib.Flatten(), lib.Linear(4 * 2 * 2, 5), lib.Dropout(0.25), lib.LayerNorm(5),
    )


class _Net:
    """Builds the same custom module class on top of ember.nn or torch.nn."""

    @staticmethod
    def make(lib):
        class Net(lib.Module):
            def __init__(self):
                super().__init__()
                self.embed = lib.Embedding(10, 4, padding_idx=0)
                self.blocks = lib.ModuleList([lib.Linear(4, 4) for _ in range(2)])
                self.heads = lib.ModuleDict({"a": lib.Linear(4, 2), "b": lib.Linear(4, 3, bias=False)})
                self.norm = lib.BatchNorm1d(4)
                self.scale = lib.Parameter(torch.ones(1) if lib is tnn else ember.ones(1))
                self.register_buffer("step", torch.zeros(()) if lib is tnn else ember.zeros(()))
                self.register_buffer("cache", torch.zeros(2) if lib is tnn else ember.zeros(2), persistent=False)

            def forward(self, idx):
                h = self.embed(idx)
                for b in self.blocks:
                    h = b(h).relu()
                return self.heads["a"](self.norm(h)) * self.scale

        return Net()


def _copy_torch_into_ember(tm, em):
    em.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})


# ---- registration and traversal ---------------------------------------------------------------------

def test_named_parameters_buffers_modules_match_torch():
    e, t = _Net.make(nn), _Net.make(tnn)
    assert [n for n, _ in e.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert [tuple(p.shape) for p in e.parameters()] == [tuple(p.shape) for p in t.parameters()]
    assert [n for n, _ in e.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert [n for n, _ in e.named_modules()] == [n for n, _ in t.named_modules()]
    assert [n for n, _ in e.named_children()] == [n for n, _ in t.named_children()]
    assert [n for n, _ in e.named_parameters(prefix="net", recurse=True)] == \
        [n for n, _ in t.named_parameters(prefix="net")]
    assert [n for n, _ in e.named_parameters(recurse=False)] == ["scale"]
    assert [type(m).__name__ for m in e.modules()] == [type(m).__name__ for m in t.modules()]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in e.parameters())


def test_state_dict_keys_shapes_dtypes_match_torch():
    for make in (_tiny_cnn, _Net.make):
        e, t = make(nn), make(tnn)
        es, ts = e.state_dict(), t.state_dict()
        assert isinstance(es, OrderedDict)
        assert list(es) == list(ts)
        for k in ts:
            assert es[k].shape == tuple(ts[k].shape), k
            assert es[k].dtype.name == str(ts[k].dtype).replace("torch.", ""), k
            assert es[k].requires_grad is False and es[k].grad_fn is None
    assert "cache" not in e.state_dict() and "cache" in dict(e.named_buffers())
    assert list(e.state_dict(prefix="m.")) == ["m." + k for k in t.state_dict()]


def test_state_dict_shares_storage_and_keep_vars():
    m = nn.Linear(3, 2)
    sd = m.state_dict()
    assert np.shares_memory(sd["weight"].numpy(), m.weight.detach().numpy())
    kv = m.state_dict(keep_vars=True)
    assert kv["weight"] is m.weight and kv["bias"] is m.bias


def test_shared_parameters_counted_once():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(seq.named_parameters(remove_duplicate=False))) == 4
    assert len(list(seq.modules())) == 3
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # torch keeps both keys
    # tied weights across different modules (as in a language model's embedding/decoder)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    pair = nn.ModuleList([a, b])
    assert [n for n, _ in pair.named_parameters()] == ["0.weight", "0.bias", "1.bias"]
    t = tnn.ModuleList([tnn.Linear(4, 4), tnn.Linear(4, 4)])
    t[1].weight = t[0].weight
    assert [n for n, _ in t.named_parameters()] == ["0.weight", "0.bias", "1.bias"]


def test_setattr_rules_and_errors():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'weight'"):
        m.weight = ember.zeros(2, 2)
    m.bias = None
    assert m.bias is None and "bias" not in m.state_dict()
    m.extra = nn.Parameter(ember.zeros(3))
    assert "extra" in dict(m.named_parameters())
    with pytest.raises(TypeError, match="cannot assign 'ReLU' as parameter 'extra'"):
        m.extra = nn.ReLU()  # torch: a registered parameter name only takes a Parameter or None
    del m.extra
    m.extra = nn.ReLU()
    assert "extra" not in dict(m.named_parameters()) and "extra" in dict(m.named_children())
    m.register_buffer("buf", ember.ones(2))
    m.buf = ember.zeros(2)
    assert m.state_dict()["buf"].tolist() == [0.0, 0.0]
    with pytest.raises(TypeError, match="cannot assign 'int' as buffer 'buf'"):
        m.buf = 3
    with pytest.raises(TypeError, match="cannot assign 'int' as child module 'extra'"):
        m.extra = 3
    with pytest.raises(KeyError, match="attribute 'in_features' already exists"):
        m.register_buffer("in_features", ember.zeros(1))
    with pytest.raises(KeyError, match="contain"):
        m.register_parameter("a.b", None)
    del m.buf
    assert "buf" not in dict(m.named_buffers())

    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(ember.zeros(1))

    with pytest.raises(AttributeError, match=r"cannot assign parameters before Module.__init__\(\) call"):
        Early()


def test_getattr_error_matches_torch():
    with pytest.raises(AttributeError) as e:
        nn.Linear(2, 2).foo
    with pytest.raises(AttributeError) as t:
        tnn.Linear(2, 2).foo
    assert str(e.value) == str(t.value) == "'Linear' object has no attribute 'foo'"


def test_get_submodule_parameter_buffer():
    net = _Net.make(nn)
    assert net.get_submodule("blocks.1") is net.blocks[1]
    assert net.get_submodule("") is net
    assert net.get_parameter("heads.a.weight") is net.heads["a"].weight
    assert net.get_buffer("norm.running_var") is net.norm.running_var
    with pytest.raises(AttributeError, match="has no submodule `nope`"):
        net.get_submodule("blocks.nope")
    with pytest.raises(AttributeError, match="has no parameter `nope`"):
        net.get_parameter("heads.a.nope")


def test_forward_missing():
    with pytest.raises(NotImplementedError, match='missing the required "forward" function'):
        nn.Module()(ember.zeros(1))


# ---- load_state_dict --------------------------------------------------------------------------------

def test_load_state_dict_from_torch_numpy_copies_in_place():
    e, t = _tiny_cnn(nn), _tiny_cnn(tnn)
    w = e[0].weight
    v0 = w._version
    res = e.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert repr(res) == "<All keys matched successfully>"
    assert e[0].weight is w and w._version > v0 and w.requires_grad
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(e.state_dict()[k].numpy(), v.numpy())
    assert e[1].num_batches_tracked.dtype == ember.int64


def test_load_state_dict_from_ember_tensors_and_casts_dtype():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.weight.detach().numpy(), b.weight.detach().numpy())
    b.load_state_dict({"weight": np.ones((2, 3), np.float64), "bias": [1.0, 2.0]})
    assert b.weight.dtype == ember.float32 and b.bias.tolist() == [1.0, 2.0]
    # the values are copied, not aliased
    src = {"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(2, np.float32)}
    b.load_state_dict(src)
    src["weight"][...] = 5
    assert np.all(b.weight.detach().numpy() == 0)


def _torch_msg(t, sd, strict=True):
    with pytest.raises(RuntimeError) as err:
        t.load_state_dict(sd, strict=strict)
    msg = str(err.value)
    import re
    return re.sub(r"torch\.Size\(\[([^\]]*)\]\)", lambda m: "(" + m.group(1) + ("," if "," not in m.group(1) else "") + ")", msg)


def test_load_state_dict_strict_errors_match_torch():
    e, t = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3)), \
        tnn.Sequential(tnn.Linear(4, 10), tnn.ReLU(), tnn.Linear(10, 3))
    sd = {k: v.numpy() for k, v in t.state_dict().items()}
    del sd["2.bias"]
    sd["2.extra"] = np.zeros(1, np.float32)
    sd["0.weight"] = np.zeros((10, 5), np.float32)
    tsd = {k: torch.tensor(v) for k, v in sd.items()}
    with pytest.raises(RuntimeError) as err:
        e.load_state_dict(sd)
    msg = str(err.value)
    assert msg == _torch_msg(t, tsd)
    assert 'Missing key(s) in state_dict: "2.bias".' in msg
    assert 'Unexpected key(s) in state_dict: "2.extra".' in msg
    assert ("size mismatch for 0.weight: copying a param with shape (10, 5) from checkpoint, "
            "the shape in current model is (10, 4).") in msg
    # shape mismatches raise even when not strict
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        e.load_state_dict(sd, strict=False)
    sd["0.weight"] = np.zeros((10, 4), np.float32)
    res = e.load_state_dict(sd, strict=False)
    tres = t.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    assert res.missing_keys == tres.missing_keys == ["2.bias"]
    assert res.unexpected_keys == tres.unexpected_keys == ["2.extra"]
    missing, unexpected = res
    assert missing == ["2.bias"] and unexpected == ["2.extra"]
    with pytest.raises(TypeError, match="Expected state_dict to be dict-like"):
        e.load_state_dict([1, 2])


def test_load_state_dict_missing_batchnorm_buffer():
    e = nn.BatchNorm1d(3)
    sd = {k: v for k, v in e.state_dict().items() if k != "num_batches_tracked"}
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "num_batches_tracked"'):
        e.load_state_dict(sd)


def test_load_state_dict_assign():
    m = nn.Linear(2, 2)
    old = m.weight
    m.load_state_dict({"weight": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float32)}, assign=True)
    assert m.weight is not old and isinstance(m.weight, nn.Parameter) and m.weight.requires_grad
    assert m.weight.tolist() == [[1.0, 1.0], [1.0, 1.0]]


# ---- modes, grads, conversion -----------------------------------------------------------------------

def test_train_eval_recursive():
    net = _Net.make(nn)
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.blocks.train(False)
    assert net.training and not net.blocks[0].training
    with pytest.raises(ValueError, match="boolean"):
        net.train("no")


def test_zero_grad_and_requires_grad_():
    m = nn.Linear(3, 2)
    x = ember.randn(4, 3)
    m(x).sum().backward()
    assert m.weight.grad is not None
    g = m.weight.grad
    m.zero_grad(set_to_none=False)
    assert m.weight.grad is g and np.all(g.numpy() == 0)
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_()
    assert all(p.requires_grad for p in m.parameters())


def test_to_dtype_keeps_parameter_objects():
    net = _tiny_cnn(nn)
    params = list(net.parameters())
    net(ember.randn(2, 3, 4, 4)).sum().backward()
    assert net.to(ember.float64) is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.dtype == ember.float64 and p.requires_grad for p in net.parameters())
    assert all(p.grad.dtype == ember.float64 for p in net.parameters())
    assert net[1].running_mean.dtype == ember.float64
    assert net[1].num_batches_tracked.dtype == ember.int64
    out = net(ember.randn(2, 3, 4, 4, dtype=ember.float64))
    assert out.dtype == ember.float64
    net.float()
    assert all(p.dtype == ember.float32 for p in net.parameters())
    net.double()
    assert net[5].weight.dtype == ember.float64
    net.to("cpu", dtype=ember.float32)
    net.to(ember.zeros(1, dtype=ember.float64))
    assert net[5].weight.dtype == ember.float64
    assert net.to(ember.device("cpu")) is net and net.cpu() is net
    with pytest.raises(TypeError, match="floating point"):
        net.to(ember.int64)


@pytest.mark.skipif(ember.cuda.is_available(), reason="a CUDA device (or the simulator) is available here")
def test_to_cuda_without_a_device_says_why():
    for call in (lambda m: m.to("cuda"), lambda m: m.cuda(), lambda m: m.to("cuda:0")):
        with pytest.raises(RuntimeError, match="CUDA is not available: .*(driver|numba-cuda|device)"):
            call(nn.Linear(2, 2))
    assert ember.cuda.device_count() == 0


def test_apply_order_matches_torch():
    order_e, order_t = [], []
    _Net.make(nn).apply(lambda m: order_e.append(type(m).__name__))
    _Net.make(tnn).apply(lambda m: order_t.append(type(m).__name__))
    assert order_e == order_t

    def init_fn(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.5)

    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 3)))
    net.apply(init_fn)
    assert np.all(net[1][0].weight.detach().numpy() == 0.5)


def test_copy_and_pickle():
    m = _tiny_cnn(nn)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert list(clone.state_dict()) == list(m.state_dict())
        assert clone[0].weight is not m[0].weight
        np.testing.assert_array_equal(clone[0].weight.detach().numpy(), m[0].weight.detach().numpy())
        assert isinstance(clone[0].weight, nn.Parameter)
