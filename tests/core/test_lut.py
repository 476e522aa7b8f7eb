"""The byte table lookup of the runtime's requantize (backends/cpu/lut.py) against numpy indexing, at sizes
around the 64-byte blocks of the AVX-512 VBMI path and with the numba loop alone."""
from __future__ import annotations

import numpy as np
import pytest

from ember.backends.cpu import lut

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 127, 128, 1000, 200_704])
@pytest.mark.parametrize("out_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("vbmi", [True, False])
def test_lookup_equals_numpy_indexing(n, out_dtype, vbmi, monkeypatch):
    if not vbmi:
        monkeypatch.setitem(lut._STATE, "fn", None)
    codes = RNG.integers(0, 256, n).astype(np.uint8)
    table = RNG.integers(0, 256, 256).astype(np.uint8).view(out_dtype)
    out = np.empty(n, out_dtype)
    assert lut.lookup(codes, table, out) is out
    np.testing.assert_array_equal(out, table[codes])


def test_every_code_and_the_top_bit_select():
    codes = np.tile(np.arange(256, dtype=np.uint8), 3)  # all codes, each 64-byte block across the 128 boundary
    table = (255 - np.arange(256)).astype(np.uint8)
    np.testing.assert_array_equal(lut.lookup(codes, table, np.empty_like(codes)), table[codes])
