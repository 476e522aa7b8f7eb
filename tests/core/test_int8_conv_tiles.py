"""The int8 convolution tile (backends/cpu/int8_conv_tiled.py: AVX-512 VNNI, or AVX2) bit-exact against the numpy
reference of test_int8_kernels.py, with and without the fused 2x2 max pool; skipped where neither can run (the AVX2
tile on a VNNI machine: test_int8_tile_kinds.py)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.backends.cpu import int8_conv_tiled as T
from ember.backends.cpu import int8_kernels as K
from ember.backends.cpu.int8_conv import qconv2d

from .test_int8_kernels import acts, ref_conv_acc, ref_requant, weights

pytestmark = pytest.mark.skipif(T.tile() is None, reason="needs AVX-512 VNNI or AVX2 (and llvmlite's native codegen)")
RNG = np.random.default_rng(11)

# (N, C, H, W), (Cout, kh, kw), padding, dilation
GEOMETRIES = [
    ((3, 16, 14, 14), (32, 3, 3), 1, 1),
    ((2, 5, 9, 11), (13, 3, 3), 1, 1),     # channels not a multiple of 4, Cout not of 12
    ((2, 8, 7, 9), (7, 3, 5), (2, 1), (1, 2)),
    ((1, 4, 6, 6), (12, 1, 1), 0, 1),
    ((5, 6, 10, 10), (24, 3, 3), 2, 2),
    ((17, 4, 5, 7), (3, 2, 2), 0, 1),      # odd sizes, many images: split over threads
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _case(xs, wk, x_dt, out_dt, rng=RNG):
    cout, kh, kw = wk
    x = acts(xs, x_dt, rng)
    w = weights((cout, xs[1], kh, kw), rng)
    x_zp = {np.uint8: 117, np.int8: -7}[x_dt]
    out_zp = {np.uint8: 101, np.int8: -3}[out_dt]
    bias = rng.integers(-4000, 4000, cout).astype(np.int32)
    mult = rng.uniform(2e-4, 3e-3, cout).astype(np.float32)
    return x, w, x_zp, out_zp, bias, mult


def _ref(x, w, x_zp, out_zp, bias, mult, padding, dilation, relu, out_dt):
    acc = ref_conv_acc(x, x_zp, w, (1, 1), _pair(padding), _pair(dilation), 1)
    return ref_requant(acc.transpose(0, 2, 3, 1), bias, mult, out_zp, relu, out_dt).transpose(0, 3, 1, 2)


def _pool(y):
    n, c, h, w = y.shape
    return y[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


@pytest.mark.parametrize("xs,wk,padding,dilation", GEOMETRIES)
@pytest.mark.parametrize("variant", ["u8", "s8_in_relu", "s8_out"])
@pytest.mark.parametrize("pool", [False, True])
def test_tile_matches_the_numpy_reference(xs, wk, padding, dilation, variant, pool):
    x_dt = np.int8 if variant == "s8_in_relu" else np.uint8
    out_dt = np.int8 if variant == "s8_out" else np.uint8
    relu = variant == "s8_in_relu"
    x, w, x_zp, out_zp, bias, mult = _case(xs, wk, x_dt, out_dt)
    assert T.usable(x, w.shape, (1, 1), 1)
    got = qconv2d(x, x_zp, K.pack_weight(w), 1, padding, dilation, 1, bias, mult, out_zp, relu,
                  out_dtype=out_dt.__name__, pool=pool, weight=w)
    want = _ref(x, w, x_zp, out_zp, bias, mult, padding, dilation, relu, out_dt)
    want = _pool(want) if pool else want
    assert got.dtype == out_dt and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_negative_multipliers_pool_the_codes():
    """With a negative multiplier the epilogue is decreasing in the sums: the codes must be pooled, not the sums."""
    x, w, x_zp, out_zp, bias, mult = _case((2, 8, 8, 8), (12, 3, 3), np.uint8, np.uint8)
    mult[::2] *= -1
    got = qconv2d(x, x_zp, K.pack_weight(w), 1, 1, 1, 1, bias, mult, out_zp, False, pool=True, weight=w)
    np.testing.assert_array_equal(got, _pool(_ref(x, w, x_zp, out_zp, bias, mult, 1, 1, False, np.uint8)))


def test_saturating_sums_stay_exact():
    """Extreme codes and weights (|sum| near 255 * 128 * K) through the int32 accumulators."""
    x = np.full((2, 16, 6, 6), 255, np.uint8)
    w = np.full((12, 16, 3, 3), -128, np.int8)
    w[::3] = 127
    bias = np.zeros(12, np.int32)
    mult = np.full(12, 1e-5, np.float32)
    got = qconv2d(x, 0, K.pack_weight(w), 1, 1, 1, 1, bias, mult, 128, False, weight=w)
    np.testing.assert_array_equal(got, _ref(x, w, 0, 128, bias, mult, 1, 1, False, np.uint8))


def test_not_used_for_strides_groups_or_few_channels():
    x = acts((1, 8, 6, 6), rng=RNG)
    assert not T.usable(x, (4, 8, 3, 3), (2, 1), 1)
    assert not T.usable(x, (4, 4, 3, 3), (1, 1), 2)
    assert not T.usable(acts((1, 2, 6, 6), rng=RNG), (4, 2, 3, 3), (1, 1), 1)


def test_quads_layout():
    w = weights((13, 6, 2, 3), rng=RNG)
    q = T.quads(w)
    nb = -(-13 // T.NCO)
    assert q.shape == (nb, 2 * 2 * 3, T.NCO)
    b = q.view(np.int8).reshape(nb, 2, 2, 3, T.NCO, 4)  # (block, quad, i, j, r, byte)
    for co in (0, 5, 12):
        for c in range(6):
            assert b[co // T.NCO, c // 4, 1, 2, co % T.NCO, c % 4] == w[co, c, 1, 2]
    last = 13 - (nb - 1) * T.NCO  # real channels in the last block
    assert not b[nb - 1, :, :, :, last:].any() and not b[:, 1, :, :, :, 2:].any()  # zero past Cout and past C
    assert T.quads(w) is q  # cached per weight array
