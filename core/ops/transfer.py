"""Conversions: ``Tensor.to`` (dtype and/or device), the dtype shorthands (``float()``, ``long()``...) and
``cpu()`` / ``cuda()``. Copies between devices are differentiable, as in torch (the gradient of a copy to
the GPU is copied back); they are not a registry op: a traced program holds no device copies, the
runtime places the whole program on one device (``Program.to``)."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..autograd.function import Function
from ..device import as_device
from ..tensor import Tensor
from .basic import cast


def move_array(a, dev):
    """A backend array copied to device ``dev`` (or itself when already there)."""
    on_cpu = a.__class__ is np.ndarray
    if dev.type == "cpu":
        return a if on_cpu else a.get()
    from ..cuda import _backend

    return _backend().to_device(a) if on_cpu else a


class _ToDevice(Function):
    @staticmethod
    def forward(ctx, t, dev):
        ctx.src = t.device
        return Tensor._wrap(move_array(t._data, dev))

    @staticmethod
    def backward(ctx, g):
        return Tensor._wrap(move_array(g._data, ctx.src)), None


def to_device(t: Tensor, dev) -> Tensor:
    dev = as_device(dev)
    if t.device == dev:
        return t
    if t.requires_grad:
        return _ToDevice.apply(t, dev)
    return Tensor._wrap(move_array(t._data, dev))


def to(self, *args, dtype=None, device=None, copy=False, non_blocking=False, memory_format=None):
    """``t.to(dtype)``, ``t.to(device)``, ``t.to(device, dtype)`` or ``t.to(other_tensor)``.
    ``non_blocking`` and ``memory_format`` are accepted for torch compatibility (no effect on CPU)."""
    for a in args:
        if isinstance(a, Tensor):
            dtype, device = a.dtype, a.device
        elif isinstance(a, _dt.dtype) or a in (float, int, bool):
            dtype = a
        elif isinstance(a, str) and a in _dt._NAMES and a not in ("cpu", "cuda"):
            dtype = a
        else:
            device = a
    out = self
    if device is not None:
        dev = as_device(device)
        if dev != self.device:
            out = to_device(self, dev)
            copy = False
    if dtype is not None and _dt.as_dtype(dtype) != out.dtype:
        out = cast(out, _dt.as_dtype(dtype))
    elif copy:
        out = out.clone()
    return out


def float_(self):
    return self.to(_dt.float32)


def double(self):
    return self.to(_dt.float64)


def half(self):
    return self.to(_dt.float16)


def long(self):
    return self.to(_dt.int64)


def int_(self):
    return self.to(_dt.int32)


def bool_(self):
    return self.to(_dt.bool_)


def byte(self):
    return self.to(_dt.uint8)


def char(self):
    return self.to(_dt.int8)


def type_as(self, other):
    return self.to(other.dtype)


def cpu(self, memory_format=None):
    return self.to("cpu")


def cuda(self, device=None, non_blocking=False):
    return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else device)


Tensor.to = to
Tensor.float, Tensor.double, Tensor.half = float_, double, half
Tensor.long, Tensor.int, Tensor.bool, Tensor.byte, Tensor.char = long, int_, bool_, byte, char
Tensor.type_as, Tensor.cpu, Tensor.cuda = type_as, cpu, cuda
