"""Process-wide settings that must exist before numba is imported (its on-disk kernel cache)."""
from __future__ import annotations

import os
import sys
import tempfile


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ember", "numba")


def setup_numba_threading() -> None:
    """Use numba's workqueue threading layer unless the user chose one (NUMBA_THREADING_LAYER).

    Measured on the 2-core reference machine: after one parallel kernel on the default OpenMP
    layer, OpenBLAS sgemm ran ~40x slower for the rest of the process (23 ms instead of 0.6 ms
    at 128x784x512), and parallel kernels themselves stalled for milliseconds; the workqueue
    layer shows neither. It is not re-entrant across threads, so ``backends.cpu.jit`` lets only
    one thread at a time into a parallel kernel (the others take the serial copy).
    """
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    if "numba" in sys.modules:
        import numba

        numba.config.THREADING_LAYER = os.environ["NUMBA_THREADING_LAYER"]


DEFAULT_MAX_THREADS = 4


def setup_numba_threads() -> int | None:
    """Give numba (ember's kernels and helper threads) at most DEFAULT_MAX_THREADS threads unless the user set
    NUMBA_NUM_THREADS; returns the count set, or None when left alone.

    Measured on a 16-vCPU Xeon VM (session 9): the cnn training step took 4.3 / 3.8 / 9.1 / 12.1 ms with 2 / 4 / 8 /
    16 threads, every kernel slower past 4 (per-part scratch, hand-offs, the helpers' spinning); the 2-core
    reference machines are unaffected. OpenBLAS keeps its own count (the mlp's large GEMMs scale further).
    Only where numba is not imported yet (its thread count is fixed at import)."""
    if "NUMBA_NUM_THREADS" in os.environ or "numba" in sys.modules:
        return None
    n = max(1, min(os.cpu_count() or 1, DEFAULT_MAX_THREADS))
    os.environ["NUMBA_NUM_THREADS"] = str(n)
    return n


def setup_numba_cache() -> str:
    """Point numba's cache at a writable directory: NUMBA_CACHE_DIR if set, else ~/.cache/ember/numba."""
    path = os.environ.get("NUMBA_CACHE_DIR") or _default_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
    except OSError:
        path = os.path.join(tempfile.gettempdir(), f"ember-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
        os.makedirs(path, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:  # imported before ember: tell the live config too
        import numba

        numba.config.CACHE_DIR = path
    return path


def tune_malloc() -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS (glibc only).

    glibc serves allocations over 128 KiB with fresh mmaps, so every training step page-faults
    its activations and gradients in again. Raising the mmap and trim thresholds made the cnn
    training step ~25% faster on the reference machine. Process-wide, so opt out with
    EMBER_TUNE_MALLOC=0. Returns whether the settings were applied.
    """
    if os.environ.get("EMBER_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 256 << 20) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
        return ok
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        return False
