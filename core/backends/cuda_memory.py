"""A caching device allocator for the CUDA backend (numba's External Memory Management plugin).

numba's own manager calls ``cuMemAlloc`` for every result and frees in batches with ``cuMemFree``,
which waits for the whole device each time; a training step makes dozens of same-sized temporaries,
so both costs repeat every step. This manager keeps freed blocks in per-size free lists and hands
them out again, as PyTorch's caching allocator does. Reuse is safe because every ember kernel and
copy runs on the default stream: a block freed on the host is only written again by work queued
after the work that last read it.

Installed by ``ember.cuda`` before numba creates its context (``EMBER_CUDA_ALLOCATOR=numba`` keeps
numba's manager). ``empty_cache()`` returns the cached blocks to the driver.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref

SMALL = 1 << 20  # below this, sizes round up to 512 bytes; above, to 1 MiB
_STATE = {"installed": False, "failed": False}


def round_size(size: int) -> int:
    size = max(int(size), 1)
    step = 512 if size < SMALL else SMALL
    return (size + step - 1) // step * step


def install() -> bool:
    """Make numba use the caching manager for contexts created from now on (not on the simulator)."""
    if _STATE["installed"] or _STATE["failed"] or os.environ.get("EMBER_CUDA_ALLOCATOR", "caching") == "numba":
        return _STATE["installed"]
    try:
        from numba.cuda.cudadrv import driver as drv

        drv.set_memory_manager(_manager_class(drv))
    except Exception as e:  # a numba-cuda whose plugin interface differs: its own allocator still works
        warnings.warn(f"ember: the caching CUDA allocator could not be installed ({type(e).__name__}: {e}); "
                      f"using numba's allocator", RuntimeWarning, stacklevel=2)
        _STATE["failed"] = True  # (not tried again)
        return False
    _STATE["installed"] = True
    return True


def _manager_class(drv):
    class CachingMemoryManager(drv.GetIpcHandleMixin, drv.HostOnlyCUDAMemoryManager):
        """Device blocks kept in free lists by rounded size; host (pinned) memory as numba does it."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.free = {}  # rounded size -> [device pointer, ...]
            self.cached_bytes = 0
            self.lock = threading.Lock()

        def initialize(self):
            # (as numba's manager: the pending host deallocations are bounded by the device's memory)
            if self.deallocations.memory_capacity == getattr(drv, "_SizeNotSet", None):
                self.deallocations.memory_capacity = self.get_memory_info().total

        def memalloc(self, size):
            nbytes = round_size(size)
            with self.lock:
                blocks = self.free.get(nbytes)
                ptr = blocks.pop() if blocks else None
                if ptr is not None:
                    self.cached_bytes -= nbytes
            if ptr is None:
                ptr = self._allocate(nbytes)
            free, lock, state = self.free, self.lock, self

            def release(ptr=ptr, nbytes=nbytes):
                with lock:
                    free.setdefault(nbytes, []).append(ptr)
                    state.cached_bytes += nbytes

            return drv.MemoryPointer(weakref.proxy(self.context), ptr, size, finalizer=release)

        def _allocate(self, nbytes):
            try:
                return drv.driver.cuMemAlloc(nbytes)
            except drv.CudaAPIError as e:
                if e.code != drv.binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY:
                    raise
            self.release_cached()  # out of memory: give the cached blocks back and try once more
            return drv.driver.cuMemAlloc(nbytes)

        def release_cached(self):
            """Free every cached block (waits for the device first: a kernel may still use one)."""
            drv.driver.cuCtxSynchronize()
            with self.lock:
                blocks = [p for ps in self.free.values() for p in ps]
                self.free.clear()
                self.cached_bytes = 0
            for p in blocks:
                drv.driver.cuMemFree(p)

        def get_memory_info(self):
            free, total = drv.driver.cuMemGetInfo()
            return drv.MemoryInfo(free=free, total=total)

        def reset(self):
            super().reset()
            self.release_cached()

        @property
        def interface_version(self):
            return 1

    return CachingMemoryManager


def empty_cache() -> None:
    """Return the device blocks the caching allocator holds to the driver (like torch.cuda.empty_cache)."""
    if not _STATE["installed"]:
        return
    from numba import cuda

    mm = cuda.current_context().memory_manager
    if hasattr(mm, "release_cached"):
        mm.release_cached()
