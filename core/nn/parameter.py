"""``nn.Parameter``: a leaf tensor that a Module registers as a trainable weight."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that requires grad by default and is picked up by ``Module.parameters()``."""

    __slots__ = ()

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            arr = np.empty((0,), np.float32)
        elif isinstance(data, Tensor):
            arr = data._data
        else:
            arr = np.asarray(data, dtype=np.float32)
        p = object.__new__(cls)
        p._data = arr
        p._requires_grad = False
        p.grad = None
        p.grad_fn = None
        p._out_idx = 0
        p._vbox = [0]
        p._retains_grad = False
        if requires_grad:
            p.requires_grad_(True)
        return p

    def __init__(self, data=None, requires_grad=True):
        pass

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()
