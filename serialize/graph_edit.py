"""Graph edits the tracer makes after recording: output naming, dead-code removal, value numbering."""
from __future__ import annotations

from .ir import Node, Sym, _sym_refs


def name_outputs(graph, values, onames):
    if len(set(onames)) != len(onames):
        raise ValueError(f"trace: output names must be distinct, got {onames}")
    for name in onames:
        if name in graph.inputs or name in graph.constants:
            raise ValueError(f"trace: output name {name!r} is already the name of an input or a parameter")
        if name in graph.values:  # an intermediate happens to carry the name: move it aside
            k = 0
            while f"{name}_{k}" in graph.values:
                k += 1
            _rename(graph, name, f"{name}_{k}")
            values = [f"{name}_{k}" if v == name else v for v in values]
    producers = {o: n for n in graph.nodes for o in n.outputs}
    used_as_output = set()
    for i, (v, name) in enumerate(zip(values, onames)):
        node = producers.get(v)
        if node is not None and v not in used_as_output and v not in graph.inputs and name not in graph.values:
            _rename(graph, v, name)
        else:  # an input, a constant or a repeated output: copy it under its own name
            src = graph.values[v]
            graph.add_value(name, src.dtype, src.shape)
            graph.nodes.append(Node("clone", [v], [name]))
        used_as_output.add(v)
        graph.outputs.append(name)


def _rename(graph, old, new):
    _apply_names(graph, {old: new})


def eliminate_dead_code(graph):
    live = set(graph.outputs)
    kept = []
    for n in reversed(graph.nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(n.inputs)
            live.update(_sym_refs(n.attrs))
    graph.nodes = kept[::-1]
    for name in [c for c in graph.constants if c not in live]:
        del graph.constants[name]
    defined = set(graph.inputs) | set(graph.constants) | {o for n in graph.nodes for o in n.outputs}
    graph.values = {k: v for k, v in graph.values.items() if k in defined}


def renumber(graph):
    """Name the intermediate values v1, v2, ... and size scalars s1, s2, ... in order of definition,
    so listings have no gaps where dead code was removed."""
    fixed = set(graph.inputs) | set(graph.outputs) | set(graph.constants)
    mapping, counts = {}, {"v": 0, "s": 0}
    for n in graph.nodes:
        for o in n.outputs:
            if o in fixed or o.startswith(tuple(f"{i}_size" for i in graph.inputs)):
                continue
            kind = "s" if graph.values[o].dtype == "int64" and graph.values[o].shape == () else "v"
            counts[kind] += 1
            while f"{kind}{counts[kind]}" in fixed:  # a user's output or input may already be named "v3"
                counts[kind] += 1
            mapping[o] = f"{kind}{counts[kind]}"
    if not mapping:
        return

    _apply_names(graph, mapping)


def _rename_syms(obj, mapping):
    if isinstance(obj, Sym):
        return Sym(mapping.get(obj["sym"], obj["sym"]))
    if isinstance(obj, dict):
        return {k: _rename_syms(v, mapping) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_rename_syms(v, mapping) for v in obj)
    return obj


def _apply_names(graph, mapping):
    """Rename values everywhere they appear: node inputs/outputs, sym attributes, the value table."""
    for n in graph.nodes:
        n.inputs = [mapping.get(x, x) for x in n.inputs]
        n.outputs = [mapping.get(x, x) for x in n.outputs]
        n.attrs = _rename_syms(n.attrs, mapping)
    values = {}
    for name, v in graph.values.items():
        v.name = mapping.get(name, name)
        values[v.name] = v
    graph.values = values
