"""The helper threads of jit.run_parts (backends/cpu/helpers.py): every part runs exactly once whichever thread
claims it, errors reach the caller, and the spinning, sleeping and queue variants agree."""
import time

import numba
import numpy as np
import pytest

from ember.backends.cpu import helpers, intrinsics
from ember.backends.cpu.helpers import finish, post


@numba.njit(nogil=True, cache=True)
def _fill(out, lo, hi, reps, sync):
    post(sync)
    for _ in range(reps):
        for i in range(lo, hi):
            out[i] += 1.0
    finish(sync)


@numba.njit(nogil=True, cache=True)
def _fail_on(out, lo, hi, bad, sync):
    post(sync)
    if lo == bad:
        raise ValueError("part failed")
    for i in range(lo, hi):
        out[i] += 1.0
    finish(sync)


def _parts(out, n_parts, reps=1):
    step = out.size // n_parts
    return [(out, i * step, (i + 1) * step, reps) for i in range(n_parts)]


def _pools():
    pools = [helpers.QueueHelpers()]
    rate = helpers.ticks_per_us()
    if rate > 0:
        pools += [helpers.SpinHelpers(500, rate), helpers.SpinHelpers(0, rate)]  # spins / sleeps between tasks
    return pools


@pytest.mark.parametrize("n_parts", [2, 3, 5])
def test_every_part_runs_once(n_parts):
    for pool in _pools():
        out = np.zeros(64 * n_parts)
        for rep in range(30):
            assert pool.run(_fill, _parts(out, n_parts, reps=1 + rep % 3))
        np.testing.assert_array_equal(out, sum(1 + rep % 3 for rep in range(30)))


def test_parts_no_helper_claims_run_on_the_caller():
    rate = helpers.ticks_per_us()
    if rate <= 0:
        pytest.skip("no cycle counter: queue helpers only")
    pool = helpers.SpinHelpers(500, rate)
    out = np.zeros(128)
    pool.run(_fill, _parts(out, 2))  # starts the helper
    pool.lock.acquire()  # another caller holds the helpers: run() declines (jit.run_parts then runs serially)
    try:
        assert not pool.run(_fill, _parts(out, 2))
    finally:
        pool.lock.release()
    fresh = helpers.SpinHelpers(500, rate)
    fresh.threads = 1  # claims a helper that does not exist: the caller runs every part itself
    fresh.start_ticks = int(20 * rate)
    out2 = np.zeros(128)
    assert fresh.run(_fill, _parts(out2, 2))
    np.testing.assert_array_equal(out2, 1.0)


def test_an_error_in_any_part_reaches_the_caller_and_the_pool_still_works():
    for pool in _pools():
        out = np.zeros(128)
        for bad in (0, 64):  # the caller's part, a helper's part
            with pytest.raises(ValueError, match="part failed"):
                pool.run(_fail_on, [(out, 0, 64, bad), (out, 64, 128, bad)])
        out[:] = 0
        assert pool.run(_fill, _parts(out, 2))
        np.testing.assert_array_equal(out, 1.0)


def test_python_functions_work_as_parts():
    """A part that never calls post/finish (a Python function) is reported done by the helper loop."""
    for pool in _pools():
        seen = []
        assert pool.run(lambda i, sync: seen.append(i), [(0,), (1,), (2,)])
        assert sorted(seen) == [0, 1, 2]


def test_intrinsics():
    ctl = np.zeros(4, np.int64)

    @numba.njit(cache=False)
    def roundtrip(ctl):
        intrinsics.store_release(ctl, 2, 41)
        intrinsics.cpu_relax()
        return intrinsics.load_acquire(ctl, 2) + 1

    assert roundtrip(ctl) == 42 and ctl[2] == 41
    assert intrinsics.spin_above_nogil(ctl, 2, 40, -1) == 41  # already above: returns at once
    if helpers.ticks_per_us() > 0:
        t0 = time.perf_counter()
        assert intrinsics.spin_above_nogil(ctl, 2, 41, int(2000 * helpers.ticks_per_us())) == 41  # times out
        assert time.perf_counter() - t0 > 0.001  # after spinning for its ~2 ms, not at once


def test_more_helpers_than_parts_never_lose_a_done_mark():
    """Regression: with idle helpers racing for parts, a helper's late report of an older task once overwrote a
    newer task's done mark and the caller waited forever."""
    import threading

    rate = helpers.ticks_per_us()
    if rate <= 0:
        pytest.skip("no cycle counter: queue helpers only")
    pool = helpers.SpinHelpers(500, rate)
    out = np.zeros(256)
    pool.run(_fill, _parts(out, 4))  # three helpers for two-part tasks
    finished = []

    def loop():
        for i in range(3000):
            pool.run(_fill, _parts(out, 2, reps=1 + i % 2))
            pool.run(lambda j, sync: None, [(0,), (1,)])  # parts that report nothing themselves
        finished.append(True)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    t.join(60)
    assert finished, "run() never returned: a done mark was lost"


