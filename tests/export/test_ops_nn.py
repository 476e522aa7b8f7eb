"""ONNX lowerings of the layer ops (export/ops_nn.py), run in ONNX Runtime and onnx.reference against ember."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.export import DEFAULT_OPSET, MIN_OPSET, ExportError, to_onnx
from ember.ops.registry import apply
from ember.serialize import Program, trace
from ember.serialize.passes import optimize

from .onnx_check import OPSETS, check_export, onnx_op_types

rng = np.random.default_rng(7)


def _x(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _distinct(*shape):
    """Distinct values: max pooling has no ties, so its indices are unambiguous."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.37 - 0.37 * n / 2).reshape(shape).astype(np.float32)


def _module(m):
    m.eval()
    return m


@pytest.mark.parametrize("opset", OPSETS)
def test_linear_layers(opset):
    ember.manual_seed(0)
    w, b = ember.tensor(_x(5, 4)), ember.tensor(_x(5))
    model = check_export(_module(nn.Linear(4, 5)), [_x(3, 4)], opset=opset, batches=(1, 5))
    assert onnx_op_types(model) == ["Gemm"]
    check_export(lambda x: F.linear(x, w), [_x(3, 4)], opset=opset, batches=(1, 5))
    model = check_export(lambda x: F.linear(x, w, b), [_x(3, 2, 4)], opset=opset, batches=(1, 5))
    assert "MatMul" in onnx_op_types(model)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((3, 2, 4), (4, 5)), ((3, 2, 4), (3, 4, 2)), ((3, 4), (4,))],
                         ids=["2d", "batched-2d", "bmm", "vector"])
def test_matmul(opset, shapes):
    a, b = _x(*shapes[0]), _x(*shapes[1])
    if shapes[1][0] == shapes[0][0]:  # both carry the batch dim
        check_export(lambda x, y: x @ y, [a, b], opset=opset, batches=(1, 5))
    else:
        k = ember.tensor(b)
        check_export(lambda x: x @ k, [a], opset=opset, batches=(1, 5))


def test_matmul_float64_and_int64():
    k64 = ember.tensor(_x(4, 2, dtype=np.float64))
    check_export(lambda x: ember.matmul(x, k64), [_x(3, 4, dtype=np.float64)], batches=(1,))
    ints = rng.integers(-5, 5, (3, 4)).astype(np.int64)
    k = ember.tensor(rng.integers(-5, 5, (4, 2)).astype(np.int64))
    check_export(lambda x: x @ k, [ints], batches=(1,))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kw", [
    dict(), dict(stride=2, padding=1), dict(padding=(2, 1), dilation=2), dict(groups=2, bias=False),
    dict(padding="same", kernel_size=(4, 2)), dict(stride=(2, 1), padding=(0, 2)),
], ids=["plain", "stride-pad", "dilation", "groups-nobias", "same-even-kernel", "asym"])
def test_conv2d(opset, kw):
    ember.manual_seed(1)
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    conv = _module(nn.Conv2d(4, 6, k, **kw))
    check_export(conv, [_x(2, 4, 9, 8)], opset=opset, batches=(1, 5))


def test_conv2d_float64_is_refused_with_the_reason():
    w = ember.tensor(_x(2, 3, 3, 3, dtype=np.float64))
    prog = trace(lambda x: F.conv2d(x, w), ember.tensor(_x(1, 3, 5, 5, dtype=np.float64)))
    with pytest.raises(ExportError, match=r"conv2d.*float64 kernel for Conv.*model\.float\(\)"):
        to_onnx(prog, "/nonexistent/never-written.onnx")


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kw", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=1, dilation=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
], ids=["2x2", "pad", "ceil", "dilation", "pad-ceil"])
def test_max_pool2d_values_and_indices(opset, kw):
    check_export(lambda x: F.max_pool2d(x, **kw), [_distinct(2, 3, 9, 8)], opset=opset, batches=(1, 5))
    check_export(lambda x: F.max_pool2d(x, return_indices=True, **kw), [_distinct(2, 3, 9, 8)], opset=opset,
                 batches=(1, 3))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("kw", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, padding=1,
                                                                       count_include_pad=False),
    dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=3, stride=1, padding=1, divisor_override=5),
], ids=["2x2", "pad", "pad-exclude", "ceil", "pad-ceil", "pad-ceil-exclude", "divisor"])
def test_avg_pool2d(opset, kw):
    check_export(lambda x: F.avg_pool2d(x, **kw), [_x(2, 3, 9, 8)], opset=opset, batches=(1, 5))


