"""The CUDA backend: numba.cuda kernels registered as the ``"cuda"`` kernels of the op registry.

Imported on first use (``ember.cuda._backend()``, reached through ``as_device("cuda")``), never by
``import ember``. Each ``*_kernels.py`` module (all are imported) registers its ops with
``@kernel(name, "cuda")``;
``launch.py`` holds the shared launch helpers and the elementwise engine, ``array.py`` the array type.
An op without a CUDA kernel raises the registry's "no kernel for device 'cuda'" error naming the op.
"""
from __future__ import annotations

import importlib
import pkgutil

from .array import CudaArray, from_host

# every ``*_kernels.py`` module here registers one family of ops
_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.endswith("_kernels"))
for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def to_device(a) -> CudaArray:
    """Host array -> CUDA array (a copy)."""
    return from_host(a)


def to_host(a: CudaArray):
    """CUDA array -> host numpy array (a copy; waits for the kernels that write it)."""
    return a.get()
