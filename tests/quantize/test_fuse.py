"""fuse_modules against torch.ao.quantization.fuse_modules: the same model (BatchNorms with non-trivial running
statistics) fused in both gives the same modules, state_dict and outputs; the errors; and the fused model
saved, reloaded and traced."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq

import ember
import ember.nn as nn
from ember.quantize.fuse import BNReLU2d, ConvReLU2d, LinearReLU, fuse_known_modules, fuse_modules
from ember.serialize import trace

rng = np.random.default_rng(5)

GROUPS = [["features.0", "features.1", "features.2"],  # Conv2d + BatchNorm2d + ReLU
          ["features.3", "features.4"],                # Conv2d(bias=False) + BatchNorm2d(affine=False)
          ["features.5", "features.6"],                # Conv2d + ReLU
          ["features.7", "features.8"],                # BatchNorm2d + ReLU
          ["head.0", "head.1"],                        # Linear + BatchNorm1d
          ["head.2", "head.3"]]                        # Linear + ReLU
REPLACED = [n for g in GROUPS for n in g[1:]]


def _net(M):
    """The same network from torch.nn or ember.nn (M), every supported pattern once, names nested one deep."""
    return M.Sequential(OrderedDict(
        features=M.Sequential(M.Conv2d(3, 8, 3, padding=1), M.BatchNorm2d(8), M.ReLU(),
                              M.Conv2d(8, 6, 3, bias=False), M.BatchNorm2d(6, affine=False),
                              M.Conv2d(6, 6, 1), M.ReLU(),
                              M.BatchNorm2d(6), M.ReLU()),
        flatten=M.Flatten(),
        head=M.Sequential(M.Linear(96, 16), M.BatchNorm1d(16), M.Linear(16, 5), M.ReLU()),
    ))


def _to_ember(tmodel, emodel):
    emodel.load_state_dict({k: ember.from_numpy(v.detach().numpy().copy()) for k, v in tmodel.state_dict().items()})
    return emodel.train(tmodel.training)


def _twins(build=_net, shape=(4, 3, 6, 6)):
    """(torch model, ember model) with equal weights; BatchNorm affines random and running statistics moved
    away from (0, 1) by a few training-mode passes; both in eval mode."""
    torch.manual_seed(0)
    t = build(torch.nn)
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for _ in range(4):
            t(torch.randn(*shape) * 2.0 + 0.7)
    t.eval()
    return t, _to_ember(t, build(nn))


def _x(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _run(model, x):
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    with ember.no_grad():
        return model(ember.tensor(x)).numpy()


def test_fused_model_matches_torch_modules_weights_and_outputs():
    t, e = _twins()
    tf, ef = tq.fuse_modules(t, GROUPS), fuse_modules(e, GROUPS)
    assert ([type(m).__name__ for _, m in ef.named_modules()] == [type(m).__name__ for _, m in tf.named_modules()])
    assert isinstance(ef.features[0], ConvReLU2d) and isinstance(ef.features[5], ConvReLU2d)
    assert isinstance(ef.features[7], BNReLU2d) and isinstance(ef.head[2], LinearReLU)
    assert type(ef.features[3]) is nn.Conv2d and type(ef.head[0]) is nn.Linear
    tsd, esd = tf.state_dict(), ef.state_dict()
    assert list(esd) == list(tsd)  # the BatchNorms folded away, ConvReLU2d's children under 0./1. as in torch
    for k in tsd:
        # torch folds in float32, ember in float64 rounded once: a few ulps apart
        np.testing.assert_allclose(esd[k].numpy(), tsd[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    x = _x(5, 3, 6, 6)
    np.testing.assert_allclose(_run(ef, x), _run(tf, x), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(_run(ef, x), _run(e, x), atol=1e-5, rtol=1e-4)  # fusion keeps the function


def test_folding_is_float64_rounded_once():
    _, e = _twins()
    conv, bn = e.features[0], e.features[1]
    f64 = lambda t: t.detach().numpy().astype(np.float64)  # noqa: E731
    scale = f64(bn.weight) / np.sqrt(f64(bn.running_var) + bn.eps)
    fused = fuse_modules(e, GROUPS[0]).features[0][0]
    np.testing.assert_array_equal(fused.weight.detach().numpy(),
                                  (f64(conv.weight) * scale[:, None, None, None]).astype(np.float32))
    np.testing.assert_array_equal(fused.bias.detach().numpy(),
                                  ((f64(conv.bias) - f64(bn.running_mean)) * scale + f64(bn.bias)).astype(np.float32))
    nobias = fuse_modules(e, GROUPS[1]).features[3]  # Conv2d(bias=False) gains a bias; BN without affine
    s = 1 / np.sqrt(f64(e.features[4].running_var) + e.features[4].eps)
    np.testing.assert_array_equal(nobias.bias.detach().numpy(),
                                  (-f64(e.features[4].running_mean) * s).astype(np.float32))
    assert nobias.weight.requires_grad and nobias.bias.requires_grad and nobias.weight.dtype == ember.float32


def test_replaced_names_become_identity_in_the_first_modules_mode():
    _, e = _twins()
    ef = fuse_modules(e, GROUPS)
    for name in REPLACED:
        m = ef.get_submodule(name)
        assert type(m) is nn.Identity and m.training is False, name
    assert ef.features[0].training is False
    train = fuse_modules(e.train(), [["features.5", "features.6"]])
    assert train.features[5].training and train.features[6].training


def test_copy_by_default_inplace_on_request():
    _, e = _twins()
    w = e.features[0].weight.detach().numpy().copy()
    ef = fuse_modules(e, GROUPS)
    assert ef is not e and type(e.features[0]) is nn.Conv2d and type(e.features[1]) is nn.BatchNorm2d
    np.testing.assert_array_equal(e.features[0].weight.detach().numpy(), w)
    same = fuse_modules(e, GROUPS, inplace=True)
    assert same is e and isinstance(e.features[0], ConvReLU2d) and type(e.features[1]) is nn.Identity


def test_a_single_flat_group_and_a_nested_model_with_attribute_names():
    def build(M):
        class Block(M.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.bn, self.relu = M.Conv2d(2, 4, 3, padding=1), M.BatchNorm2d(4), M.ReLU()
                self.fc, self.act = M.Linear(64, 3), M.ReLU()

            def forward(self, x):
                return self.act(self.fc(self.relu(self.bn(self.conv(x))).flatten(1)))

        return M.Sequential(OrderedDict(stage=M.Sequential(OrderedDict(block=Block()))))

    t, e = _twins(build, (3, 2, 4, 4))
    flat = ["stage.block.conv", "stage.block.bn", "stage.block.relu"]
    tf, ef = tq.fuse_modules(t, flat), fuse_modules(e, flat)
    assert isinstance(ef.stage.block.conv, ConvReLU2d) and type(ef.stage.block.bn) is nn.Identity
    x = _x(2, 2, 4, 4)
    np.testing.assert_allclose(_run(ef, x), _run(tf, x), atol=1e-5, rtol=1e-4)
    both = [flat, ["stage.block.fc", "stage.block.act"]]
    np.testing.assert_allclose(_run(fuse_modules(e, both), x), _run(tq.fuse_modules(t, both), x),
                               atol=1e-5, rtol=1e-4)


def test_linear_batchnorm1d_with_one_channel_as_torch():
    t, e = _twins(lambda M: M.Sequential(M.Linear(4, 5), M.BatchNorm1d(1)), (6, 1, 4))
    x = _x(3, 1, 4)
    np.testing.assert_allclose(_run(fuse_modules(e, ["0", "1"]), x), _run(tq.fuse_modules(t, ["0", "1"]), x),
                               atol=1e-5, rtol=1e-4)


def test_relu_fusions_work_in_training_mode_as_torch():
    t, e = _twins()
    t.train(), e.train()
    groups = [["features.5", "features.6"], ["features.7", "features.8"], ["head.2", "head.3"]]
    tf, ef = tq.fuse_modules(t, groups), fuse_modules(e, groups)
    assert ef.features[7].training and ef.features[7][0].training
    x = _x(4, 3, 6, 6)
    np.testing.assert_allclose(_run(ef, x), _run(tf, x), atol=1e-5, rtol=1e-4)  # batch statistics
    np.testing.assert_allclose(ef.features[7][0].running_mean.numpy(), tf.features[7][0].running_mean.numpy(),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("group", [GROUPS[0], GROUPS[1], GROUPS[4]])
def test_batchnorm_folding_in_training_mode_says_to_call_eval_and_changes_nothing(group):
    _, e = _twins()
    e.train()
    with pytest.raises(NotImplementedError, match=r"model\.eval\(\)") as err:
        fuse_modules(e, [["features.5", "features.6"], group], inplace=True)
    assert str(group) in str(err.value) and "QAT" in str(err.value)
    assert type(e.features[5]) is nn.Conv2d and type(e.features[6]) is nn.ReLU  # checked before any change


def _err(exc, model, groups, *fragments, **kw):
    with pytest.raises(exc) as err:
        fuse_modules(model, groups, **kw)
    for f in fragments:
        assert f in str(err.value), (f, str(err.value))


def test_unknown_names_suggest_close_or_list_valid_ones():
    _, e = _twins()
    _err(AttributeError, e, ["features.0", "features.9"], "'features.9'",
         "Sequential 'features' has no child '9'; its children: '0', '1'", "did you mean", "'features.8'")
    _err(AttributeError, e, ["conv", "bn"], "no submodule 'conv'", "the model's submodules:", "'head.1'")
    _err(AttributeError, e, ["features.0.weight", "features.1"], "Conv2d 'features.0' has no child 'weight'")


def test_unsupported_pattern_names_the_types_and_the_supported_patterns():
    _, e = _twins()
    _err(NotImplementedError, e, ["features.0", "features.5"], "['features.0', 'features.5'] (Conv2d, Conv2d)",
         "supported patterns", "(Conv2d, BatchNorm2d, ReLU)", "(Linear, BatchNorm1d)", "(BatchNorm2d, ReLU)")
    _err(NotImplementedError, e, ["features.2", "features.3"], "(ReLU, Conv2d)")  # order matters


def test_batchnorm_channel_mismatch():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5), nn.Linear(4, 6), nn.BatchNorm1d(3)).eval()
    _err(ValueError, m, ["0", "1"], "num_features=5", "out_channels=4")
    _err(ValueError, m, ["2", "3"], "num_features=3", "out_features=6")


def test_batchnorm_without_running_stats_has_nothing_to_fold():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    _err(ValueError, m, ["0", "1"], "track_running_stats=False")


def test_fusing_a_module_twice():
    _, e = _twins()
    _err(ValueError, e, [["features.0", "features.1"], ["features.1", "features.2"]], "'features.1' is listed twice")
    once = fuse_modules(e, GROUPS)
    _err(ValueError, once, ["features.3", "features.4"], "'features.4' was already fused into 'features.3'")
    _err(ValueError, once, ["features.0", "features.1", "features.2"], "'features.0' is already a fused ConvReLU2d")
    # a folded conv is a plain Conv2d again: fusing it with a ReLU later is allowed (as in torch)
    conv_bn = fuse_modules(e, ["features.0", "features.1"])
    assert isinstance(fuse_modules(conv_bn, ["features.0", "features.2"]).features[0], ConvReLU2d)


def test_malformed_arguments():
    _, e = _twins()
    _err(TypeError, e, "features.0", "list of submodule names")
    _err(ValueError, e, [], "modules_to_fuse is empty")
    _err(TypeError, e, [["features.0", "features.1"], "features.2"], "list of such lists")
    _err(ValueError, e, [["features.0", "features.1"], []], "empty group")
    _err(TypeError, e, ["head.2", "head.3"], "must return a list of 2 modules", fuser_func=lambda mods, q, m: mods[:1])
    with pytest.raises(TypeError, match="must be an nn.Module"):
        fuse_modules(torch.nn.Linear(2, 2), ["0", "1"])
    with pytest.raises(TypeError, match=r"ConvReLU2d: expected modules \(Conv2d, ReLU\), got \(Linear, ReLU\)"):
        ConvReLU2d(nn.Linear(2, 2), nn.ReLU())


def test_custom_fuser_func_and_additional_patterns_use_torchs_signatures():
    _, e = _twins()
    seen = []

    def fuser(mods, is_qat, additional_fuser_method_mapping):
        seen.append((tuple(type(m).__name__ for m in mods), is_qat))
        return [nn.Sequential(*mods), nn.Identity()]

    out = fuse_modules(e, ["features.2", "features.3"], fuser_func=fuser)
    assert seen == [(("ReLU", "Conv2d"), False)] and type(out.features[2]) is nn.Sequential
    x = _x(2, 3, 6, 6)
    np.testing.assert_allclose(_run(out, x), _run(e, x), atol=1e-6)
    extra = {"additional_fuser_method_mapping": {(nn.ReLU, nn.Conv2d): lambda is_qat, a, b: nn.Sequential(a, b)}}
    out = fuse_modules(e, ["features.2", "features.3"], fuse_custom_config_dict=extra)
    assert type(out.features[2]) is nn.Sequential and type(out.features[3]) is nn.Identity
    assert [type(m).__name__ for m in fuse_known_modules([e.head[2], e.head[3]])] == ["LinearReLU", "Identity"]


def test_hooks_move_to_the_fused_module_as_in_torch():
    _, e = _twins()
    calls = []
    e.features[0].register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    e.features[2].register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    fuse_modules(e, GROUPS, inplace=True)
    _run(e, _x(1, 3, 6, 6))
    assert calls == [("pre", "ConvReLU2d"), ("post", "ConvReLU2d")]
    assert not e.features[0][0]._forward_pre_hooks and not e.features[0][1]._forward_hooks


def test_state_dict_round_trip_and_torch_checkpoint_into_a_fresh_fused_model():
    t, e = _twins()
    ef = fuse_modules(e, GROUPS)
    fresh = fuse_modules(_net(nn).eval(), GROUPS)
    fresh.load_state_dict(ef.state_dict())
    x = _x(3, 3, 6, 6)
    np.testing.assert_array_equal(_run(fresh, x), _run(ef, x))
    from_torch = fuse_modules(_net(nn).eval(), GROUPS)
    from_torch.load_state_dict({k: ember.from_numpy(v.numpy().copy()) for k, v in tq.fuse_modules(t, GROUPS)
                                .state_dict().items()})
    np.testing.assert_allclose(_run(from_torch, x), _run(ef, x), atol=1e-5, rtol=1e-4)


def test_fused_model_traces_and_its_program_matches_eager():
    _, e = _twins()
    ef = fuse_modules(e, GROUPS)
    prog = trace(ef, ember.tensor(_x(2, 3, 6, 6)))
    ops = [n.op for n in prog.graph.nodes]
    assert ops.count("conv2d") == 3 and ops.count("batch_norm") == 1  # only BNReLU2d's BatchNorm is left
    x = _x(5, 3, 6, 6)
    np.testing.assert_allclose(prog(ember.tensor(x)).numpy(), _run(ef, x), atol=1e-5, rtol=1e-4)
