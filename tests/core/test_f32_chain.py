"""The fused chain of float32 linear (+ ReLU) layers (backends/cpu/f32_chain.py, the runtime's ``linear_mlp``)
against a float64 numpy reference and PyTorch, on both of its paths (row by row below GEMM_MIN_ROWS rows, the
12-row GEMM tiles from there, with partial row blocks), and the same bits whichever threads run it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.backends.cpu import f32_chain as C
from ember.backends.cpu import helpers, jit
from ember.ops.registry import get_op

pytestmark = pytest.mark.skipif(not C.available(), reason="no LLVM tiles on this host: linear_mlp runs layer by layer")


def _layers(dims, seed=0, relus=None, bias=True):
    rng = np.random.default_rng(seed)
    out = []
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32) if bias else None
        out.append((w, b, (i < len(dims) - 2) if relus is None else relus[i]))
    return out


def _ref(x, layers):
    y = x.astype(np.float64)
    for w, b, relu in layers:
        y = y @ w.astype(np.float64).T + (0 if b is None else b)
        if relu:
            y = np.maximum(y, 0)
    return y


@pytest.mark.parametrize("m", [1, 2, 7, 8, 31, 32, 33, 64, 100])
def test_chain_matches_float64_on_both_paths(m):
    layers = _layers([200, 130, 64, 13, 10], relus=[True, False, True, False])
    x = np.random.default_rng(m).standard_normal((m, 200)).astype(np.float32)
    got = C.run(x, C.plan(layers))
    assert got.dtype == np.float32 and got.shape == (m, 10)
    np.testing.assert_allclose(got, _ref(x, layers), rtol=1e-5, atol=2e-5)


def test_chain_matches_torch_mlp():
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(),
                             torch.nn.Linear(256, 10)).eval()
    lin = [tm[0], tm[2], tm[4]]
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy(), i < 2) for i, m in enumerate(lin)]
    plan = C.plan(layers)
    for b in (1, 5, 64):
        x = torch.randn(b, 784)
        with torch.no_grad():
            want = tm(x).numpy()
        np.testing.assert_allclose(C.run(x.numpy(), plan), want, rtol=1e-4, atol=1e-5)


def _pools():
    rate = helpers.ticks_per_us()
    return {} if rate <= 0 else {"spinning": helpers.SpinHelpers(500, rate), "sleeping": helpers.SpinHelpers(0, rate)}


@pytest.mark.parametrize("name", ["spinning", "sleeping", "serial", "queue"])
def test_chain_is_bit_identical_whatever_runs_it(monkeypatch, name):
    layers = _layers([96, 80, 48, 10], seed=2, relus=[True, False, True])
    plan = C.plan(layers)
    xs = {m: np.random.default_rng(m).standard_normal((m, 96)).astype(np.float32) for m in (3, 8, 40, 64)}
    want = {m: C.run(x, plan) for m, x in xs.items()}  # (the process's pool, whatever it is)
    monkeypatch.setattr(C, "PAR_MIN_MACS", 0)  # split from the smallest chains on
    if name == "serial":
        monkeypatch.setattr(jit, "threads", lambda: 1)
    elif name == "queue":
        monkeypatch.setattr(jit._HELPERS, "pool", helpers.QueueHelpers())  # no native tasks: all on the caller
    else:
        pools = _pools()
        if name not in pools:
            pytest.skip("no cycle counter: queue helpers only")
        monkeypatch.setattr(jit._HELPERS, "pool", pools[name])
    for _ in range(10):
        for m, x in xs.items():
            np.testing.assert_array_equal(C.run(x, plan), want[m])


def test_leading_dims_read_only_input_no_bias_and_nan():
    layers = _layers([20, 12, 6], bias=False)
    x = np.random.default_rng(5).standard_normal((2, 9, 20)).astype(np.float32)
    x.flags.writeable = False
    got = C.run(x, C.plan(layers))
    assert got.shape == (2, 9, 6)
    np.testing.assert_allclose(got, _ref(x.reshape(18, 20), layers).reshape(2, 9, 6), rtol=1e-5, atol=1e-5)
    bad = x.copy()
    bad[1, 4, 3] = np.nan  # NaN goes through ReLU as torch's does: that row's outputs are NaN, the others not
    out = C.run(bad, C.plan(layers))
    assert np.isnan(out[1, 4]).all() and not np.isnan(np.delete(out.reshape(18, 6), 13, axis=0)).any()
    assert C.run(np.zeros((0, 20), np.float32), C.plan(layers)).shape == (0, 6)


def test_chain_rejects_mismatched_layers_and_inputs():
    layers = _layers([16, 8, 4])
    w2, b2, _ = _layers([9, 4])[0]
    with pytest.raises(ValueError, match="layer 0 has 8 outputs, layer 1 expects 9 inputs"):
        C.plan([layers[0], (w2, b2, False)])
    with pytest.raises(ValueError, match="input has 15 features, the first layer expects 16"):
        C.run(np.zeros((2, 15), np.float32), C.plan(layers))


def test_op_kernel_falls_back_to_layer_by_layer(monkeypatch):
    layers = _layers([30, 20, 5])
    params = [a for w, b, _ in layers for a in (w, b)]
    x = np.random.default_rng(1).standard_normal((16, 30)).astype(np.float32)
    kernel = get_op("linear_mlp").kernels["cpu"]
    fused = kernel(x, *params, relus=(True, False))
    monkeypatch.setattr(C, "available", lambda: False)  # a host without the tiles
    np.testing.assert_allclose(kernel(x, *params, relus=(True, False)), fused, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused, _ref(x, layers), rtol=1e-5, atol=1e-5)
