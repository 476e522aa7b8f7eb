"""The real-GPU check of the CUDA backend: correctness on the device, then timings of the mlp/cnn
workloads on ember CPU vs ember CUDA (and PyTorch CUDA when the machine's torch has it), with the number
of kernel launches per training step. Sized to finish in a few minutes; run it on a GPU machine:

    python benchmarks/gpu_check.py [--skip-tests] [--repeats 20]

The correctness part is ``pytest tests/gpu`` on the device (the same tests CI runs on the simulator).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from workloads import batches, build  # noqa: E402

BATCH = {"mlp": 128, "cnn": 64}


def _versions():
    import numba

    import ember

    out = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "ember": ember.__version__}
    try:
        from importlib.metadata import version

        out["numba-cuda"] = version("numba-cuda")
    except Exception:
        out["numba-cuda"] = "not installed"
    try:
        import torch

        out["torch"] = torch.__version__ + (f" (cuda {torch.version.cuda})" if torch.cuda.is_available() else " (cpu)")
    except ImportError:
        out["torch"] = "not installed"
    return out


class LaunchCounter:
    """Counts numba CUDA kernel launches (every ``kernel[grid, block](...)`` call)."""

    def __init__(self):
        from numba.cuda import dispatcher

        self.cls = dispatcher._LaunchConfiguration
        self.orig = self.cls.__call__
        self.n = 0
        counter = self

        def call(cfg, *args):
            counter.n += 1
            return counter.orig(cfg, *args)

        self.cls.__call__ = call

    def close(self):
        self.cls.__call__ = self.orig


def _train_step(lib, name, device):
    """One SGD-momentum cross-entropy step of the workload in ``lib`` (``ember`` or ``torch``: same API)."""
    import importlib

    F = importlib.import_module(f"{lib.__name__}.nn.functional")
    lib.manual_seed(0)
    model = build(lib.nn, name).to(device)
    opt = lib.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs, ys = batches(name, BATCH[name], 4)
    xs = [lib.from_numpy(x).to(device) for x in xs]
    ys = [lib.from_numpy(y).to(device) for y in ys]

    def step(i):
        opt.zero_grad()
        loss = F.cross_entropy(model(xs[i % 4]), ys[i % 4])
        loss.backward()
        opt.step()
        return loss

    return step


def _time(step, sync, repeats, warmup=3):
    for i in range(warmup):
        step(i)
    sync()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def train_timings(repeats):
    import ember

    rows = []
    for name in ("mlp", "cnn"):
        row = {"workload": f"{name} B={BATCH[name]} train step"}
        row["ember cpu ms"] = _time(_train_step(ember, name, "cpu"), lambda: None, repeats)
        t0 = time.perf_counter()
        gstep = _train_step(ember, name, "cuda")
        gstep(0)
        ember.cuda.synchronize()
        row["first cuda step s (compiles)"] = time.perf_counter() - t0
        row["ember cuda ms"] = _time(gstep, ember.cuda.synchronize, repeats)
        counter = LaunchCounter()
        gstep(1)
        ember.cuda.synchronize()
        counter.close()
        row["launches/step"] = counter.n
        try:
            import torch

            if torch.cuda.is_available():
                row["torch cuda ms"] = _time(_train_step(torch, name, "cuda"), torch.cuda.synchronize, repeats)
            row["torch cpu ms"] = _time(_train_step(torch, name, "cpu"), lambda: None, repeats)
        except ImportError:
            pass
        rows.append(row)
    return rows


def infer_timings(repeats, tmp):
    import ember
    from ember import serialize

    rows = []
    for name, b in (("mlp", 1), ("mlp", 64), ("cnn", 1), ("cnn", 64)):
        ember.manual_seed(0)
        model = build(ember.nn, name).eval()
        x = ember.from_numpy(batches(name, b, 1)[0][0])
        path = os.path.join(tmp, f"{name}.ember")
        serialize.trace(model, x).save(path)
        cpu, gpu = serialize.load(path), serialize.load(path, device="cuda")
        xg = x.cuda()
        want = cpu(x).numpy()
        got = gpu(xg).cpu().numpy()
        err = float(np.abs(got - want).max())
        row = {"workload": f"{name} B={b} inference (.ember)", "max |cuda - cpu|": err,
               "ember cpu ms": _time(lambda i: cpu(x), lambda: None, repeats),
               "ember cuda ms": _time(lambda i: gpu(xg), ember.cuda.synchronize, repeats)}
        rows.append(row)
    return rows


def _print_rows(title, rows):
    print(f"\n## {title}")
    for r in rows:
        cells = []
        for k, v in r.items():
            cells.append(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
        print("- " + "; ".join(cells))
        if "ember cuda ms" in r and "ember cpu ms" in r:
            print(f"  cuda/cpu time ratio: {r['ember cuda ms'] / r['ember cpu ms']:.2f}")
        if "torch cuda ms" in r:
            print(f"  ember cuda / torch cuda: {r['ember cuda ms'] / r['torch cuda ms']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tests", action="store_true", help="timings only")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    import ember

    print("# ember GPU check", time.strftime("%Y-%m-%d %H:%M:%S"))
    print("versions:", _versions())
    if not ember.cuda.is_available():
        from ember.cuda import _probe

        sys.exit(f"CUDA is not available: {_probe()}")
    print("device:", ember.cuda.get_device_name(), "| simulator:", ember.cuda.is_simulator())
    if not args.skip_tests:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
                              os.path.join(os.path.dirname(HERE), "tests", "gpu")])
        print(f"pytest tests/gpu on the device: exit {rc} in {time.perf_counter() - t0:.1f} s")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _print_rows("inference from a loaded .ember", infer_timings(args.repeats, tmp))
    _print_rows("training steps (SGD momentum, cross-entropy)", train_timings(args.repeats))


if __name__ == "__main__":
    main()
