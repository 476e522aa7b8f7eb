"""Helpers for tests that run a real ``ember serve`` process on 127.0.0.1.

``live_server(args)`` starts ``python -m ember.cli.main serve *args`` on a free port (unless ``port=None``
and the caller picks one through the environment), waits until ``GET /v2/health/ready`` answers 200, yields
a ``LiveServer`` (url, port, process, captured stdout/stderr) and always stops the process afterwards.
The child shares this process's numba kernel cache (NUMBA_CACHE_DIR), so kernels compiled once are loaded,
not recompiled, by every server the tests start.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

import ember  # noqa: F401  (sets os.environ["NUMBA_CACHE_DIR"] to the cache this process uses)

READY_TIMEOUT_S = 60.0
EMBER_ENV_VARS = ("EMBER_HOST", "EMBER_PORT", "EMBER_WORKERS", "EMBER_DEVICE", "EMBER_MAX_BATCH_SIZE",
                  "EMBER_BATCH_DELAY_MS", "EMBER_MAX_REQUEST_MB", "EMBER_REQUEST_TIMEOUT_S",
                  "EMBER_DRAIN_TIMEOUT_S", "EMBER_MODEL_PATH")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it for a socket bound to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra) -> dict:
    """The environment for a child ``ember serve``: ours minus EMBER_* settings, plus the shared numba cache."""
    env = {k: v for k, v in os.environ.items() if k not in EMBER_ENV_VARS}
    env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def serve_command(*args) -> list:
    return [sys.executable, "-m", "ember.cli.main", "serve", *map(str, args)]


def run_cli(*args, cwd=None, env=None, timeout=60) -> subprocess.CompletedProcess:
    """``ember serve *args`` run to completion (for the commands that must fail fast)."""
    return subprocess.run(serve_command(*args), cwd=cwd, env=env or server_env(), capture_output=True,
                          text=True, timeout=timeout)


class _Pump(threading.Thread):
    """Reads one pipe of the child into a list of lines, so the child never blocks on a full pipe."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []

    def run(self):
        for line in iter(self.pipe.readline, ""):
            self.lines.append(line)
        self.pipe.close()

    def text(self) -> str:
        return "".join(self.lines)


class LiveServer:
    def __init__(self, process, port, out, err):
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"
        self._out, self._err = out, err

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return self._out.text()

    @property
    def stderr(self) -> str:
        return self._err.text()

    def rss_bytes(self) -> int:
        """The server's resident set size (VmRSS in /proc/PID/status)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS line for pid {self.pid}")

    def wait_exit(self, timeout) -> int:
        """The exit status once the process ends (and its pipes are drained)."""
        rc = self.process.wait(timeout)
        self._out.join(5)
        self._err.join(5)
        return rc

    def describe(self) -> str:
        return (f"ember serve (pid {self.pid}, exit status {self.process.poll()})\n"
                f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}")


def wait_ready(server: LiveServer, timeout=READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                server.wait_exit(5)
                raise AssertionError(f"the server died before it was ready:\n{server.describe()}")
            try:
                if client.get(f"{server.url}/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server was not ready within {timeout:g} s:\n{server.describe()}")
            time.sleep(0.05)


def stop(process: subprocess.Popen, timeout=15.0) -> None:
    """Terminate ``process`` (then kill it if it lingers); a no-op once it has exited."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def live_server(*args, port="free", env=None, cwd=None, ready_timeout=READY_TIMEOUT_S):
    """Run ``ember serve *args`` until the block ends. ``port="free"`` passes ``--port`` with a free port;
    an int passes that port; ``None`` passes no ``--port`` (give it through ``env``, e.g. EMBER_PORT)."""
    argv = list(args)
    if port == "free":
        port = free_port()
        argv += ["--port", port]
    elif port is not None:
        argv += ["--port", port]
    env = env or server_env()
    if port is None:
        port = int(env["EMBER_PORT"])
    proc = subprocess.Popen(serve_command(*argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = _Pump(proc.stdout), _Pump(proc.stderr)
    out.start()
    err.start()
    server = LiveServer(proc, port, out, err)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        stop(proc)
        out.join(5)
        err.join(5)


# ---- models -------------------------------------------------------------------------------
def make_mlp(path, seed=0):
    """Trace Linear(8,16)-ReLU-Linear(16,4) (weights from ``seed``) with input "x", output "y"; save to ``path``."""
    from ember import nn
    from ember.serialize import trace

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p._data[...] = rng.standard_normal(p._data.shape).astype(p._data.dtype) * 0.5
    example = ember.from_numpy(rng.standard_normal((2, 8)).astype(np.float32))
    prog = trace(model, example, input_names=["x"], output_names=["y"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    prog.save(path)
    return path


def local_outputs(path, x) -> np.ndarray:
    """What the saved program itself computes for ``x`` (the oracle for the server's answers)."""
    from ember import serialize

    return serialize.load(path).run({"x": x})["y"]


def infer_json(x, request_id=None, binary_output=False) -> dict:
    """A V2 JSON infer request for input "x"."""
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if request_id is not None:
        body["id"] = request_id
    if binary_output:
        body["parameters"] = {"binary_data_output": True}
    return body
