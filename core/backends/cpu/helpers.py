"""Helper threads that run slices of a nogil kernel next to the calling thread (``jit.run_parts``).

On the 2-core reference VM a sleeping thread takes ~35-100 us to wake (the idle vCPU halts at once: the guest
has no halt polling), as much as a whole int8 GEMM of the mlp. A thread waiting for the GIL sleeps the same way.
So a helper *spins* between tasks (``EMBER_SPIN_US``, default 500 us, then it blocks on a condition variable)
and the protocol is laid out so that neither thread ever waits for a GIL the other holds:

- The kernels take a trailing ``sync`` argument and call ``post(sync)`` first and ``finish(sync)`` last: atomic
  stores and spin loops (``pause``, cycle counter) inlined from intrinsics.py. The idle spin and the caller's final
  wait are nogil numba functions too.
- The caller posts the task from inside its own kernel, after numba released the GIL: a spinning helper takes
  the free GIL, claims a part (``list.pop``, atomic under the GIL), and enters the kernel, whose ``post`` marks
  the part started. The caller's ``finish`` waits (GIL released) until every part has started, or up to 100 us,
  so it does not come back to Python while a helper still holds the GIL to start.
- A helper's ``finish`` marks its part done, then keeps spinning inside the kernel until the next post, so it
  asks for the GIL only when the caller is inside its next kernel. The caller runs any part no helper claimed,
  then waits (GIL released) for the done marks.

If a helper never shows up the caller runs its parts itself, so a late helper costs at most the serial time.
Hosts whose cycle counter does not advance, and ``EMBER_SPIN_US=0``, use queue hand-offs instead
(``QueueHelpers``).

*Native tasks* (``jit.run_native``) skip Python on the helper's side altogether: the task is the address of a
compiled C function ``fn(arg, ctl address, gen, role, part)`` (a numba ``cfunc``) and an int64 table ``arg`` points
at. An idle helper spins in ``_native_loop`` (nogil), claims a part with an atomic exchange on ``ctl[TASK_CLAIM]``
and calls the function from there, and so joins ~1 us after the post instead of the ~7 us a Python hand-off takes
(returning from the last kernel, the GIL, the dispatch and unboxing of the next); the caller's side is one small
nogil driver call. The function reports problems through its table, not exceptions.
"""
from __future__ import annotations

import os
import queue
import threading
import time

import numba
import numpy as np

from . import intrinsics as _at

MAX_PARTS = 64
# sync = (ctl, gen, role, index, ticks); ctl[0]: the last posted generation, ctl[START + i] / ctl[DONE + i]: the
# generation in which part i last started / finished.
NONE, CALLER, HELPER = 0, 1, 2
START, DONE = 8, 8 + MAX_PARTS
# Slots for kernels that coordinate their parts themselves (int8_chain.py), 64 bytes apart: who joined the task,
# a shared work counter, and per part its progress through a chain of layers.
CLAIM = DONE + MAX_PARTS
COUNTER = CLAIM + 8
ARRIVE = COUNTER + 8
# Native tasks: the function, its argument and part count, then (alone on its cache line) the claim counter
# gen << 8 | parts claimed (0 while a Python task runs).
TASK_FN, TASK_ARG, TASK_N = ARRIVE + 16, ARRIVE + 17, ARRIVE + 18
TASK_CLAIM = ARRIVE + 24
CTL_SIZE = TASK_CLAIM + 8


def spin_microseconds() -> float:
    try:
        return max(0.0, float(os.environ.get("EMBER_SPIN_US", "500")))
    except ValueError:
        return 500.0


_TICKS: list = []


def ticks_per_us() -> float:
    """The cycle counter's rate (0 where it does not advance: no spinning there)."""
    if not _TICKS:
        _at.read_cycles()
        t0, c0 = time.perf_counter(), _at.read_cycles()
        time.sleep(0.002)
        t1, c1 = time.perf_counter(), _at.read_cycles()
        _TICKS.append(max(0.0, (c1 - c0) / ((t1 - t0) * 1e6)))
    return _TICKS[0]


@numba.njit(inline="always", nogil=True)
def post(sync):
    """First statement of a ``run_parts`` kernel: the caller posts the task, a helper marks its part started."""
    ctl, gen, role, index = sync[0], sync[1], sync[2], sync[3]
    if role == CALLER:
        _at.store_release(ctl, 0, gen)
    elif role == HELPER:
        _at.store_release(ctl, START + index, gen)


@numba.njit(inline="always", nogil=True)
def finish(sync):
    """Last statement of a ``run_parts`` kernel: the caller waits until the helpers' parts have started (index:
    the number of parts); a helper marks its part done and spins until the next post (see the module docstring)."""
    ctl, gen, role, index, ticks = sync
    if role == CALLER:
        _at.wait_all(ctl, START + 1, index - 1, gen, ticks)
    elif role == HELPER:
        _at.store_release(ctl, DONE + index, gen)
        _at.spin_above(ctl, 0, gen, ticks)


