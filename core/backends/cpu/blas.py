"""BLAS GEMMs with the thread count chosen by size: small products run on one OpenBLAS thread.

OpenBLAS wakes its worker threads for any GEMM over ~256k multiply-adds, and a woken worker then
spins for a while after the call. ember's own multi-threaded kernels (the convolution tiles) run next
to those GEMMs; on the 2-core machines a spinning BLAS worker took the core a tile thread needed
(cnn training step with the Linear's 1M-MAC GEMMs on 2 BLAS threads ~8.3 ms, on 1 thread ~7.1 ms),
while those small GEMMs lose only ~15 us each on one thread. Products of at least ``SMALL_MACS``
keep the configured count.

The thread count is set through the loaded OpenBLAS's own ``*_set_num_threads`` symbol (found in
/proc/self/maps); without it (another BLAS, another OS) ``matmul`` is plain ``np.matmul``.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

SMALL_MACS = 1 << 21
ONE_THREAD_MACS = 1 << 18  # OpenBLAS itself runs GEMMs of at most 65536 * 4 multiply-adds on one thread
_SYMBOLS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads")
_GETTERS = tuple(s.replace("set_", "get_") for s in _SYMBOLS)
_STATE: dict = {}


def _find():
    setter = getter = None
    if os.environ.get("EMBER_BLAS_THREADS_BY_SIZE", "1") != "0":
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
            for path in paths:
                lib = ctypes.CDLL(path)
                for s, g in zip(_SYMBOLS, _GETTERS):
                    if hasattr(lib, s) and hasattr(lib, g):
                        setter, getter = getattr(lib, s), getattr(lib, g)
                        break
                if setter is not None:
                    break
        except OSError:
            setter = getter = None
    _STATE["set"], _STATE["get"] = setter, getter


def matmul(a, b, out=None):
    """np.matmul(a, b, out=out), on one BLAS thread below SMALL_MACS multiply-adds (the configured count
    is restored right after, so other numpy code sees no change; at most ONE_THREAD_MACS, where OpenBLAS uses
    one thread anyway, the count is left alone)."""
    if "set" not in _STATE:
        _find()
    setter = _STATE["set"]
    if setter is not None and a.ndim and b.ndim:
        macs = a.size * (b.shape[-1] if b.ndim > 1 else 1)
        if ONE_THREAD_MACS < macs < SMALL_MACS:  # (switching costs ~2 us: not where OpenBLAS stays on one)
            full = _STATE["get"]()
            if full > 1:
                setter(1)
                try:
                    return _mm(a, b, out)
                finally:
                    setter(full)
    return _mm(a, b, out)


def _mm(a, b, out):
    """np.matmul; for 2-d operands np.dot, the same product with ~0.4 us less dispatch (its ``out`` must be
    C-contiguous and of the result's dtype, which np.matmul's need not; here: of both operands' dtype)."""
    if a.ndim == 2 and b.ndim == 2 and (out is None or (out.flags.c_contiguous and out.dtype == a.dtype == b.dtype)):
        return np.dot(a, b) if out is None else np.dot(a, b, out=out)
    return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