def test_avg_pool2d_divisor_override_with_ceil_mode_is_refused():
    prog = trace(lambda x: F.avg_pool2d(x, 3, 2, ceil_mode=True, divisor_override=4), ember.tensor(_x(1, 2, 8, 8)))
    with pytest.raises(ExportError, match="divisor_override and ceil_mode"):
        to_onnx(prog, "/nonexistent/never-written.onnx")


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("size", [(1, 1), (3, 2), (4, 3), (5, 7)], ids=["global", "even", "uneven", "upsample-ish"])
def test_adaptive_avg_pool2d(opset, size):
    check_export(lambda x: F.adaptive_avg_pool2d(x, size), [_x(2, 3, 9, 8)], opset=opset, batches=(1, 5))


def test_adaptive_avg_pool2d_float64():
    for size in ((1, 1), (3, 4), (2, 3)):
        check_export(lambda x: F.adaptive_avg_pool2d(x, size), [_x(2, 3, 6, 8, dtype=np.float64)], batches=(1,))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("size", [(1, 1), (3, 2)], ids=["global", "even"])
def test_adaptive_max_pool2d_values_and_indices(opset, size):
    check_export(lambda x: F.adaptive_max_pool2d(x, size, return_indices=True), [_distinct(2, 3, 9, 8)],
                 opset=opset, batches=(1, 5))
    check_export(lambda x: F.adaptive_max_pool2d(x, size), [_distinct(2, 3, 9, 8)], opset=opset, batches=(1, 5))


def test_adaptive_pool_refusals_name_the_sizes():
    prog = trace(lambda x: F.adaptive_max_pool2d(x, (4, 3)), ember.tensor(_x(1, 2, 9, 8)))
    with pytest.raises(ExportError, match=r"adaptive_max_pool2d from 9x8 to 4x3"):
        to_onnx(prog, "/nonexistent/never-written.onnx")
    prog = trace(lambda x: F.adaptive_avg_pool2d(x, (2, 2)), ember.tensor(_x(1, 2, 8, 8)),
                 dynamic_axes={"x": {2: "h", 3: "w"}})
    with pytest.raises(ExportError, match=r"symbolic spatial dims \(h, w\)"):
        to_onnx(prog, "/nonexistent/never-written.onnx")


@pytest.mark.parametrize("opset", OPSETS)
def test_batch_norm_eval(opset):
    ember.manual_seed(2)
    for bn, shape in ((nn.BatchNorm2d(3), (4, 3, 5, 6)), (nn.BatchNorm1d(3), (4, 3)), (nn.BatchNorm1d(3), (4, 3, 7))):
        with ember.no_grad():
            bn.running_mean.copy_(ember.tensor(_x(3)))
            bn.running_var.copy_(ember.tensor(np.abs(_x(3)) + 0.5))
            bn.weight.copy_(ember.tensor(_x(3)))
        check_export(_module(bn), [_x(*shape)], opset=opset, batches=(1, 5))


@pytest.mark.parametrize("opset", OPSETS)
def test_batch_norm_with_batch_statistics_all_outputs(opset):
    w, b = ember.tensor(_x(3)), ember.tensor(_x(3))
    check_export(lambda x: F.batch_norm(x, None, None, w, b, training=True), [_x(4, 3, 5, 2)], opset=opset,
                 batches=(2, 5))
    check_export(lambda x: apply("batch_norm_train", x, w, b, eps=1e-3), [_x(4, 3, 5)], opset=opset, batches=(2,))


