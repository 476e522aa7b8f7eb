"""The ONNX lowering table: one entry per ember op, and the ``Builder`` that lowerings write through.

A lowering is ``fn(g, node)``: it reads the ember node (``node.inputs``, ``node.outputs``,
``node.attrs``) and emits ONNX nodes through ``g`` so that each *used* output of the node ends up
defined under the same name (``node.outputs[i]``). Register it with ``@lowers("op", min_opset=N)``
next to its family (``export/ops_*.py``); ops that cannot be exported are listed with
``refuses(names, reason)`` so every registry op has exactly one entry (a test checks this).

Names: ember value names are used unchanged as ONNX value names; helper values get fresh names
from ``g.fresh``. Symbolic sizes (``{"sym": name}`` attributes) name int64 scalars (ONNX shape
``[]``) computed earlier in the graph by the ``sym_size`` / ``sym_arith`` lowerings.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ember.serialize.ir import Graph, Node, Value


class ExportError(Exception):
    """A graph (or a request) that cannot be written as ONNX; the message says which op and why."""


class Lowering(NamedTuple):
    fn: Callable | None  # None: refused
    min_opset: int
    reason: str = ""  # for refusals: why, and what to do instead


_LOWERINGS: dict[str, Lowering] = {}


def lowers(*names, min_opset=17):
    """Decorator: ``fn(g, node)`` lowers the ember ops ``names`` (ONNX opset ``min_opset`` or later)."""

    def deco(fn):
        for name in names:
            if name in _LOWERINGS:
                raise ValueError(f"export: op {name!r} already has an ONNX lowering")
            _LOWERINGS[name] = Lowering(fn, min_opset)
        return fn

    return deco


def refuses(names, reason):
    """Declare ember ops that have no ONNX lowering; exporting them raises ExportError with ``reason``."""
    for name in names:
        if name in _LOWERINGS:
            raise ValueError(f"export: op {name!r} already has an ONNX lowering")
        _LOWERINGS[name] = Lowering(None, 0, reason)


def get_lowering(name) -> Lowering | None:
    return _LOWERINGS.get(name)


def lowering_table() -> dict:
    return dict(_LOWERINGS)


_NP_TO_ONNX = {np.dtype(k): helper.np_dtype_to_tensor_dtype(np.dtype(k)) for k in
               ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")}


def onnx_dtype(dtype) -> int:
    """TensorProto element type of a numpy / ember dtype name."""
    try:
        return _NP_TO_ONNX[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise ExportError(f"dtype {dtype!r} has no ONNX element type here; "
                          f"supported: {', '.join(d.name for d in _NP_TO_ONNX)}") from None


class Builder:
    """Collects ONNX nodes and initializers for one graph; the ``g`` every lowering receives."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.values = dict(graph.values)  # the graph's values, plus helper values given a type (declare)
        self.opset = opset
        self.nodes = []  # onnx NodeProto
        self.initializers = []  # onnx TensorProto
        self.node = None  # the ember node being lowered
        self.node_index = -1
        self._names = set(graph.values) | set(graph.constants)
        self._counter = 0
        self._const_cache = {}
        self._used = set(graph.outputs) | set(graph.users())

    # ---- facts about ember values ------------------------------------------------------------
    def dtype(self, name) -> np.dtype:
        """numpy dtype of an ember value (graph input, constant or node output)."""
        return np.dtype(self.values[name].dtype)

    def shape(self, name) -> tuple:
        """IR shape of an ember value: ints and symbol names (str)."""
        return tuple(self.values[name].shape)

    def rank(self, name) -> int:
        return len(self.values[name].shape)

    def used(self, name) -> bool:
        """True when a later node (or the graph's outputs) reads value ``name``."""
        return name in self._used

    def constant_value(self, name):
        """The numpy array of an ember constant (a parameter, buffer ...), or None for computed values."""
        return self.graph.constants.get(name)

    # ---- emitting ---------------------------------------------------------------------------
    def fresh(self, hint="t") -> str:
        while True:
            self._counter += 1
            name = f"_{hint}_{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def op(self, op_type, inputs, outputs=None, *, n_out=1, domain="", **attrs):
        """Emit one ONNX node. ``inputs``: value names ('' skips an optional input); ``outputs``:
        names to define (e.g. ``node.outputs``) or None for ``n_out`` fresh names. Returns the output
        name, or the list of names when more than one. Attributes that are None are left out."""
        if outputs is None:
            outputs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        else:
            outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        doc = f"ember op {self.node.op!r} (node {self.node_index})" if self.node is not None else "ember"
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, doc_string=doc, domain=domain or None,
                                           **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, array, hint="c") -> str:
        """An initializer holding ``array`` (small ones are shared by value)."""
        a = np.asarray(array)
        key = None
        if a.size <= 16:
            key = (a.dtype.str, a.shape, a.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(a, order="C"), name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def scalar(self, value, dtype) -> str:
        """A 0-d constant of ``dtype``."""
        return self.const(np.asarray(value, dtype=np.dtype(dtype)), "s")

    def int_scalar(self, v) -> str:
        """0-d int64 holding ``v``: an int, or ``{"sym": name}`` (then the scalar value itself)."""
        if _is_sym(v):
            return v["sym"]
        return self.const(np.asarray(int(v), dtype=np.int64), "i")

    def ints(self, values) -> str:
        """1-D int64 tensor of ``values`` (ints and ``{"sym": name}`` entries; a Concat when any is symbolic)."""
        values = list(values)
        if not any(_is_sym(v) for v in values):
            return self.const(np.asarray([int(v) for v in values], dtype=np.int64), "ints")
        parts, run = [], []
        for v in values:
            if _is_sym(v):
                if run:
                    parts.append(self.const(np.asarray(run, dtype=np.int64), "ints"))
                    run = []
                parts.append(self.op("Unsqueeze", [v["sym"], self.const(np.asarray([0], np.int64), "ints")]))
            else:
                run.append(int(v))
        if run:
            parts.append(self.const(np.asarray(run, dtype=np.int64), "ints"))
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, axis=0)

    def cast(self, name, dtype, outputs=None, have=None) -> str:
        """``name`` cast to numpy ``dtype`` (no node when it already has it and no output name is forced);
        ``have`` gives the dtype of a helper value, which the builder cannot look up."""
        known = np.dtype(have) if have is not None else self._known_dtype(name)
        if outputs is None and known is not None and known == np.dtype(dtype):
            return name
        return self.op("Cast", [name], outputs, to=onnx_dtype(dtype))

    def declare(self, name, like):
        """Give helper value ``name`` the dtype and shape of ember value ``like`` (for ``g.lower``)."""
        v = self.values[like]
        self.values[name] = Value(name, v.dtype, v.shape)
        return name

    def lower(self, op, inputs, outputs=None, *, like=None, **attrs):
        """Emit ember op ``op`` on ``inputs`` through its own lowering (a fused op reusing its parts);
        fresh outputs take the dtype/shape of value ``like``. Returns the output name(s)."""
        from ember.ops.registry import get_op

        opdef = get_op(op)
        low = _LOWERINGS.get(op)
        if low is None or low.fn is None or low.min_opset > self.opset:
            raise self.error(f"it is exported through ember op {op!r}, which cannot be lowered at opset {self.opset}")
        if outputs is None:
            outputs = [self.fresh(op) for _ in range(opdef.n_outputs)]
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        for o in outputs:
            if o not in self.values and like is not None:
                self.declare(o, like)
        self._used.update(outputs)
        saved = self.node
        self.node = Node(op, list(inputs), outputs, {**opdef.attrs, **attrs})
        try:
            low.fn(self, self.node)
        finally:
            self.node = saved
        return outputs[0] if len(outputs) == 1 else outputs

    def reduce(self, op_type, x, axes, keepdims, outputs=None) -> str:
        """``Reduce*`` over ``axes`` (None: all), with the axes as an attribute or an input as the opset
        requires (ReduceSum takes an input from opset 13, the others from 18)."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes is None:
            return self.op(op_type, [x], outputs, keepdims=int(keepdims))
        if as_input:
            return self.op(op_type, [x, self.ints(axes)], outputs, keepdims=int(keepdims))
        return self.op(op_type, [x], outputs, axes=[int(a) for a in axes], keepdims=int(keepdims))

    def _known_dtype(self, name):
        v = self.values.get(name)
        return np.dtype(v.dtype) if v is not None else None

    # ---- checks -----------------------------------------------------------------------------
    def require_opset(self, n, what):
        """Refuse (ExportError) when the target opset is below ``n``; ``what`` names the ONNX feature."""
        if self.opset < n:
            raise self.error(f"needs ONNX opset {n} or later for {what}; exporting at opset {self.opset} "
                             f"(pass opset={n} or higher)")

    def error(self, msg) -> ExportError:
        """An ExportError naming the current node; ``raise g.error("...")``."""
        n = self.node
        where = f"op {n.op!r} (node {self.node_index}: {', '.join(n.outputs)} = {n.op}({', '.join(n.inputs)}))" \
            if n is not None else "export"
        return ExportError(f"{where}: {msg}")


def _is_sym(v) -> bool:
    return isinstance(v, dict) and set(v) == {"sym"}


def tensor_type(dtype, shape):
    """A ValueInfo type proto for an ember dtype name and IR shape (str dims -> dim_param)."""
    return helper.make_tensor_type_proto(onnx_dtype(dtype), [d if isinstance(d, str) else int(d) for d in shape])


__all__ = ["ExportError", "Builder", "lowers", "refuses", "get_lowering", "lowering_table", "onnx_dtype",
           "tensor_type", "Node", "TensorProto"]
