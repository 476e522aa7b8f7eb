"""The exact integer Winograd F(2x2, 3x3) of int8 3x3 convolutions + 2x2 max pool (backends/cpu/int8_winograd.py)
bit-exact against the numpy reference of test_int8_kernels.py (int64 im2col sums, the documented epilogue, the
max of the codes); and the runtime's prepared quantized_conv2d_pool, which uses it on AVX2 CPUs, against the
op's unprepared kernel (the direct int8 tile). Skipped where its LLVM kernels cannot run (no AVX2)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.backends.cpu import int8_winograd as W
from ember.backends.cpu import vnni
from ember.ops.registry import get_op

from .test_int8_kernels import acts, ref_conv_acc, ref_requant, weights

pytestmark = pytest.mark.skipif(W.kernels(4) is None, reason="needs AVX2 (and llvmlite's native codegen)")
RNG = np.random.default_rng(23)

# (N, C, H, W), Cout, padding
GEOMETRIES = [
    ((3, 16, 14, 14), 32, (1, 1)),   # the cnn benchmark's conv2
    ((2, 3, 7, 9), 5, (0, 2)),       # odd sizes (the last row / column of outputs is not pooled), odd C
    ((5, 2, 8, 8), 17, (1, 0)),      # fewest channels, Cout past a multiple of 16
    ((1, 33, 11, 6), 40, (2, 2)),    # C past a multiple of 16
    ((9, 8, 4, 4), 1, (0, 0)),       # one pooling window per image, one output channel
    ((37, 6, 6, 10), 16, (1, 1)),    # many images: chunks and the split over threads
]


def _pool(y):
    n, c, h, w = y.shape
    return y[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _want(x, w, x_zp, bias, mult, out_zp, padding, relu):
    acc = ref_conv_acc(x, x_zp, w, (1, 1), padding, (1, 1), 1)
    return _pool(ref_requant(acc.transpose(0, 2, 3, 1), bias, mult, out_zp, relu, np.uint8).transpose(0, 3, 1, 2))


def _layer(c, co, rng=RNG):
    w = weights((co, c, 3, 3), rng)
    bias = rng.integers(-20000, 20000, co).astype(np.int32)
    mult = rng.uniform(2e-5, 2e-3, co).astype(np.float32)
    return w, bias, mult


@pytest.mark.parametrize("xs,co,padding", GEOMETRIES)
@pytest.mark.parametrize("relu", [False, True])
def test_matches_the_numpy_reference(xs, co, padding, relu):
    x = acts(xs, np.uint8, RNG)
    w, bias, mult = _layer(xs[1], co)
    x_zp, out_zp = int(RNG.integers(0, 256)), 37
    lo = out_zp if relu else 0
    got = W.PreparedPool(w, x_zp, bias, mult, out_zp, lo, 255, padding)(x)
    want = _want(x, w, x_zp, bias, mult, out_zp, padding, relu)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # no bias, one multiplier for all channels
    got = W.PreparedPool(w, x_zp, None, mult[:1], out_zp, lo, 255, padding)(x)
    np.testing.assert_array_equal(got, _want(x, w, x_zp, None, np.full(co, mult[0], np.float32), out_zp, padding, relu))


def test_extreme_codes_and_weights_at_the_channel_limit():
    """The largest transform values (|d| = 255 everywhere, weights at -128 / 127) with MAX_CHANNELS input channels:
    the int16 transforms and the int32 sums must not overflow."""
    c = W.MAX_CHANNELS
    x = np.zeros((2, c, 6, 6), np.uint8)
    x[0] = 255
    x[1, :, ::2] = 255  # alternating rows: transform values of both signs
    w = np.full((16, c, 3, 3), -128, np.int8)
    w[::2] = 127
    w[1, :, 1] = 127
    bias, mult = np.zeros(16, np.int32), np.full(16, 2e-9, np.float32)
    for x_zp in (0, 255):
        got = W.PreparedPool(w, x_zp, bias, mult, 128, 0, 255, (1, 1))(x)
        np.testing.assert_array_equal(got, _want(x, w, x_zp, bias, mult, 128, (1, 1), False))
    acc = ref_conv_acc(x, 0, w, (1, 1), (1, 1), (1, 1), 1)
    assert np.abs(acc).max() > 2 ** 25  # (the case reaches far past float32's exact integers)


def test_usable_only_where_it_is_exact():
    w, _, mult = _layer(8, 16)
    here = vnni.kind() == vnni.AVX2
    assert W.usable(w, (1, 1), (1, 1), (1, 1), 1, mult) == here
    assert not W.usable(w, (2, 2), (1, 1), (1, 1), 1, mult)
    assert not W.usable(w, (1, 1), (1, 1), (2, 2), 1, mult)
    assert not W.usable(w[:, :4], (1, 1), (1, 1), (1, 1), 2, mult)
    assert not W.usable(w, (1, 1), (3, 3), (1, 1), 1, mult)  # padding past the window
    assert not W.usable(weights((16, 8, 5, 5)), (1, 1), (1, 1), (1, 1), 1, mult)
    assert not W.usable(w[:, :1], (1, 1), (1, 1), (1, 1), 1, mult)  # a first layer: the float path
    assert not W.usable(weights((16, W.MAX_CHANNELS + 1, 3, 3)), (1, 1), (1, 1), (1, 1), 1, mult)
    assert not W.usable(w, (1, 1), (1, 1), (1, 1), 1, -mult)  # decreasing epilogue: pool the codes, not the sums
    assert not W.fits(acts((1, 8, 1, 3)), w, (1, 1))  # no pooling window
    assert not W.fits(acts((1, 4, 6, 6)), w, (1, 1))


def test_environment_switch(monkeypatch):
    w, _, mult = _layer(8, 16)
    monkeypatch.setenv("EMBER_WINOGRAD", "0")
    assert not W.usable(w, (1, 1), (1, 1), (1, 1), 1, mult)


@pytest.mark.parametrize("relu", [False, True])
def test_prepared_quantized_conv2d_pool_equals_the_direct_kernel(relu):
    """The runtime's path: the prepared kernel (Winograd on AVX2 CPUs) against the op's kernel (the direct tile)."""
    op = get_op("quantized_conv2d_pool")
    x = acts((6, 16, 14, 14), np.uint8, RNG)
    w = weights((32, 16, 3, 3), RNG)
    consts = [np.float32(0.02), np.uint8(119), w, RNG.uniform(1e-3, 4e-3, 32).astype(np.float32), np.float32(0.3),
              np.uint8(11), RNG.normal(0, 0.2, 32).astype(np.float32)]
    attrs = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "relu": relu}
    run = op.prepared["cpu"]([None] + consts, attrs)
    want = op.kernels["cpu"](x, *consts, **attrs)
    np.testing.assert_array_equal(run(x), want)
    np.testing.assert_array_equal(run(x[:1]), want[:1])  # a second input shape
    with pytest.raises(TypeError, match="activations must be uint8"):  # what the kernel says, not a wrong answer
        run(x.astype(np.int8))
