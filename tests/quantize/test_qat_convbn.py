"""QAT with Conv+BatchNorm fusion against torch.ao.quantization: ``fuse_modules_qat`` gives float ConvBn2d /
ConvBnReLU2d containers that compute conv -> bn (-> relu) unchanged; ``prepare_qat`` turns them into layers that
train with the BatchNorm folded into the fake-quantized weight, step for step as torch's
``intrinsic.qat.ConvBn2d`` (outputs, gradients, running statistics, frozen BatchNorm); ``convert`` folds the
running statistics in and gives torch's int8 numbers; a digits CNN keeps its QAT accuracy in int8 and survives
trace / save / load.

One documented difference (tests/quantize/test_fake_quantize.py): on the first step a per-channel weight
observer's scale is max|w| / 127.5, so each channel's largest weight sits on a rounding tie; ember keeps its
gradient, torch drops it. The test weights make each channel's largest weight positive (both round it to 127) and
the first step's gradient check skips those elements and gamma (whose gradient sums over them).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.ao.nn.intrinsic as tnni
import torch.ao.nn.intrinsic.qat as tnniqat
import torch.ao.quantization as tq

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.data.datasets import digits
from ember.serialize import load, save, trace

from .digits_training import accuracy as _accuracy
from .digits_training import train as _train

# torch's deprecation notices for the eager quantization API and its x86 qconfig's reduce_range
pytestmark = [pytest.mark.filterwarnings("ignore:.*reduce_range will be deprecated:UserWarning"),
              pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")]

# (kwargs of the Conv2d, relu?) as torch and ember build them
CONFIGS = {
    "convbn": (dict(padding=1), False),
    "convbnrelu": (dict(padding=1), True),
    "nobias_groups_dilation_stride": (dict(padding=2, dilation=2, stride=2, groups=2, bias=False), True),
}


def _em(t):
    return ember.from_numpy(t.detach().numpy().copy())


def _twins(cfg, cin=4, cout=6, seed=0):
    """(torch (conv, bn, relu?), ember (conv, bn, relu?)) with equal weights, both in training mode: random
    BatchNorm affine, running statistics moved by a few batches, each channel's largest |weight| positive."""
    kwargs, relu = CONFIGS[cfg]
    torch.manual_seed(seed)
    tc, tb = torch.nn.Conv2d(cin, cout, 3, **kwargs), torch.nn.BatchNorm2d(cout)
    with torch.no_grad():
        tb.weight.uniform_(0.5, 1.5)
        tb.bias.uniform_(-0.5, 0.5)
        w = tc.weight.view(cout, -1)
        rows, cols = torch.arange(cout), w.abs().argmax(1)
        w[rows, cols] = w[rows, cols].abs()
        for _ in range(3):
            tb(tc(torch.randn(4, cin, 8, 8) + 0.5))
    ec, eb = nn.Conv2d(cin, cout, 3, **kwargs), nn.BatchNorm2d(cout)
    ec.load_state_dict({k: _em(v) for k, v in tc.state_dict().items()})
    eb.load_state_dict({k: _em(v) for k, v in tb.state_dict().items()})
    t = (tc, tb) + ((torch.nn.ReLU(),) if relu else ())
    e = (ec, eb) + ((nn.ReLU(),) if relu else ())
    return t, e


def _x(rng, *shape):
    return (rng.standard_normal(shape) * 1.5 + 0.3).astype(np.float32)


def _assert_close_grads(ember_grads, torch_grads, skip=None):
    for name, e in ember_grads.items():
        t = torch_grads[name].numpy()
        e = e.numpy()
        keep = np.ones(t.shape, bool) if skip is None or name not in skip else ~skip[name]
        scale = max(float(np.abs(t).max()), 1.0)
        np.testing.assert_allclose(e[keep], t[keep], rtol=1e-3, atol=1e-4 * scale, err_msg=name)


