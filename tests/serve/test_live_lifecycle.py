"""A real ``ember serve`` process over its lifetime: versions reloaded while clients keep sending
(no failed request, even mid-upload), SIGTERM draining queued requests and exiting 0, worker processes
sharing a port, and a bounded soak at saturation (EMBER_SLOW=1). Each test starts its own server.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from .live import infer_json, live_server, local_outputs, make_mlp

TOL = dict(rtol=1e-6, atol=1e-6)
slow = pytest.mark.slow
needs_slow = pytest.mark.skipif(os.environ.get("EMBER_SLOW") != "1", reason="slow soak test: set EMBER_SLOW=1")


def _x(rows, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


# ---- 3. reload under load ----------------------------------------------------------------------------
class _Load:
    """``threads`` clients sending JSON infer requests to ``url`` until stopped (or ``max_per_thread`` each)."""

    def __init__(self, url, threads=4, rows=3, max_per_thread=2000, path="/v2/models/mlp/infer"):
        self.url, self.rows, self.max, self.path = url, rows, max_per_thread, path
        self.stop = threading.Event()
        self.results = [[] for _ in range(threads)]  # per thread: (x, status, version, y or error text)
        self.errors = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _loop(self, i):
        rng = np.random.default_rng(100 + i)
        out = self.results[i]
        try:
            with httpx.Client(base_url=self.url, timeout=30) as c:
                while not self.stop.is_set() and len(out) < self.max:
                    x = rng.standard_normal((self.rows, 8)).astype(np.float32)
                    r = c.post(self.path, json=infer_json(x))
                    if r.status_code == 200:
                        body = r.json()
                        y = np.asarray(body["outputs"][0]["data"], np.float32).reshape(self.rows, 4)
                        out.append((x, 200, body["model_version"], y))
                    else:
                        out.append((x, r.status_code, None, r.text))
        except Exception as e:  # a transport error is a failed request too
            self.errors.append(f"thread {i}: {type(e).__name__}: {e}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def all(self):
        return [r for rs in self.results for r in rs]


def test_reload_under_load_fails_no_request(tmp_path):
    repo = tmp_path / "repo"
    v1 = make_mlp(repo / "mlp" / "1" / "model.ember", seed=1)
    staged = make_mlp(tmp_path / "staged" / "2" / "model.ember", seed=2)
    with live_server(repo) as s:
        t0 = time.monotonic()
        with _Load(s.url, threads=4) as load:
            time.sleep(1.2)
            shutil.copytree(os.path.dirname(staged), repo / "mlp" / "2")
            r = httpx.post(f"{s.url}/v2/repository/models/mlp/load", timeout=60)
            assert r.status_code == 200, r.text
            t_loaded = time.monotonic()
            time.sleep(1.5)
        elapsed = time.monotonic() - t0
        assert not load.errors, load.errors
        results = load.all()
        failed = [(status, err) for _, status, _, err in results if status != 200]
        assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
        assert len(results) >= 100, f"only {len(results)} requests in {elapsed:.1f} s"
        versions = [v for _, _, v, _ in results]
        assert set(versions) == {"1", "2"}, (versions.count("1"), versions.count("2"))
        for rs in load.results:  # each client sees version 1, then only version 2 once it has switched
            seq = [v for _, _, v, _ in rs]
            if "2" in seq:
                assert "1" not in seq[seq.index("2"):], seq
        paths = {"1": v1, "2": str(repo / "mlp" / "2" / "model.ember")}
        for x, _, v, y in results:
            np.testing.assert_allclose(y, local_outputs(paths[v], x), **TOL)
        meta = httpx.get(f"{s.url}/v2/models/mlp", timeout=10).json()
        assert meta["versions"] == ["2"], meta
        print(f"reload under load: {len(results)} requests in {elapsed:.1f} s, "
              f"{versions.count('1')} by v1, {versions.count('2')} by v2, load took {t_loaded - t0 - 1.2:.2f} s")


def test_reload_while_a_request_body_is_in_flight(tmp_path):
    """A request whose headers arrived before a reload and whose body arrives after it must still be
    answered (by either version), not refused because the version it looked up was retired meanwhile."""
    repo = tmp_path / "repo"
    make_mlp(repo / "mlp" / "1" / "model.ember", seed=1)
    staged = make_mlp(tmp_path / "staged" / "2" / "model.ember", seed=2)
    x = _x(2, seed=13)
    body = httpx.Request("POST", "/", json=infer_json(x)).content
    with live_server(repo) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            sock.sendall(f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.3)  # the route has started and looked the model up; its body has not come yet
            shutil.copytree(os.path.dirname(staged), repo / "mlp" / "2")
            r = httpx.post(f"{s.url}/v2/repository/models/mlp/load", timeout=60)
            assert r.status_code == 200, r.text
            sock.sendall(body)
            reply = _read_http_response(sock)
    status = int(reply.split(b" ", 2)[1])
    assert status == 200, reply.decode(errors="replace")


def _read_http_response(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


# ---- 4. SIGTERM drains queued requests ---------------------------------------------------------------
def test_sigterm_drains_queued_requests_then_exits_0(tmp_path):
    path = make_mlp(tmp_path / "mlp.ember", seed=3)
    xs = [_x(2, seed=20 + i) for i in range(4)]
    replies = [None] * 4

    def send(i):
        try:
            replies[i] = httpx.post(f"{s.url}/v2/models/mlp/infer", json=infer_json(xs[i]), timeout=30)
        except Exception as e:
            replies[i] = e

    with live_server(path, "--batch-delay-ms", 1500, "--max-batch-size", 64, "--drain-timeout-s", 10) as s:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the four requests now wait in the batcher's queue for company
        t_sig = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:  # while the queue drains the server is not ready for new work
            probe = httpx.get(f"{s.url}/v2/health/ready", timeout=2).status_code
        except httpx.TransportError as e:
            probe = type(e).__name__
        for t in threads:
            t.join(30)
        rc = s.wait_exit(15)
        took = time.monotonic() - t_sig
        for i, r in enumerate(replies):
            assert isinstance(r, httpx.Response), f"request {i}: {r!r}\n{s.describe()}"
            assert r.status_code == 200, f"request {i}: {r.status_code} {r.text}"
            y = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(2, 4)
            np.testing.assert_allclose(y, local_outputs(path, xs[i]), **TOL)
        assert probe != 200, "the server still reported ready after SIGTERM"
        assert took < 10 + 5, f"exit took {took:.1f} s"
        assert rc == 0, f"exit status {rc} after SIGTERM (expected 0)\n{s.describe()}"


def test_workers_share_the_port_and_exit_0_on_sigterm(tmp_path):
    """--workers 2: two processes behind one port (uvicorn's supervisor), both serving the model."""
    path = make_mlp(tmp_path / "mlp.ember", seed=4)
    with live_server(path, "--workers", 2) as s:
        x = _x(3, seed=30)
        with httpx.Client(base_url=s.url, timeout=10) as c:
            for _ in range(6):
                r = c.post("/v2/models/mlp/infer", json=infer_json(x))
                assert r.status_code == 200, r.text
                np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(3, 4),
                                           local_outputs(path, x), **TOL)
        deadline = time.monotonic() + 30
        while s.stdout.count("ember serve: ready at") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.stdout.count("ember serve: ready at") == 2, s.describe()  # one banner per worker
        s.process.send_signal(signal.SIGTERM)
        assert s.wait_exit(20) == 0, s.describe()


