"""The ``.ember`` program archive: a safetensors file whose tensors are a graph's constants and whose
``__metadata__`` holds the graph, its signature and user metadata as JSON (docs/format.md).

``load`` maps the file and validates every part of it before building anything. Nothing in the file is
executed, imported or looked up except op names in ember's own registry.
"""
from __future__ import annotations

import json
import re

import numpy as np

import ember
from ember import safetensors_io
from ember.dtypes import ALL as _EMBER_DTYPES
from ember.ops.registry import _REGISTRY
from ember.safetensors_io import FormatError, strict_json

from .ir import Graph
from .program import Program

__all__ = ["save", "load", "FormatError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "ember.program"
FORMAT_VERSION = "1.0"
_CHECKPOINT_FORMAT = "ember.checkpoint"
_META_KEYS = ("format", "format_version", "producer", "graph", "signature", "metadata")
_GRAPH_KEYS = ("constants", "inputs", "nodes", "outputs", "values")
_VALUE_KEYS = ("dtype", "name", "shape")
_NODE_KEYS = ("attrs", "inputs", "op", "outputs", "version")
_DTYPES = {d.name: d.np for d in _EMBER_DTYPES}
_MAX_ATTR_DEPTH = 32
# Attributes the core's wrappers pass and the kernels take, but that these ops' register_op calls do not
# declare yet (core/ops/reduce.py); accepted here until the registry lists them.
# ---- save -------------------------------------------------------------------------------------
def save(program, path, metadata=None) -> None:
    """Write ``program`` to ``path`` atomically; ``metadata`` (str -> str) is merged over ``program.metadata``."""
    user = dict(program.metadata)
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"ember.serialize.save: metadata must map str to str, got {k!r}: {type(v).__name__}")
        user[k] = v
    graph = program.graph
    try:
        graph_json = graph.dumps()
    except (TypeError, ValueError) as e:
        raise TypeError(f"ember.serialize.save: the graph's attributes must be JSON data ({e})") from None
    try:  # never write a file that load would refuse
        _check_graph(strict_json(graph_json, "the graph"), "the graph")
        _check_constants(graph, graph.constants, "the graph")
    except FormatError as e:
        raise ValueError(f"ember.serialize.save: cannot save to {path}: {e}") from None
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": f"ember {ember.__version__}",
        "graph": graph_json,
        "signature": _dumps(program.signature),
        "metadata": _dumps(user),
    }
    safetensors_io.write(path, tensors=graph.constants, metadata=meta)


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)


# ---- load -------------------------------------------------------------------------------------
def load(path, device="cpu", verify=True) -> Program:
    """Map ``path`` and return its Program; constants are read-only zero-copy views of the file.
    ``verify`` checks the file's SHA-256 (it reads every byte)."""
    c = safetensors_io.read(path, verify=verify)
    try:
        graph, user = _decode(c)
        prog = Program(graph, metadata=user, device=device)
        signature = strict_json(c.metadata["signature"], f"{c.path}: __metadata__['signature']")
        if signature != prog.signature:
            raise FormatError(f"{c.path}: __metadata__['signature'] does not describe the graph's inputs and "
                              f"outputs (stored {c.metadata['signature']:.200}; the graph says "
                              f"{_dumps(prog.signature):.200})")
        return prog
    except BaseException:
        c.close()
        raise


def _decode(c):
    src, meta = c.path, c.metadata
    _check_header(meta, src)
    tree = strict_json(meta["graph"], f"{src}: __metadata__['graph']")
    _check_graph(tree, f"{src}: graph")
    stored, declared = set(c.tensors), set(tree["constants"])
    missing, extra = sorted(declared - stored), sorted(stored - declared)
    if missing:
        raise FormatError(f"{src}: graph constants {missing[:5]!r:.300} are not stored in the file")
    if extra:
        raise FormatError(f"{src}: tensors {extra[:5]!r:.300} are stored but are not constants of the graph")
    graph = Graph.from_json(tree, {name: _aligned(c.tensors[name]) for name in tree["constants"]})
    _check_constants(graph, graph.constants, f"{src}: graph")
    user = strict_json(meta["metadata"], f"{src}: __metadata__['metadata']")
    if not isinstance(user, dict) or not all(isinstance(v, str) for v in user.values()):
        raise FormatError(f"{src}: __metadata__['metadata'] must be a JSON object of strings, "
                          f"got {meta['metadata']:.120}")
    return graph, user


