"""Training-step benchmark: ember vs PyTorch eager on the `mlp` and `cnn` workloads (BENCHMARKS.md).

    python benchmarks/bench_train.py [--rounds 15] [--repeats 30] [--threads 2]

Each side runs in its own process (in one shared process each library's idle worker threads spin on
the cores the other needs), started once per workload and kept alive: the two then take turns, a
burst of ``--repeats`` steps at a time, ``--rounds`` times, with a pause before each burst for the
other side's threads to go idle. The table reports each side's median step (median over bursts of
each burst's median) and the median over rounds of the ratio ember / torch of two adjacent bursts,
with its range (lower is better): on a shared VM whose speed drifts by tens of percent within
minutes, bursts a fraction of a second apart see more nearly the same machine than processes seconds
apart. Both sides use the same thread count, identical initial weights (copied from torch) and the
same batches. The first step (JIT compilation from numba's on-disk cache, first-call allocations) is
excluded from the step times and reported separately.

Two more columns bound what ember's step could reach, measured in ember's process after its bursts:
the step's BLAS GEMMs replayed alone (the same operands, recorded from one step; torch runs the same
products) and ``optimizer.step()`` alone on that step's gradients (hot in cache). Their sum over
torch's step is the ratio ember would have with no other work at all. For the mlp a third process takes its
turn in every round: the same step written by hand on ember's kernels (kernel_step.py: no Tensor, autograd,
module or optimizer code; checked to leave the same parameters as ember's step), the floor of a Python framework
over these kernels; its ratio to torch is taken per round like ember's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"mlp": 0.8, "cnn": 0.5}
BATCH = {"mlp": 128, "cnn": 64}
PAUSE_S = 0.3  # before each burst: OpenBLAS's and OpenMP's idle workers spin for up to ~0.1-0.2 s


def _set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def worker(side, name, warmup, threads):
    """Set one side up in this process, then answer commands from stdin with JSON lines on stdout:
    ``run N`` times N steps, ``floor N`` measures ember's bounds (see the module doc), EOF ends."""
    sys.path.insert(0, HERE)
    import torch

    from workloads import batches, copy_torch_weights, ember_model, torch_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tm = torch_model(name)
    xs, ys = batches(name, BATCH[name], 8)
    if side == "torch":
        opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
        xs = [torch.from_numpy(x) for x in xs]
        ys = [torch.from_numpy(y) for y in ys]

        def step(x, y):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(tm(x), y).backward()
            opt.step()
    elif side == "kernels":
        from kernel_step import check, mlp_kernel_step

        check(lambda: ember_model(name), xs[0], ys[0])
        em = ember_model(name)
        copy_torch_weights(tm, em)
        opt, step = None, mlp_kernel_step(em, 0.01, 0.9)
    else:
        import ember
        import ember.nn.functional as F

        em = ember_model(name)
        copy_torch_weights(tm, em)
        opt = ember.optim.SGD(em.parameters(), lr=0.01, momentum=0.9)
        xs = [ember.from_numpy(x) for x in xs]
        ys = [ember.from_numpy(y) for y in ys]

        def step(x, y):
            opt.zero_grad()
            F.cross_entropy(em(x), y).backward()
            opt.step()

    t0 = time.perf_counter()
    step(xs[0], ys[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(warmup):
        step(xs[i % 8], ys[i % 8])
    print(json.dumps({"first_ms": first_ms}), flush=True)
    for line in sys.stdin:
        cmd, n = line.split()
        if cmd == "run":
            result = {"median_us": statistics.median(_time(lambda i: step(xs[i % 8], ys[i % 8]), int(n))) * 1e6}
        else:
            result = _ember_floor(step, opt, xs[0], ys[0], int(n))
        print(json.dumps(result), flush=True)


def _time(fn, repeats):
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return times


def _ember_floor(step, opt, x, y, repeats):
    """Median us of the step's BLAS GEMMs replayed alone, and of optimizer.step() alone."""
    from ember.backends.cpu import blas

    calls, mm = [], blas._mm

    def record(a, b, out):
        calls.append((a, b, out))
        return mm(a, b, out)

    blas._mm = record
    try:
        step(x, y)
    finally:
        blas._mm = mm

    def replay(_):
        for a, b, out in calls:
            blas.matmul(a, b, out)

    gemm = _time(replay, repeats)
    opt_step = _time(lambda _: opt.step(), repeats)
    return {"gemm_us": statistics.median(gemm) * 1e6, "n_gemm": len(calls),
            "opt_us": statistics.median(opt_step) * 1e6}


class Side:
    """One side's worker process."""

    def __init__(self, side, name, args):
        cmd = [sys.executable, __file__, "--worker", side, "--workloads", name, "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=os.environ.copy())
        self.first_ms = self._read()["first_ms"]

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with status {self.proc.wait()}")
        return json.loads(line)

    def ask(self, cmd, n):
        self.proc.stdin.write(f"{cmd} {n}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="steps per burst")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15, help="bursts per side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="mlp,cnn")
    ap.add_argument("--worker", choices=["ember", "torch", "kernels"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_threads(args.threads)
    if args.worker:
        worker(args.worker, args.workloads, args.warmup, args.threads)
        return
    import numba
    import numpy as np
    import torch

    import ember

    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  threads={args.threads} "
          f"(torch, numba, BLAS)  python {platform.python_version()}  ember {ember.__version__}  torch {torch.__version__}  "
          f"numpy {np.__version__}  numba {numba.__version__}  {args.rounds} alternating bursts x {args.repeats} steps")
    print("| workload | ember median us | torch median us | ember/torch (median of rounds; range) | target "
          "| ember first step ms | torch first step ms | ember's GEMMs alone us | optimizer.step alone us "
          "| (GEMMs + step) / torch | hand-written kernel step us (/ torch; range) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.workloads.split(","):
        order = ("ember", "torch", "kernels") if name == "mlp" else ("ember", "torch")
        sides = {side: Side(side, name, args) for side in order}
        runs = {side: [] for side in order}
        try:
            for r in range(args.rounds):
                for side in order[r % len(order):] + order[:r % len(order)]:
                    time.sleep(PAUSE_S)
                    runs[side].append(sides[side].ask("run", args.repeats)["median_us"])
            time.sleep(PAUSE_S)
            floor = sides["ember"].ask("floor", args.repeats)
        finally:
            for w in sides.values():
                w.close()
        e, t = statistics.median(runs["ember"]), statistics.median(runs["torch"])
        ratios = [a / b for a, b in zip(runs["ember"], runs["torch"])]
        ratio = statistics.median(ratios)
        g, o = floor["gemm_us"], floor["opt_us"]
        if "kernels" in runs:
            k = [a / b for a, b in zip(runs["kernels"], runs["torch"])]
            hand = f"{statistics.median(runs['kernels']):.0f} ({statistics.median(k):.2f}; {min(k):.2f}-{max(k):.2f})"
        else:
            hand = "-"
        verdict = "meets" if ratio <= TARGETS[name] else "misses"
        print(f"| {name} train step B={BATCH[name]} | {e:.0f} | {t:.0f} | "
              f"{ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | <= {TARGETS[name]} ({verdict}) | {sides['ember'].first_ms:.0f} | {sides['torch'].first_ms:.0f} | "
              f"{g:.0f} ({floor['n_gemm']} calls) | {o:.0f} | {(g + o) / t:.2f} | {hand} |", flush=True)


if __name__ == "__main__":
    main()
