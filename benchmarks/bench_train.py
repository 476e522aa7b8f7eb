"""Training-step benchmark: ember vs PyTorch eager on the `mlp` and `cnn` workloads (BENCHMARKS.md).

    python benchmarks/bench_train.py [--repeats 100] [--rounds 3] [--threads 2]

Each side runs in its own fresh process (so neither side's idle BLAS/OpenMP threads steal the
other's cores), alternating ember / torch for several rounds within one invocation; the table
reports the median over rounds of each process's median step time, and the ratio ember / torch
(lower is better). Both sides use the same thread count, identical initial weights (copied from
torch) and the same batches. The first step (JIT compilation from numba's on-disk cache, first-call
allocations) is excluded from the step times and reported separately.
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


def _set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def worker(side, name, repeats, warmup, threads):
    """Time one side in this process; print a JSON line."""
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
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        step(xs[i % 8], ys[i % 8])
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_us": statistics.median(times) * 1e6, "first_ms": first_ms}))


def measure(side, name, args):
    cmd = [sys.executable, __file__, "--worker", side, "--workloads", name, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="mlp,cnn")
    ap.add_argument("--worker", choices=["ember", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_threads(args.threads)
    if args.worker:
        worker(args.worker, args.workloads, args.repeats, args.warmup, args.threads)
        return
    import numba
    import numpy as np
    import torch

    import ember

    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  threads={args.threads} "
          f"(torch, numba, BLAS)  python {platform.python_version()}  ember {ember.__version__}  torch {torch.__version__}  "
          f"numpy {np.__version__}  numba {numba.__version__}  rounds={args.rounds} x {args.repeats} steps")
    print("| workload | ember median us | torch median us | ember/torch | target | ember first step ms | torch first step ms |")
    print("|---|---|---|---|---|---|---|")
    for name in args.workloads.split(","):
        runs = {"ember": [], "torch": []}
        for _ in range(args.rounds):
            for side in ("ember", "torch"):
                runs[side].append(measure(side, name, args))
        e = statistics.median(r["median_us"] for r in runs["ember"])
        t = statistics.median(r["median_us"] for r in runs["torch"])
        ratio = e / t
        verdict = "meets" if ratio <= TARGETS[name] else "misses"
        print(f"| {name} train step B={BATCH[name]} | {e:.0f} | {t:.0f} | {ratio:.2f} | <= {TARGETS[name]} ({verdict}) | "
              f"{statistics.median(r['first_ms'] for r in runs['ember']):.0f} | "
              f"{statistics.median(r['first_ms'] for r in runs['torch']):.0f} |", flush=True)


if __name__ == "__main__":
    main()
