"""Inference benchmark: a loaded ``.ember`` program vs ONNX Runtime and PyTorch eager (mlp, cnn).

    python benchmarks/bench_infer.py [--repeats 300] [--rounds 2] [--threads 2]

Every side starts from the same torch model (torch.manual_seed(0)); ember traces the workload with
torch's weights copied in, saves a ``.ember`` file and times ``ember.serialize.load(path)``'s
program (load-time passes on, and off for comparison); ONNX Runtime runs the ONNX file
``torch.onnx.export(..., dynamo=False)`` writes (the peer) and the one ``ember.export.to_onnx`` writes for
the traced ember model (ember's export, run by ORT); torch runs eagerly under ``no_grad``. Each side runs in its
own process (idle BLAS/OpenMP/ORT threads of one library would otherwise spin on the cores the other
needs), all with the same thread count, alternating for several rounds; the table reports the
median over rounds of each process's median microseconds per call. ORT is skipped (and said so)
when ``onnxruntime`` cannot be imported. The runtime's per-call overhead is timed on a 1-node graph.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# issue #3: ember / ORT per (workload, batch)
TARGETS = {("mlp", 1): 1.2, ("mlp", 64): 1.0, ("cnn", 1): 1.5, ("cnn", 64): 1.0}
BATCHES = (1, 64)
SIDES = ("ember", "ember-nopass", "torch", "ort", "ort-ember")


def _set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _median_us(fn, x, repeats, warmup):
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _ember_program(graph, metadata, passes):
    from ember.serialize import Program
    from ember.serialize.passes import optimize

    try:
        return Program(graph, metadata, optimize=passes)
    except TypeError:  # a Program without the ``optimize`` flag: apply the passes here
        return Program(optimize(graph) if passes else graph, metadata)


def _ember_traced(tm, name):
    import ember
    from ember.serialize import trace
    from workloads import copy_torch_weights, ember_model, input_shape

    em = ember_model(name)
    copy_torch_weights(tm, em)
    return trace(em.eval(), ember.randn(*input_shape(name, 2)), input_names=["x"], output_names=["y"])


def _ember_fn(tm, name, tmp, passes):
    import ember
    from ember.serialize import load

    path = os.path.join(tmp, f"{name}.ember")
    _ember_traced(tm, name).save(path)
    loaded = load(path)
    prog = _ember_program(loaded.graph, loaded.metadata, passes)
    return lambda x: prog(x), ember.from_numpy


def _ort_fn(tm, name, tmp, threads, source):
    import onnxruntime as ort
    import torch
    from workloads import input_shape

    path = os.path.join(tmp, f"{name}.onnx")
    if source == "ember":
        _ember_traced(tm, name).to_onnx(path)
    else:
        torch.onnx.export(tm, (torch.randn(*input_shape(name, 2)),), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"x": x}), lambda a: a


def _check_output(side, name, out, tm, a):
    """Every side must compute the torch model's outputs: a fast wrong answer is no result."""
    import numpy as np
    import torch

    out = out[0] if isinstance(out, list) else out
    got = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    with torch.no_grad():
        want = tm(torch.from_numpy(a)).numpy()
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        raise AssertionError(f"{side} {name}: outputs differ from torch's (max abs diff "
                             f"{np.abs(got - want).max() if got.shape == want.shape else got.shape})")


def worker(side, name, repeats, warmup, threads):
    """Time one side in this process; print a JSON line {batch: median us}."""
    sys.path.insert(0, HERE)
    import numpy as np
    import torch
    from workloads import input_shape, torch_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tm = torch_model(name).eval()
    with tempfile.TemporaryDirectory() as tmp:
        if side == "torch":
            def call(x):
                with torch.no_grad():
                    return tm(x)
            fn, wrap = call, torch.from_numpy
        elif side in ("ort", "ort-ember"):
            fn, wrap = _ort_fn(tm, name, tmp, threads, "ember" if side == "ort-ember" else "torch")
        else:
            fn, wrap = _ember_fn(tm, name, tmp, passes=side == "ember")
        rng = np.random.default_rng(0)
        res = {}
        for b in BATCHES:
            a = rng.standard_normal(input_shape(name, b)).astype(np.float32)
            x = wrap(a)
            _check_output(side, name, fn(x), tm, a)
            res[b] = _median_us(fn, x, repeats if b == 1 else max(20, repeats // 5), warmup)
    print(json.dumps(res))


def overhead(repeats):
    """Per-call cost of the runtime on a 1-node graph (x + 1 on 4 floats): Program call and bare executor."""
    import numpy as np

    import ember
    from ember.serialize import trace

    prog = trace(lambda x: x + 1.0, ember.randn(1, 4))
    x = ember.randn(1, 4)
    arrays = {"x": np.ascontiguousarray(x.numpy())}
    ex = prog._executor
    return (_median_us(prog, x, repeats * 10, 100), _median_us(ex.run, arrays, repeats * 10, 100))


def ort_available():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def measure(side, name, args):
    cmd = [sys.executable, __file__, "--worker", side, "--workloads", name, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(f"{side} worker for {name} failed:\n{out.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="mlp,cnn")
    ap.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_threads(args.threads)
    if args.worker:
        worker(args.worker, args.workloads, args.repeats, args.warmup, args.threads)
        return
    import numba
    import numpy as np
    import torch

    import ember

    has_ort = ort_available()
    sides = [s for s in SIDES if not s.startswith("ort") or has_ort]
    ort_note = (f"onnxruntime {__import__('onnxruntime').__version__}" if has_ort
                else "onnxruntime not installed: ORT skipped")
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  threads={args.threads}  "
          f"python {platform.python_version()}  ember {ember.__version__}  torch {torch.__version__}  {ort_note}  "
          f"numpy {np.__version__}  numba {numba.__version__}  rounds={args.rounds} x {args.repeats} calls (B=1)")
    print("| workload | B | ember us | ember, no passes us | torch us | ORT us | ember/ORT | target | ember/torch "
          "| ORT on ember's ONNX us |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.workloads.split(","):
        runs = {s: [] for s in sides}
        for _ in range(args.rounds):
            for side in sides:
                runs[side].append(measure(side, name, args))
        for b in BATCHES:
            med = {s: statistics.median(r[b] for r in runs[s]) for s in sides}
            e, t = med["ember"], med["torch"]
            if has_ort:
                o = med["ort"]
                verdict = "meets" if e / o <= TARGETS[(name, b)] else "misses"
                ort_cols = f"{o:.0f} | {e / o:.2f} | <= {TARGETS[(name, b)]} ({verdict})"
                ort_ember = f"{med['ort-ember']:.0f}"
            else:
                ort_cols, ort_ember = "- | - | -", "-"
            print(f"| {name} | {b} | {e:.0f} | {med['ember-nopass']:.0f} | {t:.0f} | {ort_cols} | {e / t:.2f} "
                  f"| {ort_ember} |", flush=True)
    prog_us, exec_us = overhead(args.repeats)
    print(f"\nruntime per-call overhead (1-node graph, x + 1 on 4 floats): Program call {prog_us:.1f} us, "
          f"bare Executor.run {exec_us:.1f} us")


if __name__ == "__main__":
    main()
