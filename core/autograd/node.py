"""Graph nodes (``tensor.grad_fn``) and the context object their backward receives."""
from __future__ import annotations


class Context:
    """What forward leaves for backward: saved tensors, flags and any attributes the op sets."""

    def __init__(self, needs_input_grad=(), input_shapes=()):
        self._saved = None
        self._saved_versions = None
        self.needs_input_grad = needs_input_grad
        self.input_shapes = input_shapes
        self._freed = False

    def save_for_backward(self, *tensors):
        if self._saved is not None:
            raise RuntimeError("save_for_backward can be called at most once per forward")
        self._save(tensors)

    def _save(self, tensors):
        """Keep ``tensors`` (a tuple; None entries allowed) and their versions, for the in-place check."""
        self._saved = tensors
        self._saved_versions = tuple([None if t is None else t._vbox[0] for t in tensors])

    @property
    def saved_tensors(self):
        if self._freed:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved tensors after "
                "they have already been freed). Specify retain_graph=True when calling .backward() or "
                "autograd.grad() the first time if you need to backward twice."
            )
        if self._saved is None:
            return ()
        for t, v in zip(self._saved, self._saved_versions):
            if t is not None and t._version != v:
                raise RuntimeError(
                    f"one of the tensors needed for gradient computation has been modified by an in-place "
                    f"operation: a tensor of shape {tuple(t.shape)} is at version {t._version}, expected "
                    f"version {v}. Avoid the in-place op, or clone() the tensor before it."
                )
        return self._saved

    def _free(self):
        self._saved = None
        self._freed = True


class Node:
    """One recorded op application.

    ``edges[i]`` says where input i's gradient goes: ``None`` (no gradient), a leaf Tensor
    (accumulate into its ``.grad``), or ``(node, output_index)`` captured when the op ran, so
    later in-place ops that rebase a tensor's ``grad_fn`` do not rewire this node.
    """

    __slots__ = ("backward_fn", "ctx", "edges", "n_outputs", "_name", "retained", "hooks", "__weakref__")

    def __init__(self, name, backward_fn, ctx, edges, n_outputs=1):
        self._name = name
        self.backward_fn = backward_fn
        self.ctx = ctx
        self.edges = edges
        self.n_outputs = n_outputs
        self.retained = None  # non-leaf outputs that called retain_grad()
        self.hooks = None  # {output index: [fn, ...]} from Tensor.register_hook on non-leaf outputs

    def name(self) -> str:
        return self._name

    @property
    def next_functions(self):
        return tuple(e if e is None or e.__class__ is tuple else ("AccumulateGrad", 0) for e in self.edges)

    def __repr__(self):
        return f"<{self._name} object>"


class RemovableHook:
    """Returned by ``Tensor.register_hook``; ``remove()`` unregisters the hook."""

    def __init__(self, hooks: list, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self):
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


def run_hooks(hooks, g):
    """Apply gradient hooks in order; a hook returning a tensor replaces the gradient."""
    for fn in list(hooks):
        out = fn(g)
        if out is not None:
            g = out
    return g
