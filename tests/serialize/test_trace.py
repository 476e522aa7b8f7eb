"""Tracing: models captured at one batch size reproduce eager outputs at others; what cannot be
captured faithfully is refused with the user's file and line."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.serialize import TraceError, trace


def _mlp():
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 5))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 10),
    )


class Block(nn.Module):
    """A small transformer block: embedding, LayerNorm, causal attention with matmul/softmax, GELU MLP."""

    def __init__(self, vocab=20, d=16, heads=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)
        self.heads = heads

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=-1)
        hd = x.shape[-1] // self.heads
        q, k, v = (z.view(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (hd ** -0.5)
        att = att.masked_fill(ember.tril(ember.ones(t, t)) == 0, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.relu(out)


def _eager(model, *xs):
    model.eval()
    with ember.no_grad():
        return model(*xs)


def _train_a_bit(model, x):
    """Give BatchNorm non-trivial running statistics."""
    model.train()
    with ember.no_grad():
        for _ in range(3):
            model(x)


@pytest.mark.parametrize("make,shape", [(_mlp, (12,)), (_cnn, (1, 8, 8)), (Residual, (3, 5, 5))])
def test_traced_model_matches_eager_at_other_batch_sizes(make, shape):
    ember.manual_seed(0)
    model = make()
    _train_a_bit(model, ember.randn(4, *shape))
    prog = trace(model, ember.randn(2, *shape))
    assert prog.signature["inputs"][0]["shape"][0] == "batch"
    for b in (1, 2, 37):
        x = ember.randn(b, *shape)
        np.testing.assert_allclose(prog(x).numpy(), _eager(model, x).numpy(), atol=1e-6, rtol=1e-6)


def test_transformer_block_with_dynamic_sequence_length():
    ember.manual_seed(0)
    model = Block()
    prog = trace(model, ember.randint(0, 20, (2, 5)), dynamic_axes={"idx": {1: "seq"}})
    assert prog.signature["inputs"][0]["shape"] == ["batch", "seq"]
    for b, t in [(1, 5), (2, 5), (37, 3), (3, 9)]:
        idx = ember.randint(0, 20, (b, t))
        np.testing.assert_allclose(prog(idx).numpy(), _eager(model, idx).numpy(), atol=1e-6, rtol=1e-6)


def test_functions_with_several_inputs_and_outputs():
    def f(a, b):
        s = a + b
        return s.sum(dim=1), F.softmax(a * b, dim=-1)

    a, b = ember.randn(2, 3), ember.randn(2, 3)
    prog = trace(f, (a, b), output_names=["total", "probs"])
    assert [d["name"] for d in prog.signature["inputs"]] == ["a", "b"]
    assert [d["name"] for d in prog.signature["outputs"]] == ["total", "probs"]
    a, b = ember.randn(5, 3), ember.randn(5, 3)
    for got, want in zip(prog(a, b), f(a, b)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def test_training_mode_and_state_are_left_as_they_were():
    model = _cnn()
    model.train()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    trace(model, ember.randn(2, 1, 8, 8))
    assert model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)


def test_code_listing_is_readable_and_stable():
    ember.manual_seed(1)
    model = _mlp()
    code1 = trace(model, ember.randn(2, 12)).code
    code2 = trace(model, ember.randn(3, 12)).code
    assert code1 == code2
    assert "graph(input: float32[batch, 12]):" in code1 and "linear(" in code1 and "return (output)" in code1


def test_shared_weights_are_stored_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    prog = trace(model, ember.randn(2, 4))
    assert sorted(prog.constants) == ["0.bias", "0.weight"]


class _ItemInForward(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class _NumpyInForward(nn.Module):
    def forward(self, x):
        return x * float(x.numpy().mean())


class _InplaceOnInput(nn.Module):
    def forward(self, x):
        x.add_(1)
        return x


class _MaskSelect(nn.Module):
    def forward(self, x):
        return x[x > 0]


class _HiddenBatchSize(nn.Module):
    def forward(self, x):
        n = x.detach()._data.shape[0]  # a size read behind the tracer's back
        return x.reshape(n, -1)


@pytest.mark.parametrize("model,match", [
    (_ItemInForward(), r"bool\(\) on a tensor computed from the model's inputs \(at .*test_trace.py:\d+"),
    (_NumpyInForward(), r"numpy\(\) on a tensor computed from the model's inputs \(at .*test_trace.py:\d+"),
    (_InplaceOnInput(), r"in-place modification of graph input 'x' \(at .*test_trace.py:\d+"),
    (_MaskSelect(), r"output shape depends on the data"),
    (_HiddenBatchSize(), r"at batch size 3 the graph's output 0"),
])
def test_what_cannot_be_captured_is_refused(model, match):
    x = ember.randn(2, 3, 2)
    before = x.numpy().copy()
    with pytest.raises(TraceError, match=match):
        trace(model, x)
    np.testing.assert_array_equal(x.numpy(), before)  # the caller's example is never written


def test_random_factory_with_symbolic_size_is_refused():
    def f(x):
        return x + ember.randn(x.shape[0], 3)

    with pytest.raises(TraceError, match="random values cannot be captured"):
        trace(f, ember.randn(2, 3))


def test_factories_with_symbolic_sizes_are_recorded():
    def f(x):
        return x + ember.ones(x.shape[0], 3) * ember.arange(x.shape[1]).float()

    prog = trace(f, ember.randn(2, 3))
    x = ember.randn(6, 3)
    np.testing.assert_allclose(prog(x).numpy(), f(x).numpy())


def test_inputs_are_checked_against_the_signature():
    prog = trace(lambda a, b: a * b, (ember.randn(2, 3), ember.randn(2, 3)))
    with pytest.raises(ValueError, match=r"input 'b': dim 0 \('batch'\) is 4, but 'batch' is 3 in input 'a'"):
        prog(ember.randn(3, 3), ember.randn(4, 3))
    with pytest.raises(ValueError, match=r"input 'a': dim 1 must be 3"):
        prog(ember.randn(3, 4), ember.randn(3, 4))
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        prog(ember.randn(3, 3, dtype=ember.float64), ember.randn(3, 3))
    with pytest.raises(TypeError, match="missing input"):
        prog(ember.randn(3, 3))


def test_single_input_checks_on_the_fast_path():
    """One input with a symbolic batch (Program._bind's loop-free path): the same checks and messages."""
    prog = trace(lambda a: a * 2, ember.randn(2, 3, 4))
    x = np.arange(5 * 3 * 8, dtype=np.float32).reshape(5, 3, 8)[:, :, ::2]  # not contiguous: copied, not refused
    np.testing.assert_array_equal(prog(x).numpy(), x * 2)
    np.testing.assert_array_equal(prog(ember.from_numpy(np.ascontiguousarray(x))).numpy(), x * 2)
    with pytest.raises(ValueError, match=r"input 'a': dim 2 must be 4"):
        prog(ember.randn(5, 3, 5))
    with pytest.raises(ValueError, match=r"expected 3 dims \(batch, 3, 4\), got shape \(3, 4\)"):
        prog(ember.randn(3, 4))
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        prog(ember.randn(2, 3, 4, dtype=ember.float64))
    with pytest.raises(TypeError, match="expected an ember Tensor or a numpy array, got list"):
        prog([[1.0]])


def test_value_names_do_not_collide_with_user_names():
    def f(v1, v2):
        return (v1 * v2).relu() + 1, v1 - v2

    prog = trace(f, (ember.randn(2, 3), ember.randn(2, 3)), output_names=["v3", "v1_out"])
    a, b = ember.randn(4, 3), ember.randn(4, 3)
    for got, want in zip(prog(a, b), f(a, b)):
        np.testing.assert_allclose(got.numpy(), want.numpy())
    assert len(set(prog.graph.values)) == len(prog.graph.values)


def test_item_assignment_into_a_computed_tensor_is_recorded():
    def f(x):
        y = x.clone()
        y[:, 0] = 0.0
        y[y[:, 1] > 0, 2] = 5.0  # a data-dependent mask, but a fixed output shape
        z = ember.zeros(3)
        z[1] = 2.0  # a constant being built: stays a constant
        return y * z.sum()

    x = ember.randn(4, 3)
    prog = trace(f, x)
    assert "index_put" in prog.code
    for b in (1, 4, 9):
        xb = ember.randn(b, 3)
        np.testing.assert_allclose(prog(xb).numpy(), f(xb).numpy())


def test_dynamic_axes_none_fixes_every_dim_of_an_input():
    model = _mlp()
    prog = trace(model, ember.randn(3, 12), dynamic_axes={"input": None})
    assert prog.signature["inputs"][0]["shape"] == [3, 12]
    assert not any(n.op == "sym_size" for n in prog.graph.nodes)
    with pytest.raises(ValueError, match=r"dim 0 must be 3"):
        prog(ember.randn(4, 12))


@pytest.mark.parametrize("fn", [
    lambda x: x.detach() * 2,
    lambda x: F.relu(x).data + x,
    lambda x: ember.argsort(x, dim=1),
    lambda x: x.detach().reshape(x.detach().shape[0], -1).sum(dim=1),
], ids=["detach", "data", "argsort", "detached-shape"])
def test_detached_views_of_traced_values_stay_in_the_graph(fn):
    """detach() / .data make new Tensor objects over the same array: the same graph value, not a constant."""
    x = ember.randn(3, 4)
    prog = trace(fn, x)
    assert not any(v.size > 1 for v in prog.graph.constants.values()), prog.code
    for b in (1, 3, 6):
        y = ember.randn(b, 4)
        np.testing.assert_allclose(prog(y).numpy(), fn(y).numpy(), rtol=1e-6)


def test_size_arithmetic_that_is_constant_at_every_batch_size_becomes_a_plain_int():
    """batch*32*7*7 // batch is 1568 whatever the batch: the flattened dim is static, not a symbol."""
    prog = trace(lambda x: x.reshape(x.shape[0], -1), ember.randn(3, 4, 2, 5))
    assert prog.signature["outputs"][0]["shape"] == ["batch", 40]
    assert [n.op for n in prog.graph.nodes] == ["sym_size", "reshape"]
    # genuinely symbolic sizes stay symbolic, named by their monomial; one node per monomial
    prog = trace(lambda x: (x.reshape(-1, 5), x.reshape(x.shape[0] * 8, 5)), ember.randn(3, 4, 2, 5))
    assert [o["shape"] for o in prog.signature["outputs"]] == [["batch*8", 5], ["batch*8", 5]]
    first, second = [n.attrs["shape"][0] for n in prog.graph.nodes if n.op == "reshape"]
    assert first == second, prog.code  # the second batch*8 reuses the first's value
    for b in (1, 6):
        x = ember.randn(b, 4, 2, 5)
        got = prog(x)
        np.testing.assert_array_equal(got[1].numpy(), x.numpy().reshape(b * 8, 5))
    # sums of different monomials are not monomials: recorded as they are
    prog = trace(lambda x: ember.zeros(x.shape[0] + 2, x.shape[1]), ember.randn(3, 4))
    assert prog.signature["outputs"][0]["shape"] == ["(batch+2)", 4]
    assert prog(ember.randn(5, 4)).shape == (7, 4)


def test_zero_dim_buffers_inputs_and_folded_constants_stay_zero_dim():
    """numpy's ascontiguousarray turns 0-d arrays into shape (1,); graphs must keep scalars scalar (an
    int8 layer's zero point is a 0-d buffer and its kernel reads it with int())."""
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("s", ember.tensor(2.0))

        def forward(self, x, k):
            return x * self.s + k, self.s * 3.0 + k

    prog = trace(Scaled(), (ember.randn(3, 2), ember.tensor(1.5)))
    assert prog.graph.constants["s"].shape == ()
    executor_graph = prog._executor.graph  # after the passes (s * 3.0 is folded into a constant)
    assert all(executor_graph.values[c].shape == a.shape for c, a in executor_graph.constants.items())
    assert all(a.ndim == 0 for c, a in executor_graph.constants.items())
    y, z = prog(ember.randn(4, 2), ember.tensor(0.5))
    assert y.shape == (4, 2) and z.shape == () and float(z.item()) == 6.5
