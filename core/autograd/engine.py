"""The backward pass: topological order over recorded nodes, then ``grad +=`` in reverse."""
from __future__ import annotations

from .grad_mode import no_grad
from .node import run_hooks


def _topo_order(roots):
    """Nodes reachable from ``roots`` so that every node comes after all nodes that consume it."""
    order, seen = [], set()
    for root in roots:
        if root is None or id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(root.edges))]
        while stack:
            node, it = stack[-1]
            for e in it:
                if e is None or e.__class__ is not tuple:
                    continue
                parent = e[0]
                if id(parent) not in seen:
                    seen.add(id(parent))
                    stack.append((parent, iter(parent.edges)))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()  # consumers first
    return order


def refuse_create_graph(create_graph):
    if create_graph:
        raise NotImplementedError(
            "create_graph=True (higher-order gradients) is not supported by ember yet: backward passes run "
            "without recording a graph"
        )


def _check_grad(node, i, g):
    shape = node.ctx.input_shapes[i]
    if g.shape != shape:
        raise RuntimeError(
            f"{node.name()} returned a gradient of shape {tuple(g.shape)} for input {i}, "
            f"which has shape {tuple(shape)}"
        )


def run_backward(outputs, grad_outputs, retain_graph=False, inputs=None):
    """Propagate ``grad_outputs`` from ``outputs``.

    With ``inputs=None`` gradients accumulate into leaves' ``.grad``; otherwise they are
    returned for ``inputs`` (in order) and no ``.grad`` is touched (``autograd.grad``).
    """
    from ..tensor import Tensor

    capture = None
    if inputs is not None:
        capture = {id(t): None for t in inputs}
        leaf_capture = {id(t) for t in inputs if t.grad_fn is None}
        nonleaf = {}
        for t in inputs:
            if t.grad_fn is not None:
                nonleaf.setdefault(id(t.grad_fn), []).append(t)

    pending = {}  # id(node) -> list of per-output grads
    owned = set()  # ids of gradient tensors already handed to a leaf (must be copied before reuse)
    roots = []
    with no_grad():
        for out, g in zip(outputs, grad_outputs):
            owned.add(id(g))
            if out.grad_fn is None:
                if capture is not None and id(out) in capture:
                    capture[id(out)] = g if capture[id(out)] is None else capture[id(out)] + g
                elif capture is None and out.requires_grad:
                    _accumulate_leaf(out, g, owned)
                continue
            slot = pending.setdefault(id(out.grad_fn), [None] * out.grad_fn.n_outputs)
            idx = out._out_idx
            slot[idx] = g if slot[idx] is None else slot[idx] + g
            roots.append(out.grad_fn)

        for node in _topo_order(roots):
            grads = pending.pop(id(node), None)
            if grads is None or grads.count(None) == len(grads):
                if not retain_graph:
                    node.ctx._free()
                continue
            if node.hooks:
                for idx, fns in node.hooks.items():
                    if grads[idx] is not None and fns:
                        grads[idx] = run_hooks(fns, grads[idx])
            if node.retained and capture is None:
                for t in node.retained:
                    g = grads[t._out_idx]
                    if g is not None and t.grad_fn is node:
                        t.grad = g.clone() if t.grad is None else t.grad + g
            if capture is not None and id(node) in nonleaf:
                for t in nonleaf[id(node)]:
                    g = grads[t._out_idx]
                    if g is not None:
                        capture[id(t)] = g if capture[id(t)] is None else capture[id(t)] + g
            if node.ctx._freed:
                node.ctx.saved_tensors  # raises the "backward twice" error
            in_grads = node.backward_fn(node.ctx, *grads)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            if len(in_grads) != len(node.edges):
                raise RuntimeError(
                    f"{node.name()}: backward returned {len(in_grads)} gradients, expected {len(node.edges)} "
                    f"(one per forward input, None for inputs without gradient)"
                )
            if not retain_graph:
                node.ctx._free()
            shapes = node.ctx.input_shapes
            for i, (e, g) in enumerate(zip(node.edges, in_grads)):
                if e is None or g is None:
                    continue
                if not isinstance(g, Tensor):
                    raise TypeError(f"{node.name()}: backward returned {type(g).__name__} for input {i}, expected a Tensor or None")
                if g._data.shape != shapes[i]:
                    _check_grad(node, i, g)
                if e.__class__ is not tuple:  # a leaf tensor
                    t = e
                    if capture is not None:
                        if id(t) in leaf_capture:
                            capture[id(t)] = g if capture[id(t)] is None else capture[id(t)] + g
                    else:
                        _accumulate_leaf(t, g, owned)
                    continue
                parent, idx = e
                slot = pending.setdefault(id(parent), [None] * parent.n_outputs)
                slot[idx] = g if slot[idx] is None else slot[idx] + g
    if capture is not None:
        return tuple(capture[id(t)] for t in inputs)
    return None


def _accumulate_leaf(t, g, owned):
    if t._grad_hooks:
        g = run_hooks(t._grad_hooks, g)
    if g._data.dtype != t._data.dtype:
        g = g.to(t.dtype)
    if t.grad is None:
        data = g._data
        # Hand the gradient's buffer to .grad only when nobody else can see it.
        if id(g) in owned or data.base is not None or not data.flags.c_contiguous or not data.flags.writeable:
            g = g.clone()
        owned.add(id(g))
        t.grad = g.detach() if g.requires_grad else g
    else:
        t.grad = t.grad + g
