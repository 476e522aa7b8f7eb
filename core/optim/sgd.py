"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""
from __future__ import annotations

from ..backends.cpu.optim_kernels import sgd_update
from .optimizer import Optimizer, fused_update, zeros_state


class SGD(Optimizer):
    """torch.optim.SGD: ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the first step),
    then ``p -= lr * (g + momentum * buf if nesterov else buf)``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        self._require_non_negative(group, "lr", "momentum", "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(got momentum={group['momentum']}, dampening={group['dampening']})"
            )

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            momentum = group["momentum"]
            scalars = (group["lr"], group["weight_decay"], momentum, 1.0 - group["dampening"])
            flags = (bool(group["nesterov"]), bool(group["maximize"]))
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    first = buf is None
                    if first:
                        buf = state["momentum_buffer"] = zeros_state(p)
                    fused_update(sgd_update, p, g._data, (buf._data,), scalars, flags + (first,))
                else:
                    fused_update(sgd_update, p, g._data, (None,), scalars, flags + (False,))
        return loss

