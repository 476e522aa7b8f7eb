"""int8 kernel micro-benchmark: qgemm / qlinear / qlinear_dynamic against float32 ``np.matmul``
(OpenBLAS) at the mlp workload's layer shapes, and qconv2d against ember's float32 conv2d kernel at
the cnn workload's conv2 shape.

    python benchmarks/bench_int8_kernels.py [--repeats 200] [--rounds 3] [--threads 2]

The float side (BLAS) and the int8 side (numba threads) each run in their own fresh process, as in
bench_train.py (an idle OpenBLAS worker spins on the core numba's pool needs), alternating for several
rounds; the table reports the median over rounds of each process's median microseconds per call,
and int8 / float32 (lower is better). Every int8 result is checked against a numpy int64 reference
before timing. The float conv is ``backends.cpu.conv_kernels.conv2d_forward`` (the kernel under
``ember.nn.functional.conv2d``, without the op dispatch), with bias; qconv2d includes bias and
requantization.
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
LAYERS = ((784, 512), (512, 256), (256, 10))  # the mlp workload's Linear layers (K -> N)
BATCHES = (1, 64)
CONV = dict(batch=64, cin=16, cout=32, hw=14, k=3, pad=1)  # the cnn workload's conv2


def _set_threads(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _median_us(fn, repeats, warmup=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _cases(side):
    """{case name: zero-argument callable} for one side, inputs built once (same seed on both sides)."""
    import numpy as np

    rng = np.random.default_rng(0)
    cases = {}
    for m in BATCHES:
        for k, n in LAYERS:
            x = rng.standard_normal((m, k)).astype(np.float32)
            w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
            tag = f"M={m} {k}->{n}"
            if side == "float":
                out = np.empty((m, n), np.float32)
                cases[f"gemm {tag}"] = lambda x=x, w=w, out=out: np.matmul(x, w.T, out=out)
                continue
            from ember.backends.cpu import int8_kernels as K

            w_scale = (np.abs(w).max(1) / 127).astype(np.float32)
            wq = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
            packed = K.pack_weight(wq)
            a = rng.integers(0, 256, (m, k)).astype(np.uint8)
            bias = rng.standard_normal(n).astype(np.float32)
            acc = K.qgemm(a, 128, packed)
            if not (acc == (a.astype(np.int64) - 128) @ wq.astype(np.int64).T).all():
                raise AssertionError(f"qgemm {tag}: accumulators differ from the int64 reference")
            bias_q, mult = K.requant_params(0.02, w_scale, 0.05, bias)
            cases[f"gemm {tag}"] = lambda a=a, p=packed: K.qgemm(a, 128, p)
            cases[f"qlinear {tag}"] = lambda a=a, p=packed, b=bias_q, s=mult: K.qlinear(a, 128, p, b, s, 0, True)
            cases[f"dynamic {tag}"] = lambda x=x, p=packed, s=w_scale, b=bias: K.qlinear_dynamic(x, p, s, b)
    c = CONV
    x = rng.standard_normal((c["batch"], c["cin"], c["hw"], c["hw"])).astype(np.float32)
    w = rng.standard_normal((c["cout"], c["cin"], c["k"], c["k"])).astype(np.float32) * 0.1
    b = rng.standard_normal(c["cout"]).astype(np.float32)
    geo = ((1, 1), (c["pad"], c["pad"]), (1, 1))
    if side == "float":
        from ember.backends.cpu.conv_kernels import conv2d_forward

        cases["conv2d"] = lambda: conv2d_forward(x, w, b, *geo, 1, (c["hw"], c["hw"]))
    else:
        from ember.backends.cpu import int8_kernels as K
        from ember.backends.cpu.int8_conv import qconv2d

        w_scale = (np.abs(w).reshape(c["cout"], -1).max(1) / 127).astype(np.float32)
        wq = np.clip(np.rint(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        xq = rng.integers(0, 256, x.shape).astype(np.uint8)
        bias_q, mult = K.requant_params(0.03, w_scale, 0.1, b)
        packed = K.pack_weight(wq)
        cases["conv2d"] = lambda: qconv2d(xq, 120, packed, *geo, 1, bias_q, mult, 0)
    return cases


def worker(side, repeats, threads):
    """Time one side in this process; print a JSON line {case: median us}."""
    del threads  # set in the environment before numpy/numba load
    res = {}
    for name, fn in _cases(side).items():
        res[name] = _median_us(fn, repeats if "M=1 " in name else max(20, repeats // 4))
    print(json.dumps(res))


def _run(side, repeats, threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", side, "--repeats", str(repeats),
                          "--threads", str(threads)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=("float", "int8"))
    args = ap.parse_args()
    if args.worker:
        _set_threads(args.threads)
        worker(args.worker, args.repeats, args.threads)
        return
    runs = {"float": [], "int8": []}
    for _ in range(args.rounds):
        for side in runs:
            runs[side].append(_run(side, args.repeats, args.threads))
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    import numba
    import numpy as np

    print(f"{platform.machine()} {platform.processor() or ''}, Python {platform.python_version()}, numpy "
          f"{np.__version__}, numba {numba.__version__}, {args.threads} threads, {args.rounds} rounds x "
          f"{args.repeats} calls (M=64 and conv: {max(20, args.repeats // 4)})\n")
    print("| layer | f32 np.matmul us | int8 qgemm us | qlinear us | qlinear_dynamic us | qgemm / f32 "
          "| dynamic / f32 |")
    print("|---|---|---|---|---|---|---|")
    f, q = med["float"], med["int8"]
    for m in BATCHES:
        for k, n in LAYERS:
            tag = f"M={m} {k}->{n}"
            g = f[f"gemm {tag}"]
            print(f"| {tag} | {g:.1f} | {q[f'gemm {tag}']:.1f} | {q[f'qlinear {tag}']:.1f} | "
                  f"{q[f'dynamic {tag}']:.1f} | {q[f'gemm {tag}'] / g:.2f} | {q[f'dynamic {tag}'] / g:.2f} |")
    c = CONV
    print(f"\n| conv (B={c['batch']}, {c['cin']}->{c['cout']}, {c['hw']}x{c['hw']}, {c['k']}x{c['k']} pad {c['pad']}) "
          f"| f32 conv2d us | int8 qconv2d us | int8 / f32 |")
    print("|---|---|---|---|")
    print(f"| conv2 | {f['conv2d']:.0f} | {q['conv2d']:.0f} | {q['conv2d'] / f['conv2d']:.2f} |")


if __name__ == "__main__":
    main()
