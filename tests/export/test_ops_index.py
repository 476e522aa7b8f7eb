"""ONNX export of the indexing ops (x[index], item assignment, gather/scatter, index_select/add, one_hot,
embedding, nonzero), checked against ember with ONNX Runtime and onnx.reference at the lowest and the
default opset, at other batch sizes where dim 0 is a batch dim."""
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
_data = Data(11)
_f32, _i64, _bool = _data.f32, _data.i64, _data.bools
_idx = _data.idx


def _batch_only(*fixed):
    """Dim 0 of x is the batch; the listed inputs (index tensors ...) keep their example shape."""
    return dict(dynamic_axes={name: None for name in fixed}, batches=(1, 5))


def _copy(x):
    """A computed tensor to assign into (assignment into a graph input is refused), made by an op of this family."""
    return x.flip(0)


def _put(index, value=None):
    """``y = copy of x; y[index] = value`` (value: a constant, or input ``v`` when None)."""
    def fn(x, v=None):
        y = _copy(x)
        y[index] = v if value is None else value
        return y
    return fn


def _put_t(make_index, value=None):
    """Like ``_put`` with an index built from the index tensor input ``i``."""
    def fn(x, i, v=None):
        y = _copy(x)
        y[make_index(i)] = v if value is None else value
        return y
    return fn