# ---- 6. bounded soak -----------------------------------------------------------------------------
@slow
@needs_slow
def test_soak_at_saturation_no_errors_bounded_rss(tmp_path):
    path = make_mlp(tmp_path / "mlp.ember", seed=4)
    duration, warmup, bound = 20.0, 3.0, 50 << 20
    with live_server(path) as s:
        with _Load(s.url, threads=8, rows=4, max_per_thread=10**9, path="/v2/models/mlp/infer") as load:
            time.sleep(warmup)
            rss0, n0, t0 = s.rss_bytes(), len(load.all()), time.monotonic()
            time.sleep(duration)
            rss1, n1, t1 = s.rss_bytes(), len(load.all()), time.monotonic()
        assert not load.errors, load.errors
        results = load.all()
        failed = [(status, err) for _, status, _, err in results if status != 200]
        assert not failed, f"{len(failed)} of {len(results)} failed: {failed[:5]}"
        for x, _, _, y in results[:: max(1, len(results) // 200)]:
            np.testing.assert_allclose(y, local_outputs(path, x), **TOL)
        rate = (n1 - n0) / (t1 - t0)
        growth = rss1 - rss0
        print(f"soak: {rate:.0f} req/s with 8 clients over {t1 - t0:.1f} s; RSS {rss0 / 2**20:.1f} -> "
              f"{rss1 / 2**20:.1f} MiB ({growth / 2**20:+.1f} MiB, bound {bound >> 20} MiB)")
        assert growth < bound, f"RSS grew {growth / 2**20:.1f} MiB in {t1 - t0:.0f} s at {rate:.0f} req/s"
