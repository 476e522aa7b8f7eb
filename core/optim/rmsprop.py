"""RMSprop (optionally centered, with momentum), as in torch.optim."""
from __future__ import annotations

from ..backends.cpu.optim_kernels import rmsprop_update
from .optimizer import Optimizer, fused_update, next_step, zeros_state, zeros_step


class RMSprop(Optimizer):
    """torch.optim.RMSprop: ``p -= lr * g / (sqrt(E[g^2] - (E[g]^2 if centered)) + eps)``, through a
    momentum buffer when ``momentum > 0``."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        self._require_non_negative(group, "lr", "eps", "momentum", "weight_decay", "alpha")

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            alpha, momentum = group["alpha"], group["momentum"]
            centered = bool(group["centered"])
            scalars = (group["lr"], alpha, 1.0 - alpha, group["eps"], group["weight_decay"], momentum)
            flags = (centered, bool(group["maximize"]))
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if "square_avg" not in state:
                    state.setdefault("step", zeros_step())
                    state["square_avg"] = zeros_state(p)
                if momentum > 0 and "momentum_buffer" not in state:
                    state["momentum_buffer"] = zeros_state(p)
                if centered and "grad_avg" not in state:
                    state["grad_avg"] = zeros_state(p)
                next_step(state)
                states = (
                    state["square_avg"]._data,
                    state["grad_avg"]._data if centered else None,
                    state["momentum_buffer"]._data if momentum > 0 else None,
                )
                fused_update(rmsprop_update, p, g._data, states, scalars, flags)
        return loss
