"""ONNX export of the shape, join and shape-arithmetic ops, checked against ember with ONNX Runtime and
onnx.reference at the lowest and the default opset, at other batch sizes where dim 0 is a batch dim."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.export import DEFAULT_OPSET, MIN_OPSET, ExportError, to_onnx
from ember.serialize import Program
from ember.serialize.ir import Graph, Node, Sym

from tests.core.op_samples import SAMPLES
from tests.export.onnx_check import OPSETS, Data, check_export, onnx_op_types

BATCH = dict(batches=(1, 5))
FIXED = dict(dynamic_axes={"x": None})
_data = Data(7)
_f32, _i64, _bool = _data.f32, _data.i64, _data.bools


# (id, fn, inputs, check_export options)
CASES = [
    # sizes read from x.shape: sym_size / sym_arith feeding the ops' size attributes
    ("reshape_batch", lambda x: x.reshape(x.shape[0], -1), [_f32(2, 3, 4)], BATCH),
    ("view_infer", lambda x: x.view(-1, 4), [_f32(2, 3, 4)], BATCH),
    ("flatten_unsqueeze", lambda x: x.flatten(1).unsqueeze(1), [_i64(2, 3, 2)], BATCH),
    ("squeeze", lambda x: x.squeeze(1), [_bool(3, 1, 2)], BATCH),
    ("reshape_fixed", lambda x: x.reshape(3, 2), [_f32(2, 3)], FIXED),
    ("reshape_literal_zero", lambda x: x.reshape(0, 5), [_f32(2, 0)], FIXED),
    ("reshape_sym_mul", lambda x: x.reshape(x.shape[0] * 2, 3), [_f32(2, 6)], BATCH),
    # at batch 0 the sym in the target is 0: an empty dim, not ONNX's "copy the input's dim" (allowzero=1)
    ("reshape_empty_batch", lambda x: x.reshape(2, x.shape[0], 3).permute(1, 0, 2), [_f32(2, 6)],
     dict(batches=(0, 3))),
    ("zeros_batch", lambda x: ember.zeros(x.shape[0], 3), [_f32(4, 2)], BATCH),
    ("ones_int", lambda x: ember.ones((x.shape[0], 2), dtype=ember.int64), [_f32(4, 2)], BATCH),
    ("full_bool", lambda x: ember.full((2, x.shape[0]), True), [_f32(3, 2)], BATCH),
    ("full_value_cast", lambda x: ember.full((x.shape[0],), 2.5, dtype=ember.int32), [_f32(3)], BATCH),
    ("arange_batch", lambda x: ember.arange(x.shape[0]), [_f32(4, 2)], BATCH),
    ("arange_dim1", lambda x: ember.arange(x.shape[1]), [_f32(3, 4)], dict(dynamic_axes={"x": {1: "n"}})),
    ("arange_float_step", lambda x: ember.arange(1, x.shape[0] * 3, 2, dtype=ember.float32), [_f32(4)], BATCH),
    ("arange_sym_step", lambda x: ember.arange(0, 12, x.shape[0]), [_f32(4)], dict(batches=(1, 5))),
    ("arith_kinds", lambda x: ember.zeros(x.shape[0] * 2 + 1, (x.shape[0] + 3) // 2, x.shape[0] % 3 + 1),
     [_f32(4)], BATCH),
    ("arith_reverse", lambda x: ember.zeros(7 - x.shape[0], 12 // x.shape[0], 10 % x.shape[0] + 1), [_f32(4)], BATCH),
    # Python's floor semantics on negative values: -b // 3 and -b % 3
    ("arith_negative_floor", lambda x: ember.arange((-x.shape[0]) // 3, (-x.shape[0]) % 3 + 5), [_f32(4)], BATCH),
    ("arith_negative_divisor", lambda x: ember.arange(7 // (-x.shape[0]), 7 % (-x.shape[0]) + 8), [_f32(4)], BATCH),
    ("arith_two_syms", lambda x: ember.zeros(x.shape[0] * x.shape[1], x.shape[0] // x.shape[1] + 1),
     [_f32(4, 2)], dict(dynamic_axes={"x": {0: "a", 1: "b"}}, batches=(1, 7))),
    ("permute", lambda x: x.permute(2, 0, 1), [_f32(2, 3, 2)], BATCH),
    ("transpose_int", lambda x: x.transpose(0, 1), [_i64(3, 2)], BATCH),
    ("permute_bool", lambda x: x.T, [_bool(2, 3, 4)], BATCH),
    ("expand_batch", lambda x: x.expand(x.shape[0], 3, 4), [_f32(2, 1, 4)], BATCH),
    ("expand_keep", lambda x: x.expand(2, -1, 3), [_i64(4, 1)], BATCH),
    ("expand_bool", lambda x: x.expand(3, 4), [_bool(1, 4)], FIXED),
    ("narrow", lambda x: x.narrow(1, 1, 2), [_f32(3, 4)], BATCH),
    ("narrow_sym", lambda x: x.narrow(0, x.shape[0] // 2, x.shape[0] - x.shape[0] // 2), [_i64(4, 2)], BATCH),
    ("narrow_negative_start", lambda x: x.narrow(-1, -2, 2), [_bool(2, 5)], BATCH),
    ("chunk", lambda x: x.chunk(2, dim=1), [_f32(3, 5)], BATCH),
    ("flip", lambda x: ember.flip(x, (0, 1)), [_f32(2, 3)], BATCH),
    ("flip_last_int", lambda x: x.flip(-1), [_i64(3, 4)], BATCH),
    ("flip_bool", lambda x: x.flip(0, 2), [_bool(2, 3, 2)], BATCH),
    ("repeat", lambda x: x.repeat(2, 3), [_f32(2, 2)], BATCH),
    ("repeat_lead", lambda x: x.repeat(2, 1, 3), [_i64(2, 2)], BATCH),
    ("repeat_sym", lambda x: x.repeat(1, x.shape[0]), [_bool(3, 2)], BATCH),
    ("tile", lambda x: x.tile((2,)), [_f32(3, 2)], BATCH),
    ("cat", lambda a, b: ember.cat([a, b], dim=1), [_f32(2, 3), _f32(2, 2)], BATCH),
    ("cat_batch_dim", lambda a, b: ember.cat([a, b, a]), [_i64(2, 3), _i64(1, 3)],
     dict(dynamic_axes={"b": None}, batches=(1, 5))),
    ("cat_bool", lambda a, b: ember.cat([a, b], -1), [_bool(3, 1), _bool(3, 2)], BATCH),
    ("cat_f64", lambda a, b: ember.cat([b, a], 1), [np.float64(_f32(2, 2)), np.float64(_f32(2, 1))], BATCH),
    ("stack", lambda a, b: ember.stack([a, b], dim=1), [_f32(2, 3), _f32(2, 3)], BATCH),
    ("stack_last_int", lambda a, b: ember.stack([a, b, a], dim=-1), [_i64(2, 3), _i64(2, 3)], BATCH),
    ("stack_bool", lambda a, b: ember.stack([a, b]), [_bool(2, 3), _bool(2, 3)], BATCH),
    ("pad_constant", lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), [_f32(2, 3)], BATCH),
    ("pad_crop", lambda x: F.pad(x, (-1, 1)), [_f32(2, 4)], BATCH),
    ("pad_crop_both", lambda x: F.pad(x, (-1, -2, 1, -1)), [_f32(3, 5)], BATCH),
    ("pad_batch_dim", lambda x: F.pad(x, (0, 0, 1, 2), value=-3), [_i64(2, 3)], BATCH),
    ("pad_int16", lambda x: F.pad(x, (1, 1), value=4), [_i64(2, 3).astype(np.int16)], BATCH),
    ("pad_bool", lambda x: F.pad(x, (2, 0), value=True), [_bool(2, 3)], BATCH),
    ("pad_reflect", lambda x: F.pad(x, (2, 1), mode="reflect"), [_f32(2, 4)], BATCH),
    ("pad_reflect_crop", lambda x: F.pad(x, (-1, 2, 1, -1), mode="reflect"), [_f32(2, 3, 4)], BATCH),
    ("pad_reflect_f64", lambda x: F.pad(x, (1, 1, 1, 0), mode="reflect"), [np.float64(_f32(1, 2, 3))], BATCH),
    ("pad_replicate", lambda x: F.pad(x, (1, 2), mode="replicate"), [_i64(2, 3)], BATCH),
    ("pad_circular", lambda x: F.pad(x, (1, 1, 2, 1), mode="circular"), [_f32(1, 3, 3)], BATCH),
    ("pad_circular_full_wrap", lambda x: F.pad(x, (3, -1), mode="circular"), [_i64(2, 3)], BATCH),
    ("pad_circular_bool_3d", lambda x: F.pad(x, (1, 0, 0, 2, 1, 1), mode="circular"), [_bool(1, 2, 3, 2)], BATCH),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op(case, opset):
    _, fn, inputs, options = case
    check_export(fn, inputs, opset=opset, **options)


_SAMPLED = ["reshape", "permute", "expand", "flip", "narrow", "repeat", "cat", "stack", "pad"]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", _SAMPLED)
def test_op_samples(op, opset):
    for s in SAMPLES[op]:
        fixed = {name: None for name in inspect.signature(s.fn).parameters}  # samples use fixed sizes
        check_export(s.fn, [np.asarray(a, np.float32) for a in s.inputs], opset=opset, dynamic_axes=fixed)


def test_circular_pad_uses_wrap_from_opset_19():
    fn, x = (lambda x: F.pad(x, (1, 2), mode="circular")), [_f32(2, 3)]
    assert "Pad" not in onnx_op_types(check_export(fn, x, opset=18))
    assert "Pad" in onnx_op_types(check_export(fn, x, opset=19))


def test_reshape_allowzero_only_when_needed():
    m = check_export(lambda x: x.reshape(3, 2), [_f32(2, 3)], **FIXED)
    assert all(a.name != "allowzero" for n in m.graph.node for a in n.attribute)
    m = check_export(lambda x: x.reshape(0, 5), [_f32(2, 0)], **FIXED)
    assert any(a.name == "allowzero" and a.i == 1 for n in m.graph.node for a in n.attribute)


# ---- hand-built graphs: attrs the public API normalises away, and refusals ----------------------

def _program(x_shape, nodes, out, out_dtype, out_shape, values=()):
    """A Program over input ``x`` (float32) running ``nodes``; ``values``: (name, dtype, shape) they define."""
    g = Graph()
    g.add_value("x", "float32", x_shape)
    g.inputs.append("x")
    for name, dtype, shape in values:
        g.add_value(name, dtype, shape)
    g.add_value(out, out_dtype, out_shape)
    g.nodes.extend(nodes)
    g.outputs.append(out)
    return Program(g, optimize=False)


def _size_graph(dim, op="full", **attrs):
    nodes = [Node("sym_size", ["x"], ["n"], {"dim": dim}),
             Node(op, [], ["y"], {**attrs, "shape": (Sym("n"),)} if op == "full" else attrs)]
    return _program(("batch", 3), nodes, "y", "float32", ("n",), [("n", "int64", ())])


@pytest.mark.parametrize("opset", OPSETS)
def test_sym_size_negative_dim(opset):
    prog = _size_graph(-1, value=1.5, dtype="float32")
    check_export(prog, [_f32(2, 3)], opset=opset, batches=(4,))
    prog = _size_graph(-2, value=1.5, dtype="float32")
    check_export(prog, [_f32(2, 3)], opset=opset, batches=(4,))


def test_refusals(tmp_path):
    path = str(tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="dim 2 is out of range for a tensor of rank 2"):
        to_onnx(_size_graph(2, value=0.0, dtype="float32"), path)
    nodes = [Node("sym_size", ["x"], ["n"], {"dim": 0}),
             Node("arange", [], ["y"], {"start": 0, "end": Sym("n"), "step": 0, "dtype": "int64"})]
    prog = _program(("batch", 3), nodes, "y", "int64", ("m",), [("n", "int64", ())])
    with pytest.raises(ExportError, match="step must be nonzero"):
        to_onnx(prog, path)
    nodes = [Node("sym_size", ["x"], ["n"], {"dim": 0}),
             Node("sym_arith", ["n"], ["m"], {"kind": "pow", "const": 2, "reverse": False}),
             Node("full", [], ["y"], {"shape": (Sym("m"),), "value": 0.0, "dtype": "float32"})]
    prog = _program(("batch", 3), nodes, "y", "float32", ("m",), [("n", "int64", ()), ("m", "int64", ())])
    with pytest.raises(ExportError, match="unknown kind 'pow'"):
        to_onnx(prog, path)
    for attrs, msg in [({"pad": (1, 1), "mode": "wrap", "value": 0.0}, "unknown mode 'wrap'"),
                       ({"pad": (1, 1, 1, 1, 1, 1), "mode": "constant", "value": 0.0}, "at most 4 entries"),
                       ({"pad": (Sym("n"), 1), "mode": "constant", "value": 0.0}, "symbolic pad amounts")]:
        nodes = [Node("sym_size", ["x"], ["n"], {"dim": 0}), Node("pad", ["x"], ["y"], attrs)]
        prog = _program((2, 3), nodes, "y", "float32", (2, 5), [("n", "int64", ())])
        with pytest.raises(ExportError, match=msg):
            to_onnx(prog, path)
    prog = _program((2, 3), [Node("repeat", ["x"], ["y"], {"sizes": (2,)})], "y", "float32", (2, 6))
    with pytest.raises(ExportError, match="needs at least one per dim"):
        to_onnx(prog, path)
