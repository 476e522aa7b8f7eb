"""Alternating in-process A/B of ember's mlp training step (BENCHMARKS.md's `mlp`, B=128, SGD momentum):
nn.Sequential running Linear -> ReLU as one `linear_relu` op against the same modules one by one.

    python benchmarks/ab_linear_relu.py [--rounds 15] [--steps 40]

Each round runs `steps` steps of one side, then of the other (the order alternating), so both see the same
minutes of a noisy machine; prints each side's median and 25th percentile step time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import ember  # noqa: E402
import ember.nn.container as container  # noqa: E402
import ember.nn.functional as F  # noqa: E402
from workloads import batches, ember_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    fused = container._linear_then_relu
    side = ["fused"]
    container._linear_then_relu = lambda *a: side[0] == "fused" and fused(*a)
    model = ember_model("mlp")
    opt = ember.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs, ys = batches("mlp", 128, 8)
    xs, ys = [ember.from_numpy(x) for x in xs], [ember.from_numpy(y) for y in ys]

    def step(i):
        opt.zero_grad()
        F.cross_entropy(model(xs[i % 8]), ys[i % 8]).backward()
        opt.step()

    times = {"fused": [], "unfused": []}
    for s in times:  # warm-up (compiles)
        side[0] = s
        for i in range(30):
            step(i)
    for r in range(args.rounds):
        for s in ("fused", "unfused") if r % 2 else ("unfused", "fused"):
            side[0] = s
            for i in range(args.steps):
                t0 = time.perf_counter()
                step(i)
                times[s].append(time.perf_counter() - t0)
    for s, ts in times.items():
        print(f"{s:8s} median {np.median(ts) * 1e6:7.0f} us   p25 {np.percentile(ts, 25) * 1e6:7.0f} us")


if __name__ == "__main__":
    main()
