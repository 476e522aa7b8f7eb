"""Quantization-aware training: prepare_qat swaps in fake-quantized layers that train the original
parameters through the straight-through estimator; convert gives int8 layers with the learned qparams;
on the digits the int8 model keeps the float model's accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.data.datasets import digits
from ember.serialize import trace

from .digits_training import accuracy as _accuracy
from .digits_training import train as _train


def _mlp():
    ember.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def test_prepare_qat_swaps_layers_and_shares_their_parameters():
    model = _mlp()
    fused = Q.fuse_modules(model.eval(), [["0", "1"]])
    qat = Q.prepare_qat(fused.train())
    assert isinstance(qat[0], Q.QATLinear) and qat[0].relu and isinstance(qat[2], Q.QATLinear) and not qat[2].relu
    assert isinstance(fused[0], Q.LinearReLU)  # a copy by default
    np.testing.assert_array_equal(qat[0].weight.detach().numpy(), fused[0][0].weight.detach().numpy())
    w2 = fused[2].weight
    same = Q.prepare_qat(fused, inplace=True)
    assert same is fused and same[2].weight is w2  # in place: the optimizer's parameters are the layer's own
    assert isinstance(qat[0].weight_fake_quant, Q.FakeQuantize) and qat.training
    params = list(qat.parameters())
    assert len(params) == 4  # the two layers' weights and biases; fake quantizers hold buffers only


def test_qat_layer_is_fake_quantized_linear_with_a_straight_through_gradient():
    ember.manual_seed(3)
    layer = Q.prepare_qat(nn.Sequential(nn.Linear(6, 4)).train())[0]
    x = ember.randn(5, 6)
    y = layer(x)
    (y * ember.randn(5, 4)).sum().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum().item()) > 0
    # the same computation in torch with the qparams the fake quantizers settled on
    fq_in, fq_w, fq_out = layer.activation_pre_process, layer.weight_fake_quant, layer.activation_post_process
    t = lambda a: torch.from_numpy(np.asarray(a.detach().numpy()))  # noqa: E731
    xi = torch.fake_quantize_per_tensor_affine(t(x), float(fq_in.scale.item()), int(fq_in.zero_point.item()),
                                               fq_in.quant_min, fq_in.quant_max)
    w = torch.fake_quantize_per_channel_affine(t(layer.weight), t(fq_w.scale), t(fq_w.zero_point).int(), 0,
                                               fq_w.quant_min, fq_w.quant_max)
    z = torch.nn.functional.linear(xi, w, t(layer.bias))
    want = torch.fake_quantize_per_tensor_affine(z, float(fq_out.scale.item()), int(fq_out.zero_point.item()),
                                                 fq_out.quant_min, fq_out.quant_max)
    # ember divides by the scale where torch multiplies by its reciprocal: a tie may land one step apart
    step = float(fq_out.scale.item())
    assert np.abs(y.detach().numpy() - want.numpy()).max() <= step + 1e-6


def test_digits_qat_keeps_the_float_accuracy():
    model = _train(_mlp(), 8, 0.05)
    fp32 = _accuracy(model)
    fused = Q.fuse_modules(model, [["0", "1"]])
    qat = _train(Q.prepare_qat(fused.train()), 5, 0.01)
    int8 = Q.convert(qat.eval())
    assert isinstance(int8[0], Q.nn.Linear) and int8[0].relu
    # convert uses the qparams QAT learned
    assert float(int8[0].x_scale.item()) == float(qat[0].activation_pre_process.scale.item())
    acc = _accuracy(int8)
    assert fp32 > 0.95 and acc >= fp32 - 0.005, (fp32, acc)


def test_qat_conv_model_converts_traces_and_matches_its_program():
    ember.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    model = _train(model, 3, 0.05, flatten=False)
    fused = Q.fuse_modules(model, [["0", "1"]])
    qat = _train(Q.prepare_qat(fused.train()), 1, 0.01, flatten=False)
    int8 = Q.convert(qat)
    assert isinstance(int8[0], Q.nn.Conv2d) and int8[0].relu
    x, _ = digits("test").tensors
    prog = trace(int8, x[:2])
    with ember.no_grad():
        np.testing.assert_array_equal(prog(x).numpy(), int8(x).numpy())
    assert _accuracy(int8, flatten=False) >= _accuracy(model, flatten=False) - 0.02


def test_bad_qconfig_is_refused():
    model = _mlp()
    model.qconfig = "int8"
    with pytest.raises(TypeError, match="qconfig must be a QConfig"):
        Q.prepare_qat(model)
