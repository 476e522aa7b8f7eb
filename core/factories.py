"""Tensor factories: zeros, ones, full, arange, rand, ... (float32 / int64 defaults, like torch)."""
from __future__ import annotations

import numpy as np

from . import _hooks
from . import dtypes as _dt
from .device import as_device
from .random import rng_of
from .tensor import Tensor


def _symbolic(*values) -> bool:
    """Whether a size argument holds an int subclass (a tracer's symbolic dim) while a tracer listens."""
    if _hooks.factory is None:
        return False
    stack = list(values)
    while stack:  # sizes come as (2, 3), ((2, 3),) or [2, 3]
        v = stack.pop()
        if isinstance(v, (tuple, list)):
            stack.extend(v)
        elif isinstance(v, int) and type(v) not in (int, bool):
            return True
    return False


def _shape(size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for s in size:
        if not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"sizes must be non-negative integers, got {tuple(size)}")
    return tuple(int(s) for s in size)


def _make(arr, dtype, device, requires_grad):
    dev = as_device(device)
    arr = arr if dtype is None else arr.astype(_dt.as_dtype(dtype).np, copy=False)
    if dev.type == "cuda":
        from .cuda import _backend

        arr = _backend().to_device(arr)
    t = Tensor._wrap(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _filled(shape, value, npdt, device, requires_grad):
    """A constant tensor; on CUDA filled by a kernel on the device (no host buffer, no copy)."""
    dev = as_device(device)
    if dev.type != "cuda":
        return None
    from .cuda import _backend

    _backend()
    from .backends.cuda.launch import full as cuda_full

    t = Tensor._wrap(cuda_full(shape, value, npdt))
    return t.requires_grad_(True) if requires_grad else t


def _np(dtype, default=_dt.float32):
    return (_dt.as_dtype(dtype) if dtype is not None else default).np


def zeros(*size, dtype=None, device=None, requires_grad=False):
    if _symbolic(size):
        return _hooks.factory("zeros", size, dict(dtype=dtype, requires_grad=requires_grad))
    if device is not None and (t := _filled(_shape(size), 0, _np(dtype), device, requires_grad)) is not None:
        return t
    return _make(np.zeros(_shape(size), _np(dtype)), None, device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False):
    if _symbolic(size):
        return _hooks.factory("ones", size, dict(dtype=dtype, requires_grad=requires_grad))
    if device is not None and (t := _filled(_shape(size), 1, _np(dtype), device, requires_grad)) is not None:
        return t
    return _make(np.ones(_shape(size), _np(dtype)), None, device, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False):
    if _symbolic(size):
        return _hooks.factory("empty", size, dict(dtype=dtype, requires_grad=requires_grad))
    if device is not None and (t := _filled(_shape(size), 0, _np(dtype), device, requires_grad)) is not None:
        return t
    return _make(np.empty(_shape(size), _np(dtype)), None, device, requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    if _symbolic(size):
        return _hooks.factory("full", (size, fill_value), dict(dtype=dtype, requires_grad=requires_grad))
    if dtype is None:
        dtype = _dt.scalar_dtype(fill_value)
    if device is not None and (t := _filled(_shape((size,)), fill_value, _np(dtype), device, requires_grad)) is not None:
        return t
    return _make(np.full(_shape((size,)), fill_value, _np(dtype)), None, device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    if _symbolic(start, end, step):
        return _hooks.factory("arange", (start, end, step), dict(dtype=dtype, requires_grad=requires_grad))
    if end is None:
        start, end = 0, start
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if dtype is None:
        is_int = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        dtype = _dt.int64 if is_int else _dt.float32
    return _make(np.arange(start, end, step, dtype=np.float64 if _dt.as_dtype(dtype).is_floating_point else None),
                 dtype, device, requires_grad)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    return _make(np.linspace(start, end, int(steps)), dtype or _dt.float32, device, requires_grad)


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    return _make(np.eye(n, m, dtype=_np(dtype)), None, device, requires_grad)


def rand(*size, generator=None, dtype=None, device=None, requires_grad=False):
    if _symbolic(size):
        return _hooks.factory("rand", size, dict(dtype=dtype))
    arr = rng_of(generator).random(_shape(size), dtype=np.float32)
    return _make(arr, dtype, device, requires_grad)


def randn(*size, generator=None, dtype=None, device=None, requires_grad=False):
    if _symbolic(size):
        return _hooks.factory("randn", size, dict(dtype=dtype))
    arr = rng_of(generator).standard_normal(_shape(size), dtype=np.float32)
    return _make(arr, dtype, device, requires_grad)


def randint(low, high=None, size=None, generator=None, dtype=None, device=None):
    """``randint(high, size)`` or ``randint(low, high, size)``: int64 in [low, high)."""
    if _symbolic(low, high, size):
        return _hooks.factory("randint", (low, high, size), dict(dtype=dtype))
    if isinstance(high, (tuple, list)) and size is None:  # randint(high, size)
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint: size is required, e.g. randint(0, 10, (3, 4))")
    arr = rng_of(generator).integers(low, high, size=_shape((size,)), dtype=np.int64)
    return _make(arr, dtype, device, False)


def randperm(n, generator=None, dtype=None, device=None):
    return _make(rng_of(generator).permutation(int(n)).astype(np.int64), dtype, device, False)


def _like(fn):
    def like(t, dtype=None, device=None, requires_grad=False, **kw):
        return fn(*t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad, **kw)

    like.__name__ = fn.__name__ + "_like"
    like.__doc__ = f"``{fn.__name__}`` with the shape (and by default dtype) of ``t``."
    return like


zeros_like = _like(zeros)
ones_like = _like(ones)
empty_like = _like(empty)
rand_like = _like(rand)
randn_like = _like(randn)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def randint_like(t, low, high=None, dtype=None, device=None):
    return randint(low, high, t.shape, dtype=dtype or t.dtype, device=device or t.device)