# ---- (a) the float fused modules -------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("training", [True, False])
def test_fused_float_module_is_conv_bn_relu_as_torch(cfg, training):
    (tc, tb, *tr), (ec, eb, *er) = _twins(cfg)
    tmodel, emodel = torch.nn.Sequential(tc, tb, *tr).train(training), nn.Sequential(ec, eb, *er).train(training)
    names = [str(i) for i in range(len(tmodel))]
    tf, ef = tq.fuse_modules_qat(tmodel, [names]), Q.fuse_modules_qat(emodel, [names])
    assert type(ef[0]).__name__ == type(tf[0]).__name__ == ("ConvBnReLU2d" if tr else "ConvBn2d")
    assert isinstance(ef[0], Q.ConvBn2d) and all(type(m) is nn.Identity for m in list(ef)[1:])
    assert sorted(ef.state_dict()) == sorted(tf.state_dict()) and ef[0].training is training
    rng = np.random.default_rng(1)
    x = _x(rng, 4, 4, 8, 8)
    xt, xe = torch.from_numpy(x.copy()).requires_grad_(), ember.from_numpy(x.copy()).requires_grad_()
    yt, ye = tmodel(xt), ef(xe)  # the unfused torch model: the fusion must not change the computation
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy(), rtol=1e-3, atol=1e-5)
    g = rng.standard_normal(yt.shape).astype(np.float32)
    yt.backward(torch.from_numpy(g))
    ye.backward(ember.from_numpy(g))
    _assert_close_grads({"x": xe.grad, "w": ef[0][0].weight.grad, "gamma": ef[0][1].weight.grad,
                         "beta": ef[0][1].bias.grad},
                        {"x": xt.grad, "w": tc.weight.grad, "gamma": tb.weight.grad, "beta": tb.bias.grad})
    np.testing.assert_allclose(ef[0][1].running_var.numpy(), tb.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert int(ef[0][1].num_batches_tracked.item()) == int(tb.num_batches_tracked.item())


def test_plain_fuse_modules_in_training_mode_points_to_fuse_modules_qat():
    _, e = _twins("convbnrelu")
    with pytest.raises(NotImplementedError, match=r"model\.eval\(\).*fuse_modules_qat"):
        Q.fuse_modules(nn.Sequential(*e).train(), [["0", "1", "2"]])  # torch: AssertionError "Fusion only for eval!"


def test_fuse_modules_qat_in_eval_mode_still_keeps_the_batchnorm_as_torch():
    (tc, tb), (ec, eb) = _twins("convbn")
    tf = tq.fuse_modules_qat(torch.nn.Sequential(tc, tb).eval(), [["0", "1"]])
    ef = Q.fuse_modules_qat(nn.Sequential(ec, eb).eval(), [["0", "1"]])
    assert type(ef[0]) is Q.ConvBn2d and type(tf[0]) is tnni.ConvBn2d and not ef[0].training
    x = _x(np.random.default_rng(2), 2, 4, 8, 8)
    with ember.no_grad(), torch.no_grad():
        np.testing.assert_allclose(ef(ember.from_numpy(x)).numpy(), tf(torch.from_numpy(x)).numpy(),
                                   rtol=1e-3, atol=1e-5)


def test_fuse_modules_qat_hands_is_qat_to_fuser_functions_as_torch():
    seen = []

    def fuser(mods, is_qat, additional_fuser_method_mapping):
        seen.append(is_qat)
        return [nn.Sequential(*mods), nn.Identity()]

    Q.fuse_modules_qat(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()), ["0", "1"], fuser_func=fuser)
    assert seen == [True]
    conv, bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)
    assert [type(m) for m in Q.fuse_known_modules([conv, bn], is_qat=True)] == [Q.ConvBn2d, nn.Identity]
    assert [type(m) for m in Q.fuse_known_modules([conv.eval(), bn.eval()])] == [nn.Conv2d, nn.Identity]


# ---- (b) the QAT layer against torch's intrinsic.qat.ConvBn2d --------------------------------------------
def _qat_twins(cfg):
    """(torch QAT ConvBn(ReLU)2d with separate input/output FakeQuantizes, ember's QATConvBn(ReLU)2d)."""
    t, e = _twins(cfg)
    tqconfig = tq.get_default_qat_qconfig("x86", 0)  # torch's unfused FakeQuantize: ember's default
    tfused = (tnni.ConvBnReLU2d if len(t) == 3 else tnni.ConvBn2d)(*t)
    tfused.qconfig = tqconfig
    tlayer = (tnniqat.ConvBnReLU2d if len(t) == 3 else tnniqat.ConvBn2d).from_float(tfused)
    efused = Q.fuse_modules_qat(nn.Sequential(*e), [[str(i) for i in range(len(e))]])
    conv, bn = efused[0][0], efused[0][1]
    elayer = Q.prepare_qat(efused, inplace=True, qconfig=Q.get_default_qat_qconfig("x86"))[0]
    assert type(elayer) is (Q.QATConvBnReLU2d if len(e) == 3 else Q.QATConvBn2d)
    assert elayer.weight is conv.weight and elayer.bn is bn  # the fused module's Parameters and BatchNorm
    return (tqconfig.activation(), tlayer, tqconfig.activation()), elayer


