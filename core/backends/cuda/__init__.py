"""The CUDA backend: numba.cuda kernels registered as the ``"cuda"`` kernels of the op registry.

Imported on first use (``ember.cuda._backend()``, reached through ``as_device("cuda")``), never by
``import ember``. Each ``*_kernels.py`` module registers its ops with ``@kernel(name, "cuda")``;
``launch.py`` holds the shared launch helpers and the elementwise engine, ``array.py`` the array type.
An op without a CUDA kernel raises the registry's "no kernel for device 'cuda'" error naming the op.
"""
from __future__ import annotations

import importlib

from .array import CUDA0, CudaArray, empty, from_host  # noqa: F401

_MODULES = (
    "elementwise_kernels", "shape_kernels", "index_kernels", "reduce_kernels", "matmul_kernels", "conv_kernels",
    "pool_kernels", "norm_kernels", "loss_kernels", "optim_kernels", "int8_kernels",
)

for _m in _MODULES:
    try:
        importlib.import_module(f"{__name__}.{_m}")
    except ModuleNotFoundError as e:  # a kernel family not written yet: its ops say so when called
        if e.name != f"{__name__}.{_m}":
            raise


def to_device(a) -> CudaArray:
    """Host array -> CUDA array (a copy)."""
    return from_host(a)


def to_host(a: CudaArray):
    """CUDA array -> host numpy array (a copy; waits for the kernels that write it)."""
    return a.get()
