"""The byte table lookup of the runtime's requantize (backends/cpu/lut.py) against numpy indexing, at sizes around
the blocks of the IR kernels (AVX-512 VBMI's 64 bytes, AVX2's 32), through the host's kernel, the AVX2 kernel (on
any CPU with AVX2) and the numba loop alone."""
from __future__ import annotations

import numpy as np
import pytest

from ember.backends.cpu import lut
from ember.backends.cpu.llvm_ir import compile_module

RNG = np.random.default_rng(5)
_AVX2 = compile_module(lut._avx2_ir(), require=("avx2",))  # (kept alive for the tests' calls)


def _use(kind, monkeypatch):
    lut.lookup(np.zeros(1, np.uint8), np.zeros(256, np.uint8), np.empty(1, np.uint8))  # the host's kernel, compiled
    if kind == "avx2":
        if _AVX2 is None:
            pytest.skip("no AVX2 (or no llvmlite native codegen)")
        monkeypatch.setitem(lut._STATE, "addr", _AVX2.get_function_address("lut"))
        monkeypatch.setitem(lut._STATE, "block", 32)
    elif kind == "numba":
        monkeypatch.setitem(lut._STATE, "addr", 0)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 1000, 200_704])
@pytest.mark.parametrize("out_dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("kind", ["host", "avx2", "numba"])
def test_lookup_equals_numpy_indexing(n, out_dtype, kind, monkeypatch):
    _use(kind, monkeypatch)
    codes = RNG.integers(0, 256, n).astype(np.uint8)
    table = RNG.integers(0, 256, 256).astype(np.uint8).view(out_dtype)
    out = np.empty(n, out_dtype)
    assert lut.lookup(codes, table, out) is out
    np.testing.assert_array_equal(out, table[codes])


@pytest.mark.parametrize("kind", ["host", "avx2"])
def test_every_code_and_the_row_select(kind, monkeypatch):
    _use(kind, monkeypatch)
    codes = np.tile(np.arange(256, dtype=np.uint8), 3)  # all codes, blocks across every 16-entry row and the 128 boundary
    table = (255 - np.arange(256)).astype(np.uint8)
    np.testing.assert_array_equal(lut.lookup(codes, table, np.empty_like(codes)), table[codes])