def _step(tmods, elayer, x, g, check_grads=True):
    t_in, tlayer, t_out = tmods
    xt, xe = torch.from_numpy(x.copy()).requires_grad_(), ember.from_numpy(x.copy()).requires_grad_()
    yt, ye = t_out(tlayer(t_in(xt))), elayer(xe)
    yt_np, ye_np = yt.detach().numpy(), ye.detach().numpy()
    # float summation order may move an output across a rounding boundary of the output fake quantizer: a step
    step = float(elayer.activation_post_process.scale.item())
    diff = np.abs(ye_np - yt_np)
    assert (diff <= 1e-5).mean() >= 0.999 and diff.max() <= step * 1.001 + 1e-6, (diff.max(), step)
    if not check_grads:
        return
    yt.backward(torch.from_numpy(g))
    ye.backward(ember.from_numpy(g))
    tb, eb = tlayer.bn, elayer.bn
    grads_e = {"x": xe.grad, "w": elayer.weight.grad, "gamma": eb.weight.grad, "beta": eb.bias.grad}
    grads_t = {"x": xt.grad, "w": tlayer.weight.grad, "gamma": tb.weight.grad, "beta": tb.bias.grad}
    if elayer.bias is not None:
        grads_e["b"], grads_t["b"] = elayer.bias.grad, tlayer.bias.grad
    skip = None
    if check_grads == "first":  # each channel's largest (folded) weight sits on a tie (module docstring)
        w = np.abs(elayer.weight.detach().numpy().reshape(elayer.out_channels, -1))
        tie = (w == w.max(axis=1, keepdims=True)).reshape(elayer.weight.shape)
        skip = {"w": tie, "gamma": np.ones(eb.weight.shape, bool)}
    _assert_close_grads(grads_e, grads_t, skip)
    for p in list(tlayer.parameters()) + [xt]:
        p.grad = None
    elayer.zero_grad()
    np.testing.assert_allclose(eb.running_mean.numpy(), tb.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eb.running_var.numpy(), tb.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert int(eb.num_batches_tracked.item()) == int(tb.num_batches_tracked.item())
    np.testing.assert_allclose(elayer.weight_fake_quant.scale.numpy(), tlayer.weight_fake_quant.scale.numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_qat_convbn_trains_as_torchs_through_freezing_and_eval(cfg):
    tmods, elayer = _qat_twins(cfg)
    tlayer = tmods[1]
    rng = np.random.default_rng(3)
    x_shape = (4, elayer.in_channels, 8, 8)
    y_shape = torch.nn.functional.conv2d(torch.zeros(x_shape), tlayer.weight, None, tlayer.stride, tlayer.padding,
                                         tlayer.dilation, tlayer.groups).shape

    def step(check_grads=True):
        _step(tmods, elayer, _x(rng, *x_shape), rng.standard_normal(y_shape).astype(np.float32), check_grads)

    for i in range(3):  # batch statistics, running statistics updated
        step("first" if i == 0 else True)
    assert elayer.bn.training and not elayer.freeze_bn
    frozen_mean = elayer.bn.running_mean.numpy().copy()
    tlayer.apply(tnniqat.freeze_bn_stats)
    nn.Sequential(elayer).apply(Q.freeze_bn_stats)
    assert elayer.freeze_bn and not elayer.bn.training and elayer.training
    nn.Sequential(elayer).train()  # as torch: model.train() keeps a frozen BatchNorm in eval mode
    tlayer.train()
    assert not elayer.bn.training and not tlayer.bn.training
    for _ in range(2):  # running statistics, no updates
        step()
    np.testing.assert_array_equal(elayer.bn.running_mean.numpy(), frozen_mean)
    elayer.apply(Q.update_bn_stats)
    tlayer.apply(tnniqat.update_bn_stats)
    assert elayer.bn.training and not elayer.freeze_bn
    step()
    assert not np.array_equal(elayer.bn.running_mean.numpy(), frozen_mean)
    for m in tmods:
        m.eval()
    elayer.eval()
    assert not elayer.bn.training
    with torch.no_grad(), ember.no_grad():
        step(check_grads=False)


def test_qat_convbn_state_dict_names_match_torchs():
    tmods, elayer = _qat_twins("convbnrelu")
    tkeys = {k for k in tmods[1].state_dict()}
    ekeys = {k for k in elayer.state_dict() if not k.startswith(("activation_pre_process", "activation_post_process"))}
    assert ekeys == tkeys


def test_freeze_bn_stats_and_observer_toggles_apply_to_a_whole_model():
    (_, e) = _twins("convbnrelu")
    model = nn.Sequential(*e, nn.Flatten(), nn.Linear(6 * 64, 3))
    qat = Q.prepare_qat(Q.fuse_modules_qat(model.train(), [["0", "1", "2"]]))
    qat.apply(Q.freeze_bn_stats)
    qat.apply(Q.disable_observer)
    assert qat[0].freeze_bn and not qat[0].bn.training and qat[0].training and qat[4].training
    assert all(int(fq.observer_enabled.numpy()[0]) == 0 for fq in qat.modules() if isinstance(fq, Q.FakeQuantize))
    qat.eval().train()
    assert not qat[0].bn.training and qat[0].training and qat[0].weight_fake_quant.training


# ---- (c) convert: torch's int8 numbers, and a digits CNN --------------------------------------------------
class _TorchNet(torch.nn.Module):
    def __init__(self, conv, bn, relu):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.bn, self.relu = conv, bn, relu

    def forward(self, x):
        return self.dequant(self.relu(self.bn(self.conv(self.quant(x)))))


def test_convert_folds_the_running_statistics_and_matches_torchs_int8():
    (tc, tb, tr), e = _twins("convbnrelu")
    tnet = _TorchNet(tc, tb, tr).train()
    tnet.qconfig = tq.get_default_qat_qconfig("x86", 0)
    tqat = tq.prepare_qat(tq.fuse_modules_qat(tnet, [["conv", "bn", "relu"]]))
    eqat = Q.prepare_qat(Q.fuse_modules_qat(nn.Sequential(*e).train(), [["0", "1", "2"]]),
                         qconfig=Q.get_default_qat_qconfig("x86"))
    rng = np.random.default_rng(4)
    for i in range(5):
        if i == 3:  # observers keep learning through the first frozen step; convert re-observes the folded weight
            tqat.apply(tnniqat.freeze_bn_stats)
            eqat.apply(Q.freeze_bn_stats)
        x = _x(rng, 8, 4, 8, 8)
        tqat(torch.from_numpy(x))
        eqat(ember.from_numpy(x))
    tint8, eint8 = tq.convert(tqat.eval()), Q.convert(eqat.eval())
    layer = eint8[0]
    assert type(layer) is Q.nn.Conv2d and layer.relu and not any(isinstance(m, nn.BatchNorm2d) for m in eint8.modules())
    tw = tint8.conv.weight()
    np.testing.assert_allclose(layer.w_scale.numpy(), tw.q_per_channel_scales().numpy(), rtol=1e-6)
    assert (layer.weight.numpy() != tw.int_repr().numpy()).mean() < 0.01  # the odd tie of a float64 fold
    np.testing.assert_allclose(layer.bias.numpy(), tint8.conv.bias().detach().numpy(), rtol=1e-4, atol=1e-5)
    assert float(layer.y_scale.item()) == pytest.approx(tint8.conv.scale, rel=1e-6)
    x = _x(rng, 8, 4, 8, 8)
    ye, yt = eint8(ember.from_numpy(x)).numpy(), tint8(torch.from_numpy(x)).numpy()
    # the same int8 codes; dequantizing rounds differently in the last bit (torch multiplies by a double scale)
    diff, step = np.abs(ye - yt), float(layer.y_scale.item())
    assert (diff <= 1e-5).mean() >= 0.99 and diff.max() <= step * 1.001


def _digits_cnn():
    ember.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 16, 10))


