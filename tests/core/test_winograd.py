"""Winograd F(2x2, 3x3) conv2d (+ relu) + 2x2 max pool (backends/cpu/winograd.py, the runtime's prepared
``conv2d_pool`` for 3x3 stride-1 convolutions) against torch in float64."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember.backends.cpu import winograd
from ember.ops.registry import get_op

rng = np.random.default_rng(12)
_HERE = winograd.usable(np.zeros((4, 8, 3, 3), np.float32), (1, 1), (1, 1), (1, 1), 1)
pytestmark = pytest.mark.skipif(not _HERE, reason="Winograd is off here (no AVX-512 tiles, LLVM, or EMBER_WINOGRAD=0)")


def _torch(x, w, b, padding, relu):
    y = F.conv2d(*(torch.from_numpy(a).double() for a in (x, w, b)), padding=padding)
    return F.max_pool2d(F.relu(y) if relu else y, 2).numpy()


def _run(x, w, b, padding, relu):
    ho, wo = x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2
    return winograd.PreparedPool(w, b, (padding, padding), relu)(x, (ho, wo))


@pytest.mark.parametrize("n, cin, cout, hw, padding", [
    (1, 16, 32, (14, 14), 1),  # the cnn benchmark's conv2 at batch 1: 49 blocks, one 64-position tile row
    (64, 16, 32, (14, 14), 1),  # batch 64: chunks of images, both threads
    (5, 8, 12, (15, 13), 1),  # odd conv output: the last row / column is in no window; 12 channels (a tile of 8 + 4)
    (3, 4, 7, (9, 20), 0),  # no padding, 9 blocks a row (two 8-block steps of the input transform)
    (2, 5, 3, (30, 33), 2),  # padding 2: the conv output is larger than the input
    (7, 6, 33, (6, 6), 1),  # a 3x3 pooled plane: one partial 16-block step of the output transform
    (1, 1, 16, (28, 28), 1),  # the cnn's conv1: one input channel, sums in the output pass (wino_small)
    (64, 1, 16, (28, 28), 1),
    (3, 3, 5, (17, 15), 1),  # RGB, odd sizes
    (2, winograd.SMALL_CHANNELS, 7, (9, 9), 0),  # the most channels wino_small takes
    (2, winograd.SMALL_CHANNELS + 1, 7, (9, 9), 2),  # the fewest the GEMMs take
])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_torch(n, cin, cout, hw, padding, relu):
    x = rng.standard_normal((n, cin, *hw)).astype(np.float32)
    w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    got, want = _run(x, w, b, padding, relu), _torch(x, w, b, padding, relu)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    if relu:
        assert (got >= 0).all()


def test_no_bias_and_non_contiguous_input():
    x = rng.standard_normal((3, 8, 12, 12)).astype(np.float32)[:, ::2]  # 4 channels, strided
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    got = winograd.PreparedPool(w, None, (1, 1), False)(x, (12, 12))
    np.testing.assert_allclose(got, _torch(np.ascontiguousarray(x), w, np.zeros(6, np.float32), 1, False),
                               atol=1e-5, rtol=1e-5)


def test_nan_reaches_the_window_it_is_in():
    """A NaN input is NaN in exactly the pooled outputs whose windows' receptive fields hold it, as in torch."""
    x = rng.standard_normal((2, 4, 10, 10)).astype(np.float32)
    x[1, 2, 4, 7] = np.nan
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = np.zeros(5, np.float32)
    got, want = _run(x, w, b, 1, True), _torch(x, w, b, 1, True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any()
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=1e-5, rtol=1e-5)


def test_weight_transform_against_the_definition():
    """U = G g G^T (16 values per channel pair) against the product written out in float64."""
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = winograd.transform_weights(w)
    for o in range(3):
        for c in range(2):
            np.testing.assert_allclose(u[:, o, c], (g @ w[o, c].astype(np.float64) @ g.T).reshape(16), rtol=1e-6)


@pytest.mark.parametrize("case, usable", [
    (dict(), True), (dict(k=5), False), (dict(stride=2), False), (dict(dilation=2), False), (dict(groups=2), False),
    (dict(cin=1), True), (dict(padding=3), False), (dict(dtype=np.float64), False), (dict(out=(1, 5)), False),
])
def test_usable(case, usable):
    k, cin = case.get("k", 3), case.get("cin", 8)
    w = np.zeros((4, cin, k, k), case.get("dtype", np.float32))
    s, d, p = (case.get("stride", 1),) * 2, (case.get("dilation", 1),) * 2, (case.get("padding", 1),) * 2
    assert winograd.usable(w, s, p, d, case.get("groups", 1), case.get("out", (8, 8))) is usable


