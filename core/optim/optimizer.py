"""``Optimizer``: parameter groups, per-parameter state, ``zero_grad`` and torch-format state dicts.

Subclasses implement ``step`` by calling one fused kernel per parameter through ``fused_update``,
which hands the kernel flat C-contiguous float32/float64 buffers and bumps the parameter's version.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..autograd.grad_mode import enable_grad
from ..tensor import Tensor

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = np.dtype(np.float32)


# how torch names each hyper-parameter in its "Invalid ..." errors
_LABELS = {"lr": "learning rate", "eps": "epsilon value", "momentum": "momentum value",
           "weight_decay": "weight_decay value", "alpha": "alpha value"}

class _RequiredParameter:
    """Marks a hyper-parameter every param group must set (no usable default)."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _kernel_view(a: np.ndarray, kdt):
    """A flat C-contiguous ``kdt`` view of ``a``, or a copy (then the caller must write it back)."""
    if a.dtype == kdt and a.flags.c_contiguous and a.flags.writeable:
        return a.reshape(-1), False
    return np.array(a, dtype=kdt, order="C").reshape(-1), True


def fused_update(kernel, param: Tensor, grad: np.ndarray, states, scalars, flags):
    """Run ``kernel(p, g, *states, hp, *flags)`` in place on one parameter, ``hp`` = ``scalars`` as an array.

    A ``None`` state is a buffer the chosen options never touch. float32 and float64 parameters run
    on their own buffers; other float dtypes (float16) go through float32 copies that are written
    back. Scalars take the kernel dtype, so float32 parameters are updated in float32.
    """
    pa = param._data
    if pa.shape != grad.shape:
        raise RuntimeError(
            f"optimizer step: gradient has shape {grad.shape} but its parameter has shape {pa.shape}"
        )
    if pa.__class__ is not np.ndarray:  # a CUDA parameter: the same update as a CUDA kernel
        if grad.__class__ is np.ndarray or any(s is not None and s.__class__ is np.ndarray for s in states):
            raise RuntimeError(f"optimizer step: a parameter on {param.device} has its gradient or state on the cpu; "
                               f"move the model with .to(device) before creating the optimizer, or load its state "
                               f"after moving")
        from ..backends.cuda.optim_kernels import fused_update as cuda_update

        cuda_update(kernel, pa, grad, states, scalars, flags)
        param._bump_version()
        return
    if not pa.flags.writeable:
        raise RuntimeError(
            f"optimizer step: a parameter of shape {pa.shape} is read-only (e.g. memory-mapped from a file); "
            f"give it its own storage first (p.data = p.clone())"
        )
    kdt = pa.dtype if pa.dtype in _KERNEL_DTYPES else _F32
    pf, p_copied = _kernel_view(pa, kdt)
    if grad.dtype == kdt and grad.flags.c_contiguous:
        gf = grad.reshape(-1)
    else:
        gf = np.ascontiguousarray(grad, dtype=kdt).reshape(-1)
    flat, back = [], []
    for s in states:
        if s is None:
            flat.append(pf)
            continue
        sf, copied = _kernel_view(s, kdt)
        flat.append(sf)
        if copied:
            back.append((s, sf))
    kernel(pf.size, pf, gf, *flat, np.array(scalars, kdt), *flags)
    if p_copied:
        np.copyto(pa, pf.reshape(pa.shape), casting="unsafe")
    for s, sf in back:
        np.copyto(s, sf.reshape(s.shape), casting="unsafe")
    param._bump_version()


def zeros_state(param: Tensor) -> Tensor:
    """A zero state buffer shaped and typed like ``param`` (C-contiguous, as kernels want)."""
    if param._data.__class__ is not np.ndarray:
        from ..factories import zeros

        return zeros(*param.shape, dtype=param.dtype, device=param.device)
    return Tensor._wrap(np.zeros(param._data.shape, dtype=param._data.dtype))


def zeros_step() -> Tensor:
    """A fresh step counter: a float32 0-d tensor, as in torch."""
    return Tensor._wrap(np.zeros((), np.float32))


def next_step(state: dict) -> float:
    """Increment the per-parameter step counter and return its new value."""
    st = state.get("step")
    if st is None:
        st = state["step"] = zeros_step()
    elif not isinstance(st, Tensor):
        st = state["step"] = Tensor._wrap(np.array(st, dtype=np.float32))
    st._data += 1
    return float(st._data)