def test_digits_qat_with_folded_batchnorm_converts_within_a_point_and_round_trips(tmp_path):
    model = _train(_digits_cnn(), 2, 0.05, flatten=False)
    qat = Q.prepare_qat(Q.fuse_modules_qat(model.train(), [["0", "1", "2"]]))
    assert type(qat[0]) is Q.QATConvBnReLU2d and type(qat[5]) is Q.QATLinear
    qat = _train(qat, 1, 0.01, flatten=False)
    qat.apply(Q.freeze_bn_stats)
    qat.apply(Q.disable_observer)
    qat = _train(qat, 1, 0.005, flatten=False)
    fp32_qat = _accuracy(qat, flatten=False)
    int8 = Q.convert(qat)
    assert type(int8[0]) is Q.nn.Conv2d and int8[0].relu and type(int8[1]) is nn.Identity
    acc = _accuracy(int8, flatten=False)
    assert fp32_qat > 0.9 and abs(acc - fp32_qat) <= 0.01, (fp32_qat, acc)
    x, _ = digits("test", flatten=False).tensors
    with ember.no_grad():
        want = int8(x).numpy()
    save(trace(int8, x[:2]), tmp_path / "qat_cnn.ember")
    np.testing.assert_array_equal(load(tmp_path / "qat_cnn.ember")(x).numpy(), want)


