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
CTL_SIZE = ARRIVE + 16


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
        seen, ran = int(ctl[0]), False
        while True:
            if int(ctl[0]) <= seen:
                g = seen if ran else _at.spin_above_nogil(ctl, 0, seen, self.spin_ticks)  # (a kernel just spun)
                if g <= seen:  # nothing posted meanwhile: sleep until the next post
                    with self.cond:
                        self.sleeping += 1
                        while int(ctl[0]) <= seen:
                            self.cond.wait()
                        self.sleeping -= 1
            gen, fn, parts, pending, errors = self.slot
            seen, ran = gen, False
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
                ran = True

    def run(self, fn, parts) -> bool:
        """Run all parts; False (nothing run) when another thread holds the helpers or there are too many parts."""
        n = len(parts)
        if n > MAX_PARTS or not self.lock.acquire(blocking=False):
            return False
        try:
            while self.threads < n - 1:
                threading.Thread(target=self._worker, daemon=True, name="ember-cpu-helper").start()
                self.threads += 1
            ctl = self.ctl
            gen = self.gen = self.gen + 1
            pending = list(range(n - 1, 0, -1))  # popped from the end: 1, 2, ...
            errors: list = []
            self.slot = (gen, fn, parts, pending, errors)
            wait = self.start_ticks
            if self.sleeping:  # post now and wake them, and do not wait for them to start
                ctl[0], wait = gen, 0
                with self.cond:
                    self.cond.notify_all()
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
        if len(parts) > 1:
            pool = self.pool
            if pool is None:
                pool = self.pool = self._make()
            if pool.run(fn, parts):
                return
        for args in parts:
            fn(*args, _NO_SYNC)

    @staticmethod
    def _make():
        spin = spin_microseconds()
        rate = ticks_per_us() if spin > 0 else 0.0
        return SpinHelpers(spin, rate) if rate > 0 else QueueHelpers()
