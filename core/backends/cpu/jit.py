"""numba helpers shared by every CPU kernel: cached compilation, safe fastmath, serial/parallel pairs.

Kernels are written once with ``prange``; ``parallel_kernel`` compiles a serial copy (prange acts
as range) and a parallel copy, and picks by work size, because thread start-up costs more than
it saves on small tensors.
"""
from __future__ import annotations

import os
import threading
import types

import numba
import numpy as np

from .helpers import Helpers

# The fastmath subset that keeps NaN/Inf semantics (no "nnan"/"ninf").
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Below this many elements (or inner iterations) a kernel runs on one thread.
PARALLEL_THRESHOLD = 1 << 15


def njit(fn=None, **kw):
    """numba.njit with ember's defaults: on-disk cache and the safe fastmath subset."""
    kw.setdefault("cache", True)
    kw.setdefault("fastmath", FASTMATH)
    kw.setdefault("nogil", True)
    # numpy semantics for division by zero (inf/nan, as torch) and no per-division zero check,
    # which would also block vectorisation.
    kw.setdefault("error_model", "numpy")
    if fn is None:
        return lambda f: numba.njit(**kw)(f)
    return numba.njit(**kw)(fn)


def _renamed(fn, suffix):
    # A distinct qualname gives the parallel copy its own cache file.
    g = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    g.__qualname__ = fn.__qualname__ + suffix
    g.__module__ = fn.__module__
    return g


# numba's workqueue layer (see ember._config) must not be entered by two threads at once:
# a thread that finds the parallel pool busy runs the serial copy instead of waiting.
_PARALLEL_LOCK = threading.Lock()


class parallel_kernel:
    """A kernel compiled twice: serial and prange-parallel; ``k(work, *args)`` picks one. ``options`` go to
    both compilations (e.g. ``fastmath=False`` for IEEE-exact arithmetic)."""

    def __init__(self, fn, threshold: int = PARALLEL_THRESHOLD, **options):
        self.serial = njit(fn, **options)
        self.parallel = njit(_renamed(fn, "__par"), parallel=True, **options)
        self.threshold = threshold
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def __call__(self, work: int, *args):
        if work >= self.threshold and numba.config.NUMBA_NUM_THREADS > 1 and _PARALLEL_LOCK.acquire(blocking=False):
            try:
                return self.parallel(*args)
            finally:
                _PARALLEL_LOCK.release()
        return self.serial(*args)


_HELPERS = Helpers()
if hasattr(os, "register_at_fork"):  # a forked child (DataLoader workers) has none of the parent's threads
    os.register_at_fork(after_in_child=_HELPERS.__init__)


def run_parts(fn, parts) -> None:
    """``fn(*args)`` for every tuple in ``parts``, shared between the calling thread and helper threads (fn must be
    a nogil kernel, and the parts must write disjoint outputs); see helpers.py."""
    _HELPERS.run(fn, list(parts))


def run_native(fn, n, table, x, out) -> None:
    """The native task ``fn`` (the address of ``fn(arg, ctl address, gen, role, part)``) in n parts on the calling
    thread and the helpers, its argument the int64 ``table``, whose slots 0 and 1 get the addresses of ``x`` and
    ``out``; see helpers.py."""
    _HELPERS.run_native(fn, n, table, x, out)


def threads() -> int:
    """The configured thread count (NUMBA_NUM_THREADS)."""
    return numba.config.NUMBA_NUM_THREADS


def slices(n: int, work: int, threshold: int = PARALLEL_THRESHOLD) -> list:
    """[(lo, hi), ...]: n items split evenly over the configured threads, or one slice when ``work`` is
    below ``threshold`` (or one thread is configured)."""
    k = min(n, numba.config.NUMBA_NUM_THREADS) if work >= threshold else 1
    k = max(k, 1)
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def prange_kernel(threshold: int = PARALLEL_THRESHOLD, **options):
    return lambda fn: parallel_kernel(fn, threshold, **options)


def f32c(a) -> np.ndarray:
    """C-contiguous float32 view or copy (the one layout numba kernels are specialised for)."""
    return np.asarray(a, dtype=np.float32, order="C")


def contig(a) -> np.ndarray:
    return np.asarray(a, order="C")
