"""Adam and AdamW (decoupled weight decay), with AMSGrad and maximize, as in torch.optim."""
from __future__ import annotations

from ..backends.cpu.optim_kernels import adam_update
from .optimizer import Optimizer, fused_update, next_step, zeros_state, zeros_step


class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected first/second moment estimates; ``decoupled_weight_decay=True``
    decays the weights directly (``p *= 1 - lr * weight_decay``) instead of adding to the gradient."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, group):
        betas = group["betas"]
        self._require_non_negative(group, "lr", "eps")
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: expected a pair (beta1, beta2), got {betas}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        self._require_non_negative(group, "weight_decay")
        group["betas"] = tuple(betas)

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = self._run_closure(closure)
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            amsgrad = bool(group["amsgrad"])
            flags = (bool(group["decoupled_weight_decay"]), amsgrad, bool(group["maximize"]))
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state.setdefault("step", zeros_step())
                    state["exp_avg"] = zeros_state(p)
                    state["exp_avg_sq"] = zeros_state(p)
                if amsgrad and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = zeros_state(p)
                t = next_step(state)
                # bias corrections in python double, as torch computes them
                step_size = lr / (1.0 - beta1 ** t)
                bc2_sqrt = (1.0 - beta2 ** t) ** 0.5
                vmax = state["max_exp_avg_sq"]._data if amsgrad else None
                scalars = (wd, 1.0 - lr * wd, 1.0 - beta1, beta2, 1.0 - beta2, step_size, bc2_sqrt, eps)
                fused_update(adam_update, p, g._data, (state["exp_avg"]._data, state["exp_avg_sq"]._data, vmax),
                             scalars, flags)
        return loss


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)
