"""``to_onnx``: lower a Program's graph op by op (``lowering.py`` table) into an ONNX model, check it
with ``onnx.checker`` and write it atomically (with external data past a size threshold)."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

import ember
from ember.ops.registry import get_op
from ember.serialize import Node, Program, trace

from .lowering import Builder, ExportError, get_lowering, tensor_type

MIN_OPSET = 17  # LayerNormalization
# The newest opset every lowering is tested at (ONNX Runtime 1.32 and onnx.reference), capped by the installed onnx.
MAX_OPSET = min(28, onnx.defs.onnx_opset_version())
# The default: the newest opset at which ONNX Runtime 1.32 has a kernel for every op ember emits. At 28
# QuantizeLinear / DequantizeLinear have new versions ORT 1.32 cannot run (quantized graphs then export as
# plain arithmetic, without the Q/DQ pairs ORT's int8 fusions look for).
DEFAULT_OPSET = min(27, MAX_OPSET)
EXTERNAL_DATA_THRESHOLD = 2 ** 31  # bytes of constants past which they go to a side file (protobuf's 2 GB limit)


def to_onnx(model_or_program, path, example_inputs=None, opset=None, dynamic_axes=None, input_names=None,
            output_names=None, metadata=None, *, external_data_threshold=EXTERNAL_DATA_THRESHOLD) -> onnx.ModelProto:
    """Write ``model_or_program`` as an ONNX model at ``path`` and return the ``ModelProto``.

    An ``nn.Module`` (or a function of tensors) is traced first with ``example_inputs`` and
    ``dynamic_axes`` (see ``ember.serialize.trace``); a ``Program`` is exported as it is. Symbolic dims
    become ``dim_param``; ``input_names`` / ``output_names`` rename the graph's inputs and outputs.
    Constants totalling more than ``external_data_threshold`` bytes are written to ``<file>.data``
    next to the model (ONNX external data, relative location); the returned proto then refers to it.
    """
    prog = _as_program(model_or_program, example_inputs, dynamic_axes)
    opset = _resolve_opset(opset)
    model = build_model(prog, opset, input_names, output_names, metadata)
    total = sum(int(a.nbytes) for a in prog.graph.constants.values())
    _save(model, os.fspath(path), external=total > external_data_threshold)
    return model


def _as_program(obj, example_inputs, dynamic_axes) -> Program:
    if isinstance(obj, Program):
        if example_inputs is not None or dynamic_axes is not None:
            raise ValueError("to_onnx: a Program is exported with the dims it was traced with; example_inputs and "
                             "dynamic_axes apply to an nn.Module (trace it again with ember.serialize.trace "
                             "to change its dynamic axes)")
        return obj
    if not callable(obj):
        raise TypeError(f"to_onnx: expected an nn.Module, a function of tensors or a Program, got {type(obj).__name__}")
    if example_inputs is None:
        raise TypeError("to_onnx: exporting a module needs example_inputs (a tensor or a tuple of tensors) to "
                        "trace it with; or pass a Program from ember.serialize.trace / ember.serialize.load")
    return trace(obj, example_inputs, dynamic_axes=dynamic_axes)


def _resolve_opset(opset) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"to_onnx: opset must be an int from {MIN_OPSET} to {MAX_OPSET} (the range ember's "
                         f"lowerings are tested on with the installed onnx {onnx.__version__}), got {opset!r}")
    return int(opset)


def build_model(prog: Program, opset: int, input_names=None, output_names=None, metadata=None) -> onnx.ModelProto:
    """The checked ONNX model of ``prog`` at ``opset`` (nothing written)."""
    graph = prog.graph
    _check_lowerings(graph, opset)
    g = Builder(graph, opset)
    emitted = set()
    for i, node in enumerate(graph.nodes):
        # lowerings see every attribute: the recorded ones over the registry's defaults
        node = Node(node.op, node.inputs, node.outputs, {**get_op(node.op).attrs, **node.attrs}, node.version)
        g.node, g.node_index = node, i
        start = len(g.nodes)
        get_lowering(node.op).fn(g, node)
        emitted.update(o for n in g.nodes[start:] for o in n.output)
        for out in node.outputs:
            if g.used(out) and out not in emitted:
                raise g.error(f"ember bug: its ONNX lowering did not define output {out!r}")
    g.node = None

    inits = [numpy_helper.from_array(np.asarray(a, order="C"), name) for name, a in graph.constants.items()]
    inits += g.initializers
    io = set(graph.inputs) | set(graph.outputs)
    value_info = [helper.make_value_info(name, tensor_type(v.dtype, v.shape))
                  for name, v in graph.values.items() if name in emitted and name not in io]
    onnx_graph = helper.make_graph(
        g.nodes, "ember_graph",
        [_io(graph, n) for n in graph.inputs], [_io(graph, n) for n in graph.outputs],
        initializer=inits, value_info=value_info,
    )
    _rename(onnx_graph, graph.inputs, input_names, "input_names")
    _rename(onnx_graph, graph.outputs, output_names, "output_names")
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="ember",
                              producer_version=ember.__version__,
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string="exported by ember.export.to_onnx")
    meta = dict(prog.metadata)
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"to_onnx: metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    helper.set_model_props(model, meta)
    if model.ByteSize() < 2 ** 31 - 2 ** 20:
        _check(model)
    return model


def _check_lowerings(graph, opset):
    for i, node in enumerate(graph.nodes):
        low = get_lowering(node.op)
        where = f"op {node.op!r} (node {i}: {', '.join(node.outputs)} = {node.op}({', '.join(node.inputs)}))"
        if low is None:
            raise ExportError(f"{where} has no ONNX lowering yet; ember cannot export this graph to ONNX. "
                              f"Save it as .ember instead (ember.serialize.save), or rewrite the model without it")
        if low.fn is None:
            raise ExportError(f"{where} cannot be exported to ONNX: {low.reason}")
        if low.min_opset > opset:
            raise ExportError(f"{where} needs ONNX opset {low.min_opset} or later; exporting at opset {opset} "
                              f"(pass opset={low.min_opset} or higher)")


def _io(graph, name):
    v = graph.values[name]
    return helper.make_value_info(name, tensor_type(v.dtype, v.shape))


def _rename(onnx_graph, old, new, what):
    if new is None:
        return
    new = list(new)
    if len(new) != len(old) or not all(isinstance(n, str) and n for n in new):
        raise ValueError(f"to_onnx: {what} must be {len(old)} non-empty strings (the program has "
                         f"{', '.join(old)}), got {new!r}")
    if len(set(new)) != len(new):
        raise ValueError(f"to_onnx: {what} repeat a name: {new!r}")
    mapping = {o: n for o, n in zip(old, new) if o != n}
    if not mapping:
        return
    taken = ({o for n in onnx_graph.node for o in list(n.output) + list(n.input)}
             | {i.name for i in onnx_graph.initializer} | {v.name for v in onnx_graph.input}
             | {v.name for v in onnx_graph.output}) - set(mapping)
    clash = sorted(set(mapping.values()) & taken)
    if clash:
        raise ValueError(f"to_onnx: {what} {clash} already name other values of the graph; choose other names")
    for n in onnx_graph.node:
        n.input[:] = [mapping.get(x, x) for x in n.input]
        n.output[:] = [mapping.get(x, x) for x in n.output]
    for v in list(onnx_graph.input) + list(onnx_graph.output) + list(onnx_graph.value_info):
        v.name = mapping.get(v.name, v.name)


def _check(model_or_path):
    try:
        onnx.checker.check_model(model_or_path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"ember bug: the exported model fails onnx.checker ({e}); please report it with the "
                          f"model's `ember info --code` listing") from None


def _save(model, path, external):
    """Write atomically: into a temp dir beside ``path``, check, then rename into place."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not base:
        raise ValueError(f"to_onnx: {path!r} names a directory; give a file name such as model.onnx")
    tmpdir = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        tmp_model = os.path.join(tmpdir, base)
        if external:
            location = base + ".data"
            onnx.save_model(model, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=location, size_threshold=1024)
            _check(tmp_model)
            _fsync(os.path.join(tmpdir, location))
            os.replace(os.path.join(tmpdir, location), os.path.join(directory, location))
        else:
            with open(tmp_model, "wb") as f:
                f.write(model.SerializeToString())
        _fsync(tmp_model)
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _fsync(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())
