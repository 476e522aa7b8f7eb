"""Prepared kernels (registry.prepared_kernel): the runtime binds an op's constant inputs once, at load. What a
prepared function returns equals the op's plain kernel on the same arrays bit for bit, and a bad per-call input
raises as the plain kernel does."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.ops.registry import get_op
from ember.serialize import trace
from ember.serialize.passes import optimize
from ember.serialize.runtime import Executor, _resolve


def _static_int8_cnn():
    ember.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # short K, pooled: requantize
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),  # the int8 GEMM, not pooled
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    model = Q.fuse_modules(model, [["0", "1"], ["3", "4"]])
    model.qconfig = Q.get_default_qconfig("x86")
    calib = [ember.randn(8, 1, 12, 12) for _ in range(2)]
    return Q.quantize_static(model, calib, progress=False)


def test_every_prepared_step_matches_the_plain_kernel():
    graph = optimize(trace(_static_int8_cnn(), ember.randn(2, 1, 12, 12)).graph)
    ex = Executor(graph)
    x = np.random.default_rng(0).standard_normal((3, 1, 12, 12)).astype(np.float32)
    env, prepared = {graph.inputs[0]: x}, set()
    for node, (fn, ins, attrs, has_sym, outs, multi, _) in zip(graph.nodes, ex._steps):
        full = dict(_resolve(node.attrs, env)) if has_sym else node.attrs
        plain = get_op(node.op).kernels["cpu"](*[env[n] if n in env else graph.constants[n] for n in node.inputs],
                                                **full)
        if ins != tuple(node.inputs):  # the step runs the prepared function
            prepared.add(node.op)
            np.testing.assert_array_equal(fn(*[env[n] for n in ins], **attrs), plain)
        env[outs[0]] = plain
    assert prepared == {"quantize_per_tensor", "quantized_conv2d", "quantized_conv2d_pool", "requantize",
                        "quantized_linear", "dequantize"}


def _prepared(graph, op):
    ex = Executor(graph)
    return next(fn for node, (fn, *_) in zip(graph.nodes, ex._steps) if node.op == op)


def test_prepared_kernels_reject_bad_inputs_as_the_plain_ones_do():
    graph = optimize(trace(_static_int8_cnn(), ember.randn(2, 1, 12, 12)).graph)
    with pytest.raises(RuntimeError, match="quantize_per_tensor: input must be a floating point tensor, got int32"):
        _prepared(graph, "quantize_per_tensor")(np.zeros((1, 1, 12, 12), np.int32))
    with pytest.raises(TypeError, match="quantized_conv2d_pool: activations must be uint8, got x float32"):
        _prepared(graph, "quantized_conv2d_pool")(np.zeros((1, 8, 12, 12), np.float32))
    with pytest.raises(TypeError, match="quantized_linear: activations must be uint8, got x int8"):
        _prepared(graph, "quantized_linear")(np.zeros((1, 288), np.int8))
    with pytest.raises(RuntimeError, match="requantize: input must be a uint8 or int8 tensor, got float32"):
        _prepared(graph, "requantize")(np.zeros((1, 288), np.float32))
    with pytest.raises(RuntimeError, match="dequantize: input must be a uint8 or int8 tensor, got float32"):
        _prepared(graph, "dequantize")(np.zeros((1, 5), np.float32))
    with pytest.raises(RuntimeError, match="zero_point must have dtype int8 here, got uint8"):
        _prepared(graph, "dequantize")(np.zeros((1, 5), np.int8))  # uint8 qparams, int8 codes


def test_ops_with_computed_qparams_keep_the_plain_kernel():
    """A prepared kernel needs its parameters constant: a scale computed per call leaves the step as it was."""
    class Computed(nn.Module):
        def forward(self, x, s):
            z = ember.tensor(np.uint8(3))
            return Q.dequantize(Q.quantize_per_tensor(x, s * 2, z, ember.uint8), s * 2, z)

    graph = trace(Computed(), (ember.randn(2, 4), ember.tensor(np.float32(0.1))), dynamic_axes={"s": {}}).graph
    ex = Executor(graph)
    for node, (fn, ins, *_) in zip(graph.nodes, ex._steps):
        assert ins == tuple(node.inputs) and fn is get_op(node.op).kernels["cpu"]


def test_prepared_float_convolutions_match_the_plain_kernels():
    """conv2d_pool / conv2d_act prepared on their weights (packed once, geometry per input shape) give the plain
    kernels' bits (conv2d_pool of a 3x3 conv, which runs Winograd: their values to float32 rounding), for each batch
    and image size; other dtypes and bad sizes go to the plain kernel."""
    ember.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 12, 3, padding=(0, 1)), nn.ReLU()).eval()
    graph = optimize(trace(model, ember.randn(2, 3, 10, 9)).graph)
    ex = Executor(graph)
    steps = {node.op: (node, step) for node, step in zip(graph.nodes, ex._steps)}
    assert {"conv2d_pool", "conv2d_act"} <= set(steps)
    rng = np.random.default_rng(0)
    for op, (node, (fn, ins, attrs, *_)) in steps.items():
        if op not in ("conv2d_pool", "conv2d_act"):
            continue
        assert ins == (node.inputs[0],)
        plain = get_op(op).kernels["cpu"]
        c = graph.constants[node.inputs[1]].shape[1]
        for shape in [(1, c, 10, 9), (5, c, 10, 9), (2, c, 7, 12), (1, c, 5, 5)]:
            x = rng.standard_normal(shape).astype(np.float32)
            want = plain(x, *[graph.constants[n] for n in node.inputs[1:]], **node.attrs)
            if op == "conv2d_pool":  # a 3x3 conv + pool runs Winograd F(2x2, 3x3): the same to float32 rounding
                np.testing.assert_allclose(fn(x), want, atol=1e-5, rtol=1e-5)
            else:
                np.testing.assert_array_equal(fn(x), want)
        x64 = rng.standard_normal((2, c, 6, 6))
        np.testing.assert_array_equal(fn(x64), plain(x64, *[graph.constants[n] for n in node.inputs[1:]],
                                                     **node.attrs))
    node, (pool_fn, *_) = steps["conv2d_pool"]
    tiny = np.ones((1, 3, 1, 1), np.float32)  # a conv output smaller than the pooling window: as the plain kernel
    want = get_op("conv2d_pool").kernels["cpu"](tiny, *[graph.constants[n] for n in node.inputs[1:]], **node.attrs)
    got = pool_fn(tiny)
    assert got.shape == want.shape == (1, 8, 0, 0)


def test_prepared_linear_matches_torch():
    """linear prepared on its weight (a transposed copy from 4 rows on, so not bit for bit the plain kernel's BLAS
    call) agrees with torch to float32 rounding at every batch size; other inputs go to the plain kernel."""
    import torch

    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(37, 11), nn.Sigmoid(), nn.Linear(11, 5, bias=False)).eval()
    graph = trace(model, ember.randn(2, 37)).graph
    ex = Executor(graph)
    assert all(ins == (node.inputs[0],) for node, (fn, ins, *_) in zip(graph.nodes, ex._steps) if node.op == "linear")
    tm = torch.nn.Sequential(torch.nn.Linear(37, 11), torch.nn.Sigmoid(), torch.nn.Linear(11, 5, bias=False))
    with torch.no_grad():
        for p, q in zip(model.parameters(), tm.parameters()):
            q.copy_(torch.from_numpy(p.detach().numpy()))
    rng = np.random.default_rng(1)
    for n in (1, 3, 4, 64, 200):
        x = rng.standard_normal((n, 37)).astype(np.float32)
        np.testing.assert_allclose(ex.run({graph.inputs[0]: x})[0], tm(torch.from_numpy(x)).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)
    fn = next(fn for node, (fn, *_) in zip(graph.nodes, ex._steps) if node.op == "linear")
    x64 = rng.standard_normal((3, 37))
    w, b = (graph.constants[n] for n in graph.nodes[0].inputs[1:])
    np.testing.assert_array_equal(fn(x64), get_op("linear").kernels["cpu"](x64, w, b))
