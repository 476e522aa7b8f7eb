"""The real-GPU check of the CUDA backend: correctness on the device, then timings of the mlp/cnn
workloads on ember CPU vs ember CUDA (and PyTorch CUDA when the machine's torch has it), with the number
of kernel launches per training step. Sized to finish in a few minutes; run it on a GPU machine:

    python benchmarks/gpu_check.py [--only tests,infer,train,...] [--pytest-args "-n 12"] [--repeats 20]

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
    """Counts ember's CUDA kernel launches (every ``kernel[grid, block](...)`` call)."""

    def __init__(self):
        from ember.backends.cuda import kernel

        self.kernel = kernel
        self.start = kernel.launches()

    def close(self):
        self.n = self.kernel.launches() - self.start


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


def _time(step, sync, repeats, warmup=5):
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


def _host_time(step, sync, repeats):
    """Milliseconds per step to queue ``repeats`` steps back to back (host time: the GPU runs behind), and
    per step until the device has finished them (the step's time when the GPU is never idle)."""
    sync()
    t0 = time.perf_counter()
    for i in range(repeats):
        step(i)
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / repeats * 1e3, (t2 - t0) / repeats * 1e3


def train_timings(repeats, with_torch=True):
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
        row["ember cuda queue ms/step"], row["ember cuda pipelined ms/step"] = _host_time(
            gstep, ember.cuda.synchronize, repeats)
        counter = LaunchCounter()
        gstep(1)
        ember.cuda.synchronize()
        counter.close()
        row["launches/step"] = counter.n
        try:
            if not with_torch:
                raise ImportError
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


def micro(repeats=2000):
    """Per-call costs under the workloads: a numba launch (configured and pre-bound), a device allocation,
    and two ember ops."""
    global cuda  # a module global, as the simulator's kernels need (it swaps the module in a kernel's globals)
    import ember
    from numba import cuda

    @cuda.jit
    def nop(a, b, n):
        i = cuda.grid(1)
        if i < n:
            b[i] = a[i]

    a, b = cuda.device_array(1024, np.float32), cuda.device_array(1024, np.float32)
    nop[4, 256](a, b, 1024)
    cuda.synchronize()
    kern = next(iter(getattr(nop, "overloads", {}).values()), None)  # none on the simulator

    def per_call(fn):
        fn()
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        cuda.synchronize()
        return (time.perf_counter() - t0) / repeats * 1e6

    s = 4 if ember.cuda.is_simulator() else 1  # the simulator runs one Python thread per CUDA thread
    x = ember.randn(128 // s, 128 // s).cuda()
    w = ember.randn(784 // s, 256 // s).cuda()
    xb = ember.randn(128 // s, 784 // s).cuda()
    rows = [{"what": "numba launch kernel[grid, block](3 args)", "us": per_call(lambda: nop[4, 256](a, b, 1024))}]
    if kern is not None:
        cfg = nop[4, 256]
        rows.append({"what": "numba pre-bound launch (overload.launch)",
                     "us": per_call(lambda: kern.launch((a, b, 1024), (4, 1, 1), (256, 1, 1), cfg.stream, 0))})
    rows += [{"what": f"device_array(4 KiB) + free (EMBER_CUDA_ALLOCATOR="
                     f"{os.environ.get('EMBER_CUDA_ALLOCATOR', 'caching')})",
             "us": per_call(lambda: cuda.device_array(1024, np.float32))},
            {"what": f"ember x + x ({x.shape} cuda)", "us": per_call(lambda: x + x)},
            {"what": f"ember {xb.shape} @ {w.shape} cuda", "us": per_call(lambda: xb @ w)}]
    return rows


def profile(steps=20):
    """cProfile of ``steps`` CUDA mlp training steps: where the host time of a step goes."""
    import cProfile
    import io
    import pstats

    import ember

    step = _train_step(ember, "mlp", "cuda")
    for i in range(3):
        step(i)
    ember.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for i in range(steps):
        step(i)
    ember.cuda.synchronize()
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(28)
    print(f"\n## cProfile of {steps} mlp B={BATCH['mlp']} CUDA training steps (by own time)")
    print(out.getvalue()[-6000:])


SECTIONS = ("tests", "infer", "train", "micro", "profile", "numba-allocator")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tests", action="store_true", help="timings only")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments for the tests (e.g. '-n 12')")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--no-torch", action="store_true", help="no PyTorch timings")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.skip_tests:
        only.discard("tests")
    if only - set(SECTIONS):
        sys.exit(f"unknown sections {sorted(only - set(SECTIONS))}; valid: {', '.join(SECTIONS)}")
    import ember

    print("# ember GPU check", time.strftime("%Y-%m-%d %H:%M:%S"), "| sections:", ",".join(
        s for s in SECTIONS if s in only), "| allocator:", os.environ.get("EMBER_CUDA_ALLOCATOR", "caching"))
    print("versions:", _versions())
    if not ember.cuda.is_available():
        from ember.cuda import _probe

        sys.exit(f"CUDA is not available: {_probe()}")
    print("device:", ember.cuda.get_device_name(), "| simulator:", ember.cuda.is_simulator(), flush=True)
    if "tests" in only:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short",
                              *args.pytest_args.split(), os.path.join(os.path.dirname(HERE), "tests", "gpu")])
        print(f"pytest tests/gpu on the device: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
    if "micro" in only:
        _print_rows("per-call costs (us)", micro())
    if "infer" in only:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            _print_rows("inference from a loaded .ember", infer_timings(args.repeats, tmp))
    if "train" in only:
        _print_rows("training steps (SGD momentum, cross-entropy)", train_timings(args.repeats, not args.no_torch))
    if "profile" in only:
        profile()
    if "numba-allocator" in only:
        sys.stdout.flush()
        env = dict(os.environ, EMBER_CUDA_ALLOCATOR="numba")
        subprocess.call([sys.executable, os.path.abspath(__file__), "--only", "micro,train", "--no-torch",
                         "--repeats", str(args.repeats)], env=env)


if __name__ == "__main__":
    main()
