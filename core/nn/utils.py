"""``nn.utils``: gradient clipping and flat parameter vectors, with torch's semantics.

Clipping runs between ``backward()`` and the optimizer step on plain gradient data, so it works on
the arrays directly (no graph, no new tensors unless a gradient buffer is read-only).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd.grad_mode import no_grad
from ..ops.join import cat
from ..tensor import Tensor


def _params(parameters):
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _update_grad_(p, new):
    """Write ``new`` into ``p.grad`` in place (a fresh buffer if the gradient is a read-only view)."""
    g = p.grad
    if g._data.flags.writeable:
        np.copyto(g._data, new, casting="unsafe")
        g._bump_version()
    else:
        p.grad = Tensor._wrap(np.asarray(new, dtype=g._data.dtype))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients together so their combined ``norm_type``-norm is at most ``max_norm``;
    returns the norm before clipping (a 0-d tensor), as torch."""
    grads = [p for p in _params(parameters) if p.grad is not None]
    norm_type = float(norm_type)
    if not grads:
        return Tensor._wrap(np.zeros((), np.float32))
    with no_grad():
        arrays = [p.grad._data.astype(np.float64, copy=False).ravel() for p in grads]
        if math.isinf(norm_type):
            norms = np.array([np.abs(a).max() if a.size else 0.0 for a in arrays])
            total = norms.max()
        else:
            norms = np.array([np.sum(np.abs(a) ** norm_type) for a in arrays])
            total = np.sum(norms) ** (1.0 / norm_type)
        if error_if_nonfinite and not np.isfinite(total):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot "
                f"be clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
                f"`error_if_nonfinite=False`"
            )
        coef = min(float(max_norm) / (total + 1e-6), 1.0)
        if coef < 1.0 or not np.isfinite(coef):
            for p in grads:
                _update_grad_(p, p.grad._data * p.grad._data.dtype.type(coef))
    return Tensor._wrap(np.asarray(total, dtype=grads[0].grad._data.dtype))


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    with no_grad():
        for p in _params(parameters):
            if p.grad is not None:
                _update_grad_(p, np.clip(p.grad._data, -clip_value, clip_value))


def parameters_to_vector(parameters):
    """All parameters flattened and concatenated into one 1-D tensor (differentiable, as torch)."""
    return cat([p.reshape(-1) for p in _params(parameters)])


def vector_to_parameters(vec, parameters):
    """Copy consecutive slices of the 1-D ``vec`` into the parameters (in place, outside autograd)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected an ember Tensor, but got: {type(vec).__name__}")
    params = _params(parameters)
    total = sum(p.numel() for p in params)
    if vec.ndim != 1 or vec.numel() != total:
        raise ValueError(f"vector_to_parameters: vec has shape {tuple(vec.shape)}, the parameters need ({total},)")
    flat = vec._data
    start = 0
    with no_grad():
        for p in params:
            n = p.numel()
            np.copyto(p._data, flat[start:start + n].reshape(p.shape), casting="unsafe")
            p._bump_version()
            start += n


__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector", "vector_to_parameters"]
