"""Copies between devices (``t.to("cuda")``, ``t.cpu()``): differentiable, as in torch (the gradient of a
copy to the GPU is copied back). Not a registry op: a traced program holds no device copies; the
runtime places the whole program on one device (``Program.to``)."""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..device import as_device
from ..tensor import Tensor


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
