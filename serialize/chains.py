"""Chain fusion, a load-time pass (CPU only): runs of linear layers, each output read only by the next, become one
node whose kernel runs the whole chain in one native task (backends/cpu/int8_chain.py, f32_chain.py): the
threads split each layer's work once for the chain and meet at a barrier between layers, instead of a Python
call, a kernel dispatch and a thread hand-off per layer.

- ``fuse_dynamic_chains``: ``dynamic_quantized_linear`` layers (with biases and one ``reduce_range``) ->
  ``dynamic_quantized_mlp``;
- ``fuse_linear_chains``: float32 ``linear`` / ``linear_act(act="relu")`` layers with constant weights and
  biases -> ``linear_mlp``.

The CUDA backend has kernels for neither fused op, so ``optimize`` runs these for CPU programs only.
"""
from __future__ import annotations

from ember.ops.registry import get_op

from .ir import Graph
from .passes import _users

MAX_CHAIN = 63  # the fused kernels' layer limit (int8_chain.MAX_LAYERS, f32_chain.MAX_LAYERS)


def _fuse_chains(g: Graph, link, relu_of, params_of, op: str, shared=()) -> int:
    """Fuse every run of 2 .. MAX_CHAIN nodes for which ``link(node)`` holds, each node's output read only by the
    next as its first input and all with the same values of the attributes named in ``shared``, into one ``op``
    node with inputs (x, *params_of(node) per layer) and attributes ``relus`` and ``shared``; returns how many runs
    were fused."""
    def key(n):
        return tuple(n.attrs.get(a, get_op(n.op).attrs[a]) for a in shared)

    users = _users(g)

    def next_of(n):
        out = n.outputs[0]
        nxt = users.get(out, [])
        if out in g.outputs or len(nxt) != 1 or nxt[0] is None:
            return None
        m = nxt[0]
        if not link(m) or m.inputs[0] != out or out in m.inputs[1:] or key(m) != key(n):
            return None
        return m

    heads = {id(m) for n in g.nodes if link(n) for m in [next_of(n)] if m is not None}
    drop, fused = set(), 0
    for n in list(g.nodes):
        if id(n) in drop or id(n) in heads or not link(n):
            continue
        chain = [n]
        while len(chain) < MAX_CHAIN:
            m = next_of(chain[-1])
            if m is None:
                break
            chain.append(m)
        if len(chain) < 2:
            continue
        relus = tuple(relu_of(m) for m in chain)
        params = [name for m in chain for name in params_of(m)]
        for m in chain[:-1]:
            del g.values[m.outputs[0]]
        n.op, n.inputs, n.attrs = op, [n.inputs[0]] + params, {"relus": relus, **dict(zip(shared, key(n)))}
        n.outputs, n.version = list(chain[-1].outputs), get_op(op).version
        drop.update(id(m) for m in chain[1:])
        fused += 1
    g.nodes = [m for m in g.nodes if id(m) not in drop]
    return fused


def fuse_dynamic_chains(g: Graph) -> int:
    """``dynamic_quantized_linear`` chains (with biases) -> ``dynamic_quantized_mlp``; returns how many."""
    return _fuse_chains(g, lambda n: n.op == "dynamic_quantized_linear" and len(n.inputs) == 4,
                        lambda n: bool(n.attrs.get("relu", False)), lambda n: n.inputs[1:], "dynamic_quantized_mlp",
                        shared=("reduce_range",))


def fuse_linear_chains(g: Graph) -> int:
    """float32 ``linear`` / ``linear_act(relu)`` chains with constant weights and biases -> ``linear_mlp``;
    returns how many."""
    def link(n):
        if not (n.op == "linear" or (n.op == "linear_act" and n.attrs.get("act", "relu") == "relu")):
            return False
        if len(n.inputs) != 3 or not all(name in g.constants for name in n.inputs[1:]):
            return False
        return all(g.values[name].dtype == "float32" for name in n.inputs + n.outputs)

    return _fuse_chains(g, link, lambda n: n.op == "linear_act", lambda n: n.inputs[1:], "linear_mlp")
