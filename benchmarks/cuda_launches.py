"""Kernel launches per training step and per inference call of the mlp/cnn workloads on ember's CUDA
backend, counted without a GPU: the launches are replaced by compiles for sm_90, as in
``tests/gpu/ptx_check.py`` (the count does not depend on the hardware; the values computed are
meaningless in this mode). Needs NVVM as ptx_check.py says:

    LD_LIBRARY_PATH=/tmp/nvsite/nvidia/cu13/lib PYTHONPATH=/tmp/nvsite python benchmarks/cuda_launches.py
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "gpu"))
sys.path.insert(0, HERE)

import ptx_check  # noqa: E402  (fakes device memory and launches; must come before ember's backend loads)
from workloads import batches, build  # noqa: E402

BATCH = {"mlp": 128, "cnn": 64}


def main():
    import ember
    import ember.nn.functional as F
    import ember.cuda as ec

    ec.device_count = lambda: 1
    for name in ("mlp", "cnn"):
        ember.manual_seed(0)
        model = build(ember.nn, name).to("cuda")
        opt = ember.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xs, ys = batches(name, BATCH[name], 1)
        x, y = ember.from_numpy(xs[0]).cuda(), ember.from_numpy(ys[0]).cuda()

        def step():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        step()  # first step: compiles, creates optimizer state
        n0 = ptx_check._Launch.count
        step()
        n_train = ptx_check._Launch.count - n0
        n0 = ptx_check._Launch.count
        with ember.no_grad():
            model.eval()(x)
        n_infer = ptx_check._Launch.count - n0
        print(f"{name} B={BATCH[name]}: {n_train} kernel launches per SGD-momentum training step, "
              f"{n_infer} per eager inference call ({len(list(model.parameters()))} parameters)")
    bad = ptx_check._ERRORS
    if bad:
        print(f"{len(bad)} kernels failed to compile: {sorted(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
