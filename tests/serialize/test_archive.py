"""The .ember archive: round trips (in-process, in a fresh interpreter, through the safetensors package),
every validation rule as a FormatError with a useful message, mutation fuzzing and atomic saves."""
from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ember
import ember.serialize
from ember import safetensors_io
from ember.ops.registry import list_ops
from ember.serialize import Graph, Node, Program, Sym
from ember.serialize import FormatError, load, save
from ember.serialize.archive import FORMAT_VERSION

RNG = np.random.default_rng(0)
W = RNG.standard_normal((3, 4)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def mlp_graph() -> Graph:
    """x[batch, 4] -> linear(w, b) -> relu."""
    g = Graph()
    g.add_value("x", "float32", ("batch", 4))
    g.add_value("fc.weight", "float32", (3, 4))
    g.add_value("fc.bias", "float32", (3,))
    g.add_value("h", "float32", ("batch", 3))
    g.add_value("y", "float32", ("batch", 3))
    g.constants = {"fc.weight": W, "fc.bias": B}
    g.inputs, g.outputs = ["x"], ["y"]
    g.nodes = [Node("linear", ["x", "fc.weight", "fc.bias"], ["h"]), Node("relu", ["h"], ["y"])]
    return g


def mlp_reference(x):
    return np.maximum(x @ W.T + B, 0)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "mlp.ember"
    save(Program(mlp_graph(), metadata={"task": "digits"}), path, metadata={"author": "tests"})
    return path


def test_round_trip_outputs_signature_metadata(saved):
    prog = Program(mlp_graph(), metadata={"task": "digits"})
    loaded = load(saved)
    for batch in (1, 2, 37):
        x = RNG.standard_normal((batch, 4)).astype(np.float32)
        out = loaded(ember.from_numpy(x)).numpy()
        np.testing.assert_array_equal(out, prog(x).numpy())
        np.testing.assert_allclose(out, mlp_reference(x), atol=1e-6, rtol=1e-5)
    assert loaded.signature == prog.signature
    assert loaded.metadata == {"task": "digits", "author": "tests"}
    assert loaded.code == prog.code


def test_constants_are_read_only_views_of_the_file(saved):
    loaded = load(saved)
    w = loaded.graph.constants["fc.weight"]
    np.testing.assert_array_equal(w, W)
    assert not w.flags.writeable and not w.flags.owndata
    base = w
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)  # zero-copy: memory of the mapped file


def test_program_save_method_and_argument_override(tmp_path):
    path = tmp_path / "m.ember"
    Program(mlp_graph(), metadata={"a": "1", "b": "2"}).save(path, metadata={"b": "3"})
    assert load(path).metadata == {"a": "1", "b": "3"}


def test_file_opens_with_the_safetensors_package(saved):
    tensors = safetensors.numpy.load_file(str(saved))
    assert sorted(tensors) == ["fc.bias", "fc.weight"]
    np.testing.assert_array_equal(tensors["fc.weight"], W)
    np.testing.assert_array_equal(tensors["fc.bias"], B)
    meta = safetensors_io.read(saved).metadata
    assert meta["format"] == "ember.program" and meta["format_version"] == FORMAT_VERSION
    assert meta["producer"] == f"ember {ember.__version__}"
    assert json.loads(meta["graph"]) == mlp_graph().to_json()


def test_sym_ref_to_a_constant_scalar(tmp_path):
    # a reshape target held in an int64 scalar value: the runtime resolves {"sym": "n"} per call
    g = Graph()
    g.add_value("x", "float32", ("batch", 3, 4))
    g.add_value("n", "int64", ())
    g.add_value("y", "float32", ("batch", 12))
    g.constants = {"n": np.array(12, dtype=np.int64)}
    g.inputs, g.outputs = ["x"], ["y"]
    g.nodes = [Node("reshape", ["x"], ["y"], {"shape": (-1, Sym("n"))})]
    path = tmp_path / "sym.ember"
    save(Program(g), path)
    loaded = load(path)
    assert loaded.graph.nodes[0].attrs["shape"] == (-1, Sym("n"))
    x = RNG.standard_normal((5, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), x.reshape(5, 12))


@pytest.mark.skipif("sym_size" not in list_ops(), reason="the core has no sym_size op yet (symbolic shape arithmetic)")
def test_reshape_with_a_sym_computed_by_a_node(tmp_path):
    g = Graph()
    g.add_value("x", "float32", ("batch", 3, 4))
    g.add_value("b", "int64", ())
    g.add_value("y", "float32", ("batch", 12))
    g.inputs, g.outputs = ["x"], ["y"]
    g.nodes = [Node("sym_size", ["x"], ["b"], {"dim": 0}), Node("reshape", ["x"], ["y"], {"shape": (Sym("b"), -1)})]
    path = tmp_path / "symsize.ember"
    save(Program(g), path)
    loaded = load(path)
    for batch in (1, 2, 37):
        x = RNG.standard_normal((batch, 3, 4)).astype(np.float32)
        np.testing.assert_array_equal(loaded(x).numpy(), x.reshape(batch, 12))