def _aligned(view: np.ndarray) -> np.ndarray:
    if view.flags.aligned:
        return view
    # another writer left it misaligned for its dtype: kernels want aligned data, so copy (still read-only)
    arr = np.array(view)
    arr.flags.writeable = False
    return arr


def _check_header(meta, src):
    fmt = meta.get("format")
    if fmt == _CHECKPOINT_FORMAT:
        raise FormatError(f"{src}: this is a checkpoint (format 'ember.checkpoint'), not a program archive: "
                          f"use ember.load")
    if fmt is None:
        raise FormatError(f"{src}: not an ember program archive: __metadata__ has no 'format' entry (a plain "
                          f"safetensors file? ember.load reads its tensors)")
    if fmt != FORMAT:
        raise FormatError(f"{src}: __metadata__['format'] is {fmt!r:.80}, expected {FORMAT!r}")
    version = meta.get("format_version")
    m = re.fullmatch(r"(\d{1,9})\.(\d{1,9})", version) if isinstance(version, str) else None
    if m is None:
        raise FormatError(f"{src}: __metadata__['format_version'] must be 'major.minor', got {version!r:.80}")
    major, supported = int(m.group(1)), int(FORMAT_VERSION.split(".")[0])
    if major != supported:
        by = meta.get("producer", "an unknown producer")
        advice = "upgrade ember" if major > supported else "this format version was never released"
        raise FormatError(f"{src}: written by {by:.80} in format {version}; this is ember {ember.__version__}, "
                          f"which reads {supported}.x: {advice}")
    unknown = sorted(set(meta) - set(_META_KEYS) - {safetensors_io.CHECKSUM_KEY})
    if unknown:
        raise FormatError(f"{src}: __metadata__ has entries this ember does not know: {unknown[:5]!r:.300} "
                          f"(format {version}; this ember writes {FORMAT_VERSION})")
    for key in _META_KEYS:
        if key not in meta:
            raise FormatError(f"{src}: __metadata__ has no {key!r} entry")


# ---- graph validation ---------------------------------------------------------------------------
def _fail(where, what):
    raise FormatError(f"{where}: {what}")


def _brief(x) -> str:
    return f"{x!r:.80}"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_object(obj, keys, where):
    if not isinstance(obj, dict):
        _fail(where, f"must be a JSON object, got {type(obj).__name__}")
    if sorted(obj) != list(keys):
        _fail(where, f"has keys {sorted(obj)!r:.200}, expected exactly {list(keys)}")


def _name_list(obj, where):
    if not isinstance(obj, list) or not all(isinstance(n, str) for n in obj):
        _fail(where, f"must be a list of value names (strings), got {_brief(obj)}")
    return obj


def _check_graph(tree, where):
    """Raise FormatError unless ``tree`` is a graph JSON object that Graph.from_json and the runtime can use."""
    _check_object(tree, _GRAPH_KEYS, where)
    values = _check_values(tree["values"], where)

    def declared(name, what):
        if name not in values:
            _fail(where, f"{what} {name!r:.80} is not in the graph's values")

    inputs = _name_list(tree["inputs"], f"{where}: inputs")
    constants = _name_list(tree["constants"], f"{where}: constants")
    defined = {}  # value name -> what defines it
    for kind, names in (("graph input", inputs), ("constant", constants)):
        for name in names:
            declared(name, kind)
            if name in defined:
                _fail(where, f"value {name!r:.80} is defined twice (as a {kind} and as a {defined[name]})")
            defined[name] = kind
    for name in constants:
        if not all(_is_int(d) for d in values[name]["shape"]):
            _fail(where, f"constant {name!r:.80} has a symbolic shape {values[name]['shape']!r:.120}; "
                         f"constants have fixed shapes")
    nodes = tree["nodes"]
    if not isinstance(nodes, list):
        _fail(where, f"nodes must be a list, got {type(nodes).__name__}")
    for i, node in enumerate(nodes):
        _check_node(node, i, values, defined, where)
    for name in _name_list(tree["outputs"], f"{where}: outputs"):
        if name not in defined:
            _fail(where, f"output {name!r:.80} is not defined by a graph input, a constant or a node")
    orphans = [n for n in values if n not in defined]
    if orphans:
        _fail(where, f"values {orphans[:5]!r:.200} are declared but nothing defines them")


