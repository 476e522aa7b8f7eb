"""int8 inference benchmark: ember's dynamically quantized mlp vs ember fp32 and ONNX Runtime's own
``quantize_dynamic`` model, ember's statically quantized cnn vs ember fp32, plus the file sizes.

    python benchmarks/bench_quant.py [--repeats 300] [--rounds 3] [--threads 2]

Every side starts from the same torch mlp (torch.manual_seed(0)). ember: the workload traced with
torch's weights, ``ember.quantize.quantize_dynamic`` (int8 weights per output channel, uint8
activations quantized per call to 7 bits, as torch's x86 backend), saved and loaded with
``ember.serialize.load``; fp32 the same without quantization. ONNX Runtime: the fp32 ONNX file torch exports,
and that file after
``onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)`` (with ``reduce_range``, 7-bit weights, on CPUs
without VNNI, as its docs advise); ember's 7-bit-weight row is ``per_channel_7bit_dynamic_qconfig``, the same
(7-bit weights, 8-bit activations). 2 threads,
several rounds; in each, the ember sides run in one process, timed in turn in blocks of 25 (B=1) or 5 (B=64) calls
(int8 against fp32 within the same tens of milliseconds: this VM's speed drifts more than that between processes
seconds apart), then each ONNX
Runtime side in its own process. Each side checks its output against torch fp32 first (int8 sides within 8% of the
output range). The static cnn: ``fuse_modules`` (conv+relu), the x86 qconfig
(histogram activations, per-channel weights), calibrated on 4 batches of 64 random images.
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
sys.path.insert(0, HERE)
from bench_infer import _median_us, _set_threads  # noqa: E402

BATCHES = (1, 64)
SIDES = ("ember-fp32", "ember-int8", "ember-int8-7bit", "ort-fp32", "ort-int8", "ember-cnn-fp32", "ember-cnn-int8")
EMBER_SIDES = tuple(s for s in SIDES if s.startswith("ember"))


def _ember_side(tm, tmp, int8, name="mlp", w7=False):
    import ember
    import ember.quantize as Q
    from ember.serialize import load, trace
    from workloads import copy_torch_weights, ember_model, input_shape

    em = ember_model(name)
    copy_torch_weights(tm, em)
    em.eval()
    model = em
    if int8 and name == "mlp":  # (w7: 7-bit weights, ORT's reduce_range, as its side below uses without VNNI)
        model = Q.quantize_dynamic(em, {ember.nn.Linear: Q.per_channel_7bit_dynamic_qconfig} if w7 else None)
    elif int8:
        model = Q.fuse_modules(em, [["0", "1"], ["3", "4"]])
        model.qconfig = Q.get_default_qconfig("x86")
        ember.manual_seed(0)
        model = Q.quantize_static(model, [ember.randn(*input_shape(name, 64)) for _ in range(4)], progress=False)
    path = os.path.join(tmp, f"{name}-{'int8' if int8 else 'fp32'}.ember")
    trace(model, ember.randn(*input_shape(name, 2)), input_names=["x"], output_names=["y"]).save(path)
    prog = load(path)
    return (lambda x: prog(x)), ember.from_numpy, os.path.getsize(path)


def _cpu_has_vnni():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _ort_side(tm, tmp, threads, int8):
    import onnxruntime as ort
    import torch

    path = os.path.join(tmp, "mlp.onnx")
    torch.onnx.export(tm, (torch.randn(2, 784),), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        qpath = os.path.join(tmp, "mlp-int8.onnx")
        # ORT's u8s8 kernels saturate int16 pair sums on x86 CPUs without VNNI unless the weights use 7 bits
        # (its quantization docs); reduce_range there keeps its outputs within the check below
        quantize_dynamic(path, qpath, weight_type=QuantType.QInt8, reduce_range=not _cpu_has_vnni())
        path = qpath
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return (lambda x: sess.run(None, {"x": x})), (lambda a: a), os.path.getsize(path)


def _checked_input(side, fn, wrap, tm, name, b, seed):
    """The batch-b input of ``side`` after checking its output against torch fp32 (int8: within 8% of the range)."""
    import numpy as np
    import torch
    from workloads import input_shape

    a = np.random.default_rng(seed).standard_normal(input_shape(name, b)).astype(np.float32)
    x = wrap(a)
    out = fn(x)
    out = out[0] if isinstance(out, list) else out
    got = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    with torch.no_grad():
        want = tm(torch.from_numpy(a)).numpy()
    tol = 0.08 * (want.max() - want.min()) if "int8" in side else 1e-4
    if got.shape != want.shape or np.abs(got - want).max() > tol:
        raise AssertionError(f"{side}: output differs from torch fp32 by {np.abs(got - want).max()}")
    return x


def worker(side, repeats, warmup, threads):
    """One ONNX Runtime side in this process: {"bytes": file size, "1": median us, "64": ...}."""
    import torch
    from workloads import torch_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tm = torch_model("mlp").eval()
    with tempfile.TemporaryDirectory() as tmp:
        fn, wrap, size = _ort_side(tm, tmp, threads, side.endswith("int8"))
        res = {"bytes": size}
        for i, b in enumerate(BATCHES):
            x = _checked_input(side, fn, wrap, tm, "mlp", b, i)
            res[str(b)] = _median_us(fn, x, repeats if b == 1 else max(20, repeats // 5), warmup)
    print(json.dumps(res))


def ember_worker(repeats, warmup):
    """Every ember side in this one process, timed in turn in short blocks of calls (each block after one untimed
    call: a side alternated call by call ran with cold caches, ~1.3x slower; this VM's speed drifts more between
    processes seconds apart than int8 differs from fp32): {side: {"bytes": .., "1": us, "64": us}}."""
    import torch
    from workloads import torch_model

    torch.set_num_threads(1)  # (torch only checks the outputs here: no OpenMP workers left spinning on our cores)
    sides, res = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in EMBER_SIDES:
            name = "cnn" if "cnn" in side else "mlp"
            torch.manual_seed(0)
            tm = torch_model(name).eval()
            fn, wrap, size = _ember_side(tm, tmp, "int8" in side, name, side.endswith("7bit"))
            sides[side] = (fn, [_checked_input(side, fn, wrap, tm, name, b, i) for i, b in enumerate(BATCHES)])
            res[side] = {"bytes": size}
    for i, b in enumerate(BATCHES):
        n = repeats if b == 1 else max(20, repeats // 5)
        for fn, xs in sides.values():
            for _ in range(warmup):
                fn(xs[i])
        times, block = {side: [] for side in sides}, 25 if b == 1 else 5
        for _ in range(-(-n // block)):  # (blocks of calls: each side's caches warm, the drift shared by all)
            for side, (fn, xs) in sides.items():
                fn(xs[i])
                for _ in range(block):
                    t0 = time.perf_counter()
                    fn(xs[i])
                    times[side].append(time.perf_counter() - t0)
        for side in sides:
            res[side][str(b)] = statistics.median(times[side]) * 1e6
    print(json.dumps(res))


def measure(side, args):
    cmd = [sys.executable, __file__, "--worker", side, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(f"{side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=("ember",) + SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _set_threads(args.threads)
    if args.worker == "ember":
        ember_worker(args.repeats, args.warmup)  # (threads: set in the environment by _set_threads)
        return
    if args.worker:
        worker(args.worker, args.repeats, args.warmup, args.threads)
        return
    import numba
    import numpy as np
    import onnxruntime
    import torch

    import ember

    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  threads={args.threads}  "
          f"python {platform.python_version()}  ember {ember.__version__}  torch {torch.__version__}  "
          f"onnxruntime {onnxruntime.__version__}  numpy {np.__version__}  numba {numba.__version__}  "
          f"rounds={args.rounds} x {args.repeats} calls (B=1)  cpu VNNI: {_cpu_has_vnni()}")
    runs = {s: [] for s in SIDES}
    for _ in range(args.rounds):
        for side, r in measure("ember", args).items():
            runs[side].append(r)
        for side in ("ort-fp32", "ort-int8"):
            runs[side].append(measure(side, args))
    print("| workload | B | ember fp32 us | ember int8 us | ORT fp32 us | ORT int8 us | ember int8 / ember fp32 "
          "| ember int8 / ORT int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for b in BATCHES:
        med = {s: statistics.median(r[str(b)] for r in runs[s]) for s in SIDES}
        e32, o32, o8 = med["ember-fp32"], med["ort-fp32"], med["ort-int8"]
        for label, side in (("mlp dynamic int8 (7-bit activations)", "ember-int8"),
                            ("mlp dynamic int8, 7-bit weights (ORT's)", "ember-int8-7bit")):
            e = med[side]
            print(f"| {label} | {b} | {e32:.0f} | {e:.0f} | {o32:.0f} | {o8:.0f} | {e / e32:.2f} | {e / o8:.2f} |")
    for b in BATCHES:
        c32, c8 = (statistics.median(r[str(b)] for r in runs[s]) for s in ("ember-cnn-fp32", "ember-cnn-int8"))
        print(f"| cnn static int8 | {b} | {c32:.0f} | {c8:.0f} | - | - | {c8 / c32:.2f} | - |")
    size = {s: runs[s][0]["bytes"] for s in SIDES}
    print(f"\nfile sizes: ember fp32 {size['ember-fp32']:,} B, ember int8 {size['ember-int8']:,} B "
          f"({size['ember-int8'] / size['ember-fp32']:.3f}x); ORT fp32 {size['ort-fp32']:,} B, ORT int8 "
          f"{size['ort-int8']:,} B ({size['ort-int8'] / size['ort-fp32']:.3f}x); ember cnn fp32 "
          f"{size['ember-cnn-fp32']:,} B, int8 {size['ember-cnn-int8']:,} B "
          f"({size['ember-cnn-int8'] / size['ember-cnn-fp32']:.3f}x)")


if __name__ == "__main__":
    main()