@pytest.mark.parametrize("opset", OPSETS)
def test_layer_norm_and_group_norm(opset):
    ember.manual_seed(3)
    check_export(_module(nn.LayerNorm(6)), [_x(3, 6)], opset=opset, batches=(1, 5))
    check_export(_module(nn.LayerNorm((4, 6), elementwise_affine=False)), [_x(3, 2, 4, 6)], opset=opset,
                 batches=(1, 5))
    check_export(_module(nn.GroupNorm(2, 4)), [_x(3, 4, 5, 5)], opset=opset, batches=(1, 5))
    w, b = ember.tensor(_x(6)), ember.tensor(_x(6))
    # the statistics outputs (one value per row, as ember keeps them)
    check_export(lambda x: apply("layer_norm", x, w, b, normalized_shape=(6,), eps=1e-5), [_x(3, 2, 6)],
                 opset=opset, batches=(1, 5))


def test_layer_norm_float64():
    check_export(_module(nn.LayerNorm(5).double()), [_x(3, 5, dtype=np.float64)], batches=(1,))


@pytest.mark.parametrize("opset", OPSETS)
def test_fused_ops_of_the_runtime(opset):
    """linear_act / conv2d_act / conv2d_pool appear in optimised graphs (the runtime's passes); they export too."""
    ember.manual_seed(4)
    for act, layer, shape in (("relu", nn.Linear(4, 3), (2, 4)), ("gelu", nn.Linear(4, 3), (2, 4)),
                              ("relu", nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
                              ("relu-pool", nn.Conv2d(2, 3, 3, padding=1), (2, 2, 7, 6)),
                              ("pool", nn.Conv2d(2, 3, 3, padding=1), (2, 2, 7, 6))):
        layers = [layer] + ([nn.GELU()] if act == "gelu" else [] if act == "pool" else [nn.ReLU()])
        model = _module(nn.Sequential(*layers, *([nn.MaxPool2d(2)] if act.endswith("pool") else [])))
        prog = trace(model, ember.tensor(_x(*shape)))
        fused = Program(optimize(prog.graph), optimize=False)
        assert any(n.op.endswith(("_act", "_pool")) for n in fused.graph.nodes), fused.code
        check_export(fused, [_x(*shape)], opset=opset, batches=(1, 5))


@pytest.mark.parametrize("opset", [OPSETS[0], OPSETS[-1]])
def test_linear_relu_called_directly_exports(opset):
    """nn.Sequential's eager Linear -> ReLU op (a tracer records linear and relu; a direct call records it)."""
    from ember.ops.linear_relu import linear_relu

    w, b = ember.tensor(_x(3, 4)), ember.tensor(_x(3))
    check_export(lambda x: linear_relu(x, w, b), [_x(2, 4)], opset=opset, batches=(1, 5))
    check_export(lambda x: linear_relu(x, w), [_x(2, 4)], opset=opset, batches=(1, 5))


@pytest.mark.parametrize("opset", [OPSETS[0], OPSETS[-1]])
def test_fused_linear_chain_of_the_runtime_exports_layer_by_layer(opset):
    """The CPU runtime fuses linear -> relu -> linear -> linear into one linear_mlp node; that graph exports one
    layer at a time and ONNX Runtime reproduces ember's outputs."""
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.Linear(12, 3)).eval()
    fused = Program(optimize(trace(model, ember.randn(2, 20)).graph), optimize=False)
    assert [n.op for n in fused.graph.nodes] == ["linear_mlp"]
    x = np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32)
    onnx_model = check_export(fused, [x], opset=opset, batches=(1, 9))
    assert onnx_op_types(onnx_model).count("Gemm") == 3 and onnx_op_types(onnx_model).count("Relu") == 1
