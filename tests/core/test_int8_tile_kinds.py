"""Each kind of the int8 kernels' inner tiles against the numpy references of test_int8_kernels.py, whatever CPU runs
the tests: the AVX2 tiles (forced with EMBER_INT8_TILE=avx2, so a VNNI machine tests them too) and the numba tiles
(EMBER_INT8_VNNI=0). The tile is chosen once per process, so each kind runs in its own subprocess, which writes its
results for this process to check."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ember.backends.cpu import int8_kernels as K

from .test_int8_kernels import ref_acc, ref_conv_acc, ref_dynamic, ref_requant

GEMMS = [(1, 7, 5), (5, 40, 33), (16, 784, 64), (37, 100, 70)]  # single rows, tails of the 32-column block
CONV_STRIDES = [(2, 1), (1, 1)]  # the im2row GEMM, then the direct conv tile (int8_conv_tiled.py)

_SCRIPT = """
import sys
import numpy as np
from ember.backends.cpu import int8_conv_tiled, int8_kernels as K, vnni
from ember.backends.cpu.int8_conv import qconv2d
inp = np.load(sys.argv[1])
res = {"gemm_kind": vnni.kind(), "conv_tile": int(int8_conv_tiled.tile() is not None)}
for i in range(len(GEMMS)):
    res[f"gemm{i}"] = K.qgemm(inp[f"a{i}"], int(inp[f"zp{i}"]), K.pack_weight(inp[f"w{i}"]))
    p7 = K.pack_weight(inp[f"w7_{i}"])
    res[f"gemm7_{i}"], res[f"kind7_{i}"] = K.qgemm(inp[f"a{i}"], int(inp[f"zp{i}"]), p7), p7.tile_kind
    pa7 = K.pack_weight(inp[f"w{i}"], act_max=127)  # 8-bit weights, 7-bit activations: U8S8 on AVX2 hosts too
    res[f"dyn7_{i}"] = K.qlinear_dynamic(inp[f"x{i}"], pa7, inp[f"s{i}"], None, reduce_range=True)
    res[f"kinda7_{i}"] = pa7.tile_kind
for i, stride in enumerate(STRIDES):
    res[f"conv{i}"] = qconv2d(inp["x"], 7, K.pack_weight(inp["wc"]), stride, 1, 1, 1, inp["bias"], inp["mult"], 3,
                              False, weight=inp["wc"])
res["conv7"] = qconv2d(inp["x"], 7, K.pack_weight(inp["wc7"]), STRIDES[0], 1, 1, 1, inp["bias"], inp["mult"], 3,
                       False, weight=inp["wc7"])  # (the im2row GEMM with 7-bit weights)
