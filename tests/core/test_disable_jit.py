"""NUMBA_DISABLE_JIT=1 (numba kernels run as plain Python) still gives correct results on the paths that otherwise
call LLVM-IR machine code: a stride-1 convolution (conv tiles), the int8 dynamic MLP the runtime fuses into one
native task, and a static int8 CNN (int8 conv tiles, Winograd, table lookups). A fresh process (the flag is read at
import) writes its results; this process compares them with torch and with its own compiled kernels."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.serialize import load, trace

_SCRIPT = """
import sys
import numpy as np
import ember, numba
from ember.serialize import load
assert numba.config.DISABLE_JIT
inp = np.load(sys.argv[1])
conv = ember.nn.Conv2d(4, 6, 3, padding=1)
conv.load_state_dict({"weight": ember.from_numpy(inp["w"]), "bias": ember.from_numpy(inp["b"])})
res = {"conv": conv(ember.from_numpy(inp["x"])).detach().numpy()}
for name in ("mlp", "cnn"):
    res[name] = load(sys.argv[3] + f"/{name}.ember")(ember.from_numpy(inp[name + "_x"])).numpy()
np.savez(sys.argv[2], **res)
"""


def test_results_without_the_jit(tmp_path):
    rng = np.random.default_rng(5)
    inp = {"x": rng.standard_normal((2, 4, 9, 9)).astype(np.float32), "w": rng.standard_normal((6, 4, 3, 3)).astype(
        np.float32) * 0.2, "b": rng.standard_normal(6).astype(np.float32), "mlp_x": rng.standard_normal((5, 20)).astype(
        np.float32), "cnn_x": rng.standard_normal((3, 1, 12, 12)).astype(np.float32)}
    ember.manual_seed(0)
    mlp = Q.quantize_dynamic(nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                                           nn.Linear(16, 4)))
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(144, 10)).eval()
    cnn = Q.fuse_modules(cnn, [["0", "1"], ["3", "4"]])
    cnn.qconfig = Q.get_default_qconfig("x86")
    cnn = Q.quantize_static(cnn, [ember.randn(8, 1, 12, 12) for _ in range(2)], progress=False)
    progs = {}
    for name, model, x in (("mlp", mlp, inp["mlp_x"]), ("cnn", cnn, inp["cnn_x"])):
        trace(model, ember.from_numpy(x[:2])).save(str(tmp_path / f"{name}.ember"))
        progs[name] = load(str(tmp_path / f"{name}.ember"))(ember.from_numpy(x)).numpy()
    np.savez(tmp_path / "in.npz", **inp)
    subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), str(tmp_path)],
                   check=True, env=dict(os.environ, NUMBA_DISABLE_JIT="1"), timeout=600)
    out = np.load(tmp_path / "out.npz")
    want = torch.nn.functional.conv2d(torch.from_numpy(inp["x"]), torch.from_numpy(inp["w"]), torch.from_numpy(inp["b"]),
                                      padding=1).numpy()
    np.testing.assert_allclose(out["conv"], want, atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(out["mlp"], progs["mlp"])  # the int8 paths are exact: the same bits either way
    np.testing.assert_array_equal(out["cnn"], progs["cnn"])
