"""Checkpoint I/O for modules: ``state_dict`` and ``load_state_dict`` with torch's keys and errors.

Kept apart from ``module.py`` because it is one idea (naming and copying state), and so that a
layer with special loading rules overrides just ``_load_from_state_dict``.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from ..autograd.grad_mode import no_grad
from ..tensor import Tensor


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``load_state_dict`` returns: the keys the model expected but did not get, and the extra ones."""

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


def _as_array(value):
    """A checkpoint value as a numpy array: ember tensors, numpy arrays, numbers, or any array-like
    object with ``detach()`` (e.g. a torch tensor) are accepted."""
    if isinstance(value, Tensor):
        return value._data
    if not isinstance(value, np.ndarray) and hasattr(value, "detach"):
        value = value.detach()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"expected a tensor or array of numbers, got {type(value).__name__} (dtype {arr.dtype})")
    return arr


class StateDictMixin:
    """``state_dict`` / ``load_state_dict`` for ``nn.Module`` (which inherits this)."""

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, p in self._parameters.items():
            if p is not None:
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()

    def state_dict(self, *, destination=None, prefix="", keep_vars=False):
        """An OrderedDict of every parameter and persistent buffer by qualified name ("0.weight",
        "bn.running_mean" ...), as detached tensors sharing storage with the model."""
        if destination is None:
            destination = OrderedDict()
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, child in self._modules.items():
            if child is not None:
                child.state_dict(destination=destination, prefix=f"{prefix}{name}.", keep_vars=keep_vars)
        return destination

    def _local_state(self):
        state = {n: p for n, p in self._parameters.items() if p is not None}
        state.update((n, b) for n, b in self._buffers.items()
                     if b is not None and n not in self._non_persistent_buffers_set)
        return state

    def _load_from_state_dict(self, state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs,
                              assign=False):
        """Copy this module's own entries (not its children's) from ``state_dict`` in place."""
        local = self._local_state()
        for name, target in local.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            try:
                arr = _as_array(state_dict[key])
            except TypeError as e:
                error_msgs.append(f'While copying the parameter named "{key}": {e}.')
                continue
            if arr.shape != target.shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {arr.shape} from checkpoint, "
                    f"the shape in current model is {target.shape}."
                )
                continue
            try:
                if assign:
                    self._assign_state(name, target, arr)
                else:
                    with no_grad():
                        if target._data.__class__ is not np.ndarray:  # a CUDA target: copied to the device
                            target._data[...] = arr
                        else:
                            np.copyto(target._data, arr if arr.__class__ is np.ndarray else arr.get(), casting="unsafe")
                        target._bump_version()
            except (ValueError, TypeError) as e:
                error_msgs.append(
                    f'While copying the parameter named "{key}", whose dimensions in the model are {target.shape} '
                    f"and whose dimensions in the checkpoint are {arr.shape}, an exception occurred: {e}."
                )
        if strict:
            for key in state_dict:
                if key.startswith(prefix):
                    head = key[len(prefix):].split(".", 1)[0]
                    if head not in self._modules and head not in local:
                        unexpected_keys.append(key)

    def _assign_state(self, name, target, arr):
        from .parameter import Parameter

        host = arr if arr.__class__ is np.ndarray else arr.get()
        t = Tensor._wrap(np.array(host, dtype=target._data.dtype, copy=True))
        if target.is_cuda:
            t = t.to(target.device)
        if name in self._parameters:
            self._parameters[name] = Parameter(t, requires_grad=target.requires_grad)
        else:
            self._buffers[name] = t

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy parameters and buffers from ``state_dict`` (ember tensors or numpy arrays) into this
        module in place. Returns ``(missing_keys, unexpected_keys)``; with ``strict`` either being
        non-empty raises, and a shape mismatch always raises, listing every problem."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict).__name__}.")
        missing, unexpected, errors = [], [], []

        def load(module, prefix):
            # Unexpected keys are found per module (as torch), so keys are checked even with strict=False.
            module._load_from_state_dict(state_dict, prefix, True, missing, unexpected, errors, assign)
            for name, child in module._modules.items():
                if child is not None:
                    load(child, f"{prefix}{name}.")

        load(self, "")
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(", ".join(f'"{k}"' for k in unexpected)))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(", ".join(f'"{k}"' for k in missing)))
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))
        return IncompatibleKeys(missing, unexpected)
