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
pytestmark = pytest.mark.skipif(winograd.kernels() is None, reason="LLVM cannot compile the Winograd kernels here")


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
    assert winograd.usable((1, cin, 8, 8), w, s, p, d, case.get("groups", 1), case.get("out", (8, 8))) is usable


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
