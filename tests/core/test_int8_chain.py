"""The fused chain of dynamically quantized linear layers (backends/cpu/int8_chain.py) against the numpy
reference of one layer (qparams from torch's MinMaxObserver rule, exact integer GEMM) applied layer by layer,
and bit-identical to qlinear_dynamic run one layer at a time, with helpers spinning, sleeping, queue-woken or
absent."""
from __future__ import annotations

import numpy as np
import pytest

from ember.backends.cpu import helpers, jit
from ember.backends.cpu import int8_chain as C
from ember.backends.cpu import int8_kernels as K

from .test_int8_kernels import ref_dynamic


def _layers(dims, seed=0, bias=True, relus=None):
    rng = np.random.default_rng(seed)
    out = []
    for i, (k, n) in enumerate(zip(dims, dims[1:])):
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        s = (rng.uniform(0.2, 2.0, n) / np.sqrt(k) / 20).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32) if bias else None
        relu = (i < len(dims) - 2) if relus is None else relus[i]
        out.append((w, s, b, relu))
    return out


def _one_by_one(x, layers, reduce_range=False):
    for w, s, b, relu in layers:
        x = K.qlinear_dynamic(x, K.pack_weight(w), s, b, relu=relu, reduce_range=reduce_range)
    return x


def _chain(x, layers, reduce_range=False):
    act_max = 127 if reduce_range else 255
    return C.dynamic_chain(x, [(K.pack_weight(w, act_max), s, b, relu) for w, s, b, relu in layers], reduce_range)


def _pools():
    pools = {"queue": helpers.QueueHelpers()}
    rate = helpers.ticks_per_us()
    if rate > 0:
        pools["spinning"] = helpers.SpinHelpers(500, rate)
        pools["sleeping"] = helpers.SpinHelpers(0, rate)  # the helper joins late or not at all
    return pools


@pytest.mark.parametrize("m", [1, 3, 16, 17, 64, 100])
def test_chain_matches_the_reference_layer_by_layer(m):
    layers = _layers([96, 80, 48, 10])
    x = (np.random.default_rng(m).standard_normal((m, 96)) * 2).astype(np.float32)
    ref = x
    for w, s, b, relu in layers:
        ref = ref_dynamic(ref, w, s, b, relu)
    got = _chain(x, layers)
    assert got.dtype == np.float32 and got.shape == (m, 10)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)  # the reference's float32 products may round apart
    np.testing.assert_array_equal(got, _one_by_one(x, layers))


@pytest.mark.parametrize("m", [1, 17, 64])
def test_chain_with_seven_bit_activations(m):
    """reduce_range (torch's x86 dynamic Linear): every layer's input quantized to 0 .. 127; the chain matches the
    reference with those qparams and qlinear_dynamic layer by layer (with weights packed either way)."""
    layers = _layers([96, 80, 48, 10], seed=5)
    x = (np.random.default_rng(m).standard_normal((m, 96)) * 2).astype(np.float32)
    ref = x
    for w, s, b, relu in layers:
        ref = ref_dynamic(ref, w, s, b, relu, reduce_range=True)
    got = _chain(x, layers, reduce_range=True)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got, _one_by_one(x, layers, reduce_range=True))
    assert np.abs(got - _chain(x, layers)).max() > 0  # (the 8-bit chain is another computation)
    with pytest.raises(ValueError, match=r"layer 0's weight was packed for activation codes up to 127"):
        C.dynamic_chain(x, [(K.pack_weight(w, 127), s, b, relu) for w, s, b, relu in layers])


@pytest.mark.parametrize("name", ["queue", "spinning", "sleeping", "serial"])
def test_chain_is_bit_identical_whatever_runs_it(monkeypatch, name):
    if name != "serial":
        pools = _pools()
        if name not in pools:
            pytest.skip("no cycle counter: queue helpers only")
        monkeypatch.setattr(jit._HELPERS, "pool", pools[name])
    else:
        monkeypatch.setattr(C, "PAR_MIN_ROWS", 1 << 30)
    monkeypatch.setattr(C, "PAR_MIN_MACS", 0)  # split from the smallest chains on
    layers = _layers([784, 128, 64, 10], seed=1, relus=[True, False, True])
    for m in (8, 33, 64):
        x = np.random.default_rng(m).standard_normal((m, 784)).astype(np.float32)
        want = _one_by_one(x, layers)
        for _ in range(20):
            np.testing.assert_array_equal(_chain(x, layers), want)


def test_chain_without_biases_and_with_leading_dims_and_read_only_input():
    layers = _layers([20, 12, 6], bias=False)
    x = np.random.default_rng(5).standard_normal((2, 3, 20)).astype(np.float32)
    x.flags.writeable = False
    got = _chain(x, layers)
    assert got.shape == (2, 3, 6)
    np.testing.assert_array_equal(got, _one_by_one(x.reshape(6, 20), layers).reshape(2, 3, 6))


def test_non_finite_values_are_reported_with_their_layer():
    layers = _layers([16, 8, 4])
    x = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        _chain(bad, layers)
    w, s, b, relu = layers[0]
    b = b.copy()
    b[2] = np.inf  # layer 0 writes inf: layer 1's input is not finite
    with pytest.raises(ValueError, match="input of layer 1 of the chain holds NaN or Inf"):
        _chain(x, [(w, s, b, relu)] + layers[1:])


def test_chain_rejects_mismatched_layers():
    layers = _layers([16, 8, 4])
    w2, s2, b2, _ = _layers([9, 4])[0]
    with pytest.raises(ValueError, match="layer 0 has 8 outputs, layer 1 expects 9 inputs"):
        _chain(np.zeros((2, 16), np.float32), [layers[0], (w2, s2, b2, False)])
    with pytest.raises(ValueError, match="input has 15 features, the first layer expects 16"):
        _chain(np.zeros((2, 15), np.float32), layers)
