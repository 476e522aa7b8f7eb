"""The runtime's quantization folding: the requantize and quantized_max_pool2d ops against numpy and the float
ops they replace, the fold_quantization pass (bit-identical outputs, uint8 kept between int8 layers), and the
ONNX lowerings of the two ops in ONNX Runtime."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.ops.quantized import dequantize_np, quantize_np
from ember.ops.registry import apply, get_op
from ember.serialize import Graph, Node, Program, trace
from ember.serialize.ir import Value
from ember.serialize.passes import optimize

from export.onnx_check import check_export

rng = np.random.default_rng(5)
POOLS = [dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False),
         dict(kernel_size=(3, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 1), ceil_mode=True),
         dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=False),
         dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=True)]  # odd sizes


def kernel(op):
    return get_op(op).kernels["cpu"]


def qparams(scale, zp, dtype="uint8"):
    return np.array(scale, np.float32), np.array(zp, dtype)


@pytest.mark.parametrize("in_dtype,out_dtype", [("uint8", "uint8"), ("int8", "uint8"), ("uint8", "int8"),
                                                ("int8", "int8")])
def test_requantize_is_quantize_of_dequantize(in_dtype, out_dtype):
    info = np.iinfo(in_dtype)
    q = rng.integers(info.min, info.max, (3, 5, 7), endpoint=True).astype(in_dtype)
    for (s1, z1), (s2, z2) in [((0.037, 3), (0.05, 7)), ((0.05, 7), (0.05, 7)), ((0.011, 0), (0.2, 1)),
                               ((0.2, 1), (0.0013, 2))]:  # the last saturates both ends
        a, b = qparams(s1, z1, in_dtype), qparams(s2, z2, out_dtype)
        want = quantize_np(dequantize_np(q, *a, None), *b, None, out_dtype)
        got = kernel("requantize")(q, *a, *b, dtype=out_dtype)
        assert got.dtype == np.dtype(out_dtype) and got.shape == q.shape
        np.testing.assert_array_equal(got, want)


def test_requantize_refuses_float_input_and_per_channel_params():
    a = qparams(0.1, 3)
    with pytest.raises(RuntimeError, match="requantize: input must be a uint8 or int8 tensor, got float32"):
        kernel("requantize")(np.zeros(3, np.float32), *a, *a, dtype="uint8")
    with pytest.raises(RuntimeError, match=r"requantize \(output qparams\): zero_point must have dtype int8"):
        kernel("requantize")(np.zeros(3, np.uint8), *a, *a, dtype="int8")
    with pytest.raises(RuntimeError, match="in_scale must be a 0-d tensor"):
        get_op("requantize").shape((4,), (4,), (), (), ())


@pytest.mark.parametrize("attrs", POOLS)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantized_max_pool2d_is_max_pool_of_the_dequantized_values(attrs, dtype):
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max, (2, 3, 9, 11), endpoint=True).astype(dtype)
    s, z = qparams(0.03, -4 if dtype == "int8" else 9, dtype)
    got = kernel("quantized_max_pool2d")(q, **attrs)
    want = kernel("max_pool2d")(dequantize_np(q, s, z, None), **attrs)[0]
    assert got.dtype == q.dtype and got.shape == want.shape
    np.testing.assert_array_equal(dequantize_np(got, s, z, None), want)


def _static_cnn():
    ember.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 3 * 3, 5)).eval()
    model = Q.fuse_modules(model, [["0", "1"], ["3", "4"]])
    model.qconfig = Q.get_default_qconfig("x86")
    return Q.quantize_static(model, [ember.randn(8, 1, 12, 12) for _ in range(3)], progress=False)


def test_the_pass_keeps_a_static_cnn_in_uint8_with_identical_outputs():
    prog = trace(_static_cnn(), ember.randn(2, 1, 12, 12), input_names=["x"], output_names=["y"])
    ops = [n.op for n in optimize(prog.graph).nodes]
    # one quantize at the input, one dequantize at the output; pooling and flatten on the codes
    assert ops.count("quantize_per_tensor") == 1 and ops.count("dequantize") == 1, ops
    assert "max_pool2d" not in ops and ops.count("quantized_conv2d_pool") == 2, ops  # int8 conv + pool in one
    assert ops.count("requantize") <= 2, ops  # a pair whose qparams agree leaves nothing
    raw = Program(prog.graph, optimize=False)
    for b in (1, 3, 17):
        x = rng.standard_normal((b, 1, 12, 12)).astype(np.float32)
        np.testing.assert_array_equal(prog.run({"x": x})["y"], raw.run({"x": x})["y"])


def _graph(nodes, inputs, outputs, values, constants):
    g = Graph()
    g.values = {k: Value(k, dt, shape) for k, (dt, shape) in values.items()}
    g.nodes = [Node(op, ins, outs, attrs) for op, ins, outs, attrs in nodes]
    g.inputs, g.outputs, g.constants = inputs, outputs, constants
    return g


def _qdq_chain(second_user=False, same_params=False, per_channel=False):
    """q (uint8 input) -> dequantize -> quantize_per_tensor -> dequantize -> y (and optionally a relu reading
    the first dequantize's float output too)."""
    s1, z1 = qparams(0.05, 7)
    s2, z2 = (s1, z1) if same_params else qparams(0.031, 120)
    consts = {"s1": s1, "z1": z1, "s2": s2, "z2": z2}
    values = {"q": ("uint8", ("batch", 6)), "f": ("float32", ("batch", 6)), "q2": ("uint8", ("batch", 6)),
              "y": ("float32", ("batch", 6))}
    nodes = [("dequantize", ["q", "s1", "z1"], ["f"], {"axis": None}),
             ("quantize_per_tensor", ["f", "s2", "z2"], ["q2"], {"dtype": "uint8"}),
             ("dequantize", ["q2", "s2", "z2"], ["y"], {"axis": None})]
    outputs = ["y"]
    if per_channel:
        consts["s1"] = np.full(6, 0.05, np.float32)
        consts["z1"] = np.full(6, 7, np.uint8)
        nodes[0] = ("dequantize", ["q", "s1", "z1"], ["f"], {"axis": 1})
    if second_user:
        values["r"] = ("float32", ("batch", 6))
        nodes.append(("relu", ["f"], ["r"], {}))
        outputs = ["y", "r"]
    for k, v in consts.items():
        values[k] = (v.dtype.name, v.shape)
    return _graph(nodes, ["q"], outputs, values, consts)


@pytest.mark.parametrize("case,expect", [({}, ["requantize", "dequantize"]),
                                         ({"same_params": True}, ["dequantize"]),
                                         ({"second_user": True}, ["dequantize", "quantize_per_tensor", "dequantize",
                                                                  "relu"]),
                                         ({"per_channel": True}, ["dequantize", "quantize_per_tensor", "dequantize"])])
def test_dequantize_quantize_pairs_fold_only_when_exact_and_unshared(case, expect):
    g = _qdq_chain(**case)
    assert [n.op for n in optimize(g).nodes] == expect
    q = rng.integers(0, 256, (4, 6)).astype(np.uint8)
    got, want = Program(g).run({"q": q}), Program(g, optimize=False).run({"q": q})
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_pooling_whose_indices_are_used_is_not_moved():
    s, z = qparams(0.05, 7)
    values = {"q": ("uint8", (1, 2, 4, 4)), "f": ("float32", (1, 2, 4, 4)), "p": ("float32", (1, 2, 2, 2)),
              "i": ("int64", (1, 2, 2, 2)), "s": ("float32", ()), "z": ("uint8", ())}
    g = _graph([("dequantize", ["q", "s", "z"], ["f"], {"axis": None}),
                ("max_pool2d", ["f"], ["p", "i"], POOLS[0])], ["q"], ["p", "i"], values, {"s": s, "z": z})
    assert [n.op for n in optimize(g).nodes] == ["dequantize", "max_pool2d"]


@pytest.mark.parametrize("attrs", POOLS[:3])
def test_onnx_lowerings_run_in_onnxruntime(attrs):
    s1, z1 = qparams(0.05, 7)
    s2, z2 = qparams(0.031, -20, "int8")
    q = rng.integers(0, 256, (2, 3, 9, 11)).astype(np.uint8)

    def fn(t):
        p = apply("quantized_max_pool2d", t, **attrs)
        return apply("requantize", p, ember.from_numpy(s1), ember.from_numpy(z1), ember.from_numpy(s2),
                     ember.from_numpy(z2), dtype="int8")

    check_export(fn, [q], opset=17, batches=(1, 4), reference=False)  # onnx.reference has Q/DQ from 19
    check_export(fn, [q], opset=21, batches=(1,))


@pytest.mark.parametrize("c_in,k,relu", [(1, 3, True), (2, 3, False), (16, 3, True)])  # short K (float path) and GEMM
def test_quantized_conv2d_pool_is_the_conv_then_pooling_of_its_codes(c_in, k, relu):
    x = rng.integers(0, 256, (3, c_in, 11, 9)).astype(np.uint8)
    w = rng.integers(-128, 128, (8, c_in, k, k)).astype(np.int8)
    params = [*qparams(0.03, 100), w, (rng.random(8) * 0.01 + 1e-3).astype(np.float32), *qparams(0.07, 90),
              (rng.standard_normal(8) * 50).astype(np.float32)]
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, relu=relu)
    want = kernel("quantized_max_pool2d")(kernel("quantized_conv2d")(x, *params, **attrs), **POOLS[0])
    got = kernel("quantized_conv2d_pool")(x, *params, **attrs)
    assert got.shape == (3, 8, 5, 4) and tuple(get_op("quantized_conv2d_pool").shape(
        x.shape, *[np.shape(p) for p in params], **attrs)) == got.shape
    np.testing.assert_array_equal(got, want)
    t = [ember.from_numpy(np.asarray(p)) for p in params]
    # the QDQ lowering of an int8 conv is within one output step of ember's integer arithmetic
    check_export(lambda xx: apply("quantized_conv2d_pool", xx, *t, **attrs), [x], opset=21, batches=(1, 4),
                 atol=1, rtol=0)