# ---- (d) errors -------------------------------------------------------------------------------------------
def _raises(exc, fn, *fragments):
    with pytest.raises(exc) as err:
        fn()
    for f in fragments:
        assert f in str(err.value), (f, str(err.value))


def test_conv_bn_fusion_errors_name_the_modules_and_what_is_valid():
    conv = nn.Conv2d(3, 4, 3)
    _raises(ValueError, lambda: Q.fuse_modules_qat(nn.Sequential(conv, nn.BatchNorm2d(5)), [["0", "1"]]),
            "fuse_modules_qat", "['0', '1']", "num_features=5", "out_channels=4")
    _raises(ValueError, lambda: Q.ConvBn2d(conv, nn.BatchNorm2d(5)), "ConvBn2d", "num_features=5", "out_channels=4",
            "(4, 3, 3, 3)")
    _raises(ValueError, lambda: Q.fuse_modules_qat(nn.Sequential(conv, nn.BatchNorm2d(4, affine=False)), ["0", "1"]),
            "affine=True", "fuse_modules")
    _raises(ValueError, lambda: Q.fuse_modules_qat(nn.Sequential(conv, nn.BatchNorm2d(4, track_running_stats=False)),
                                                   ["0", "1"]), "track_running_stats=False")
    _raises(ValueError, lambda: Q.fuse_modules_qat(nn.Sequential(conv.train(), nn.BatchNorm2d(4).eval()), ["0", "1"]),
            "same mode", "Conv2d training", "BatchNorm2d eval")
    _raises(TypeError, lambda: Q.ConvBnReLU2d(conv, nn.ReLU(), nn.BatchNorm2d(4)),
            "ConvBnReLU2d: expected modules (Conv2d, BatchNorm2d, ReLU), got (Conv2d, ReLU, BatchNorm2d)")
    _raises(NotImplementedError, lambda: Q.fuse_modules_qat(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)),
                                                            ["0", "1"]), "LinearBn1d", "fuse_modules")


def test_qat_convbn_refuses_what_it_cannot_train_or_convert():
    fused = Q.ConvBn2d(nn.Conv2d(3, 4, 3, padding="same"), nn.BatchNorm2d(4))
    _raises(ValueError, lambda: Q.prepare_qat(nn.Sequential(fused)), "QATConvBn2d", "padding='same'",
            "padding_mode='zeros'", "qconfig = None")
    reflect = Q.ConvBn2d(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4))
    _raises(ValueError, lambda: Q.prepare_qat(nn.Sequential(reflect)), "padding_mode='reflect'")
    relu = Q.ConvBnReLU2d(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    _raises(TypeError, lambda: Q.QATConvBn2d(relu, Q.get_default_qat_qconfig()), "QATConvBn2d", "ConvBn2d",
            "ConvBnReLU2d")
    kept = nn.Sequential(fused)
    kept[0].qconfig = None  # stays float: it trains as conv -> bn
    assert type(Q.prepare_qat(kept)[0]) is Q.ConvBn2d


def test_static_prepare_leaves_a_qat_fusion_float_and_says_why():
    model = nn.Sequential(Q.ConvBn2d(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)), nn.Flatten(),
                          nn.Linear(4 * 64, 3))
    model.qconfig = Q.get_default_qconfig("x86")
    prepared = Q.prepare(model)
    assert "_quant_qconfig" not in prepared[0][0].__dict__  # its conv is not observed on its own
    Q.calibrate(prepared, [ember.randn(4, 1, 8, 8)], progress=False)
    with pytest.warns(UserWarning, match=r"0 \(ConvBn2d: .*prepare_qat"):
        out = Q.convert(prepared)
    assert type(out[0]) is Q.ConvBn2d and type(out[2]) is Q.nn.Linear
