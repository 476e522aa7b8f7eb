"""``to_onnx`` as a user calls it: modules and Programs, names, metadata, opsets, external data, atomic
writes, and the errors for what cannot be exported; plus the ``ember export`` command."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import ember
import ember.nn as nn
from ember.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportError, lowering_table, to_onnx
from ember.export import onnx_export
from ember.export.lowering import Lowering
from ember.ops.registry import apply, list_ops
from ember.serialize import trace

from .onnx_check import assert_same, ort_session

rng = np.random.default_rng(5)


def _linear(i=4, o=3):
    ember.manual_seed(0)
    return nn.Linear(i, o).eval()


def _x(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_every_registry_op_has_a_lowering_or_a_stated_refusal():
    table = lowering_table()
    missing = [op for op in list_ops() if op not in table]
    assert missing == [], f"ops without an ONNX lowering or refusal in ember/export: {missing}"
    assert sorted(set(table) - set(list_ops())) == [], "lowerings for ops the registry does not have"
    for op, low in table.items():
        assert (low.fn is None) == bool(low.reason), op


def test_module_and_program_export_the_same_graph(tmp_path):
    model, x = _linear(), _x(2, 4)
    a = to_onnx(model, tmp_path / "a.onnx", example_inputs=ember.tensor(x))
    prog = trace(model, ember.tensor(x))
    b = prog.to_onnx(tmp_path / "b.onnx")
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node] == ["Gemm"]
    got = ort_session(str(tmp_path / "b.onnx")).run(None, {"input": _x(5, 4)[:3]})[0]
    assert got.shape == (3, 3)
    assert onnx.load(str(tmp_path / "a.onnx")) == a


def test_names_dims_producer_metadata_and_doc_strings(tmp_path):
    prog = trace(_linear(), ember.tensor(_x(2, 4)), metadata={"task": "demo"})
    m = to_onnx(prog, tmp_path / "m.onnx", metadata={"author": "tests"})
    assert m.producer_name == "ember" and m.producer_version == ember.__version__
    assert m.opset_import[0].version == DEFAULT_OPSET and m.opset_import[0].domain == ""
    assert {p.key: p.value for p in m.metadata_props} == {"task": "demo", "author": "tests"}
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "input" and out.name == "output"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 4]
    assert "ember op 'linear'" in m.graph.node[0].doc_string
    renamed = to_onnx(prog, tmp_path / "r.onnx", input_names=["pixels"], output_names=["logits"])
    assert renamed.graph.input[0].name == "pixels" and renamed.graph.output[0].name == "logits"
    x = _x(6, 4)
    got = ort_session(str(tmp_path / "r.onnx")).run(["logits"], {"pixels": x})[0]
    assert_same(got, prog(x).numpy(), "renamed model")


def test_bad_names_and_metadata_are_refused(tmp_path):
    prog = trace(_linear(), ember.tensor(_x(2, 4)))
    with pytest.raises(ValueError, match="input_names must be 1 non-empty strings"):
        to_onnx(prog, tmp_path / "m.onnx", input_names=["a", "b"])
    with pytest.raises(TypeError, match="metadata must map str to str"):
        to_onnx(prog, tmp_path / "m.onnx", metadata={"epochs": 3})
    assert not os.listdir(tmp_path)


def test_opset_choice(tmp_path):
    prog = trace(_linear(), ember.tensor(_x(2, 4)))
    assert MIN_OPSET == 17 and DEFAULT_OPSET <= MAX_OPSET <= onnx.defs.onnx_opset_version()
    assert to_onnx(prog, tmp_path / "m.onnx", opset=MAX_OPSET).opset_import[0].version == MAX_OPSET
    m = to_onnx(prog, tmp_path / "m.onnx", opset=MIN_OPSET)
    assert m.opset_import[0].version == MIN_OPSET
    assert m.ir_version == onnx.helper.find_min_ir_version_for(list(m.opset_import))
    for bad in (16, MAX_OPSET + 1, "18", 17.0, True):
        with pytest.raises(ValueError, match=f"opset must be an int from {MIN_OPSET} to {MAX_OPSET}"):
            to_onnx(prog, tmp_path / "m.onnx", opset=bad)


def test_module_needs_example_inputs_and_programs_keep_their_dims(tmp_path):
    with pytest.raises(TypeError, match="needs example_inputs"):
        to_onnx(_linear(), tmp_path / "m.onnx")
    prog = trace(_linear(), ember.tensor(_x(2, 4)))
    with pytest.raises(ValueError, match="trace it again"):
        to_onnx(prog, tmp_path / "m.onnx", dynamic_axes={"input": {0: "n"}})
    with pytest.raises(TypeError, match="expected an nn.Module, a function of tensors or a Program"):
        to_onnx("model.ember", tmp_path / "m.onnx")


def test_static_shapes_when_asked(tmp_path):
    m = to_onnx(_linear(), tmp_path / "m.onnx", example_inputs=ember.tensor(_x(2, 4)),
                dynamic_axes={"input": None})
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [2, 4]


def test_gradient_ops_are_refused_with_the_op_and_node(tmp_path):
    def f(x):
        return apply("relu_backward", x, x)

    prog = trace(f, ember.tensor(_x(2, 3)))
    with pytest.raises(ExportError, match=r"op 'relu_backward' \(node \d+: .*\) cannot be exported.*gradient"):
        to_onnx(prog, tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


def test_checker_failure_is_reported_as_an_ember_bug(tmp_path, monkeypatch):
    def broken(g, n):  # Gemm without its second input: the checker refuses it
        g.op("Gemm", n.inputs[:1], n.outputs)

    monkeypatch.setitem(lowering_table.__globals__["_LOWERINGS"], "linear", Lowering(broken, 17))
    with pytest.raises(ExportError, match=r"ember bug: the exported model fails onnx\.checker"):
        to_onnx(_linear(), tmp_path / "m.onnx", example_inputs=ember.tensor(_x(2, 4)))


def test_failed_export_leaves_an_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous model")

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "_fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        to_onnx(_linear(), path, example_inputs=ember.tensor(_x(2, 4)))
    assert path.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary files left behind


def test_large_constants_go_to_external_data_next_to_the_model(tmp_path):
    model = _linear(64, 32)
    x = _x(3, 64)
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    path = out_dir / "big.onnx"
    to_onnx(model, path, example_inputs=ember.tensor(x), external_data_threshold=1024)
    assert sorted(os.listdir(out_dir)) == ["big.onnx", "big.onnx.data"]
    m = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}  # relative, inside the model's directory
    onnx.checker.check_model(str(path), full_check=True)
    with ember.no_grad():
        want = model(ember.tensor(x)).numpy()
    os.chdir(tmp_path)  # ORT resolves the location against the model's directory, not the working one
    assert_same(ort_session(str(path)).run(None, {"input": x})[0], want, "external data model")
    # below the threshold: one self-contained file
    small = to_onnx(model, out_dir / "small.onnx", example_inputs=ember.tensor(x))
    assert not os.path.exists(out_dir / "small.onnx.data")
    assert all(not t.external_data for t in small.graph.initializer)


def test_path_must_name_a_file(tmp_path):
    with pytest.raises(ValueError, match="names a directory"):
        to_onnx(_linear(), str(tmp_path) + os.sep, example_inputs=ember.tensor(_x(2, 4)))


# ---- the command line ---------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ember.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_cli_export_round_trip(tmp_path):
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).eval()
    prog = trace(model, ember.tensor(_x(2, 4)))
    prog.save(tmp_path / "m.ember")
    r = _cli("export", tmp_path / "m.ember", "-o", tmp_path / "out.onnx", "--opset", MIN_OPSET)
    assert r.returncode == 0, r.stderr
    assert f"opset:       {MIN_OPSET}" in r.stdout and "input: float32[batch, 4]" in r.stdout
    assert "Gemm  2" in r.stdout
    x = _x(5, 4)
    assert_same(ort_session(str(tmp_path / "out.onnx")).run(None, {"input": x})[0], prog(x).numpy(), "cli export")
    r = _cli("export", tmp_path / "m.ember")  # default output name: beside the input
    assert r.returncode == 0 and os.path.exists(tmp_path / "m.onnx")


def test_cli_export_errors_are_one_line_and_status_2(tmp_path):
    r = _cli("export", tmp_path / "missing.ember")
    assert r.returncode == 2 and r.stderr.strip() == f"ember export: {tmp_path / 'missing.ember'}: no such file"
    (tmp_path / "junk.ember").write_bytes(b"\x00" * 16)
    r = _cli("export", tmp_path / "junk.ember")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("ember export:")
    prog = trace(_linear(), ember.tensor(_x(2, 4)))
    prog.save(tmp_path / "m.ember")
    r = _cli("export", tmp_path / "m.ember", "--opset", "99")
    assert r.returncode == 2 and "opset must be an int from" in r.stderr and "Traceback" not in r.stderr
