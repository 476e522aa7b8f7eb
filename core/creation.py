"""Building tensors from Python data and numpy arrays: ``tensor``, ``as_tensor``, ``from_numpy``."""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .device import as_device
from .tensor import Tensor


def tensor(data, dtype=None, requires_grad=False, device=None) -> Tensor:
    """Build a tensor from data (copies). Float data defaults to float32, ints to int64."""
    dev = as_device(device)
    if isinstance(data, Tensor):
        if dev != data.device or data.is_cuda:
            out = data.detach().to(dev, dtype=dtype, copy=True)
            return out.requires_grad_(True) if requires_grad else out
        arr = data._data.copy()
    else:
        arr = np.array(data)
        if arr.dtype == object:
            raise TypeError(
                "ember.tensor: could not build a numeric array from the data (ragged nested lists or "
                "non-numeric objects)"
            )
        if dtype is None and not isinstance(data, (np.ndarray, np.generic)):  # numpy data keeps its dtype
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32)
            elif arr.dtype.kind in "iu":
                arr = arr.astype(np.int64)
    if dtype is not None:
        arr = arr.astype(_dt.as_dtype(dtype).np, copy=False)
    if arr.dtype not in _dt._FROM_NP:
        if arr.dtype.kind == "U" or arr.dtype.kind == "S":
            raise TypeError("ember.tensor: strings are not tensor data")
        arr = arr.astype(_dt.as_dtype(arr.dtype).np)
    arr = np.asarray(arr, order="C")
    if dev.type == "cuda":
        from .cuda import _backend

        arr = _backend().to_device(arr)
    t = Tensor._wrap(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like ``tensor`` but shares memory when it can: a Tensor or ndarray of the right dtype is not copied."""
    dev = as_device(device)
    if isinstance(data, Tensor):
        return data.to(dev if device is not None else data.device, dtype=dtype)
    if (dev.type == "cpu" and isinstance(data, np.ndarray) and data.dtype in _dt._FROM_NP
            and (dtype is None or _dt.as_dtype(dtype).np == data.dtype)):
        return Tensor._wrap(data)
    return tensor(data, dtype=dtype, device=dev)


def from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``a`` (no copy)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(a).__name__}")
    _dt.from_numpy_dtype(a.dtype)
    return Tensor._wrap(a)


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)