class Optimizer:
    """Base class: holds ``param_groups`` (dicts with per-group options) and ``state`` (per parameter)."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict] = []
        if isinstance(params, Tensor):
            raise TypeError(
                f"{type(self).__name__}: params should be an iterable of Tensors or dicts, but got a single "
                f"Tensor of shape {tuple(params.shape)}; wrap it in a list: [param]"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError(_SET_ERROR)
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __getstate__(self):
        # not the step wrapper a scheduler may have installed (it refers to this instance)
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    # ---- parameter groups -------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own options (missing options take the defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("param_group must have a 'params' entry (a list of Tensors)")
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(_SET_ERROR)
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        if names:
            if len(names) != len(params):
                raise ValueError("all optimizer params should be with/without names. Some param names are missing")
            group["param_names"] = names
            params = [p[1] for p in params]
        seen = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but param {i} of the group is a {type(p).__name__}")
            if p.grad_fn is not None and not p._retains_grad:
                raise ValueError(
                    f"can't optimize a non-leaf Tensor (param {i} of the group, shape {tuple(p.shape)}, "
                    f"grad_fn={p.grad_fn.name()}); optimize the leaf it was computed from, or detach it"
                )
            if id(p) in seen:
                raise ValueError(f"optimizer: parameter {i} of the group (shape {tuple(p.shape)}) appears twice")
            seen.add(id(p))
        for other in self.param_groups:
            if any(id(q) in seen for q in other["params"]):
                raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Validate a group's hyper-parameters (subclasses raise torch's 'Invalid ...' errors)."""

    @staticmethod
    def _require_non_negative(group: dict, *names) -> None:
        """torch's 'Invalid <label>: <value>' error for the first of ``names`` that is negative."""
        for name in names:
            if group[name] < 0.0:
                raise ValueError(f"Invalid {_LABELS[name]}: {group[name]}")

    # ---- stepping ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (``set_to_none``) or zero it in place."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                g.grad_fn = None
                g._requires_grad = False
                if g._data.flags.writeable:
                    g._data.fill(0)
                    g._bump_version()
                else:  # e.g. a broadcast view handed over by backward: replace rather than write
                    p.grad = Tensor._wrap(np.zeros(g._data.shape, dtype=g._data.dtype))

    def step(self, closure=None):
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    @staticmethod
    def _run_closure(closure):
        """Re-evaluate the loss (with grad mode on) when a closure is given, as torch does."""
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ---- state dicts ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`` (torch's format).

        State tensors are the live buffers (not copies), as in torch: deep-copy to keep a snapshot.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                ids.append(index.setdefault(id(p), len(index)))
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    state[index[id(p)]] = dict(self.state[p])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore options and state saved by ``state_dict`` (tensors are copied into place)."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' entries")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_state_dict: loaded state dict has a different number of parameter groups "
                f"({len(saved_groups)} saved, {len(self.param_groups)} in this optimizer)"
            )
        id_map = {}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{name}.load_state_dict: loaded state dict contains a parameter group that doesn't match "
                    f"the size of optimizer's group (group {gi}: {len(saved['params'])} saved parameters, "
                    f"{len(group['params'])} in this optimizer)"
                )
            for idx, p in zip(saved["params"], group["params"]):
                id_map[int(idx)] = p
        new_state: defaultdict = defaultdict(dict)
        for key, entry in state_dict["state"].items():
            idx = int(key)
            if idx not in id_map:
                raise ValueError(
                    f"{name}.load_state_dict: state entry for parameter index {idx}, which no param group lists "
                    f"(valid indices: 0..{len(id_map) - 1})"
                )
            p = id_map[idx]
            new_state[p] = {k: _load_state_value(p, idx, k, v) for k, v in entry.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            g = {}
            for k, v in saved.items():
                if k == "params":
                    continue
                # JSON checkpoints turn tuples (betas) into lists
                g[k] = tuple(v) if isinstance(v, list) and isinstance(group.get(k), tuple) else v
            g["params"] = group["params"]
            new_groups.append(g)
        self.state = new_state
        self.param_groups = new_groups


def _load_state_value(p: Tensor, idx: int, key: str, value):
    """A private copy of one saved state entry: 'step' as a float32 0-d tensor, buffers in p's dtype."""
    if isinstance(value, Tensor):
        arr = value._data
    elif isinstance(value, np.ndarray):
        arr = value
    elif key == "step" and isinstance(value, (int, float, np.number)):
        arr = np.asarray(value)
    else:
        return value
    if key == "step":
        return Tensor._wrap(np.array(arr, dtype=np.float32).reshape(()))
    if arr.shape != p._data.shape:
        raise ValueError(
            f"load_state_dict: state '{key}' of parameter {idx} has shape {tuple(arr.shape)}, "
            f"but the parameter has shape {tuple(p._data.shape)}"
        )
    dtype = p._data.dtype if arr.dtype.kind == "f" else arr.dtype
    if arr.__class__ is not np.ndarray:  # saved from a CUDA run
        arr = arr.get()
    out = Tensor._wrap(np.array(arr, dtype=dtype, order="C"))
    return out if p.device.type == "cpu" else out.to(p.device)


_SET_ERROR = (
    "optimizer parameters need to be organized in ordered collections, but the ordering of tensors in sets "
    "will change between runs. Please use a list instead."
)
