"""The CUDA caching allocator's bookkeeping, against a counting stand-in for the CUDA driver (no GPU needed;
the allocator runs on real GPUs through ``benchmarks/gpu_check.py`` and ``tests/gpu``)."""
import gc
import os
import types

import pytest

drv = pytest.importorskip("numba.cuda.cudadrv.driver", reason="needs numba-cuda (the test extra)")

from ember.backends import cuda_memory as cm  # noqa: E402


class FakeDriver:
    """cuMemAlloc / cuMemFree / cuCtxSynchronize over a fixed capacity, recording every call."""

    def __init__(self, capacity=1 << 30):
        self.capacity, self.used, self.next = capacity, 0, 0x10000
        self.allocs, self.frees, self.syncs = [], [], 0
        self.sizes = {}

    def cuMemAlloc(self, n):
        if self.used + n > self.capacity:
            raise drv.CudaAPIError(drv.binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY, "out of memory")
        p = self.next
        self.next += n
        self.used += n
        self.sizes[p] = n
        self.allocs.append(n)
        return p

    def cuMemFree(self, p):
        self.used -= self.sizes.pop(p)
        self.frees.append(p)

    def cuCtxSynchronize(self):
        self.syncs += 1

    def cuMemGetInfo(self):
        return self.capacity - self.used, self.capacity


class Ctx:
    pass


def manager(capacity=1 << 30):
    fake = FakeDriver(capacity)
    ns = types.SimpleNamespace(**{k: getattr(drv, k) for k in (
        "GetIpcHandleMixin", "HostOnlyCUDAMemoryManager", "MemoryPointer", "MemoryInfo", "CudaAPIError",
        "binding", "_SizeNotSet")}, driver=fake)
    ctx = Ctx()
    mm = cm._manager_class(ns)(context=ctx)
    mm.initialize()
    return mm, fake, ctx


def test_round_size():
    assert [cm.round_size(n) for n in (0, 1, 512, 513, 4000)] == [512, 512, 512, 1024, 4096]
    mib = 1 << 20
    assert cm.round_size(mib) == mib and cm.round_size(mib + 1) == 2 * mib and cm.round_size(3 * mib - 5) == 3 * mib


def test_freed_block_is_reused_for_the_same_rounded_size():
    mm, fake, _ctx = manager()
    p = mm.memalloc(1000)
    first = p.device_pointer
    assert p.size == 1000 and fake.allocs == [1024]
    del p
    gc.collect()
    assert mm.cached_bytes == 1024
    q = mm.memalloc(900)  # rounds to the same 1024-byte block
    assert q.device_pointer == first and fake.allocs == [1024] and mm.cached_bytes == 0
    r = mm.memalloc(5000)  # another size: a new block
    assert r.device_pointer != first and fake.allocs == [1024, 5120]
    assert fake.frees == []


def test_live_blocks_are_never_handed_out_twice():
    mm, fake, _ctx = manager()
    live = [mm.memalloc(2048) for _ in range(5)]
    assert len({p.device_pointer for p in live}) == 5 and len(fake.allocs) == 5
    del live[2]
    gc.collect()
    again = mm.memalloc(2048)
    assert again.device_pointer not in {p.device_pointer for p in live}
    assert len(fake.allocs) == 5


def test_out_of_memory_gives_cached_blocks_back_and_retries():
    mm, fake, _ctx = manager(capacity=8192)
    p = mm.memalloc(4096)
    del p
    gc.collect()  # 4096 bytes cached, 4096 free on the "device"
    big = mm.memalloc(8192)  # fails once, frees the cache (after a device sync), then fits
    assert big.size == 8192 and fake.syncs == 1 and len(fake.frees) == 1 and mm.cached_bytes == 0
    with pytest.raises(drv.CudaAPIError):
        mm.memalloc(512)  # the device is full and nothing is cached: the driver's error reaches the caller


def test_reset_and_empty_cache_free_cached_blocks_only():
    mm, fake, _ctx = manager()
    keep = mm.memalloc(512)
    tmp = mm.memalloc(512)
    del tmp
    gc.collect()
    mm.release_cached()
    assert len(fake.frees) == 1 and fake.used == 512 and keep.size == 512


def test_install_falls_back_to_numbas_allocator_when_the_plugin_interface_differs(monkeypatch):
    def refuse(cls):
        raise RuntimeError("EMM Plugin interface has version 1 - version 2 required")

    monkeypatch.setattr(drv, "set_memory_manager", refuse)
    monkeypatch.setitem(cm._STATE, "installed", False)
    monkeypatch.setitem(cm._STATE, "failed", False)
    monkeypatch.delenv("EMBER_CUDA_ALLOCATOR", raising=False)
    with pytest.warns(RuntimeWarning, match="caching CUDA allocator could not be installed.*version 2 required"):
        assert cm.install() is False
    assert cm.install() is False  # not tried again (numba's allocator from now on)
    assert cm._STATE["failed"] and "EMBER_CUDA_ALLOCATOR" not in os.environ
