"""End to end: MLP, CNN and transformer block traced, saved, and run from the file in a fresh interpreter
that never defines or imports the model classes; outputs equal eager at several batch sizes, and the
file's tensors (read with the independent ``safetensors`` package) are the model's own parameters."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.serialize import trace

BATCHES = (1, 2, 37)
SEQ_SHAPES = [(2, 3), (3, 12)]  # the transformer block also runs at other sequence lengths

# The fresh process: only ember and numpy, driven by a JSON job file. It reports the modules it ended up
# with so the test can check that nothing of this test file (where the models live) was imported.
RUNNER = """
import json, sys
import numpy as np
import ember.serialize

job = json.load(open(sys.argv[1]))
for item in job:
    prog = ember.serialize.load(item["file"])
    for inp, out in item["runs"]:
        np.save(out, prog(np.load(inp)).numpy())
print(json.dumps(sorted(sys.modules)))
"""


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc3(F.gelu(self.fc2(x)) + x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.pool, self.avg = nn.MaxPool2d(2), nn.AvgPool2d(2)
        self.fc = nn.Linear(12 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.avg(F.relu(self.bn2(self.conv2(x))))
        return self.fc(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    """Embedding, pre-LayerNorm causal self-attention from matmul/softmax, GELU MLP, residuals."""

    def __init__(self, vocab=23, d=16, heads=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)
        self.heads = heads

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        h = self.ln1(x)
        hd = x.shape[-1] // self.heads
        q, k, v = (lin(h).reshape(b, t, self.heads, hd).permute(0, 2, 1, 3) for lin in (self.q, self.k, self.v))
        att = q @ k.transpose(-2, -1) / hd ** 0.5
        mask = ember.tril(ember.ones(t, t)) == 0
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).permute(0, 2, 1, 3).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def _warm_batchnorm(model, shape, rng):
    """A few training-mode passes so the running statistics are not the trivial 0 / 1."""
    model.train()
    for _ in range(3):
        model(ember.from_numpy(rng.standard_normal(shape).astype(np.float32) * 2 + 0.5))
    model.eval()


def _cases():
    """name -> (model, input maker, trace kwargs, extra input shapes beyond the batch sizes)."""
    rng = np.random.default_rng(0)
    ember.manual_seed(0)
    mlp, cnn, block = MLP(), CNN(), Block()
    _warm_batchnorm(cnn, (8, 3, 8, 8), rng)
    floats = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    tokens = lambda b, t=7: rng.integers(0, 23, (b, t)).astype(np.int64)  # noqa: E731
    return {
        "mlp": (mlp, lambda b: floats(b, 20), {}, []),
        "cnn": (cnn, lambda b: floats(b, 3, 8, 8), {}, []),
        # the sequence length is symbolic too: the causal mask is built from it at run time
        "block": (block, tokens, {"dynamic_axes": {"idx": {0: "batch", 1: "seq"}}}, SEQ_SHAPES),
    }


RUNS = [(name, (b,)) for name in ("mlp", "cnn", "block") for b in BATCHES] + [("block", s) for s in SEQ_SHAPES]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Trace and save every model, run all files in one fresh interpreter, return what to compare."""
    tmp = tmp_path_factory.mktemp("roundtrip")
    job, expected, models = [], {}, {}
    for name, (model, make, kwargs, extra) in _cases().items():
        model.eval()
        path = tmp / f"{name}.ember"
        prog = trace(model, ember.from_numpy(make(2)), **kwargs)
        prog.save(path)
        runs = []
        for args in [(b,) for b in BATCHES] + extra:
            x, tag = make(*args), f"{name}_{'x'.join(map(str, args))}"
            with ember.no_grad():
                expected[name, args] = model(ember.from_numpy(x)).numpy()
            np.save(tmp / f"{tag}_in.npy", x)
            runs.append([str(tmp / f"{tag}_in.npy"), str(tmp / f"{tag}_out.npy")])
        job.append({"file": str(path), "runs": runs})
        models[name] = (model, prog, path)
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "runner.py").write_text(RUNNER)
    # -I: no PYTHONPATH, no script or current directory on sys.path, so the tests folder is unreachable
    out = subprocess.run([sys.executable, "-I", str(tmp / "runner.py"), str(tmp / "job.json")],
                         capture_output=True, text=True, timeout=300, cwd=tmp)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    got = {(name, args): np.load(tmp / f"{name}_{'x'.join(map(str, args))}_out.npy") for name, args in expected}
    return models, expected, got, modules


@pytest.mark.parametrize("name, args", RUNS, ids=[f"{n}-{'x'.join(map(str, a))}" for n, a in RUNS])
def test_fresh_process_matches_eager(results, name, args):
    _, expected, got, _ = results
    want, have = expected[name, args], got[name, args]
    assert have.shape == want.shape and have.dtype == want.dtype
    np.testing.assert_allclose(have, want, rtol=0, atol=1e-6)


def test_fresh_process_never_saw_the_model_classes(results):
    _, _, _, modules = results
    assert "ember.serialize" in modules  # the report is real
    leaked = [m for m in modules if m.split(".")[0] in ("tests", "test_roundtrip", "conftest", "torch", "safetensors")]
    assert leaked == [], leaked


@pytest.mark.parametrize("name", ["mlp", "cnn", "block"])
def test_safetensors_package_reads_the_parameters(results, name):
    models, _, _, _ = results
    model, prog, path = models[name]
    tensors = safetensors.numpy.load_file(str(path))
    assert set(tensors) == set(prog.graph.constants)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    # every parameter, and every buffer the forward pass reads, under its state_dict name
    params = {k for k, _ in model.named_parameters()}
    assert params <= set(tensors), sorted(params - set(tensors))
    for key in set(tensors) & set(state):
        assert tensors[key].dtype == state[key].dtype and tensors[key].shape == state[key].shape, key
        np.testing.assert_array_equal(tensors[key], state[key], err_msg=key)
    # the rest are tensors the forward pass built from Python numbers (the attention scale, -inf ...)
    for key in set(tensors) - set(state):
        assert tensors[key].size <= 1, (key, tensors[key].shape)
    if name == "cnn":  # BatchNorm's running statistics (not parameters) travel too
        assert {"bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"} <= set(tensors)
