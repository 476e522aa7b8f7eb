"""``ember info``: what it shows for a traced program and a checkpoint, and that bad or missing files
give the loader's message and exit status 2, never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import safetensors.numpy

import ember
import ember.nn as nn
from ember import safetensors_io
from ember.cli.main import main
from ember.serialize import FormatError, load, trace


def run_cli(*args):
    """The CLI in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ember.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _model():
    ember.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).eval()


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    model = _model()
    prog = trace(model, ember.randn(2, 1, 8, 8))
    path = tmp_path_factory.mktemp("cli") / "model.ember"
    prog.save(path, metadata={"task": "digits", "author": "tests"})
    return path, model, load(path)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    model = _model()
    path = tmp_path_factory.mktemp("cli") / "ckpt.ember"
    ember.save({"model": model.state_dict(), "epoch": 3, "best": 0.5, "note": "warm start"}, path)
    return path, model


def test_info_on_a_program(program_file):
    path, model, prog = program_file
    out = run_cli("info", path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "ember.program 1.0" in text and f"ember {ember.__version__}" in text
    assert "input: float32[batch, 1, 8, 8]" in text
    assert "output: float32[batch, 10]" in text
    for op, n in Counter(node.op for node in prog.graph.nodes).items():
        assert any(line.split() == [op, str(n)] for line in text.splitlines()), (op, n, text)
    n_params = sum(int(np.prod(a.shape)) for a in prog.graph.constants.values())
    assert n_params > sum(p.numel() for p in model.parameters())  # the BatchNorm statistics count too
    assert f"parameters:  {n_params:,} in {len(prog.graph.constants)} constants" in text
    assert "task: digits" in text and "author: tests" in text
    assert prog.code not in text


def test_info_code_prints_the_listing(program_file):
    path, _, prog = program_file
    out = run_cli("info", path, "--code")
    assert out.returncode == 0, out.stderr
    assert prog.code in out.stdout
    assert "conv2d(input, 0.weight, 0.bias" in out.stdout


def test_info_json(program_file, capsys):
    path, _, prog = program_file
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "program" and info["format_version"] == "1.0"
    assert info["signature"] == prog.signature
    assert info["ops"] == dict(Counter(node.op for node in prog.graph.nodes))
    assert info["parameters"] == sum(a.size for a in prog.graph.constants.values())
    assert info["parameter_bytes"] == sum(a.nbytes for a in prog.graph.constants.values())
    assert info["metadata"] == {"task": "digits", "author": "tests"}
    assert "code" not in info
    assert main(["info", str(path), "--json", "--code"]) == 0
    assert json.loads(capsys.readouterr().out)["code"] == prog.code


def test_info_on_a_checkpoint(checkpoint_file):
    path, model = checkpoint_file
    out = run_cli("info", path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "ember.checkpoint 1.0" in text and "checkpoint" in text
    state = model.state_dict()
    total = 0
    for name, t in state.items():
        arr = t.numpy()
        total += arr.nbytes
        shape = ", ".join(map(str, arr.shape))
        row = [f"model/{name}", f"{arr.dtype.name}[{shape}]"]
        assert any(line.split(None, 1) == row for line in text.splitlines()), (row, text)
    assert f"tensors:     {len(state)} ({total / 1024:.1f} KiB)" in text
    assert "epoch: 3" in text and "best: 0.5" in text and "note: 'warm start'" in text


def test_info_on_a_plain_safetensors_file(tmp_path, capsys):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"w": np.ones((2, 3), np.float32)}, str(path), metadata={"source": "elsewhere"})
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "plain safetensors" in text and "float32[2, 3]" in text and "source: elsewhere" in text


def test_truncated_file_exit_2_with_the_loaders_message(program_file, tmp_path):
    path = tmp_path / "cut.ember"
    path.write_bytes(program_file[0].read_bytes()[:300])
    with pytest.raises(FormatError) as e:
        load(path)
    out = run_cli("info", path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert str(e.value) in out.stderr and "Traceback" not in out.stderr


def test_missing_file(tmp_path):
    out = run_cli("info", tmp_path / "nope.ember")
    assert out.returncode == 2
    assert "nope.ember: no such file" in out.stderr and "Traceback" not in out.stderr


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


@pytest.mark.parametrize("damage", [
    lambda d: b"",
    lambda d: d[:7],
    lambda d: d[:-1],
    lambda d: _flip(d, len(d) - 3),  # in the data: the checksum catches it
    lambda d: _flip(d, 40),  # in the header JSON
    lambda d: (2 ** 63).to_bytes(8, "little") + d[8:],
    lambda d: b"not a model at all, just some text" * 3,
], ids=["empty", "7-bytes", "short-by-one", "data-bit", "header-bit", "huge-header", "text"])
def test_bad_files_give_the_format_error(program_file, tmp_path, capsys, damage):
    path = tmp_path / "bad.ember"
    path.write_bytes(damage(program_file[0].read_bytes()))
    with pytest.raises(FormatError) as e:
        load(path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"ember info: {e.value}"


def test_newer_major_version_asks_to_upgrade(program_file, tmp_path, capsys):
    c = safetensors_io.read(program_file[0])
    meta = {k: v for k, v in c.metadata.items() if k != safetensors_io.CHECKSUM_KEY}
    meta["format_version"] = "9.0"
    path = tmp_path / "future.ember"
    safetensors_io.write(path, {k: np.array(v) for k, v in c.tensors.items()}, meta)
    c.close()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "format 9.0" in err and "upgrade ember" in err


def test_a_directory_and_no_command(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_console_script_is_installed(program_file):
    script = shutil.which("ember", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the `ember` console script is not installed in this environment (pip install -e .)")
    out = subprocess.run([script, "info", str(program_file[0])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ember.program" in out.stdout
