"""torch-style text for tensors: ``tensor([[1., 2.], ...], requires_grad=True)``."""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt


def format_tensor(t) -> str:
    a = t._host()
    prefix = "tensor("
    if a.size == 0:
        body = "[]" if a.ndim == 1 else f"[], size={a.shape}"
    elif a.dtype.kind == "f":
        integral = bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))
        if integral and a.size:
            fmt = {"float_kind": lambda x: f"{x:.0f}."}
        else:
            fmt = {"float_kind": lambda x: f"{x:.4f}"}
        body = np.array2string(a, separator=", ", prefix=prefix, formatter=fmt, threshold=1000, edgeitems=3)
    elif a.dtype.kind == "b":
        body = np.array2string(a, separator=", ", prefix=prefix, formatter={"bool": lambda x: "True" if x else "False"})
    else:
        body = np.array2string(a, separator=", ", prefix=prefix, threshold=1000, edgeitems=3)
    extras = []
    if t.dtype not in (_dt.float32, _dt.int64, _dt.bool_) or (a.size == 0 and t.dtype != _dt.float32):
        extras.append(f"dtype={t.dtype}")
    if t.is_cuda:
        extras.insert(0, f"device='{t.device}'")
    if t.grad_fn is not None:
        extras.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t._requires_grad:
        extras.append("requires_grad=True")
    return prefix + body + "".join(", " + e for e in extras) + ")"