def test_runtime_uses_it_and_switch_turns_it_off():
    """The prepared conv2d_pool of a 3x3 conv is the Winograd one; EMBER_WINOGRAD=0 (a fresh process) the direct
    tiles', and both agree with torch."""
    x = rng.standard_normal((4, 8, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, act="relu")
    run = get_op("conv2d_pool").prepared["cpu"]([None, w, b], attrs)
    np.testing.assert_allclose(run(x), _torch(x, w, b, 1, True), atol=1e-5, rtol=1e-5)
    assert any(isinstance(c.cell_contents, winograd.PreparedPool) for c in run.__closure__ or ())
    code = ("import numpy as np; from ember.ops.registry import get_op; from ember.backends.cpu import "
            "winograd; w = np.ones((4, 8, 3, 3), np.float32); run = get_op('conv2d_pool').prepared['cpu']([None, w], "
            "dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, act='none')); "
            "print(any(isinstance(c.cell_contents, winograd.PreparedPool) for c in run.__closure__))")
    for flag, want in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, EMBER_WINOGRAD=flag))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == want


def test_plain_kernel_agrees():
    """The eager conv2d_pool kernel (direct tiles) and the prepared Winograd one agree to float32 rounding."""
    x = rng.standard_normal((3, 16, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, act="relu")
    plain = get_op("conv2d_pool").kernels["cpu"](x, w, b, **attrs)
    np.testing.assert_allclose(_run(x, w, b, 1, True), plain, atol=2e-6, rtol=1e-5)


def _int8_reference(codes, xz, w, padding, bias_i, mult, yz, lo, hi):
    """uint8 codes of the static int8 first layer (one input channel, 3x3, then 2x2 max pool) in numpy int64:
    the exact sums, pooled, requantized as the int8 kernels' epilogue (float32(sum + bias) * multiplier, rint)."""
    d = np.pad(codes.astype(np.int64) - xz, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    n, _, hp, wp = d.shape
    ho, wo = hp - 2, wp - 2
    acc = np.zeros((n, w.shape[0], ho, wo), np.int64)
    for i in range(3):
        for j in range(3):
            acc += d[:, :, i:i + ho, j:j + wo] * w[None, :, 0, i, j, None, None].astype(np.int64)
    pooled = acc[:, :, :ho // 2 * 2, :wo // 2 * 2].reshape(n, -1, ho // 2, 2, wo // 2, 2).max(axis=(3, 5))
    r = np.rint((pooled + bias_i[None, :, None, None]).astype(np.float32) * mult[None, :, None, None]) + yz
    return np.clip(r, lo, hi).astype(np.uint8)


@pytest.mark.parametrize("case", ["random", "extreme-high", "extreme-low", "alternating"])
def test_int8_first_layer_is_exact(case):
    """The requantizing form (static int8 first layer of one channel) against exact int64 sums: the float32
    Winograd sums of 4 G g G^T are exact integers even at the int8 / uint8 extremes."""
    n, co, hw = 3, 6, (12, 10)
    if case == "random":
        codes, xz = rng.integers(0, 256, (n, 1, *hw)).astype(np.uint8), 131
        w = rng.integers(-128, 128, (co, 1, 3, 3)).astype(np.int8)
    elif case == "extreme-high":  # |code - zp| = 255 everywhere, |w| = 128: the largest sums
        codes, xz, w = np.full((n, 1, *hw), 255, np.uint8), 0, np.full((co, 1, 3, 3), -128, np.int8)
    elif case == "extreme-low":
        codes, xz, w = np.zeros((n, 1, *hw), np.uint8), 255, np.full((co, 1, 3, 3), 127, np.int8)
    else:  # signs that make the transforms' values largest
        sign = np.where((np.arange(hw[0])[:, None] + np.arange(hw[1])) % 2 == 0, 255, 0)
        codes, xz = np.broadcast_to(sign, (n, 1, *hw)).astype(np.uint8), 0
        w = np.where((np.arange(3)[:, None] + np.arange(3)) % 2 == 0, -128, 127).astype(np.int8)
        w = np.broadcast_to(w, (co, 1, 3, 3)).copy()
        w[1::2] *= -1
    bias_i = rng.integers(-5000, 5000, co).astype(np.float64)
    mult = (rng.uniform(0.5, 2.0, co) / 2 ** 18).astype(np.float32)
    for relu in (False, True):
        yz = 100
        lo = yz if relu else 0
        p = winograd.PreparedPool(w.astype(np.float32), None, (1, 1), False, qep=(bias_i, mult, yz, lo, 255), shift=xz)
        got = p(codes, (hw[0], hw[1]))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, _int8_reference(codes, xz, w, 1, bias_i, mult, yz, lo, 255))


def test_int8_form_refuses_what_it_cannot_do_exactly():
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="one input channel"):
        winograd.PreparedPool(w, None, (1, 1), False, qep=(np.zeros(4), np.ones(4, np.float32), 0, 0, 255))