np.savez(sys.argv[2], **res)
"""


@pytest.mark.parametrize("kind", ["avx2", "numba"])
def test_tile_kind_matches_the_numpy_references(kind, tmp_path):
    rng = np.random.default_rng(3)
    inp = {}
    for i, (m, k, n) in enumerate(GEMMS):
        a, w = rng.integers(0, 256, (m, k)).astype(np.uint8), rng.integers(-128, 128, (n, k)).astype(np.int8)
        a[0], w[0] = 255, -128  # saturating extremes
        w7 = rng.integers(-64, 65, (n, k)).astype(np.int8)  # 7-bit weights: the U8S8 tile on AVX2 hosts
        w7[0], w7[-1] = -64, 64
        inp.update({f"a{i}": a, f"w{i}": w, f"w7_{i}": w7, f"zp{i}": np.int64(rng.integers(0, 256))})
        # float rows for the dynamic layer with 7-bit activations: row 0 all at the maximum (code 127) against
        # weight rows of -128 and 127 (int16 pair sums of -32512 and 32258: the tile must not saturate)
        x = rng.uniform(-2, 5, (m, k)).astype(np.float32)
        x[0], x[-1, 0] = 5, -2
        w[:2] = [[-128], [127]]
        inp.update({f"x{i}": x, f"s{i}": rng.uniform(1e-3, 1e-2, n).astype(np.float32)})
    inp.update(x=rng.integers(0, 256, (2, 5, 9, 8)).astype(np.uint8),  # 5 channels: a quad and a padded one
               wc=rng.integers(-128, 128, (40, 5, 3, 3)).astype(np.int8),  # 40 outputs: 8-channel blocks, a tail
               wc7=rng.integers(-64, 65, (40, 5, 3, 3)).astype(np.int8),
               bias=rng.integers(-4000, 4000, 40).astype(np.int32), mult=rng.uniform(2e-4, 3e-3, 40).astype(np.float32))
    np.savez(tmp_path / "in.npz", **inp)
    script = tmp_path / "run.py"
    script.write_text(f"GEMMS = {GEMMS!r}\nSTRIDES = {CONV_STRIDES!r}\n" + _SCRIPT)
    env = {"EMBER_INT8_TILE": "avx2"} if kind == "avx2" else {"EMBER_INT8_VNNI": "0"}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                         capture_output=True, text=True, env={**os.environ, **env})
    assert res.returncode == 0, res.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    if kind == "avx2":
        if int(out["gemm_kind"]) == 0:
            pytest.skip("no AVX2 (or no llvmlite native codegen)")
        assert int(out["gemm_kind"]) == 2 and int(out["conv_tile"]) == 1
        assert all(int(out[f"kind7_{i}"]) == 3 for i in range(len(GEMMS)))  # (vnni.U8S8)
        assert all(int(out[f"kinda7_{i}"]) == 3 for i in range(len(GEMMS)))
    else:
        assert int(out["gemm_kind"]) == 0 and int(out["conv_tile"]) == 0
    for i in range(len(GEMMS)):
        np.testing.assert_array_equal(out[f"gemm{i}"], ref_acc(inp[f"a{i}"], int(inp[f"zp{i}"]), inp[f"w{i}"]),
                                      err_msg=f"GEMM {GEMMS[i]}")
        np.testing.assert_array_equal(out[f"gemm7_{i}"], ref_acc(inp[f"a{i}"], int(inp[f"zp{i}"]), inp[f"w7_{i}"]),
                                      err_msg=f"GEMM {GEMMS[i]}, 7-bit weights")
        np.testing.assert_array_equal(out[f"dyn7_{i}"], ref_dynamic(inp[f"x{i}"], inp[f"w{i}"], inp[f"s{i}"], None,
                                                                    reduce_range=True),
                                      err_msg=f"dynamic linear {GEMMS[i]}, 7-bit activations")
    for i, stride in enumerate(CONV_STRIDES):
        acc = ref_conv_acc(inp["x"], 7, inp["wc"], stride, (1, 1), (1, 1), 1)
        want = ref_requant(acc.transpose(0, 2, 3, 1), inp["bias"], inp["mult"], 3, False, np.uint8).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(out[f"conv{i}"], want, err_msg=f"conv, stride {stride}")
    acc = ref_conv_acc(inp["x"], 7, inp["wc7"], CONV_STRIDES[0], (1, 1), (1, 1), 1)
    want = ref_requant(acc.transpose(0, 2, 3, 1), inp["bias"], inp["mult"], 3, False, np.uint8).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(out["conv7"], want, err_msg="conv, 7-bit weights")


def test_weights_packed_for_seven_bit_activations_refuse_full_range_ones():
    """On AVX2 hosts such a weight runs the U8S8 tile, which would saturate for activation codes above 127: every
    kernel that quantizes to 0 .. 255 refuses it, naming the act_max to pack with."""
    w = np.random.default_rng(0).integers(-128, 128, (6, 20)).astype(np.int8)
    p7 = K.pack_weight(w, act_max=127)
    x = np.ones((2, 20), np.float32)
    with pytest.raises(ValueError, match=r"qlinear_dynamic: the weight was packed for activation codes up to 127"):
        K.qlinear_dynamic(x, p7, np.float32(0.1))
    with pytest.raises(ValueError, match=r"qgemm: .* up to 127 .* act_max=255"):
        K.qgemm(np.zeros((2, 20), np.uint8), 0, p7)
    with pytest.raises(ValueError, match=r"act_max must be 255 .* or 127"):
        K.pack_weight(w, act_max=200)
    xr = np.random.default_rng(1).standard_normal((5, 20)).astype(np.float32)
    np.testing.assert_array_equal(K.qlinear_dynamic(xr, p7, np.float32(0.1), reduce_range=True),
                                  ref_dynamic(xr, w, np.full(6, 0.1, np.float32), None, reduce_range=True))
