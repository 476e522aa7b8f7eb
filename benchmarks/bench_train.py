"""Training-step benchmark: ember vs PyTorch eager on the `mlp` and `cnn` workloads (BENCHMARKS.md).

    python benchmarks/bench_train.py [--repeats 50] [--threads 2]

Both sides run on the same number of threads, from identical weights, on the same batches.
Warm-up (JIT compilation, first-call costs) is excluded from the step medians and reported
separately as "first step". The ratio column is ember / torch (lower is better).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def time_steps(step, xs, ys, repeats):
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        step(xs[i % len(xs)], ys[i % len(ys)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def run(name, batch, repeats, warmup):
    import numpy as np
    import torch

    import ember
    import ember.nn.functional as F

    sys.path.insert(0, os.path.dirname(__file__))
    from workloads import batches, copy_torch_weights, ember_model, torch_model

    torch.manual_seed(0)
    tm = torch_model(name)
    em = ember_model(name)
    copy_torch_weights(tm, em)
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    eopt = ember.optim.SGD(em.parameters(), lr=0.01, momentum=0.9)
    xs, ys = batches(name, batch, 8)
    txs = [torch.from_numpy(x) for x in xs]
    tys = [torch.from_numpy(y) for y in ys]
    exs = [ember.from_numpy(x) for x in xs]
    eys = [ember.from_numpy(y) for y in ys]

    def tstep(x, y):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tm(x), y)
        loss.backward()
        topt.step()

    def estep(x, y):
        eopt.zero_grad()
        loss = F.cross_entropy(em(x), y)
        loss.backward()
        eopt.step()

    t0 = time.perf_counter()
    estep(exs[0], eys[0])
    e_first = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    tstep(txs[0], tys[0])
    t_first = (time.perf_counter() - t0) * 1e3
    for i in range(warmup):
        estep(exs[i % 8], eys[i % 8])
        tstep(txs[i % 8], tys[i % 8])
    # interleave rounds so drift on a shared machine hits both sides alike
    e_meds, t_meds = [], []
    for _ in range(5):
        e_meds.append(time_steps(estep, exs, eys, repeats // 5 or 1))
        t_meds.append(time_steps(tstep, txs, tys, repeats // 5 or 1))
    e_us, t_us = statistics.median(e_meds), statistics.median(t_meds)
    del np
    return dict(workload=f"{name} train step B={batch}", ember_us=e_us, torch_us=t_us,
                ratio=e_us / t_us, ember_first_ms=e_first, torch_first_ms=t_first)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="mlp,cnn")
    args = ap.parse_args()
    _set_threads(args.threads)
    import numba
    import numpy as np
    import torch

    import ember

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    targets = {"mlp": 0.8, "cnn": 0.5}
    sizes = {"mlp": 128, "cnn": 64}
    rows = [run(w, sizes[w], args.repeats, args.warmup) for w in args.workloads.split(",")]
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}  "
          f"threads={args.threads} (torch, numba, BLAS)  python {platform.python_version()}  "
          f"ember {ember.__version__}  torch {torch.__version__}  numpy {np.__version__}  numba {numba.__version__}")
    print(f"| workload | ember median us | torch median us | ember/torch | target | ember first step ms | torch first step ms |")
    print("|---|---|---|---|---|---|---|")
    for r, w in zip(rows, args.workloads.split(",")):
        ok = "meets" if r["ratio"] <= targets[w] else "misses"
        print(f"| {r['workload']} | {r['ember_us']:.0f} | {r['torch_us']:.0f} | {r['ratio']:.2f} | "
              f"<= {targets[w]} ({ok}) | {r['ember_first_ms']:.0f} | {r['torch_first_ms']:.0f} |")


if __name__ == "__main__":
    main()
