"""serve-mlp benchmark: ``ember serve`` vs a hand-written FastAPI + ONNX Runtime server (B=1 requests).

    python benchmarks/bench_serve.py [--duration 5] [--warmup 1] [--connections 8] [--rounds 3]
                                     [--only ember|baseline] [--skip-cold-start] [--ember-args "..."]

The mlp workload (workloads.py, ``ember.manual_seed(0)``) is traced with a symbolic batch dim, saved as
``mlp.ember`` and exported as ``mlp.onnx`` (``ember.export``): both servers hold the same weights. Each
server is a subprocess on 127.0.0.1 (``python -m ember.cli.main serve mlp.ember``; ``serve_baseline.py
mlp.onnx``) with 2 compute threads. The load comes from a separate process (this file, ``--client``): a
closed loop of N HTTP/1.1 keep-alive connections on asyncio streams (uvloop) writing pre-built request
bytes, each sending its next request when the previous answer is in -- what wrk does. (httpx.AsyncClient
was measured first: it needed ~0.75 of a core for ~450 req/s, starving the server of the shared core.)
Requests cycle over 16 fixed random inputs; requests started in the ``--duration`` window after
``--warmup`` seconds count. A non-200 answer or a broken connection is an error. Each request kind's
answers to the 16 inputs, and every 50th answer under load, are compared (atol=rtol=1e-4) with the
loaded ``.ember`` program run locally; a wrong answer aborts the run. Cold start = spawn -> first 200
from the readiness route, for two starts in a row in round 0; ember's servers use a private, initially
empty NUMBA_CACHE_DIR, so its first start compiles its kernels and later ones load them. Medians over rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_RATIO, TARGET_P99_MS, TARGET_COLD_S = 2.0, 8.0, 3.0   # BENCHMARKS.md serve-mlp / cold start
POOL, SAMPLE_EVERY, MAX_SAMPLES = 16, 50, 64
TICK = os.sysconf("SC_CLK_TCK")


# ---- the load client (its own process) -------------------------------------------------------------
def _proc_ticks(pid):
    """utime + stime of ``pid`` and its descendants, in clock ticks (0 once it has gone)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                total += sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


def _machine_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4]   # all but idle and iowait


class _Recorder:
    def __init__(self):
        self.lat, self.statuses, self.samples, self.conn_errors = [], {}, [], 0

    def add(self, k, status, seconds, headers, body):   # headers: a function, called for sampled answers only
        self.lat.append(seconds)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if len(self.lat) % SAMPLE_EVERY == 0 and len(self.samples) < MAX_SAMPLES:
            self.samples.append([k, status, headers(), base64.b64encode(body).decode()])


async def _raw_connection(spec, raw, rec, w0, w1, offset):
    reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
    i, n = offset, len(raw)
    try:
        while (t0 := time.perf_counter()) < w1:
            k = i % n
            i += 1
            writer.write(raw[k])
            head = await reader.readuntil(b"\r\n\r\n")
            p = head.lower().find(b"\r\ncontent-length:")
            if p < 0:
                raise ValueError("response without content-length")
            body = await reader.readexactly(int(head[p + 17:head.index(b"\r\n", p + 2)]))
            t1 = time.perf_counter()
            if t0 >= w0:
                rec.add(k, int(head[9:12]), t1 - t0, lambda: {k.strip().lower(): v.strip() for k, _, v in (
                    ln.partition(":") for ln in head.decode("latin-1").split("\r\n")[1:] if ln)}, body)
    finally:
        writer.close()


async def _raw_worker(spec, raw, rec, w0, w1, offset):
    while time.perf_counter() < w1:
        try:
            await _raw_connection(spec, raw, rec, w0, w1, offset)
        except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            rec.conn_errors += 1
            await asyncio.sleep(0.01)


