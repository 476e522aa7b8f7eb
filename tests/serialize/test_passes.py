"""Load-time passes (serialize/passes.py): the optimised graph computes what the traced graph does,
and each pass fires where it should (op counts before / after) and nowhere else."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.ops.registry import get_op
from ember.serialize import Graph, Node, trace
from ember.serialize.passes import (copy_graph, eliminate_dead_code, fold_batch_norm, fold_constants,
                                    fuse_activations, optimize, remove_identities)
from ember.serialize.runtime import Executor

BATCHES = (1, 2, 37)


def _randomize_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.running_mean.shape[0]
            m.running_mean.copy_(ember.from_numpy(rng.standard_normal(c).astype(np.float32)))
            m.running_var.copy_(ember.from_numpy(rng.uniform(0.3, 2.0, c).astype(np.float32)))
            with ember.no_grad():
                m.weight.copy_(ember.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
                m.bias.copy_(ember.from_numpy(rng.standard_normal(c).astype(np.float32)))
    return model.eval()


class Residual(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x.clone())


class TinyTransformer(nn.Module):
    """LayerNorm, single-head attention with matmul/softmax, a GELU MLP, residuals; the positional
    term is computed from constants in forward (constant folding's job)."""

    def __init__(self, d=8, t=5):
        super().__init__()
        self.t = t
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.pos = nn.Parameter(ember.randn(t, d))

    def forward(self, x):
        x = x + (self.pos * 0.1).reshape(1, self.t, -1)
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        att = F.softmax(ember.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5), dim=-1)
        x = x + self.proj(ember.matmul(att, v))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def _mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.GELU(),
                         nn.Linear(16, 16), nn.GELU(approximate="tanh"), nn.Identity(), nn.Linear(16, 3))


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 5))


MODELS = {
    "mlp": (_mlp, (12,)),
    "cnn": (_cnn, (2, 8, 8)),
    "residual": (Residual, (4, 6, 6)),
    "transformer": (TinyTransformer, (5, 8)),
}


def _traced(name):
    build, shape = MODELS[name]
    ember.manual_seed(0)
    model = _randomize_bn(build())
    return trace(model, ember.randn(2, *shape)).graph, shape


def _ops(graph):
    return Counter(n.op for n in graph.nodes)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimised_graph_matches_traced_graph(name):
    graph, shape = _traced(name)
    before = graph.dumps()
    opt = optimize(graph)
    assert graph.dumps() == before, "optimize must not change its input graph"
    plain, fast = Executor(graph), Executor(opt)
    rng = np.random.default_rng(1)
    for b in BATCHES:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        want, got = plain.run({graph.inputs[0]: x}), fast.run({graph.inputs[0]: x})
        for w, g in zip(want, got):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
    assert len(opt.nodes) < len(graph.nodes)


def test_cnn_passes_fire():
    graph, _ = _traced("cnn")
    ops, opt = _ops(graph), _ops(optimize(graph))
    assert ops["batch_norm"] == 1 and ops["conv2d"] == 1 and ops["relu"] == 2 and ops["linear"] == 2
    assert opt["batch_norm"] == 0 and opt["relu"] == 0 and opt["conv2d"] == 0
    # conv -> bn -> relu -> 2x2 max pool: one conv2d_pool; linear -> relu -> linear: one linear_mlp
    assert opt["conv2d_pool"] == 1 and opt["max_pool2d"] == 0 and opt["linear_mlp"] == 1 and opt["linear"] == 0
    assert "dropout" not in ops  # nn.Dropout records nothing in eval mode


def test_mlp_passes_fire():
    graph, _ = _traced("mlp")
    g = copy_graph(graph)
    assert fold_batch_norm(g) == 1  # linear -> BatchNorm1d
    assert fuse_activations(g) == 3  # relu, gelu, gelu(tanh)
    acts = sorted(n.attrs["act"] for n in g.nodes if n.op == "linear_act")
    assert acts == ["gelu", "gelu_tanh", "relu"]
    assert _ops(g)["batch_norm"] == 0 and _ops(g)["gelu"] == 0