_NO_SYNC = (np.zeros(1, np.int64), 0, NONE, 0, 0)


@numba.njit(inline="always", nogil=True)
def _claim(ctl, gen, n):
    """The next unclaimed part of native task ``gen`` (n parts), or -1."""
    while True:
        old = _at.load_acquire(ctl, TASK_CLAIM)
        if old >> 8 != gen or old & 0xFF >= n:
            return -1
        if _at.compare_exchange(ctl, TASK_CLAIM, old, old + 1) == old:
            return old & 0xFF


@numba.njit(nogil=True, cache=True)
def _native_loop(ctl, seen, ticks):
    """A helper's idle loop: runs the parts it claims of native tasks posted after ``seen``. Returns (gen, 0) when
    Python task ``gen`` is posted, (last gen seen, 1) after ``ticks`` cycles without a post."""
    addr = ctl.ctypes.data
    while True:
        g = _at.spin_above(ctl, 0, seen, ticks)
        if g <= seen:
            return seen, 1
        if _at.load_acquire(ctl, TASK_FN) == 0:
            return g, 0
        seen = g
        i = _claim(ctl, g, _at.load_acquire(ctl, TASK_N))
        if i >= 0:  # (a claim succeeds only while task g runs: its fields are g's)
            _at.call(_at.load_acquire(ctl, TASK_FN), (_at.load_acquire(ctl, TASK_ARG), addr, g, HELPER, i))
            _at.store_release(ctl, DONE + i, g)


@numba.njit(nogil=True, cache=True)
def _drive(ctl, gen, n, table, x, out):
    """The caller's side of native task ``gen`` (fields set in ctl, except its argument: ``table``, whose slots 0
    and 1 get the addresses of this call's input ``x`` and output bytes ``out``): post, run part 0, run the parts
    no helper claimed, wait for those helpers claimed."""
    table[0], table[1] = x.ctypes.data, out.ctypes.data
    arg, addr, fn = table.ctypes.data, ctl.ctypes.data, ctl[TASK_FN]
    ctl[TASK_ARG] = arg
    role = CALLER if n > 1 and gen > 0 else NONE  # (gen 0: run on this thread alone)
    if role == CALLER:
        _at.store_release(ctl, 0, gen)
    _at.call(fn, (arg, addr, gen, role, 0))
    while True:
        i = _claim(ctl, gen, n)
        if i < 0:
            break
        _at.call(fn, (arg, addr, gen, NONE, i))
        _at.store_release(ctl, DONE + i, gen)
    _at.wait_all(ctl, DONE + 1, n - 1, gen, -1)


def _native_serial(fn, n, table, x, out):
    """Native task fn with every part run on this thread."""
    ctl = np.zeros(CTL_SIZE, np.int64)
    ctl[TASK_FN], ctl[TASK_CLAIM] = fn, 1
    _drive(ctl, 0, n, table, x, out)


def no_sync():
    """The ``sync`` argument of a kernel run outside the helpers (posts and waits for nothing)."""
    return _NO_SYNC