async def _client_main(spec):
    bodies = [base64.b64decode(b) for b in spec["bodies"]]
    hdrs = "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    raw = [(f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n{hdrs}"
            f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    rec = _Recorder()
    w0 = time.perf_counter() + spec["warmup"]
    w1 = w0 + spec["duration"]

    async def window():   # CPU counters at the edges of the measured window
        marks = []
        for edge in (w0, w1):
            await asyncio.sleep(max(0.0, edge - time.perf_counter()))
            ru = resource.getrusage(resource.RUSAGE_SELF)
            marks.append((time.perf_counter(), ru.ru_utime + ru.ru_stime, _proc_ticks(spec["server_pid"]),
                          _machine_busy_ticks()))
        return marks

    watch = asyncio.ensure_future(window())
    await asyncio.gather(*(_raw_worker(spec, raw, rec, w0, w1, j * 5) for j in range(spec["connections"])))
    (ta, ra, sa, ma), (tb, rb, sb, mb) = await watch
    wall = tb - ta
    client, server = (rb - ra) / wall, (sb - sa) / TICK / wall
    lat = sorted(rec.lat) or [float("nan")]
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3  # noqa: E731
    return {"n": len(rec.lat), "rps": len(rec.lat) / spec["duration"], "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "statuses": rec.statuses, "conn_errors": rec.conn_errors, "client_cpu": client, "server_cpu": server,
            "other_cpu": max(0.0, (mb - ma) / TICK / wall - client - server), "samples": rec.samples}


