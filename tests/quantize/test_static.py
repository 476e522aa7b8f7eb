"""Static post-training quantization as a user runs it: fuse -> prepare -> calibrate -> convert on models
trained on the digits; the int8 ops against float references; the errors of the workflow; the quantized
model traced, saved, run in a fresh process, and exported to ONNX (QDQ) for ONNX Runtime."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.data import DataLoader
from ember.data.datasets import digits
from ember.ops.registry import apply
from ember.serialize import load, trace
from export.onnx_check import ort_session

from .digits_training import accuracy as _accuracy
from .digits_training import train as _train

rng = np.random.default_rng(31)
T = ember.tensor


def _qparams(scale, zp):
    return T(np.float32(scale)), T(np.uint8(zp))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantized_ops_match_the_float_computation_to_one_step(relu, per_channel):
    xs, xz, ys, yz = 0.04, 117, 0.09, 96
    w = rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    ws = (rng.random(6) * 0.01 + 0.002).astype(np.float32) if per_channel else np.float32(0.006)
    b = rng.standard_normal(6).astype(np.float32)
    x = rng.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8)
    got = apply("quantized_conv2d", T(x), *_qparams(xs, xz), T(w), T(ws), *_qparams(ys, yz), T(b), stride=(2, 1),
                padding=(1, 1), dilation=(1, 1), groups=1, relu=relu).numpy()
    wf = w.astype(np.float32) * np.reshape(ws, (-1, 1, 1, 1) if per_channel else ())
    y = TF.conv2d(torch.from_numpy((x.astype(np.float32) - xz) * xs), torch.from_numpy(wf), torch.from_numpy(b),
                  stride=(2, 1), padding=1)
    y = (TF.relu(y) if relu else y).numpy()
    want = np.clip(np.rint(y / ys) + yz, 0, 255)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want).max() <= 1  # the kernel rounds the bias to int32 first
    wl = w.reshape(6, -1)
    xl = rng.integers(0, 256, (3, 5, wl.shape[1])).astype(np.uint8)
    got = apply("quantized_linear", T(xl), *_qparams(xs, xz), T(wl), T(ws), *_qparams(ys, yz), T(b), relu=relu).numpy()
    y = ((xl.astype(np.float32) - xz) * xs) @ (wl.astype(np.float32) * np.reshape(ws, (-1, 1) if per_channel else ())).T
    y = y + b
    want = np.clip(np.rint((np.maximum(y, 0) if relu else y) / ys) + yz, 0, 255)
    assert got.shape == (3, 5, 6) and np.abs(got.astype(int) - want).max() <= 1


def test_quantized_ops_refuse_wrong_dtypes_and_shapes():
    w = T(np.ones((4, 6), np.int8))
    x = T(np.zeros((2, 6), np.uint8))
    with pytest.raises(TypeError, match="activations and their zero points must be uint8"):
        apply("quantized_linear", T(np.zeros((2, 6), np.int8)), *_qparams(0.1, 0), w, T(np.float32(1)),
              *_qparams(0.1, 0))
    with pytest.raises(RuntimeError, match="input has 5 features, weight expects 6"):
        apply("quantized_linear", T(np.zeros((2, 5), np.uint8)), *_qparams(0.1, 0), w, T(np.float32(1)),
              *_qparams(0.1, 0))
    with pytest.raises(RuntimeError, match=r"w_scale has shape \(3,\)"):
        apply("quantized_linear", x, *_qparams(0.1, 0), w, T(np.ones(3, np.float32)), *_qparams(0.1, 0))


def _cnn():
    ember.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 2 * 2, 10))


def _mlp():
    ember.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _ptq(model, fuse, flatten):
    fused = Q.fuse_modules(model, fuse) if fuse else model
    fused.qconfig = Q.get_default_qconfig("x86")  # histogram activations, per-channel weights
    calib = DataLoader(digits("train", flatten=flatten), batch_size=100)  # 500 images
    return Q.quantize_static(fused, calib, num_batches=5, progress=False)


@pytest.fixture(scope="module")
def trained():
    return {"mlp": _train(_mlp(), 8, 0.05, flatten=True, seed=0), "cnn": _train(_cnn(), 8, 0.05, flatten=False, seed=0)}


@pytest.mark.parametrize("name,fuse,flatten", [
    ("mlp", [["0", "1"]], True),
    ("cnn", [["0", "1", "2"], ["4", "5"]], False),
])
def test_digits_accuracy_drops_at_most_one_point(trained, name, fuse, flatten):
    model = trained[name]
    fp32 = _accuracy(model, flatten)
    q = _ptq(model, fuse, flatten)
    kinds = [type(m).__name__ for m in q.modules()]
    assert "BatchNorm2d" not in kinds and kinds.count("Linear") == (2 if name == "mlp" else 1)
    int8 = _accuracy(q, flatten)
    assert fp32 > 0.95 and int8 >= fp32 - 0.01, (fp32, int8)
    assert "int8 static (+relu)" in Q.summary(q)


def test_workflow_errors_say_what_to_do(trained):
    model = trained["mlp"]
    with pytest.raises(ValueError, match="the model has no qconfig"):
        Q.prepare(model)
    prepared = Q.prepare(model, qconfig=Q.get_default_qconfig("x86"))
    with pytest.raises(RuntimeError, match=r"layer '0' \(Linear\) saw no calibration data: run "
                                           r"ember.quantize.calibrate"):
        Q.convert(prepared)
    with pytest.raises(ValueError, match="no prepared layers"):
        Q.convert(model)


def test_layers_excluded_or_unsupported_stay_float(trained):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 16),
                          nn.ReLU(), nn.Linear(16, 10)).eval()
    model.qconfig = Q.get_default_qconfig("x86")
    model[5].qconfig = None  # excluded, torch's way
    prepared = Q.prepare(model)
    Q.calibrate(prepared, [ember.randn(8, 1, 8, 8) for _ in range(2)], progress=False)
    with pytest.warns(UserWarning, match=r"stay in float: 0 \(Conv2d: padding='same'"):
        q = Q.convert(prepared)
    assert [type(m).__name__ for m in q] == ["Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert isinstance(q[3], Q.nn.Linear) and type(q[5]) is nn.Linear and type(q[0]) is nn.Conv2d


RUNNER = """
import sys
import numpy as np
import ember.serialize
prog = ember.serialize.load(sys.argv[1])
np.save(sys.argv[3], prog(np.load(sys.argv[2])).numpy())
"""


def test_quantized_cnn_saves_loads_and_runs_in_onnxruntime(trained, tmp_path):
    q = _ptq(trained["cnn"], [["0", "1", "2"], ["4", "5"]], False)
    x, y = digits("test").tensors
    prog = trace(q, x[:2])
    ops = [n.op for n in prog.graph.nodes]
    assert ops.count("quantized_conv2d") == 2 and ops.count("quantized_linear") == 1
    prog.save(tmp_path / "cnn_int8.ember")
    assert load(tmp_path / "cnn_int8.ember").constants["0.weight"].dtype == ember.int8
    np.save(tmp_path / "x.npy", x.numpy())
    out = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "cnn_int8.ember"), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with ember.no_grad():
        want = q(x).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)
    # QDQ export: ONNX Runtime agrees within 2 output quantization steps, and on >= 99% of the classes
    prog.to_onnx(tmp_path / "cnn_int8.onnx")
    got = ort_session(str(tmp_path / "cnn_int8.onnx")).run(None, {"input": x.numpy()})[0]
    step = float(q[8].y_scale.item())
    assert np.abs(got - want).max() <= 2 * step + 1e-6
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99


@pytest.mark.parametrize("geom", [(1, 16, 3, 1, 1, 1, 1), (1, 8, 4, 2, 1, 1, 1), (2, 6, 3, 1, 2, 2, 2), (1, 4, 1, 1, 0, 1, 1)],
                         ids=["first-layer", "strided-even-kernel", "dilated-grouped", "1x1"])
def test_short_reduction_convs_are_bit_identical_to_the_int8_kernels(geom):
    """quantized_conv2d computes K <= 16 convolutions (first layers) with the float direct kernel, whose
    accumulators are exact integers there; the result must equal the int8 kernels' to the bit."""
    from ember.backends.cpu import int8_conv, int8_kernels
    from ember.ops.qlinear import packed

    c, co, k, st, pad, dil, g = geom
    x = rng.integers(0, 256, (5, c, 11, 9)).astype(np.uint8)
    x[0, 0, 0] = 255  # saturation edges: 255 activations against -128 weights
    w = rng.integers(-128, 128, (co, c // g, k, k)).astype(np.int8)
    w[0] = -128
    w_scale = (rng.random(co) * 0.01 + 1e-3).astype(np.float32)
    bias = (rng.standard_normal(co) * 50).astype(np.float32)
    for relu in (False, True):
        for zp in (0, 128, 255):
            got = apply("quantized_conv2d", T(x), *_qparams(0.03, zp), T(w), T(w_scale), *_qparams(0.07, 100), T(bias),
                        stride=(st, st), padding=(pad, pad), dilation=(dil, dil), groups=g, relu=relu).numpy()
            b_i32, mult = int8_kernels.requant_params(np.float32(0.03), w_scale, np.float32(0.07), bias)
            want = int8_conv.qconv2d(x, zp, packed(w), (st, st), (pad, pad), (dil, dil), g, b_i32, mult, 100, relu=relu)
            np.testing.assert_array_equal(got, want)


def test_convert_names_every_layer_left_in_float_and_what_to_do():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LayerNorm(4 * 36),
                          nn.Linear(4 * 36, 3)).eval()
    model.qconfig = Q.get_default_qconfig("x86")
    prepared = Q.prepare(model)
    Q.calibrate(prepared, [ember.randn(4, 1, 8, 8)], progress=False)
    with pytest.warns(UserWarning) as record:
        q = Q.convert(prepared)
    msg = str(record[0].message)
    assert "1 (BatchNorm2d: fold it into the Conv2d / Linear before it with fuse_modules" in msg
    assert "4 (LayerNorm: no int8 version" in msg and "(ReLU" not in msg and "(Flatten" not in msg
    table = Q.summary(q)
    assert "BatchNorm2d  float" in table and "Conv2d       int8 static" in table
