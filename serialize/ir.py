"""The graph IR: SSA values with dtype and (possibly symbolic) shape, op nodes, constants.

A ``Graph`` is plain data, so it round-trips through JSON exactly (``to_json`` / ``from_json``):

- ``Value(name, dtype, shape)``: ``dtype`` is an ember dtype name ("float32"); each dim of
  ``shape`` is an int or a symbol name (str, e.g. "batch"). Scalar shape values computed from
  symbolic dims (``sym_size`` ...) are int64 values of shape ().
- ``Node(op, inputs, outputs, attrs, version)``: ``op`` names an entry of the core op registry;
  ``inputs`` / ``outputs`` are value names; ``attrs`` are JSON data, where ``{"sym": name}`` stands
  for the int held by scalar value ``name`` at run time (a symbolic dim in a reshape target ...).
- ``inputs`` (ordered value names), ``outputs`` (ordered value names), ``constants`` (value name
  -> numpy array: parameters, buffers, tensors the model built from Python data).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Value:
    name: str
    dtype: str
    shape: tuple

    def to_json(self):
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(d):
        return Value(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass
class Node:
    op: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    version: int = 1

    def to_json(self):
        return {"op": self.op, "version": self.version, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": _attrs_to_json(self.attrs)}

    @staticmethod
    def from_json(d):
        return Node(d["op"], list(d["inputs"]), list(d["outputs"]), _attrs_from_json(d.get("attrs", {})),
                    d.get("version", 1))


class Graph:
    """Nodes in a valid execution order over named values; see the module docstring."""

    def __init__(self):
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.constants: dict[str, np.ndarray] = {}

    def add_value(self, name, dtype, shape) -> Value:
        if name in self.values:
            raise ValueError(f"graph: value {name!r} is defined twice")
        v = Value(name, dtype, tuple(shape))
        self.values[name] = v
        return v

    def users(self) -> dict:
        """value name -> indices of the nodes that read it."""
        out = {}
        for i, n in enumerate(self.nodes):
            for name in n.inputs:
                out.setdefault(name, []).append(i)
            for name in _sym_refs(n.attrs):
                out.setdefault(name, []).append(i)
        return out

    def to_json(self) -> dict:
        return {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "values": [v.to_json() for v in self.values.values()],
            "constants": sorted(self.constants),
            "nodes": [n.to_json() for n in self.nodes],
        }

    @staticmethod
    def from_json(d, constants) -> "Graph":
        g = Graph()
        for v in d["values"]:
            val = Value.from_json(v)
            g.values[val.name] = val
        g.inputs = list(d["inputs"])
        g.outputs = list(d["outputs"])
        g.nodes = [Node.from_json(n) for n in d["nodes"]]
        g.constants = {name: constants[name] for name in d["constants"]}
        return g

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)

    def code(self) -> str:
        """A readable, stable listing: one line per node, like TorchScript's ``.code``."""
        def sig(name):
            v = self.values[name]
            return f"{name}: {v.dtype}[{', '.join(str(s) for s in v.shape)}]"

        lines = [f"graph({', '.join(sig(n) for n in self.inputs)}):"]
        for c in sorted(self.constants):
            lines.append(f"  {sig(c)} = constant")
        for n in self.nodes:
            attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in sorted(n.attrs.items()))
            args = ", ".join(n.inputs) + (", " if n.inputs and attrs else "") + attrs
            lines.append(f"  {', '.join(sig(o) for o in n.outputs)} = {n.op}({args})")
        lines.append(f"  return ({', '.join(self.outputs)})")
        return "\n".join(lines)


class Sym(dict):
    """An attribute that stands for the int in scalar value ``name`` at run time."""

    def __init__(self, name: str):
        super().__init__(sym=name)


def _fmt_attr(v):
    if isinstance(v, dict) and set(v) == {"sym"}:
        return f"int({v['sym']})"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt_attr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def _sym_refs(obj):
    """Names of the scalar values an attribute structure refers to."""
    if isinstance(obj, dict):
        if set(obj) == {"sym"}:
            yield obj["sym"]
        else:
            for v in obj.values():
                yield from _sym_refs(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _sym_refs(v)


def _attrs_to_json(obj):
    # tuples become lists in JSON; they are turned back into tuples on load (ops take tuples)
    if isinstance(obj, dict):
        return {k: _attrs_to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_attrs_to_json(v) for v in obj]
    return obj


def _attrs_from_json(obj, top=True):
    if isinstance(obj, dict):
        if set(obj) == {"sym"} and not top:
            return Sym(obj["sym"])
        return {k: _attrs_from_json(v, False) for k, v in obj.items()}
    if isinstance(obj, list):
        return tuple(_attrs_from_json(v, False) for v in obj)
    return obj
