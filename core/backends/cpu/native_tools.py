"""The building blocks of native tasks (helpers.py runs them): views of memory at an address, the two-thread
protocol a task's function uses to split its work (who joined, claiming blocks from one or both ends, a barrier
between steps), the compiled task function, and the base of a task's per-batch-size table cache.

The protocol's slots live in the task's control array (``ctl``; slot names from helpers.py); the functions are
inlined into the tasks (int8_chain.py, f32_chain.py).
"""
from __future__ import annotations

import threading

import numba

from . import intrinsics as _at
from .helpers import ARRIVE, CLAIM, COUNTER, HELPER


@numba.njit(inline="always", nogil=True)
def array_at(addr, shape, dtype):
    """The array of ``shape`` and ``dtype`` at int64 address ``addr`` (a view: the owner keeps it alive)."""
    return numba.carray(_at.voidptr(addr), shape, dtype)


@numba.njit(inline="always", nogil=True)
def join(ctl, gen, owner):
    """Set ctl[CLAIM] to 2 * gen + owner unless task ``gen`` already has one (helper: join; caller: close): True
    when this call set it."""
    while True:
        old = _at.load_acquire(ctl, CLAIM)
        if old >= 2 * gen:
            return False
        if _at.compare_exchange(ctl, CLAIM, old, 2 * gen + owner) == old:
            return True


@numba.njit(inline="always", nogil=True)
def thread_of(ctl, gen, role, part):
    """Which thread of a two-thread native task this call is: 0 (the caller's part 0; everything when it runs
    alone), 1 (a helper that joined with part 1), -1 (nothing to do: a helper that came too late, or part 1 run by
    the caller after part 0 did everything)."""
    if role == HELPER:
        return 1 if part == 1 and join(ctl, gen, 1) else -1
    return 0 if part == 0 else -1


@numba.njit(inline="always", nogil=True)
def take(ctl, key, n):
    """The next of n blocks of the step ``key`` (ctl[COUNTER] = key << 16 | blocks taken), or -1 when none is left."""
    while True:
        old = _at.load_acquire(ctl, COUNTER)
        taken = old & 0xFFFF if old >> 16 == key else 0
        if taken >= n:
            return -1
        if _at.compare_exchange(ctl, COUNTER, old, (key << 16) | (taken + 1)) == old:
            return taken


@numba.njit(inline="always", nogil=True)
def take_end(ctl, key, n, me):
    """Like ``take``, thread 0 taking blocks from the front and thread 1 from the back (ctl[COUNTER] = key << 32 |
    front << 16 | back, key taken modulo 2**31): with both threads at work each gets the same blocks call after
    call, and so finds their weights still in its own cache."""
    key = key & 0x7FFFFFFF
    while True:
        old = _at.load_acquire(ctl, COUNTER)
        front, back = (old >> 16) & 0xFFFF, old & 0xFFFF
        if old >> 32 != key:
            front, back = 0, 0
        if front + back >= n:
            return -1
        new = (key << 32) | ((front + 1) << 16 | back if me == 0 else front << 16 | (back + 1))
        if _at.compare_exchange(ctl, COUNTER, old, new) == old:
            return front if me == 0 else n - 1 - back


@numba.njit(inline="always", nogil=True)
def barrier(ctl, gen, me, step):
    """Threads 0 and 1 of task ``gen`` meet: each marks ``step`` done (ctl[ARRIVE + 8 * me]) and waits for the
    other's mark (steps 1 .. 63)."""
    mark = gen * 64 + step
    _at.store_release(ctl, ARRIVE + 8 * me, mark)
    while _at.load_acquire(ctl, ARRIVE + 8 * (1 - me)) < mark:
        _at.cpu_relax()


class NativeTask:
    """A native task's function ``fn(arg, ctl address, gen, role, part)`` (a plain Python function written for
    nopython mode), compiled as a numba ``cfunc`` on first use, or loaded from numba's on-disk cache;
    ``address()`` is what ``jit.run_native`` takes."""

    SIGNATURE = "void(int64, int64, int64, int64, int64)"

    def __init__(self, fn):
        self.fn, self._compiled, self._lock = fn, None, threading.Lock()

    def address(self) -> int:
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    cf = numba.cfunc(self.SIGNATURE, cache=True, fastmath=False, error_model="numpy")(self.fn)
                    self._compiled = (cf, cf.address)  # (the cfunc object keeps its code alive)
        return self._compiled[1]


def align64(nbytes: int) -> int:
    """nbytes rounded up to a multiple of 64 (a cache line: where a native task's workspace regions start)."""
    return -(-nbytes // 64) * 64


class NativePlan:
    """Base of a native task's plan for one set of weights: ``_table(m)`` returns (the int64 table for m rows,
    ...); ``table(m)`` builds it once per row count (the last 64 kept) and hands out a fresh copy of the table
    (``jit.run_native`` writes the call's addresses into it) with the rest."""

    _per_rows = None

    def table(self, m):
        if self._per_rows is None:
            self._per_rows = {}
        cache = self._per_rows
        hit = cache.get(m)
        if hit is None:
            hit = self._table(m)
            if len(cache) >= 64:
                cache.clear()
            cache[m] = hit
        return (hit[0].copy(),) + tuple(hit[1:])
