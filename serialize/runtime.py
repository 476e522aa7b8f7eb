"""Executes a Graph on backend arrays through the core op registry's kernels (no autograd).

The schedule (nodes in order, the last use of every value) is computed once per graph, with the ops that
offer a prepared kernel (``registry.prepared_kernel``) specialised on their constant inputs; each value
is dropped after its last use so activations do not pile up; ``{"sym": name}`` attributes are
resolved from the scalar values computed earlier in the same run.
"""
from __future__ import annotations

import numpy as np

from ember.ops.registry import get_op

from .ir import Graph, _sym_refs

# On CUDA these run on the host: shape arithmetic on python ints (sym_*) and the ops without tensor
# inputs, whose (small) results are copied to the device.
_HOST_OPS = frozenset(("sym_size", "sym_arith"))
_UPLOADED_OPS = frozenset(("full", "arange"))


class Executor:
    """A compiled schedule for one graph on one device."""

    def __init__(self, graph: Graph, device: str = "cpu"):
        self.graph = graph
        self.device = device
        self.constants = graph.constants
        if device == "cuda":
            from ember.cuda import _backend

            up = _backend().to_device
            self.constants = {k: up(v) for k, v in graph.constants.items()}
        last_use = {}
        for i, n in enumerate(graph.nodes):
            for name in list(n.inputs) + list(_sym_refs(n.attrs)):
                last_use[name] = i
        keep = set(graph.outputs) | set(graph.constants)
        steps = []
        for i, n in enumerate(graph.nodes):
            op = get_op(n.op)
            fn, ins, attrs = _kernel_for(op, device), tuple(n.inputs), n.attrs
            frees = tuple(name for name in dict.fromkeys(list(n.inputs) + list(_sym_refs(n.attrs)))
                          if last_use.get(name) == i and name not in keep)
            has_sym = any(True for _ in _sym_refs(n.attrs))
            prepare = op.prepared.get(device)
            if prepare is not None and not has_sym and any(name in self.constants for name in ins):
                bound = prepare([self.constants.get(name) for name in ins], dict(attrs))
                if bound is not None:  # the op specialised on its constant inputs, once
                    fn, ins, attrs = bound, tuple(name for name in ins if name not in self.constants), {}
            steps.append((fn, ins, attrs, has_sym, tuple(n.outputs), op.n_outputs > 1, frees))
        self._steps = steps
        used = {name for step in steps for name in step[1]} | set(graph.outputs) | {
            r for n in graph.nodes for r in _sym_refs(n.attrs)}
        self._env = {k: v for k, v in self.constants.items() if k in used}  # (not those prepared kernels hold)

    def run(self, inputs: dict) -> list:
        """``inputs``: graph input name -> array. Returns the output arrays in graph order."""
        env = dict(self._env)
        env.update(inputs)
        for fn, ins, attrs, has_sym, outs, multi, frees in self._steps:
            if has_sym:
                attrs = _resolve(attrs, env)
            res = fn(*[env[name] for name in ins], **attrs)
            if multi:
                for name, a in zip(outs, res):
                    env[name] = a
            else:
                env[outs[0]] = res
            for name in frees:
                del env[name]
        return [env[name] for name in self.graph.outputs]


def _kernel_for(op, device):
    fn = op.kernels.get(device)
    if device == "cuda" and fn is None:
        cpu = op.kernels.get("cpu")
        if op.name in _HOST_OPS:
            return cpu
        if op.name in _UPLOADED_OPS:
            from ember.cuda import _backend

            up = _backend().to_device
            return lambda *a, **kw: up(cpu(*a, **kw))
    if fn is None:
        raise NotImplementedError(f"op {op.name!r} has no kernel for device {device!r}; it has: {sorted(op.kernels)}")
    return fn


def _resolve(obj, env):
    if isinstance(obj, dict):
        if set(obj) == {"sym"}:
            return int(np.asarray(env[obj["sym"]]))
        return {k: _resolve(v, env) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_resolve(v, env) for v in obj)
    return obj