# ---- native tasks (jit.run_native): a cfunc run by the caller and by helpers that never return to Python ----

def _bump(arg, ctl_addr, gen, role, part):
    """Part ``part`` adds 1 to bytes [64 * part, 64 * part + 64) of the output (table[1]). A part run by a helper
    sets table[2] to 1; with table[2] == -1 the caller's part 0 waits up to table[3] cycles for that."""
    t = numba.carray(intrinsics.voidptr(arg), 4, np.int64)
    out = numba.carray(intrinsics.voidptr(t[1]), 64 * (part + 1), np.uint8)
    for i in range(64 * part, 64 * part + 64):
        out[i] += 1
    if role == helpers.HELPER:
        intrinsics.store_release(t, 2, 1)
    elif role == helpers.CALLER and t[2] == -1:
        t0 = intrinsics.cycles()
        while intrinsics.load_acquire(t, 2) == -1 and intrinsics.cycles() - t0 < t[3]:
            intrinsics.cpu_relax()


_BUMP: list = []


def _bump_address():
    if not _BUMP:
        fn = numba.cfunc("void(int64, int64, int64, int64, int64)", cache=True)(_bump)
        _BUMP.append((fn, fn.address))
    return _BUMP[0][1]


def _native_pools():
    rate = helpers.ticks_per_us()
    if rate <= 0:
        return {}
    return {"spinning": helpers.SpinHelpers(500, rate), "sleeping": helpers.SpinHelpers(0, rate)}


@pytest.mark.parametrize("n_parts", [1, 2, 3, 5])
def test_every_part_of_a_native_task_runs_once(n_parts):
    pools = _native_pools()
    x = np.zeros((1, 1), np.float32)
    for pool in list(pools.values()) + [None]:
        out = np.zeros(64 * n_parts, np.uint8)
        table = np.zeros(4, np.int64)
        for _ in range(50):
            if pool is None:  # no helpers: every part on this thread
                helpers._native_serial(_bump_address(), n_parts, table, x, out)
            else:
                assert pool.run_native(_bump_address(), n_parts, table, x, out)
        np.testing.assert_array_equal(out, 50)
    if "spinning" in pools and n_parts > 1:  # the caller's part waits (up to 20 ms) for a helper to run one
        pool = pools["spinning"]
        for _ in range(5):  # (a helper descheduled through its whole spin on a loaded 2-core VM misses one try)
            out, table = np.zeros(64 * n_parts, np.uint8), np.array([0, 0, -1, int(20000 * helpers.ticks_per_us())],
                                                                     np.int64)
            pool.run_native(_bump_address(), n_parts, table, x, out)
            np.testing.assert_array_equal(out, 1)
            if table[2] == 1:
                break
        assert table[2] == 1, "no spinning helper ran a part of the native task in 5 tries"


def test_native_and_python_tasks_interleave_on_one_pool():
    """A helper goes from a kernel's spin to the native loop and back; every part of both kinds runs once."""
    pools = _native_pools()
    if not pools:
        pytest.skip("no cycle counter: queue helpers only")
    x = np.zeros((1, 1), np.float32)
    for pool in pools.values():
        out, nat, table = np.zeros(192), np.zeros(192, np.uint8), np.zeros(4, np.int64)
        for i in range(100):
            assert pool.run(_fill, _parts(out, 3))
            for _ in range(i % 3):
                assert pool.run_native(_bump_address(), 3, table, x, nat)
        np.testing.assert_array_equal(out, 100)
        np.testing.assert_array_equal(nat, sum(i % 3 for i in range(100)))


def test_run_native_declines_while_another_thread_holds_the_helpers():
    pools = _native_pools()
    if not pools:
        pytest.skip("no cycle counter: queue helpers only")
    pool = pools["spinning"]
    pool.lock.acquire()
    try:
        assert not pool.run_native(_bump_address(), 2, np.zeros(4, np.int64), np.zeros((1, 1), np.float32),
                                   np.zeros(128, np.uint8))
    finally:
        pool.lock.release()


@pytest.mark.parametrize("env,want", [({}, 4), ({"NUMBA_NUM_THREADS": "1"}, 1), ({"NUMBA_NUM_THREADS": "16"}, 16)])
def test_default_kernel_threads_are_capped_unless_set(env, want):
    """Without NUMBA_NUM_THREADS, importing ember on a 64-CPU host (os.cpu_count patched) gives numba
    DEFAULT_MAX_THREADS threads (more were slower on a 16-vCPU host); a user's setting stands."""
    import os
    import subprocess
    import sys

    from ember._config import DEFAULT_MAX_THREADS

    assert DEFAULT_MAX_THREADS == 4
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    code = "import os; os.cpu_count = lambda: 64; import ember, numba; print(numba.config.NUMBA_NUM_THREADS)"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == want