def _check_values(entries, where):
    if not isinstance(entries, list):
        _fail(where, f"values must be a list, got {type(entries).__name__}")
    values = {}
    for i, v in enumerate(entries):
        at = f"{where}: values[{i}]"
        _check_object(v, _VALUE_KEYS, at)
        name, dtype, shape = v["name"], v["dtype"], v["shape"]
        if not isinstance(name, str) or not name:
            _fail(at, f"name must be a non-empty string, got {_brief(name)}")
        if name in values:
            _fail(at, f"value {name!r:.80} is declared twice")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            _fail(at, f"value {name!r:.80} has unknown dtype {_brief(dtype)}; valid: {', '.join(_DTYPES)}")
        if not isinstance(shape, list) or not all((_is_int(d) and d >= 0) or (isinstance(d, str) and d)
                                                  for d in shape):
            _fail(at, f"value {name!r:.80}: shape must be a list of non-negative integers and symbol names, "
                      f"got {shape!r:.120}")
        values[name] = v
    return values


def _check_node(node, i, values, defined, where):
    at = f"{where}: node {i}"
    _check_object(node, _NODE_KEYS, at)
    name = node["op"]
    if not isinstance(name, str):
        _fail(at, f"op must be a string, got {_brief(name)}")
    op = _REGISTRY.get(name)
    if op is None:
        _fail(at, f"unknown op {name!r:.80}: not in this ember's op registry (ember {ember.__version__}; "
                  f"a newer ember may know it)")
    at = f"{at} ({name})"
    version = node["version"]
    if not _is_int(version) or version < 1:
        _fail(at, f"version must be a positive integer, got {_brief(version)}")
    if version > op.version:
        _fail(at, f"op {name!r} version {version} is newer than this ember's ({op.version}): upgrade ember")
    ins = _name_list(node["inputs"], f"{at}: inputs")
    for v in ins:
        if v not in defined:
            _fail(at, f"input {v!r:.80} is used before it is defined (it must be a graph input, a constant or an "
                      f"output of an earlier node)")
    _check_attrs(node["attrs"], op, values, defined, at)
    outs = _name_list(node["outputs"], f"{at}: outputs")
    if len(outs) != op.n_outputs:
        _fail(at, f"has {len(outs)} outputs, op {name!r} has {op.n_outputs}")
    for v in outs:
        if v not in values:
            _fail(at, f"output {v!r:.80} is not in the graph's values")
        if v in defined:
            _fail(at, f"output {v!r:.80} is defined twice (already a {defined[v]})")
        defined[v] = f"output of node {i}"


def _check_attrs(attrs, op, values, defined, at):
    if not isinstance(attrs, dict):
        _fail(at, f"attrs must be a JSON object, got {type(attrs).__name__}")
    known = set(op.attrs)
    for key, val in attrs.items():
        if key not in known:
            valid = ", ".join(sorted(known)) or "none"
            _fail(at, f"unknown attribute {key!r:.80} for op {op.name!r} (its attributes: {valid})")
        _check_attr_value(val, values, defined, f"{at}: attribute {key!r}", 0)


def _check_attr_value(val, values, defined, at, depth):
    """JSON scalars, lists of them, and ``{"sym": name}`` refs to defined int64 scalar values."""
    if depth > _MAX_ATTR_DEPTH:
        _fail(at, f"is nested deeper than {_MAX_ATTR_DEPTH} levels")
    if val is None or isinstance(val, (bool, int, float, str)):
        return
    if isinstance(val, list):
        for x in val:
            _check_attr_value(x, values, defined, at, depth + 1)
        return
    if not (isinstance(val, dict) and list(val) == ["sym"] and isinstance(val["sym"], str)):
        _fail(at, f"holds {_brief(val)}; attribute values are JSON scalars, lists and {{\"sym\": name}} refs")
    ref = val["sym"]
    if ref not in defined:
        _fail(at, f"refers to value {ref!r:.80}, which is not defined before this node")
    v = values[ref]
    if v["dtype"] != "int64" or v["shape"] != []:
        _fail(at, f"refers to value {ref!r:.80} of dtype {v['dtype']} and shape {v['shape']!r:.80}; "
                  f"a sym ref needs an int64 scalar (shape [])")


def _check_constants(graph, arrays, where):
    for name, a in arrays.items():
        v = graph.values[name]
        if np.dtype(a.dtype).name != v.dtype or tuple(a.shape) != tuple(v.shape):
            _fail(where, f"constant {name!r:.80} is stored as {np.dtype(a.dtype).name}{list(a.shape)}, "
                         f"but its value says {v.dtype}{list(v.shape)}")

