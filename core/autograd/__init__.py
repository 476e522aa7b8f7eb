"""Define-by-run automatic differentiation."""
from __future__ import annotations

from .engine import refuse_create_graph, run_backward
from .function import Function, FunctionCtx
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned (not accumulated into ``.grad``)."""
    from ..tensor import Tensor, _seed_grads

    refuse_create_graph(create_graph)

    single_in = isinstance(inputs, Tensor)
    outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    inputs = (inputs,) if single_in else tuple(inputs)
    for t in inputs:
        if not t.requires_grad:
            raise RuntimeError("autograd.grad: one of the inputs does not require grad")
    if grad_outputs is not None and isinstance(grad_outputs, Tensor):
        grad_outputs = (grad_outputs,)
    seeds = _seed_grads(outputs, grad_outputs)
    res = run_backward(outputs, seeds, retain_graph=bool(retain_graph), inputs=inputs)
    if not allow_unused:
        for i, g in enumerate(res):
            if g is None:
                raise RuntimeError(
                    f"autograd.grad: input {i} was not used in the graph of the outputs; pass allow_unused=True "
                    f"to get None for it"
                )
    return res


__all__ = ["Function", "FunctionCtx", "grad", "no_grad", "enable_grad", "inference_mode", "is_grad_enabled", "set_grad_enabled"]