# (id, fn, inputs, check_export options)
CASES = [
    # basic indexing: slices (sym bounds, steps), ints (sym too), None, Ellipsis
    ("slice_dim1", lambda x: x[:, 1:], [_f32(3, 4)], BATCH),
    ("slice_sym_start", lambda x: x[x.shape[0] // 2:], [_f32(4, 3)], BATCH),
    ("slice_negative_sym", lambda x: x[-(x.shape[0] // 2):, ::2], [_i64(4, 5)], BATCH),
    ("slice_neg_bounds_step", lambda x: x[:, -4:-1:2], [_bool(3, 5)], BATCH),
    ("slice_past_end", lambda x: x[1:100, 7:], [_f32(3, 4)], BATCH),
    ("int_pick", lambda x: x[:, 1], [_f32(3, 4)], BATCH),
    ("int_negative", lambda x: x[-1], [_i64(3, 4)], BATCH),
    ("int_sym", lambda x: x[x.shape[0] - 1, 2], [_f32(3, 4)], BATCH),
    ("int_negative_sym", lambda x: x[(-x.shape[0]) // 2], [_i64(3, 4)], BATCH),
    ("scalar_out", lambda x: x[1, -2], [_f32(3, 4)], FIXED),
    ("newaxis_ellipsis", lambda x: x[None, ..., 1, None], [_f32(2, 3, 4)], BATCH),
    ("ellipsis_mid", lambda x: x[0, ..., 1:], [_bool(2, 3, 4)], BATCH),
    ("select_unbind", lambda x: x.unbind(1), [_f32(3, 2)], BATCH),
    ("full_slice", lambda x: x[...], [_f32(3, 2)], BATCH),
    # advanced indexing: where the index dims go (numpy / torch rules)
    ("tensor_dim1", lambda x, i: x[:, i], [_f32(3, 4), np.array([[1, 1], [0, 3]])], _batch_only("i")),
    ("tensor_negative", lambda x, i: x[:, i], [_i64(2, 4), np.array([-1, 0, -4, 2])], _batch_only("i")),
    ("tensor_int32", lambda x, i: x[..., i], [_f32(3, 3, 4), np.array([3, 0], np.int32)], _batch_only("i")),
    ("tensor_dim0", lambda x, i: x[i], [_f32(4, 3), np.array([3, 0, 3])], dict(dynamic_axes={"x": None})),
    ("tensor_f64", lambda x, i: x[1:, i], [np.float64(_f32(3, 4)), np.array([[0, 3]])], _batch_only("i")),
    ("list_index", lambda x: x[:, [2, 0, -1]], [_bool(2, 3)], BATCH),
    ("empty_index", lambda x: x[:, []], [_f32(2, 3)], BATCH),
    ("scalar_tensor_index", lambda x: x[:, ember.tensor(-2)], [_f32(2, 3)], BATCH),
    ("two_adjacent", lambda x, i, j: x[:, i, j], [_f32(5, 3, 4), _idx(3, 2, 1), _idx(4, 3)],
     _batch_only("i", "j")),
    ("two_split", lambda x, i, j: x[i, :, j], [_f32(3, 2, 4), _idx(3, 2), _idx(4, 2)], dict(dynamic_axes={"x": None})),
    ("split_by_batch_slice", lambda x, i, j: x[:, i, :, j], [_f32(3, 3, 2, 4), _idx(3, 2), _idx(4, 2)],
     _batch_only("i", "j")),
    ("int_among_tensors", lambda x, i: x[:, 1, i], [_i64(3, 3, 4), _idx(4, 2, 2)], _batch_only("i")),
    ("int_split_from_tensor", lambda x, i: x[:, i, :, -1], [_f32(3, 3, 2, 4), _idx(3, 2)], _batch_only("i")),
    ("newaxis_splits", lambda x, i: x[:, i, None, i], [_f32(4, 3, 3), _idx(3, 2)], _batch_only("i")),
    ("tensor_with_slices", lambda x, i: x[1:, i, None, ::2], [_f32(3, 4, 5), _idx(4, 2)], _batch_only("i")),
    ("batch_index", lambda x, i: x[:, i], [_f32(4, 3), _idx(3, 4, 2)], BATCH),  # i is batched too
    # item assignment (index_put)
    ("put_basic", _put((slice(1, 3), 0)), [_f32(4, 3), _f32(2)], dict(dynamic_axes={"x": None, "v": None})),
    ("put_sym_slice", lambda x: _put_sym(x), [_f32(4, 3)], BATCH),
    ("put_scalar_int", _put((Ellipsis, -1), 7), [_i64(3, 4)], BATCH),
    ("put_bool", _put((slice(None), 0), True), [_bool(3, 2)], BATCH),
    ("put_step", _put((slice(None), slice(None, None, 2)), None), [_f32(4, 5), _f32(3)], _batch_only("v")),
    ("put_tensor", _put_t(lambda i: i), [_f32(4, 3), np.array([3, -3]), _f32(2, 3)],
     dict(dynamic_axes={"x": None, "i": None, "v": None})),
    ("put_tensor_dim1", _put_t(lambda i: (slice(None), i), 0.5), [_f32(3, 4), np.array([0, -1])],
     _batch_only("i")),
    ("put_value_leading_ones", _put_t(lambda i: (slice(None), i)), [_f32(3, 4), np.array([2, 1]), _f32(1, 1, 2)],
     _batch_only("i", "v")),
    ("put_two_tensors", _put_t(lambda i: (i, slice(None), i)), [_i64(3, 2, 3), np.array([[0], [2]]), _i64(1, 2)],
     dict(dynamic_axes={"x": None, "i": None, "v": None})),
    ("put_mask", _put_t(lambda m: m, 0.5), [_f32(3, 4), _bool(3, 4)], BATCH),
    ("put_mask_rows", _put_t(lambda m: (slice(None), m)), [_i64(2, 3, 4), _bool(3), _i64(4)],
     _batch_only("i", "v")),
    ("put_mask_after_ellipsis", _put_t(lambda m: (Ellipsis, m), -1), [_i64(2, 3), _bool(3)], _batch_only("i")),
]


def _put_sym(x):
    y = _copy(x)
    y[x.shape[0] // 2:, 1] = 2.0
    return y


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_indexing(case, opset):
    _, fn, inputs, options = case
    check_export(fn, inputs, opset=opset, **options)


def test_mask_assignment_is_a_where():
    m = check_export(_put_t(lambda m: m, 0.5), [_f32(3, 4), _bool(3, 4)])
    assert "Where" in onnx_op_types(m) and "ScatterND" not in onnx_op_types(m)


_SAMPLED = ["getitem", "index", "index_put", "gather", "scatter", "scatter_add", "index_select", "index_add",
            "embedding"]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op", _SAMPLED)
def test_op_samples(op, opset):
    for s in SAMPLES[op]:
        inputs = [a if a.dtype.kind in "biu" else a.astype(np.float32) for a in map(np.asarray, s.inputs)]
        if any(a.dtype == np.bool_ for a in inputs):
            continue  # x[mask] needs nonzero, which a trace refuses; masks are tested on hand-built graphs
        fixed = {name: None for name in inspect.signature(s.fn).parameters}  # samples use fixed sizes
        check_export(s.fn, inputs, opset=opset, dynamic_axes=fixed)


GATHER_CASES = [
    ("gather", lambda x, i: ember.gather(x, 1, i), [_f32(3, 4), _idx(4, 3, 5)], BATCH),
    ("gather_smaller_index", lambda x, i: ember.gather(x, 0, i), [_i64(3, 4), _idx(3, 2, 3)], FIXED),
    ("gather_int32_bool", lambda x, i: ember.gather(x, -1, i), [_bool(3, 4), _idx(4, 3, 2, dtype=np.int32)], BATCH),
    ("take_along_dim", lambda x, i: x.take_along_dim(i, 1), [_f32(3, 4), _idx(4, 3, 1)], BATCH),
    ("scatter", lambda x, i, s: ember.scatter(x, 1, i, s), [_f32(3, 4), np.array([[0, 2], [3, 1], [1, 0]]), _f32(3, 2)],
     dict(dynamic_axes={"x": None, "i": None, "s": None})),
    ("scatter_value", lambda x, i: ember.scatter(x, 0, i, value=2.0), [_f32(3, 4), np.array([[2, 0, 1, 2]])], FIXED),
    ("scatter_int_larger_src", lambda x, i, s: x.scatter(1, i, s), [_i64(3, 4), np.array([[3], [0], [1]]), _i64(3, 3)],
     BATCH),
    ("scatter_add", lambda x, i, s: ember.scatter_add(x, 0, i, s), [_f32(3, 4), _idx(3, 2, 4), _f32(2, 4)], FIXED),
    ("scatter_add_int", lambda x, i, s: x.scatter_add(1, i, s), [_i64(3, 4), _idx(4, 3, 6), _i64(3, 6)], BATCH),
    # ORT has no float16 ScatterElements 'add': it runs in float32; values on a coarse grid keep sums exact
    ("scatter_add_f16", lambda x, i, s: x.scatter_add(1, i, s),
     [np.float16(_idx(8, 3, 4)) / 4, _idx(4, 3, 5), np.float16(_idx(8, 3, 5)) / 4], BATCH),
    ("scatter_add_bool", lambda x, i, s: x.scatter_add(1, i, s), [_bool(3, 4), _idx(4, 3, 3), _bool(3, 3)], BATCH),
    ("index_select", lambda x, i: ember.index_select(x, 1, i), [_f32(3, 4), np.array([2, 0, 2, 3])],
     _batch_only("i")),
    ("index_select_0d_index", lambda x: x.index_select(0, ember.tensor(np.int32(1))), [_i64(3, 2)], FIXED),
    ("index_add", lambda x, i, s: ember.index_add(x, 1, i, s, alpha=2.0), [_f32(2, 4), np.array([1, 3, 1]), _f32(2, 3)],
     _batch_only("i")),
    ("index_add_dim0", lambda x, i, s: x.index_add(0, i, s), [_f32(4, 3), np.array([1, 3]), _f32(2, 3)], FIXED),
    ("index_add_int_alpha", lambda x, i, s: x.index_add(1, i, s, alpha=3),
     [_i64(2, 4), np.array([0, 0, 2]), _i64(2, 3)], _batch_only("i")),
    ("index_add_int8", lambda x, i, s: x.index_add(1, i, s, alpha=2),
     [_i64(2, 4).astype(np.int8), np.array([3, 1, 3]), _i64(2, 3).astype(np.int8)], _batch_only("i")),
    ("index_add_bool", lambda x, i, s: x.index_add(1, i, s, alpha=0), [_bool(3, 3), np.array([2, 0]), _bool(3, 2)],
     _batch_only("i")),
    ("index_add_f16", lambda x, i, s: x.index_add(1, i, s, alpha=0.5),
     [np.float16(_idx(8, 2, 4)) / 4, np.array([1, 3, 1]), np.float16(_idx(8, 2, 3)) / 4], _batch_only("i")),
    ("one_hot", lambda i: F.one_hot(i, 5), [_idx(5, 3, 2)], BATCH),
    ("one_hot_int32", lambda i: F.one_hot(i, 3), [_idx(3, 4, dtype=np.int32)], BATCH),
    ("one_hot_zero_classes", lambda i: F.one_hot(i, 0), [np.zeros((2, 0), np.int64)], dict(dynamic_axes={"i": None})),
    ("embedding", lambda i, w: F.embedding(i, w), [_idx(4, 2, 3), _f32(4, 3)], _batch_only("w")),
    ("embedding_int32_padding", lambda i, w: F.embedding(i, w, padding_idx=1), [_idx(5, 3, dtype=np.int32), _f32(5, 2)],
     _batch_only("w")),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", GATHER_CASES, ids=[c[0] for c in GATHER_CASES])
def test_along_dim(case, opset):
    _, fn, inputs, options = case
    check_export(fn, inputs, opset=opset, **options)


# ---- hand-built graphs: masks reaching index, nonzero, negative steps, refusals -------------------

def _program(inputs, nodes, out, out_dtype, out_shape, values=()):
    """A Program of ``nodes`` over ``inputs`` ((name, dtype, shape) each); ``values``: the others they define."""
    g = Graph()
    for name, dtype, shape in inputs:
        g.add_value(name, dtype, shape)
        g.inputs.append(name)
    for name, dtype, shape in values:
        g.add_value(name, dtype, shape)
    g.add_value(out, out_dtype, out_shape)
    g.nodes.extend(nodes)
    g.outputs.append(out)
    return Program(g, optimize=False)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "bool"])
def test_nonzero(dtype, opset):
    x = (_idx(3, 3, 4) - 1).astype(dtype)
    prog = _program([("x", dtype, ("batch", 4))], [Node("nonzero", ["x"], ["y"])], "y", "int64", ("n", 2))
    check_export(prog, [x], opset=opset, batches=(1, 5))


@pytest.mark.parametrize("value", [0.0, 2.0])
def test_nonzero_scalar(value):
    # check_export's inputs go through np.ascontiguousarray, which makes a 0-d array 1-D: reshape inside
    nodes = [Node("reshape", ["x"], ["s"], {"shape": ()}), Node("nonzero", ["s"], ["y"])]
    prog = _program([("x", "float32", (1,))], nodes, "y", "int64", ("n", 0), [("s", "float32", ())])
    check_export(prog, [np.array([value], np.float32)])


# (id, index, x's shape, mask's shape, output shape)
MASK_INDEXES = [
    ("mask_2d", ("tensor",), (3, 4), (3, 4), ("n",)),
    ("mask_rows_after_slice", ((None, None, None), "tensor"), (2, 3, 4), (3,), (2, "n", 4)),
    ("mask_with_int", ("tensor", 1), (3, 4), (3,), ("n",)),
    ("mask_scalar", ("tensor", (1, None, None)), (3, 4), (), ("n", 2, 4)),
    ("mask_scalar_after_ellipsis", ("...", "tensor"), (2, 3), (), (2, 3, "n")),
]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", MASK_INDEXES, ids=[c[0] for c in MASK_INDEXES])
def test_index_with_mask(case, opset):
    _, items, x_shape, m_shape, out_shape = case
    x = _f32(*x_shape)
    if m_shape == ():  # fed 1-D and reshaped inside: check_export's np.ascontiguousarray makes 0-d inputs 1-D
        nodes = [Node("reshape", ["m1"], ["m"], {"shape": ()}), Node("index", ["x", "m"], ["y"], {"index": items})]
        prog = _program([("x", "float32", x_shape), ("m1", "bool", (1,))], nodes, "y", "float32", out_shape,
                        [("m", "bool", ())])
        masks = [np.array([True]), np.array([False])]
    else:
        nodes = [Node("index", ["x", "m"], ["y"], {"index": items})]
        prog = _program([("x", "float32", x_shape), ("m", "bool", m_shape)], nodes, "y", "float32", out_shape)
        masks = [_bool(*m_shape), np.zeros(m_shape, bool), np.ones(m_shape, bool)]
    for m in masks:
        check_export(prog, [x, m], opset=opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_index_put_mask_scatter(opset):
    # a mask after an int: not the Where form; positions from NonZero, written with ScatterND
    prog = _program([("x", "float32", (2, 3, 4)), ("m", "bool", (3,)), ("v", "float32", (4,))],
                    [Node("index_put", ["x", "v", "m"], ["y"], {"index": (1, "tensor")})], "y", "float32", (2, 3, 4))
    m = check_export(prog, [_f32(2, 3, 4), np.array([True, False, True]), _f32(4)], opset=opset)
    assert "ScatterND" in onnx_op_types(m)


@pytest.mark.parametrize("opset", OPSETS)
def test_negative_step_slice(opset):
    # encode_index refuses negative steps (as torch); the kernel is numpy's, which the lowering follows
    prog = _program([("x", "float32", (4, 5))],
                    [Node("getitem", ["x"], ["y"], {"index": ((None, None, -1), (3, 0, -2))})], "y", "float32", (4, 2))
    check_export(prog, [_f32(4, 5)], opset=opset)


def test_index_sym_step():
    nodes = [Node("sym_size", ["x"], ["n"], {"dim": 0}),
             Node("getitem", ["x"], ["y"], {"index": ((None, None, Sym("n")),)})]
    prog = _program([("x", "float32", ("batch", 2))], nodes, "y", "float32", ("m", 2), [("n", "int64", ())])
    check_export(prog, [_f32(3, 2)], batches=(1, 2, 5))


def test_refusals(tmp_path):
    prog = _program([("x", "float32", (2, 3))], [Node("getitem", ["x"], ["y"], {"index": (0, 1, 0)})],
                    "y", "float32", ())
    with pytest.raises(ExportError, match="uses 3 dims of a tensor of rank 2"):
        to_onnx(prog, str(tmp_path / "m.onnx"))