@pytest.mark.parametrize("c_in", [1, 16])  # the short-K float path (table then conv), integer Winograd (in its layout)
def test_requantize_folded_into_a_conv_pool_is_the_table_then_the_conv(c_in):
    """``in_requant`` (CPU runtime): the op's kernel, its prepared kernel and its ONNX lowering all compute
    requantize(x, s1, z1, s2, z2) then the conv + pool."""
    x = rng.integers(0, 256, (5, c_in, 14, 14)).astype(np.uint8)
    w = rng.integers(-128, 128, (32, c_in, 3, 3)).astype(np.int8)
    params = [*qparams(0.03, 100), w, (rng.random(32) * 0.01 + 1e-3).astype(np.float32), *qparams(0.07, 90),
              (rng.standard_normal(32) * 50).astype(np.float32)]
    fold = (0.021, 7, 0.03, 100)
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, relu=True)
    codes = kernel("requantize")(x, *qparams(fold[0], fold[1]), *qparams(fold[2], fold[3]))
    want = kernel("quantized_conv2d_pool")(codes, *params, **attrs)
    op = get_op("quantized_conv2d_pool")
    np.testing.assert_array_equal(op.kernels["cpu"](x, *params, **attrs, in_requant=fold), want)
    run = op.prepared["cpu"]([None] + [np.asarray(p) for p in params], dict(attrs, in_requant=fold))
    np.testing.assert_array_equal(run(x), want)
    np.testing.assert_array_equal(run(x[:1]), want[:1])
    t = [ember.from_numpy(np.asarray(p)) for p in params]
    check_export(lambda xx: apply("quantized_conv2d_pool", xx, *t, **attrs, in_requant=fold), [x], opset=21,
                 batches=(1, 4), atol=1, rtol=0)


def test_the_cpu_runtime_folds_the_requantize_before_a_conv_pool():
    prog = trace(_static_cnn(), ember.randn(2, 1, 12, 12), input_names=["x"], output_names=["y"])
    cpu, cuda = optimize(prog.graph), optimize(prog.graph, device="cuda")
    convs = [n for n in cpu.nodes if n.op == "quantized_conv2d_pool"]
    assert convs[0].attrs.get("in_requant") is None and convs[1].attrs["in_requant"] is not None
    assert convs[1].inputs[0] == convs[0].outputs[0]  # no requantize between them
    assert all("in_requant" not in n.attrs for n in cuda.nodes)  # (a CPU kernel attribute)
    raw, folded = Program(prog.graph, optimize=False), Program(cpu, optimize=False)
    for b in (1, 3, 17):
        x = rng.standard_normal((b, 1, 12, 12)).astype(np.float32)
        np.testing.assert_array_equal(folded.run({"x": x})["y"], raw.run({"x": x})["y"])
