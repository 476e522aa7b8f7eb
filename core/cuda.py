"""``ember.cuda``: is a CUDA device usable, how many, wait for it.

The CUDA backend (``ember/backends/cuda``: numba.cuda kernels from the optional ``numba-cuda``
package, ``pip install "ember[cuda]"``) is imported on first use, never by ``import ember``. With
``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported, numba's CUDA simulator stands in for a GPU
(slow: one Python thread per CUDA thread; for tests with tiny shapes).
"""
from __future__ import annotations

import os

_STATE = {"reason": None, "checked": False}


def _probe() -> str | None:
    """None when a CUDA device (or the simulator) is usable, else why not (one line)."""
    if _STATE["checked"]:
        return _STATE["reason"]
    reason = None
    try:
        from numba import cuda as _ncuda
    except ImportError as e:  # numba itself is a hard dependency; numba.cuda needs the numba-cuda package
        reason = f"numba.cuda cannot be imported ({e}); install the CUDA extra: pip install \"ember[cuda]\""
    else:
        if not _sim() and not _has_numba_cuda():
            reason = "the numba-cuda package is not installed; install the CUDA extra: pip install \"ember[cuda]\""
        else:
            try:
                if not _sim():  # before numba creates its context: the context takes the manager it finds
                    from .backends.cuda_memory import install

                    install()
                if not _ncuda.is_available():
                    reason = _why_unavailable(_ncuda)
            except Exception as e:  # driver errors surface here on some platforms
                reason = f"the CUDA driver could not be initialised: {str(e).strip().splitlines()[0]}"
    _STATE["reason"], _STATE["checked"] = reason, True
    return reason


def _sim() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _has_numba_cuda() -> bool:
    try:
        from importlib.metadata import version

        version("numba-cuda")
        return True
    except Exception:
        return False


def _why_unavailable(ncuda) -> str:
    try:
        ncuda.cudadrv.driver.driver.get_device_count()
    except Exception as e:
        text = " ".join(str(e).split())
        if "driver library cannot be found" in text or "CUDA_ERROR_NO_DEVICE" in text or "no CUDA-capable" in text:
            return ("no NVIDIA driver or CUDA device was found on this machine "
                    "(set NUMBA_ENABLE_CUDASIM=1 before importing ember to use numba's CUDA simulator)")
        return f"the CUDA driver could not be initialised: {text[:200]}"
    return "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and nvidia-smi)"


def is_available() -> bool:
    """True when tensors can be put on ``"cuda"``: numba-cuda is installed and a GPU (or the simulator) answers."""
    return _probe() is None


def device_count() -> int:
    if not is_available():
        return 0
    from numba import cuda as _ncuda

    return len(_ncuda.gpus)


def current_device() -> int:
    """The index of the device CUDA tensors are put on (always 0: ember uses one GPU)."""
    _require()
    return 0


def get_device_name(device=None) -> str:
    _require()
    from numba import cuda as _ncuda

    if _sim():
        return "numba CUDA simulator"
    name = _ncuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def synchronize(device=None) -> None:
    """Wait until every kernel launched so far has finished (timing, before reading a clock)."""
    _require()
    from numba import cuda as _ncuda

    _ncuda.synchronize()


def empty_cache() -> None:
    """Give the device memory that the caching allocator keeps for reuse back to the driver (as
    ``torch.cuda.empty_cache``); tensors still alive keep theirs. ``EMBER_CUDA_ALLOCATOR=numba`` (set
    before the first CUDA use) uses numba's own allocator instead of the cache."""
    _require()
    from .backends.cuda_memory import empty_cache as _empty

    _empty()


def is_simulator() -> bool:
    return is_available() and _sim()


def _require() -> None:
    reason = _probe()
    if reason is not None:
        raise RuntimeError(f"CUDA is not available: {reason}")


def _backend():
    """The CUDA backend module, importing it (and registering its kernels) on first use."""
    _require()
    from .backends import cuda as backend

    return backend