def test_loads_in_a_fresh_interpreter(saved, tmp_path):
    x = RNG.standard_normal((37, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, ember.serialize\n"
            "from ember.serialize import load\n"
            "prog = load(sys.argv[1])\n"
            "np.save(sys.argv[3], prog(np.load(sys.argv[2])).numpy())\n")
    subprocess.run([sys.executable, "-c", code, str(saved), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), mlp_reference(x), atol=1e-6, rtol=1e-5)


def test_the_example_in_the_format_doc_loads(tmp_path):
    text = (Path(__file__).parents[2] / "docs" / "format.md").read_text()
    graph_text, signature_text = re.findall(r"```json\n(.*?)```", text, re.S)[:2]
    meta = {"format": "ember.program", "format_version": "1.0", "producer": "docs", "graph": graph_text,
            "signature": signature_text, "metadata": "{}"}
    safetensors_io.write(tmp_path / "doc.ember", {"fc.weight": W, "fc.bias": B}, meta)
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(load(tmp_path / "doc.ember")(x).numpy(), x @ W.T + B, atol=1e-6, rtol=1e-5)


def test_format_error_is_the_containers():
    assert FormatError is safetensors_io.FormatError and issubclass(FormatError, ValueError)


# ---- malformed files ------------------------------------------------------------------------------
def rewrite(src, dst, edit):
    """Re-encode ``src`` after ``edit(tensors, meta, graph)`` changed them in place; the checksum is new."""
    c = safetensors_io.read(src)
    tensors = {k: np.array(v) for k, v in c.tensors.items()}
    meta = {k: v for k, v in c.metadata.items() if k != safetensors_io.CHECKSUM_KEY}
    c.close()
    original = meta["graph"]
    graph = json.loads(original)
    edit(tensors, meta, graph)
    if meta.get("graph") == original:  # the edit changed the parsed graph, not the string
        meta["graph"] = json.dumps(graph)
    safetensors_io.write(dst, tensors, meta)
    return dst


def node(graph, op):
    return next(n for n in graph["nodes"] if n["op"] == op)


def value(graph, name):
    return next(v for v in graph["values"] if v["name"] == name)


def _set(d, key, val):
    d[key] = val


def softmax_dim(dim):
    """An edit that turns the relu node into ``softmax(h, dim=dim)``."""
    def edit(tensors, meta, graph):
        n = node(graph, "relu")
        n["op"], n["attrs"] = "softmax", {"dim": dim}
    return edit


CASES = {
    "no format": (lambda t, m, g: m.pop("format"), "has no 'format' entry"),
    "checkpoint": (lambda t, m, g: _set(m, "format", "ember.checkpoint"), "this is a checkpoint"),
    "foreign format": (lambda t, m, g: _set(m, "format", "pt"), "expected 'ember.program'"),
    "newer major": (lambda t, m, g: _set(m, "format_version", "2.0"),
                    f"in format 2.0; this is ember {ember.__version__}, which reads 1.x: upgrade"),
    "bad version": (lambda t, m, g: _set(m, "format_version", "1"), "must be 'major.minor'"),
    "unknown key": (lambda t, m, g: _set(m, "quantization", "int8"), "does not know: ['quantization']"),
    "missing graph": (lambda t, m, g: m.pop("graph"), "has no 'graph' entry"),
    "graph not json": (lambda t, m, g: _set(m, "graph", '{"nodes": ['), "['graph'] is not valid JSON"),
    "graph duplicate key": (lambda t, m, g: _set(m, "graph", '{"a": 1, "a": 2}'), "duplicate key 'a'"),
    "graph not object": (lambda t, m, g: _set(m, "graph", "[]"), "graph: must be a JSON object, got list"),
    "graph extra key": (lambda t, m, g: _set(g, "code", "import os"), "expected exactly ['constants'"),
    "node extra key": (lambda t, m, g: _set(g["nodes"][0], "python", "x"), "node 0: has keys"),
    "nodes not list": (lambda t, m, g: _set(g, "nodes", {}), "nodes must be a list"),
    "value bad dtype": (lambda t, m, g: _set(value(g, "h"), "dtype", "object"), "unknown dtype 'object'"),
    "value bool dim": (lambda t, m, g: _set(value(g, "h"), "shape", [True, 3]), "shape must be a list"),
    "value twice": (lambda t, m, g: g["values"].append(dict(value(g, "h"))), "'h' is declared twice"),
    "unknown op": (lambda t, m, g: _set(node(g, "relu"), "op", "os.system"), "unknown op 'os.system'"),
    "op not a string": (lambda t, m, g: _set(node(g, "relu"), "op", ["relu"]), "op must be a string"),
    "newer op version": (lambda t, m, g: _set(node(g, "relu"), "version", 7),
                         "op 'relu' version 7 is newer than this ember's (1)"),
    "unknown attr": (lambda t, m, g: _set(node(g, "relu"), "attrs", {"inplace": True}),
                     "unknown attribute 'inplace' for op 'relu'"),
    "attr object": (softmax_dim({"eval": "1"}), "attribute values are JSON"),
    "attr too deep": (softmax_dim(json.loads("[" * 40 + "]" * 40)), "nested deeper than"),
    "undefined input": (lambda t, m, g: _set(node(g, "relu"), "inputs", ["nowhere"]),
                        "input 'nowhere' is used before it is defined"),
    "use before def": (lambda t, m, g: g["nodes"].reverse(), "node 0 (relu): input 'h' is used before"),
    "cycle": (lambda t, m, g: _set(node(g, "linear"), "inputs", ["y", "fc.weight", "fc.bias"]),
              "input 'y' is used before it is defined"),
    "defined twice": (lambda t, m, g: _set(node(g, "relu"), "outputs", ["x"]),
                      "output 'x' is defined twice (already a graph input)"),
    "two outputs for one": (lambda t, m, g: _set(node(g, "relu"), "outputs", ["y", "h"]), "has 2 outputs"),
    "output undefined": (lambda t, m, g: _set(g, "outputs", ["zzz"]), "output 'zzz' is not defined"),
    "orphan value": (lambda t, m, g: g["values"].append({"name": "z", "dtype": "float32", "shape": []}),
                     "['z'] are declared but nothing defines them"),
    "constant missing": (lambda t, m, g: t.pop("fc.bias"), "constants ['fc.bias'] are not stored"),
    "extra tensor": (lambda t, m, g: _set(t, "payload", np.zeros(3, np.float32)),
                     "tensors ['payload'] are stored but are not constants"),
    "constant dtype": (lambda t, m, g: _set(t, "fc.bias", B.astype(np.float64)),
                       "'fc.bias' is stored as float64[3], but its value says float32[3]"),
    "constant shape": (lambda t, m, g: _set(t, "fc.weight", W.reshape(4, 3)), "stored as float32[4, 3]"),
    "symbolic constant": (lambda t, m, g: _set(value(g, "fc.bias"), "shape", ["n"]), "has a symbolic shape"),
    "sym undefined": (softmax_dim({"sym": "n"}), "refers to value 'n', which is not defined before this node"),
    "sym not int64": (softmax_dim({"sym": "fc.bias"}), "a sym ref needs an int64 scalar"),
    "signature": (lambda t, m, g: _set(m, "signature", '{"inputs": [], "outputs": []}'),
                  "does not describe the graph's inputs"),
    "user metadata": (lambda t, m, g: _set(m, "metadata", '{"a": 1}'), "must be a JSON object of strings"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_errors(saved, tmp_path, case):
    edit, fragment = CASES[case]
    bad = rewrite(saved, tmp_path / "bad.ember", edit)
    with pytest.raises(FormatError) as e:
        load(bad)
    assert fragment in str(e.value)
    assert str(bad) in str(e.value)


def test_newer_minor_version_loads(saved, tmp_path):
    newer = rewrite(saved, tmp_path / "v1.9.ember", lambda t, m, g: _set(m, "format_version", "1.9"))
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(load(newer)(x).numpy(), mlp_reference(x), atol=1e-6, rtol=1e-5)


def test_checkpoints_are_pointed_to_ember_load(tmp_path):
    path = tmp_path / "ckpt.ember"
    ember.save({"w": ember.from_numpy(W)}, path)
    with pytest.raises(FormatError, match="this is a checkpoint.*use ember.load"):
        load(path)


def test_hostile_container_headers(saved, tmp_path):
    raw = saved.read_bytes()
    huge = tmp_path / "huge.ember"
    huge.write_bytes((1 << 63).to_bytes(8, "little") + raw[8:])
    with pytest.raises(FormatError, match="over the 100000000 byte limit"):
        load(huge)
    head = json.dumps({"t": {"dtype": "F32", "shape": [10 ** 15], "data_offsets": [0, 4 * 10 ** 15]}}).encode()
    big = tmp_path / "big.ember"
    big.write_bytes(len(head).to_bytes(8, "little") + head)
    with pytest.raises(FormatError, match="outside the 0-byte data section"):
        load(big)


def test_save_refuses_what_load_would_refuse(tmp_path):
    g = mlp_graph()
    g.nodes[1].attrs = {"negative_slope": float("nan")}
    g.nodes[1].op = "leaky_relu"
    with pytest.raises(ValueError, match="cannot save.*NaN"):
        save(Program(g), tmp_path / "nan.ember")
    g = mlp_graph()
    g.constants["fc.bias"] = B.astype(np.float64)
    with pytest.raises(ValueError, match="'fc.bias' is stored as float64"):
        save(Program(g), tmp_path / "dtype.ember")
    with pytest.raises(TypeError, match="metadata must map str to str"):
        save(Program(mlp_graph()), tmp_path / "meta.ember", metadata={"epoch": 3})
    assert not list(tmp_path.iterdir())


def test_interrupted_save_keeps_the_old_file(saved, monkeypatch):
    before = saved.read_bytes()
    calls = []

    def fail_second_write(f, buf):
        calls.append(len(buf))
        if len(calls) == 2:
            raise KeyboardInterrupt
        f.write(buf)

    monkeypatch.setattr(safetensors_io, "_write_bytes", fail_second_write)
    g = mlp_graph()
    g.constants = {k: v * 2 for k, v in g.constants.items()}
    with pytest.raises(KeyboardInterrupt):
        save(Program(g), saved)
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]
    np.testing.assert_array_equal(load(saved).graph.constants["fc.weight"], W)


# ---- mutation fuzzing --------------------------------------------------------------------------------
_VALID = {}


def _valid_bytes(tmp_path_factory):
    if "raw" not in _VALID:
        path = tmp_path_factory.mktemp("fuzz") / "valid.ember"
        save(Program(mlp_graph()), path)
        _VALID["raw"] = path.read_bytes()
        _VALID["graph"] = safetensors_io.read(path).metadata["graph"]
    return _VALID["raw"]


def _load_or_format_error(path, verify):
    try:
        load(path, verify=verify)
    except FormatError:
        pass


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), verify=st.booleans())
def test_byte_mutations_give_format_error_or_a_program(tmp_path_factory, data, verify):
    raw = bytearray(_valid_bytes(tmp_path_factory))
    kind = data.draw(st.sampled_from(["flip", "truncate", "overwrite"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            chunk = data.draw(st.binary(min_size=1, max_size=16))
            raw[pos:pos + len(chunk)] = chunk
    path = tmp_path_factory.mktemp("m") / "m.ember"
    path.write_bytes(bytes(raw))
    _load_or_format_error(path, verify)


def _paths(obj, prefix=()):
    """Every position in a JSON tree, as a tuple of keys and indices."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


_NAMES = st.sampled_from(["x", "h", "y", "fc.weight", "fc.bias", "batch", "linear", "relu", "reshape", "sym_size"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=False, allow_infinity=False) | _NAMES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES | st.just("sym"), inner, max_size=2)
    | st.builds(lambda n: {"sym": n}, _NAMES),
    max_leaves=6)


def _write_graph(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("g") / "g.ember"
    meta = {"format": "ember.program", "format_version": "1.0", "producer": "fuzz", "graph": text,
            "signature": json.dumps(Program(mlp_graph()).signature), "metadata": "{}"}
    safetensors_io.write(path, {"fc.weight": W, "fc.bias": B}, meta)
    return path


@settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_graph_tree_mutations_give_format_error_or_a_program(tmp_path_factory, data):
    # a valid container (fresh checksum) around a graph with parts replaced or deleted: fuzzes the validator
    tree = mlp_graph().to_json()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(tree))[1:]))
        parent = tree
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(_JSON)
        else:
            del parent[path[-1]]
    _load_or_format_error(_write_graph(tmp_path_factory, json.dumps(tree)), True)


_GRAPH_CHARS = '{}[]",:0123456789-.abcdefghijklmnopqrstuvwxyz_ ' + "\\"


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_graph_text_mutations_give_format_error_or_a_program(tmp_path_factory, data):
    _valid_bytes(tmp_path_factory)
    text = _VALID["graph"]
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 4))
        text = text[:pos] + data.draw(st.text(alphabet=_GRAPH_CHARS, max_size=6)) + text[pos + cut:]
    _load_or_format_error(_write_graph(tmp_path_factory, text), True)


def test_program_run_takes_and_returns_numpy_by_name():
    """Program.run is ORT's session.run shape: a name -> array dict in, one out; the same checks as a call."""
    from reference_models import MLP

    ember.manual_seed(0)
    model = MLP().eval()
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    prog = ember.serialize.trace(model, ember.from_numpy(x[:2]), input_names=["x"], output_names=["y"])
    out = prog.run({"x": x})
    assert list(out) == ["y"] and isinstance(out["y"], np.ndarray)
    with ember.no_grad():
        np.testing.assert_allclose(out["y"], model(ember.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="no input named 'z'"):
        prog.run({"z": x})
    with pytest.raises(ValueError, match="dim 1 must be 20"):
        prog.run({"x": x[:, :19]})