class SpinHelpers:
    """Helper threads that spin between tasks (see the module docstring)."""

    START_WAIT_US = 100  # how long the caller waits for helpers to start before it runs their parts

    def __init__(self, spin_us: float, ticks_us: float):
        self.spin_ticks = int(spin_us * ticks_us)
        self.start_ticks = int(self.START_WAIT_US * ticks_us)
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.sleeping = 0
        self.threads = 0
        self.gen = 0
        self.ctl = np.zeros(CTL_SIZE, np.int64)
        self.slot = (0, None, (), [], [])

    def _worker(self):
        ctl = self.ctl
        seen = int(ctl[0])
        while True:
            seen, idle = _native_loop(ctl, seen, self.spin_ticks)
            if idle:  # nothing posted meanwhile: sleep until the next post
                with self.cond:
                    self.sleeping += 1
                    # A poster that looked before this helper counted as sleeping does not notify it, and posts
                    # within microseconds: the first wait is short, so such a post is seen a millisecond later.
                    timeout = 0.001
                    while int(ctl[0]) <= seen:
                        self.cond.wait(timeout)
                        timeout = None
                    self.sleeping -= 1
                continue
            gen, fn, parts, pending, errors = self.slot
            if fn is None:  # a native task posted since: the loop takes it
                continue
            seen = gen
            while True:
                try:
                    i = pending.pop()
                except IndexError:
                    break
                try:
                    fn(*parts[i], (ctl, gen, HELPER, i, self.spin_ticks))
                except BaseException as e:  # handed to the posting thread, which raises it
                    errors.append(e)
                if ctl[DONE + i] < gen:  # a kernel that failed or does not call finish(): report it here
                    ctl[DONE + i] = gen  # (never lower it: a newer task's helper may have finished part i since)

    def _post(self, n, slot, post):
        """A new generation with its slot; wakes sleeping helpers, posting first when ``post``. Returns (gen, whether
        helpers were woken)."""
        while self.threads < n - 1:
            threading.Thread(target=self._worker, daemon=True, name="ember-cpu-helper").start()
            self.threads += 1
        gen = self.gen = self.gen + 1
        self.slot = (gen,) + slot
        if not self.sleeping:
            return gen, False
        if post:
            self.ctl[0] = gen
        with self.cond:
            self.cond.notify_all()
        return gen, True

    def run_native(self, fn, n, table, x, out) -> bool:
        """Native task (see the module docstring): False (nothing run) when another thread holds the helpers."""
        if n > MAX_PARTS or not self.lock.acquire(blocking=False):
            return False
        try:
            ctl = self.ctl
            ctl[TASK_CLAIM] = (self.gen + 1) << 8 | 1  # first: a claim of an older task now fails
            ctl[TASK_FN], ctl[TASK_N] = fn, n
            gen, _ = self._post(n, (None, (), [], []), False)  # (_drive posts: after TASK_ARG)
            _drive(ctl, gen, n, table, x, out)
            return True
        finally:
            self.lock.release()

    def run(self, fn, parts) -> bool:
        """Run all parts; False (nothing run) when another thread holds the helpers or there are too many parts."""
        n = len(parts)
        if n > MAX_PARTS or not self.lock.acquire(blocking=False):
            return False
        try:
            ctl = self.ctl
            ctl[TASK_CLAIM], ctl[TASK_FN] = 0, 0  # a Python task
            pending = list(range(n - 1, 0, -1))  # popped from the end: 1, 2, ...
            errors: list = []
            gen, woken = self._post(n, (fn, parts, pending, errors), True)
            wait = 0 if woken else self.start_ticks  # do not wait for woken helpers to start
            try:
                fn(*parts[0], (ctl, gen, CALLER, n, wait))
            except BaseException as e:
                errors.append(e)
            ctl[0] = gen  # already posted unless the kernel failed first
            ctl[DONE] = gen
            while True:  # parts no helper has claimed
                try:
                    i = pending.pop()
                except IndexError:
                    break
                try:
                    fn(*parts[i], _NO_SYNC)
                except BaseException as e:
                    errors.append(e)
                ctl[DONE + i] = gen
            _at.wait_all_nogil(ctl, DONE, n, gen, -1)
            if errors:
                raise errors[0]
            return True
        finally:
            self.lock.release()


class QueueHelpers:
    """Helper threads woken through queues (each hand-off pays a thread wake-up)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tasks: list = []
        self.done: queue.SimpleQueue = queue.SimpleQueue()

    def _worker(self, tasks):
        while True:
            fn, args = tasks.get()
            try:
                fn(*args, _NO_SYNC)
                self.done.put(None)
            except BaseException as e:  # handed to the caller, which raises it
                self.done.put(e)

    def run(self, fn, parts) -> bool:
        if not self.lock.acquire(blocking=False):
            return False
        try:
            while len(self.tasks) < len(parts) - 1:
                q = queue.SimpleQueue()
                threading.Thread(target=self._worker, args=(q,), daemon=True, name="ember-cpu-helper").start()
                self.tasks.append(q)
            for q, args in zip(self.tasks, parts[1:]):
                q.put((fn, args))
            error = None
            try:
                fn(*parts[0], no_sync())
            except BaseException as e:
                error = e
            for _ in parts[1:]:
                e = self.done.get()
                error = error or e
            if error is not None:
                raise error
            return True
        finally:
            self.lock.release()


class Helpers:
    """The process's helper pool: spinning where the host allows it, else queue-woken; built on first use
    and again in a forked child (which has none of the parent's threads)."""

    def __init__(self):
        self.pool = None

    def run(self, fn, parts) -> None:
        if len(parts) > 1 and not numba.config.DISABLE_JIT:  # (plain Python kernels cannot post or spin)
            pool = self.pool
            if pool is None:
                pool = self.pool = self._make()
            if pool.run(fn, parts):
                return
        for args in parts:
            fn(*args, _NO_SYNC)

    def run_native(self, fn, n, table, x, out) -> None:
        """Native task ``fn`` in n parts (see the module docstring and ``_drive``): with the helpers where they spin,
        else every part on this thread."""
        if n > 1:
            pool = self.pool
            if pool is None:
                pool = self.pool = self._make()
            if isinstance(pool, SpinHelpers) and pool.run_native(fn, n, table, x, out):
                return
        _native_serial(fn, n, table, x, out)

    @staticmethod
    def _make():
        spin = spin_microseconds()
        rate = ticks_per_us() if spin > 0 else 0.0
        return SpinHelpers(spin, rate) if rate > 0 else QueueHelpers()
