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
from ember.serialize import trace
from reference_models import CNN, MLP, Block, warm_batchnorm

BATCHES = (1, 2, 37)
SEQ_SHAPES = [(2, 3), (3, 12)]  # the transformer block also runs at other sequence lengths

# The fresh process: only ember and numpy, driven by a JSON job file. It reports the modules it ended up
# with so the test can check that nothing of the tests (where the models live) was imported.
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


def _cases():
    """name -> (model, input maker, trace kwargs, extra input shapes beyond the batch sizes)."""
    rng = np.random.default_rng(0)
    ember.manual_seed(0)
    mlp, cnn, block = MLP(), CNN(), Block()
    warm_batchnorm(cnn, (8, 3, 8, 8), rng)
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
    leaked = [m for m in modules if m.split(".")[0] in ("tests", "test_roundtrip", "reference_models", "conftest", "torch",
                                                                 "safetensors")]
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