def test_dynamic_quantized_linear_takes_the_following_relu_and_chains_fuse():
    import ember.quantize as Q

    ember.manual_seed(0)
    model = Q.quantize_dynamic(nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                                             nn.Linear(8, 3)).eval())
    graph = trace(model, ember.randn(2, 12)).graph
    g = copy_graph(graph)
    assert fuse_activations(g) == 2 and _ops(g)["relu"] == 0
    assert [n.attrs["relu"] for n in g.nodes if n.op == "dynamic_quantized_linear"] == [True, True, False]
    cuda = optimize(graph, "cuda")  # no CUDA kernel for the fused chain: the layers stay apart there
    assert _ops(cuda)["dynamic_quantized_linear"] == 3 and _ops(cuda)["dynamic_quantized_mlp"] == 0
    opt = optimize(graph)  # on CPU the three layers become one dynamic_quantized_mlp node
    assert [(n.op, n.attrs) for n in opt.nodes] == [("dynamic_quantized_mlp", {"relus": (True, True, False),
                                                                               "reduce_range": True})]
    assert len(opt.nodes[0].inputs) == 1 + 3 * 3
    for b in (1, 37, 64):
        x = np.random.default_rng(b).standard_normal((b, 12)).astype(np.float32)
        want = Executor(graph).run({graph.inputs[0]: x})
        for fused in (g, opt):  # same arithmetic, ReLU in the epilogue, one kernel call: bit-identical
            np.testing.assert_array_equal(Executor(fused).run({graph.inputs[0]: x})[0], want[0])


def test_dynamic_chains_fuse_only_layers_with_one_activation_range():
    """A layer quantizing its input to 8 bits between 7-bit ones ends the chain: each fused node has one
    reduce_range, and the program computes what the layers compute one by one."""
    import ember.quantize as Q

    ember.manual_seed(0)
    full = Q.QConfig(activation=Q.PlaceholderObserver.with_args(dtype=ember.uint8, is_dynamic=True,
                                                                 reduce_range=False),
                     weight=Q.default_per_channel_weight_observer)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                          nn.Linear(6, 3)).eval()
    model = Q.quantize_dynamic(model, {"0": Q.per_channel_dynamic_qconfig, "2": Q.per_channel_dynamic_qconfig,
                                       "4": full, "6": full})
    graph = trace(model, ember.randn(2, 12)).graph
    opt = optimize(graph)
    assert [(n.op, n.attrs["reduce_range"]) for n in opt.nodes] == [("dynamic_quantized_mlp", True),
                                                                     ("dynamic_quantized_mlp", False)]
    x = np.random.default_rng(3).standard_normal((40, 12)).astype(np.float32)
    np.testing.assert_array_equal(Executor(opt).run({graph.inputs[0]: x})[0],
                                  Executor(graph).run({graph.inputs[0]: x})[0])


def test_the_runtime_prepares_kernels_on_their_constant_inputs():
    """The fused chain's prepared kernel (registry.prepared_kernel) holds its weights' plan and takes x alone;
    it computes what the op's plain kernel computes from the same arrays."""
    import ember.quantize as Q

    ember.manual_seed(1)
    model = Q.quantize_dynamic(nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 5)).eval())
    opt = optimize(trace(model, ember.randn(2, 40)).graph)
    node = opt.nodes[0]
    ex = Executor(opt)
    fn, ins, attrs = ex._steps[0][:3]
    assert node.op == "dynamic_quantized_mlp" and ins == (node.inputs[0],) and attrs == {}
    assert not ex._env  # the weights live in the prepared kernel, not in every run's environment
    plain = get_op("dynamic_quantized_mlp").kernels["cpu"]
    for b in (1, 9, 64):
        x = np.random.default_rng(b).standard_normal((b, 40)).astype(np.float32)
        want = plain(x, *[opt.constants[n] for n in node.inputs[1:]], **node.attrs)
        np.testing.assert_array_equal(ex.run({opt.inputs[0]: x})[0], want)
    with pytest.raises(TypeError, match="dynamic_quantized_mlp: input must be float32, got float64"):
        fn(np.zeros((2, 40)))
    with pytest.raises(ValueError, match="input has 39 features, the first layer expects 40"):
        fn(np.zeros((2, 39), np.float32))


def test_dynamic_chain_stops_at_shared_values_and_graph_outputs():
    import ember.quantize as Q

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            h = self.a(x)
            return self.b(h), self.c(h)  # h has two readers: no chain through it

    ember.manual_seed(0)
    graph = trace(Q.quantize_dynamic(TwoHeads().eval()), ember.randn(2, 8)).graph
    assert _ops(optimize(graph))["dynamic_quantized_mlp"] == 0
    assert _ops(optimize(trace(TwoHeads().eval(), ember.randn(2, 8)).graph))["linear_mlp"] == 0