def client(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        import uvloop
    except ImportError:
        uvloop = asyncio
    print(json.dumps(uvloop.run(_client_main(spec))))


# ---- model, requests, answers ----------------------------------------------------------------------
def build_model(tmp):
    """mlp.ember + mlp.onnx with identical weights, the 16 inputs and the local program's outputs."""
    sys.path.insert(0, HERE)
    import numpy as np

    import ember
    from ember.serialize import load, trace
    from workloads import ember_model

    ember.manual_seed(0)
    prog = trace(ember_model("mlp").eval(), ember.randn(2, 784), input_names=["x"], output_names=["y"])
    paths = os.path.join(tmp, "mlp.ember"), os.path.join(tmp, "mlp.onnx")
    prog.save(paths[0])
    prog.to_onnx(paths[1])
    loaded = load(paths[0])
    xs = np.random.default_rng(0).standard_normal((POOL, 784)).astype(np.float32)
    ref = np.stack([loaded(ember.from_numpy(xs[i:i + 1])).numpy()[0] for i in range(POOL)])
    return paths, xs, ref


def request_kinds(xs):
    """name -> (path, headers, bodies): V2 JSON, V2 binary extension (binary or JSON answer), the baseline's."""
    tensor = {"name": "x", "shape": [1, 784], "datatype": "FP32"}
    js = {"Content-Type": "application/json"}

    def binary(binary_out):
        head = json.dumps({"inputs": [dict(tensor, parameters={"binary_data_size": 784 * 4})],
                           **({"parameters": {"binary_data_output": True}} if binary_out else {})}).encode()
        hdrs = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
        return "/v2/models/mlp/infer", hdrs, [head + x.tobytes() for x in xs]

    return {"ember JSON": ("/v2/models/mlp/infer", js,
                           [json.dumps({"inputs": [dict(tensor, data=x.tolist())]}).encode() for x in xs]),
            "ember binary in+out": binary(True), "ember binary in, JSON out": binary(False),
            "baseline JSON": ("/predict", js, [json.dumps({"data": x.tolist()}).encode() for x in xs])}


def decode(kind, headers, body):
    """The logits in an answer of either server, as a float32 array."""
    import numpy as np

    if kind.startswith("baseline"):
        return np.asarray(json.loads(body)["logits"], dtype=np.float32)
    n = headers.get("inference-header-content-length")
    head = json.loads(body[:int(n)] if n else body)
    out = head["outputs"][0]
    if "data" in out:
        return np.asarray(out["data"], dtype=np.float32)
    size = out["parameters"]["binary_data_size"]
    return np.frombuffer(body[int(n):int(n) + size], dtype=np.float32)


def check(kind, k, got, ref, where):
    import numpy as np

    want = ref[k]
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        diff = np.abs(got - want).max() if got.shape == want.shape else f"shape {got.shape}"
        raise AssertionError(f"{kind}, input {k} ({where}): answer differs from the local program's: {diff}")


# ---- servers -----------------------------------------------------------------------------------------
def _threads_env(n):
    return {v: str(n) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(port, method, path, body=None, headers=None, timeout=10.0):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def server_command(side, args, paths, port):
    """(argv, readiness route) of one server."""
    if side == "ember":
        cmd = [sys.executable, "-m", "ember.cli.main", "serve", paths[0], "--port", str(port)]
        return cmd + args.ember_args.split(), "/v2/health/ready"
    return ([sys.executable, os.path.join(HERE, "serve_baseline.py"), paths[1], "--port", str(port),
             "--threads", str(args.threads), "--handler", args.baseline_handler], "/health")


class Server:
    def __init__(self, side, args, paths, tmp):
        self.side, self.port = side, _free_port()
        self.cmd, self.ready = server_command(side, args, paths, self.port)
        self.log = os.path.join(tmp, f"{side}.log")
        t0 = time.perf_counter()
        with open(self.log, "ab") as log:
            env = dict(os.environ, **_threads_env(args.threads))
            if side == "ember":   # a private numba cache: empty at the first start, warm at the next ones
                env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "numba-cache")
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:   # spawn -> first 200 from the readiness route
            if self.proc.poll() is not None:
                raise RuntimeError(f"{side} server exited with {self.proc.returncode}: {' '.join(self.cmd)}\n"
                                   f"{self.log_tail()}")
            try:
                if _http(self.port, "GET", self.ready, timeout=2.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 300:
                self.stop()
                raise RuntimeError(f"{side} server not ready after 300 s\n{self.log_tail()}")
            time.sleep(0.01)
        self.start_s = time.perf_counter() - t0

    def log_tail(self):
        return open(self.log, errors="replace").read()[-3000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(server, kind, req, ref, args, tmp):
    """Check ``kind``'s answers to the 16 inputs, then put it under load from the client process."""
    path, headers, bodies = req
    answers = []
    for k, body in enumerate(bodies):
        status, hdrs, out = _http(server.port, "POST", path, body, headers)
        if status != 200:
            raise AssertionError(f"{kind}: status {status} before load: {out[:500]!r}")
        answers.append(decode(kind, hdrs, out))
        check(kind, k, answers[-1], ref, "before load")
    spec = {"host": "127.0.0.1", "port": server.port, "path": path, "headers": headers,
            "bodies": [base64.b64encode(b).decode() for b in bodies], "connections": args.connections,
            "warmup": args.warmup, "duration": args.duration, "server_pid": server.proc.pid}
    with open(os.path.join(tmp, "client.json"), "w") as f:
        json.dump(spec, f)
    out = subprocess.run([sys.executable, __file__, "--client", f.name], capture_output=True, text=True,
                         env=dict(os.environ, **_threads_env(1)), timeout=args.warmup + args.duration + 120)
    if out.returncode:
        raise RuntimeError(f"client for {kind} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for k, status, hdrs, body in res.pop("samples"):   # answers under load
        if status == 200:
            check(kind, k, decode(kind, hdrs, base64.b64decode(body)), ref, "under load")
    res["answers"] = answers
    return res


def _versions():
    from importlib.metadata import version

    return "  ".join(f"{p} {version(p)}" for p in ("ember", "fastapi", "uvicorn", "uvloop", "httptools",
                                                     "onnxruntime", "numba", "numpy"))


def run_all(args, sides):
    """Build the model, then per round start each server (twice in round 0 for the cold start) and load it."""
    with tempfile.TemporaryDirectory() as tmp:
        paths, xs, ref = build_model(tmp)
        kinds = {k: v for k, v in request_kinds(xs).items() if k.split()[0] in sides}
        runs, starts = {k: [] for k in kinds}, {s: [] for s in sides}
        for r in range(args.rounds):
            for side in sides:
                count = 2 if r == 0 and not args.skip_cold_start else 1
                for n in range(count):   # a first start may fill numba's cache; only the last one is loaded
                    server = Server(side, args, paths, tmp)
                    starts[side].append(server.start_s)
                    try:
                        for kind in (k for k in kinds if k.split()[0] == side and n == count - 1):
                            runs[kind].append(x := load(server, kind, kinds[kind], ref, args, tmp))
                            print(f"#   round {r + 1}, {kind}: {x['rps']:.0f} req/s, p50 {x['p50_ms']:.2f} ms, p99 "
                                  f"{x['p99_ms']:.2f} ms, other CPU {x['other_cpu']:.2f}", flush=True)
                    finally:
                        server.stop()
    return runs, starts


def report(args, runs, starts):
    import numpy as np

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("rps", "p50_ms", "p99_ms", "client_cpu",
                                                                  "server_cpu", "other_cpu")} for k, v in runs.items()}
    base = med.get("baseline JSON", {}).get("rps")
    print("\n| server, request (B=1) | req/s | p50 ms | p99 ms | errors | server CPU | client CPU | other CPU "
          "| req/s vs baseline | target |\n|---|---|---|---|---|---|---|---|---|---|")
    for kind, m in med.items():
        ratio, target = "-", "-"
        if kind.startswith("ember"):
            ratio = f"{m['rps'] / base:.2f}" if base else "-"
            ok_r = ("meets" if m["rps"] / base >= TARGET_RATIO else "misses") if base else "no baseline run"
            target = (f">= {TARGET_RATIO:g}x ({ok_r}); p99 <= {TARGET_P99_MS:g} ms "
                      f"({'meets' if m['p99_ms'] <= TARGET_P99_MS else 'misses'})")
        bad = {}   # status -> count, over all rounds; "conn": refused or broken connections
        for x in runs[kind]:
            for code, n in [*x["statuses"].items(), ("conn", x["conn_errors"])]:
                if code != "200" and n:
                    bad[code] = bad.get(code, 0) + n
        errors = f"{sum(bad.values())} {bad}" if bad else "0"
        print(f"| {kind} | {m['rps']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {errors} "
              f"| {m['server_cpu']:.2f} | {m['client_cpu']:.2f} | {m['other_cpu']:.2f} | {ratio} | {target} |")
    print("\nCPU columns: cores busy during the measured window: the server's process tree, the load client, "
          "everything else on the machine (other work: noise).")
    if "baseline JSON" in runs:
        for kind in (k for k in runs if k.startswith("ember")):
            d = np.abs(np.stack(runs[kind][0]["answers"]) - np.stack(runs["baseline JSON"][0]["answers"])).max()
            print(f"max |{kind} - baseline| over the 16 inputs: {d:.2e}" + (" (> 1e-4!)" if d > 1e-4 else ""))
    if not args.skip_cold_start:
        print("\n| server | first start s (empty numba cache) | later starts s (median) | target |\n|---|---|---|---|")
        for side, ts in starts.items():
            later = statistics.median(ts[1:])
            verdict = f"<= {TARGET_COLD_S:g} s ({'meets' if later <= TARGET_COLD_S else 'misses'})"
            print(f"| {side} | {ts[0]:.2f} | {later:.2f} | {verdict if side == 'ember' else '-'} |")
        print("\nstart = process spawn -> first 200 from the readiness route (ember /v2/health/ready, baseline "
              "/health). ember's first start compiles its kernels into an empty numba cache; later starts load them.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per request kind")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of load first")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the servers this many times; medians")
    ap.add_argument("--threads", type=int, default=2, help="compute threads of each server")
    ap.add_argument("--only", choices=("ember", "baseline"))
    ap.add_argument("--skip-cold-start", action="store_true", help="start each server once per round")
    ap.add_argument("--baseline-handler", choices=("async", "sync"), default="async")
    ap.add_argument("--ember-args", default="", help="extra `ember serve` flags, e.g. '--max-batch-size 8'")
    ap.add_argument("--client", metavar="SPEC", help=argparse.SUPPRESS)   # run as the load client
    args = ap.parse_args()
    if args.client:
        return client(args.client)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()}  {os.cpu_count()} cores  "
          f"python {platform.python_version()}  {_versions()}")
    print(f"# {args.connections} connections, {args.warmup:g} s warm-up + {args.duration:g} s per request kind, "
          f"{args.rounds} round(s); load client: 1 process, 1 thread; servers: {args.threads} compute threads "
          f"(ember: numba/BLAS env; baseline: ORT intra_op), baseline handler {args.baseline_handler}; all share "
          f"the machine's {os.cpu_count()} cores", flush=True)
    report(args, *run_all(args, [args.only] if args.only else ["ember", "baseline"]))


if __name__ == "__main__":
    main()
