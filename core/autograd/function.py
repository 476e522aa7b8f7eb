"""``ember.autograd.Function``: user-defined differentiable operations (PyTorch's contract)."""
from __future__ import annotations

from .grad_mode import is_grad_enabled, no_grad
from .node import Context, Node


class FunctionCtx(Context):
    """The ``ctx`` of a custom Function: ``save_for_backward``, ``saved_tensors``,
    ``needs_input_grad``, and any attribute you set on it."""

    def mark_non_differentiable(self, *tensors):
        self._non_diff = {id(t) for t in tensors}


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)``;
    call ``MyFn.apply(*args)``. backward returns one gradient (or None) per forward argument."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("subclasses of ember.autograd.Function must implement forward")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("subclasses of ember.autograd.Function must implement backward")

    @classmethod
    def apply(cls, *args, **kwargs):
        from ..ops.registry import _edge
        from ..tensor import Tensor

        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx.input_shapes = tuple(a.shape if isinstance(a, Tensor) else None for a in args)
        with no_grad():
            out = cls.forward(ctx, *args, **kwargs)
        single = not isinstance(out, tuple)
        outs = (out,) if single else out
        if is_grad_enabled() and any(ctx.needs_input_grad):
            edges = tuple(_edge(a) if isinstance(a, Tensor) else None for a in args)
            node = Node(f"{cls.__name__}Backward", cls.backward, ctx, edges, len(outs))
            non_diff = getattr(ctx, "_non_diff", set())
            wrapped = []
            for i, o in enumerate(outs):
                if isinstance(o, Tensor) and o.dtype.is_floating_point and id(o) not in non_diff:
                    # A fresh tensor object sharing storage, so an input returned as-is keeps its own history.
                    o = Tensor._wrap(o._data)
                    o._requires_grad = True
                    o.grad_fn = node
                    o._out_idx = i
                wrapped.append(o)
            outs = tuple(wrapped)
        return outs[0] if single else outs