def test_float32_linear_chains_fuse_into_linear_mlp():
    from ember.backends.cpu import f32_chain

    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.Linear(8, 3)).eval()
    graph = trace(model, ember.randn(2, 12)).graph
    opt = optimize(graph)
    assert [(n.op, n.attrs) for n in opt.nodes] == [("linear_mlp", {"relus": (True, False, False)})]
    assert _ops(optimize(graph, "cuda"))["linear_mlp"] == 0  # no CUDA kernel for the fused chain
    for b in (1, 9, 64):  # the chain's tiles sum in another order than BLAS: float32 rounding apart
        x = np.random.default_rng(b).standard_normal((b, 12)).astype(np.float32)
        want = Executor(graph).run({graph.inputs[0]: x})[0]
        np.testing.assert_allclose(Executor(opt).run({graph.inputs[0]: x})[0], want, rtol=1e-5, atol=1e-6)
    ex = Executor(opt)
    if f32_chain.available():  # the prepared kernel holds the packed weights
        assert ex._steps[0][1] == (graph.inputs[0],) and not ex._env
    # not fused: a gelu between the layers, float64 layers, a layer whose weight is a graph input
    gelu = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 3)).eval()
    assert _ops(optimize(trace(gelu, ember.randn(2, 12)).graph))["linear_mlp"] == 0
    double = nn.Sequential(nn.Linear(12, 16), nn.Linear(16, 3)).eval().to(ember.float64)
    assert _ops(optimize(trace(double, ember.randn(2, 12, dtype=ember.float64)).graph))["linear_mlp"] == 0

    class Given(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)

        def forward(self, x, w):
            return F.linear(self.a(x), w, self.a.bias)

    assert _ops(optimize(trace(Given().eval(), (ember.randn(2, 6), ember.randn(6, 6))).graph))["linear_mlp"] == 0


def test_residual_passes_fire():
    graph, _ = _traced("residual")
    ops, opt = _ops(graph), _ops(optimize(graph))
    assert ops["clone"] == 1 and opt["clone"] == 0  # clone of a value that is not an output
    assert ops["batch_norm"] == 2 and opt["batch_norm"] == 0
    # conv1 -> bn1 -> relu fuses; the relu after the residual add has no conv to fuse into
    assert opt["conv2d_act"] == 1 and opt["conv2d"] == 1 and opt["relu"] == 1
    g = optimize(graph)
    conv1 = next(n for n in g.nodes if n.op == "conv2d_act")
    assert len(conv1.inputs) == 3  # the bias-free conv gained the folded bias


def test_transformer_constant_folding_fires():
    graph, _ = _traced("transformer")
    g = copy_graph(graph)
    n_before = len(g.nodes)
    assert fold_constants(g) == 2  # pos * 0.1 and its reshape
    assert len(g.nodes) == n_before - 2
    assert fuse_activations(g) == 1  # fc1 -> gelu
    folded = [c for c in g.constants if c not in graph.constants]
    assert len(folded) == 2
    ref = (graph.constants["pos"] * np.float32(0.1)).reshape(1, 5, 8)
    assert any(g.constants[c].shape == (1, 5, 8) and np.array_equal(g.constants[c], ref) for c in folded)
    eliminate_dead_code(g)
    assert "pos" not in g.constants


def _hand_graph():
    """x -> clone -> cast(same dtype) -> dropout(p=0) -> reshape(same shape) -> relu -> clone (an output)."""
    g = Graph()
    for name in ("x", "a", "b", "c", "m", "d", "e", "out"):
        g.add_value(name, "bool" if name == "m" else "float32", (3, 4))
    g.inputs, g.outputs = ["x"], ["out", "e"]
    g.nodes = [Node("clone", ["x"], ["a"]), Node("cast", ["a"], ["b"], {"dtype": "float32"}),
               Node("dropout", ["b"], ["c", "m"], {"p": 0.0}), Node("reshape", ["c"], ["d"], {"shape": (3, 4)}),
               Node("relu", ["d"], ["e"]), Node("clone", ["e"], ["out"])]
    return g


