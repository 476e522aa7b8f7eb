"""Dynamic batching and execution for one model version.

Requests queue per model version. Whenever one of the version's ``instances`` is free, the scheduler
takes the oldest request and every queued request that can join it (same non-batch shapes, up to
``max_batch_size`` rows), optionally waiting ``max_queue_delay_ms`` for more, concatenates them along
dim 0, runs the model once on a worker thread (the event loop never blocks on a kernel) and hands each
request its own slice. Under load, requests that arrive while a batch runs form the next batch, so
throughput grows without any delay setting. A request that fails inside a batch is retried alone, so
one bad request cannot fail its neighbours.
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .protocol import ProtocolError


class _Item:
    __slots__ = ("inputs", "rows", "key", "future", "t_enqueue", "deadline")

    def __init__(self, inputs, rows, key, future, deadline):
        self.inputs, self.rows, self.key, self.future = inputs, rows, key, future
        self.t_enqueue = time.perf_counter()
        self.deadline = deadline


class Batcher:
    """The queue and executors of one model version. ``infer`` is called on the event loop."""

    def __init__(self, model, settings, metrics=None):
        self.model = model
        self.batching = model.batchable and settings.max_batch_size > 1
        self.max_rows = max(1, settings.max_batch_size)
        self.delay = settings.max_queue_delay_ms / 1000.0
        self.max_queue = settings.max_queue_size
        self.instances = settings.instances
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix=f"ember-{model.name}")
        self._queue = collections.deque()
        self._queued_rows = 0
        self._running = 0  # batches executing now
        self._closed = False
        self._task = None
        self._wake = None  # asyncio.Event: something was queued
        self._idle = None  # asyncio.Event: nothing queued or running

    @property
    def pending(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._running

    def _start(self):
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(self.instances)
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.model.name}")

    async def infer(self, inputs: dict, timeout_s: float) -> dict:
        """Queue one request and wait for its outputs; 503 when the queue is full, closed or timed out."""
        if self._closed:
            raise ProtocolError(503, f"model {self.model.name!r} version {self.model.version} is unloading")
        if self._task is None:
            self._start()
        if len(self._queue) >= self.max_queue:
            raise ProtocolError(503, f"model {self.model.name!r} is overloaded: {len(self._queue)} requests "
                                     f"queued (max_queue_size {self.max_queue}); retry later")
        if self.batching and len({int(v.shape[0]) for v in inputs.values()}) > 1:
            sizes = ", ".join(f"{k!r} {int(v.shape[0])}" for k, v in inputs.items())
            raise ProtocolError(400, f"model {self.model.name!r}: inputs must agree on dim 0 (the batch size); "
                                     f"got {sizes}")
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if self.batching and first is not None and first.ndim else 1
        key = tuple((k, v.shape[1:]) for k, v in inputs.items()) if self.batching else None
        fut = asyncio.get_running_loop().create_future()
        item = _Item(inputs, rows, key, fut, time.perf_counter() + timeout_s)
        self._queue.append(item)
        self._queued_rows += rows
        self._idle.clear()
        self._wake.set()
        # a timer that fails the future, cheaper than asyncio.wait_for's task per request
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, fut, self.model.name, timeout_s)
        try:
            return await fut
        finally:
            timer.cancel()

    async def _schedule(self):
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self.batching and self.delay > 0 and self._queued_rows < self.max_rows:
                # wait for company until the oldest request has waited `delay`
                until = self._queue[0].t_enqueue + self.delay
                while self._queued_rows < self.max_rows and (left := until - time.perf_counter()) > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = self._take()
            if not batch:
                self._slots.release()
                self._check_idle()
                continue
            self._running += 1
            t_start = time.perf_counter()
            fut = loop.run_in_executor(self._pool, self._execute, batch)
            fut.add_done_callback(lambda f, b=batch, t=t_start: self._finish(f, b, t))

    def _take(self) -> list:
        """The oldest live request and the queued ones that can share its execution."""
        now = time.perf_counter()
        batch, rows, keep = [], 0, collections.deque()
        while self._queue:
            it = self._queue.popleft()
            self._queued_rows -= it.rows
            if it.future.done():  # timed out or the client went away
                continue
            if it.deadline < now:
                it.future.set_exception(ProtocolError(503, f"model {self.model.name!r}: request timed out in the queue"))
                continue
            if not batch:
                batch, rows = [it], it.rows
                if not self.batching:
                    break
            elif it.key == batch[0].key and rows + it.rows <= self.max_rows:
                batch.append(it)
                rows += it.rows
            else:
                keep.append(it)
                continue
            if rows >= self.max_rows:
                break
        # requests skipped for shape go back in front, in order
        for it in reversed(keep):
            self._queue.appendleft(it)
            self._queued_rows += it.rows
        return batch

    def _execute(self, batch):
        """Worker thread: one model call for the whole batch, its outputs split by rows."""
        t0 = time.perf_counter()
        if len(batch) == 1:
            outs = [self.model.run(batch[0].inputs)]
        else:
            try:
                joined = {k: np.concatenate([it.inputs[k] for it in batch]) for k in batch[0].inputs}
                res = self.model.run(joined)
                outs, start = [], 0
                total = sum(it.rows for it in batch)
                for name, a in res.items():
                    if a.ndim == 0 or a.shape[0] != total:
                        raise RuntimeError(f"output {name!r} has shape {a.shape}, not {total} rows")
                for it in batch:
                    outs.append({k: v[start:start + it.rows] for k, v in res.items()})
                    start += it.rows
            except Exception:
                # one request may be the culprit: run each alone so the others still get answers
                outs = [_guarded(self.model.run, it.inputs) for it in batch]
        return outs, time.perf_counter() - t0

    def _finish(self, f, batch, t_start):
        self._running -= 1
        self._slots.release()
        try:
            outs, compute_s = f.result()
        except Exception as e:
            outs, compute_s = [e] * len(batch), time.perf_counter() - t_start
        if self.metrics is not None:
            self.metrics.executed(self.model, [t_start - it.t_enqueue for it in batch],
                                  compute_s, sum(it.rows for it in batch))
        for it, out in zip(batch, outs):
            if it.future.done():
                continue
            if isinstance(out, BaseException):
                it.future.set_exception(out)
            else:
                it.future.set_result(out)
        self._check_idle()

    def _check_idle(self):
        if not self._queue and not self._running:
            self._idle.set()

    async def close(self, timeout_s: float = 30.0):
        """Stop taking requests, let queued and running ones finish (up to ``timeout_s``), free the threads."""
        self._closed = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass  # out of time: what is still queued is failed below
            self._task.cancel()
            for it in self._queue:
                if not it.future.done():
                    it.future.set_exception(ProtocolError(503, f"model {self.model.name!r} was unloaded"))
            self._queue.clear()
        self._pool.shutdown(wait=False)
        self.model.close()


def _expire(fut, name, timeout_s):
    if not fut.done():
        fut.set_exception(ProtocolError(503, f"model {name!r}: request timed out after {timeout_s:g} s "
                                             "(queued and running)"))


def _guarded(fn, inputs):
    try:
        return fn(inputs)
    except Exception as e:
        return e