def test_identities_removed_but_outputs_kept():
    g = copy_graph(_hand_graph())
    assert remove_identities(g) == 4
    assert [n.op for n in g.nodes] == ["relu", "clone"]  # the clone producing an output stays
    assert g.nodes[0].inputs == ["x"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    out, e = Executor(optimize(_hand_graph())).run({"x": x})
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert out is not e  # two outputs, two arrays


def test_identity_kept_when_not_identity():
    g = _hand_graph()
    g.nodes[2].attrs = {"p": 0.5}  # real dropout: random, not an identity, never folded
    g.values["b"].dtype = "float64"
    g.nodes[1].attrs = {"dtype": "float64"}
    h = copy_graph(g)
    assert remove_identities(h) == 2  # only the first clone and the same-shape reshape
    assert [n.op for n in h.nodes] == ["cast", "dropout", "relu", "clone"]


def test_no_fusion_when_intermediate_is_shared():
    def f(x, w):
        y = F.linear(x, w)
        return F.relu(y) + y

    graph = trace(f, (ember.randn(2, 3), ember.randn(4, 3))).graph
    g = copy_graph(graph)
    assert fuse_activations(g) == 0 and fold_constants(g) == 0
    # a conv whose output is used twice is not folded into the batch norm either
    bn = nn.BatchNorm2d(2).eval()
    conv = nn.Conv2d(1, 2, 1)
    graph = trace(lambda x: (lambda y: bn(y) + y)(conv(x)), ember.randn(1, 1, 3, 3)).graph
    assert fold_batch_norm(copy_graph(graph)) == 0


def test_graph_outputs_are_not_folded_to_shared_constants():
    w = ember.randn(3, 3)
    graph = trace(lambda x: (x + 1.0, w * 2.0), ember.randn(2, 3)).graph
    g = optimize(graph)
    assert _ops(g)["mul"] == 1
    ex = Executor(g)
    x = np.zeros((2, 3), np.float32)
    a, b = ex.run({"x": x})[1], ex.run({"x": x})[1]
    assert a is not b
    np.testing.assert_array_equal(a, w.numpy() * 2)


@pytest.mark.parametrize("act,tact", [("relu", torch.relu), ("gelu", torch.nn.functional.gelu),
                                      ("gelu_tanh", lambda t: torch.nn.functional.gelu(t, approximate="tanh"))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernels_match_torch(act, tact, dtype):
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((2, 3, 6), (5, 6), (5,)))
    got = get_op("linear_act").kernels["cpu"](x, w, b, act=act)
    want = tact(torch.nn.functional.linear(*(torch.from_numpy(a) for a in (x, w, b)))).numpy()
    assert got.dtype == dtype and got.shape == (2, 3, 5)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    got = get_op("linear_act").kernels["cpu"](x[0], w, act=act)  # no bias
    np.testing.assert_allclose(got, tact(torch.from_numpy(x[0]) @ torch.from_numpy(w).T).numpy(), atol=1e-5,
                               rtol=1e-4)
    xc, wc, bc = (rng.standard_normal(s).astype(dtype) for s in ((2, 4, 7, 6), (6, 2, 3, 3), (6,)))
    attrs = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    got = get_op("conv2d_act").kernels["cpu"](xc, wc, bc, padding_extra=(0, 0), act=act, **attrs)
    want = tact(torch.nn.functional.conv2d(*(torch.from_numpy(a) for a in (xc, wc, bc)), **attrs)).numpy()
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_fused_relu_is_exact_at_zero_and_keeps_nan():
    x, b = np.array([[0.0, -1.0, 2.0, 5.0]], np.float32), np.array([0, 0, 0, np.nan], np.float32)
    got = get_op("linear_act").kernels["cpu"](x, np.eye(4, dtype=np.float32), b, act="relu")
    want = torch.relu(torch.from_numpy(x + b)).numpy()
    np.testing.assert_array_equal(got, want)


def test_fused_shape_rules():
    rule = get_op("linear_act").shape
    assert rule((7, 3, 6), (5, 6), (5,), act="gelu") == (7, 3, 5)
    with pytest.raises(RuntimeError, match="linear: input has 4 features, weight expects 6"):
        rule((7, 4), (5, 6), act="relu")
    with pytest.raises(RuntimeError, match="linear_act: unknown activation act='tanh'"):
        rule((7, 6), (5, 6), act="tanh")
    crule = get_op("conv2d_act").shape
    assert crule((2, 4, 8, 8), (6, 4, 3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                 act="relu") == (2, 6, 8, 8)
    with pytest.raises(RuntimeError, match="conv2d_act: unknown activation"):
        crule((2, 4, 8, 8), (6, 4, 3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, act="silu")


def test_batch_reshapes_lose_their_symbol():
    from ember.serialize.passes import simplify_batch_reshapes

    class Flat(nn.Module):
        def forward(self, x):
            a = x.reshape(x.shape[0], -1)  # the flatten of a cnn: becomes (-1, 12)
            b = x.reshape(x.shape[0] * 2, 6)  # sym_arith, not the input's own dim: stays
            c = x.transpose(0, 1).reshape(x.shape[1], -1)  # a fixed first dim: stays
            return a, b, c

    graph = trace(Flat(), ember.randn(2, 3, 4)).graph
    g = copy_graph(graph)
    assert simplify_batch_reshapes(g) == 1
    eliminate_dead_code(g)
    shapes = [n.attrs["shape"] for n in g.nodes if n.op == "reshape"]
    assert (-1, 12) in shapes and all(isinstance(s[0], dict) or s[0] != -1 for s in shapes if s != (-1, 12))
    for b in (1, 5):
        x = np.random.default_rng(b).standard_normal((b, 3, 4)).astype(np.float32)
        for got, want in zip(Executor(g).run({graph.inputs[0]: x}), Executor(graph).run({graph.inputs[0]: x})):
            np.testing.assert_array_equal(got, want)
    assert "sym_size" not in {n.op for n in optimize(_traced("cnn")[0]).nodes}  # the cnn's flatten
