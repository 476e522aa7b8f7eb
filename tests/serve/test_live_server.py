"""A real ``ember serve`` process on 127.0.0.1, driven by tritonclient.http, httpx and signals.

One server per module serves the tritonclient tests (a repository with a good model and one whose
config.json is broken); the reload, drain, environment and soak tests start their own. The numba kernel
cache is shared with the child processes (live.py), so each server starts in a second or two.
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import threading
import time
import zlib

import httpx
import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from .live import (free_port, infer_json, live_server, local_outputs, make_mlp, run_cli,  # noqa: E402
                   server_env)

TOL = dict(rtol=1e-6, atol=1e-6)
slow = pytest.mark.slow
needs_slow = pytest.mark.skipif(os.environ.get("EMBER_SLOW") != "1", reason="slow soak test: set EMBER_SLOW=1")


def _x(rows, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def _client(server, **kw):
    return tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{server.port}", **kw)


def _inputs(x, binary=True):
    inp = tritonclient_http.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return [inp]


# ---- the module's server: <repo>/mlp (good) and <repo>/broken (config.json is not JSON) -------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    make_mlp(root / "mlp" / "1" / "model.ember", seed=0)
    make_mlp(root / "broken" / "1" / "model.ember", seed=1)
    (root / "broken" / "config.json").write_text('{"max_batch_size": 8,')  # truncated JSON
    return root


@pytest.fixture(scope="module")
def server(repo):
    with live_server(repo) as s:
        yield s


@pytest.fixture(scope="module")
def mlp_path(repo):
    return str(repo / "mlp" / "1" / "model.ember")


@pytest.fixture
def client(server):
    c = _client(server)
    yield c
    c.close()


# ---- 2. the ready banner -----------------------------------------------------------------------
def test_banner_names_url_models_and_failures(server):
    out = server.stdout
    assert f"ember serve: ready at http://127.0.0.1:{server.port} (pid {server.pid})" in out, server.describe()
    assert "  mlp v1 [ember_program, batching up to 64]: (x: FP32[-1, 8]) -> (y: FP32[-1, 4])" in out, out
    broken = [line for line in out.splitlines() if line.strip().startswith("broken:")]
    assert len(broken) == 1, out
    assert "NOT LOADED" in broken[0] and "config.json" in broken[0] and "not valid JSON" in broken[0], broken[0]
    assert "Traceback" not in server.stderr, server.stderr


# ---- 1. tritonclient.http at its defaults ----------------------------------------------------------
def test_tritonclient_server_and_model_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("no_such_model")

    meta = client.get_server_metadata()
    assert meta["name"] == "ember"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"]), meta

    m = client.get_model_metadata("mlp")
    assert m["name"] == "mlp" and m["versions"] == ["1"] and m["platform"] == "ember_program", m
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("mlp", "1") == m

    cfg = client.get_model_config("mlp")
    assert cfg["name"] == "mlp" and cfg["max_batch_size"] == 64, cfg
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [8]}], cfg
    assert cfg["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}], cfg

    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("out_mode", ["all", "binary", "json"])
def test_tritonclient_infer_matches_local_program(client, mlp_path, binary_in, out_mode):
    x = _x(5, seed=7)
    outputs = None if out_mode == "all" else [tritonclient_http.InferRequestedOutput("y", binary_data=out_mode == "binary")]
    res = client.infer("mlp", _inputs(x, binary_in), outputs=outputs, request_id=f"req-{binary_in}-{out_mode}")
    resp = res.get_response()
    assert resp["model_name"] == "mlp" and resp["model_version"] == "1", resp
    assert resp["id"] == f"req-{binary_in}-{out_mode}", resp
    out = resp["outputs"][0]
    assert out["name"] == "y" and out["datatype"] == "FP32" and out["shape"] == [5, 4], out
    assert ("parameters" in out and "binary_data_size" in out["parameters"]) == (out_mode != "json"), out
    y = res.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (5, 4)
    np.testing.assert_allclose(y, local_outputs(mlp_path, x), **TOL)


def test_tritonclient_infer_on_a_version_and_without_id(client, mlp_path):
    x = _x(1, seed=8)
    res = client.infer("mlp", _inputs(x), model_version="1")
    assert "id" not in res.get_response()
    np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)
    res = client.infer("mlp", _inputs(x), timeout=10_000_000)  # Triton's per-request timeout (microseconds)
    np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", _inputs(x), model_version="7")
    assert e.value.status() == "404" and "version" in e.value.message()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(client, mlp_path, algorithm):
    x = _x(16, seed=9)
    for binary in (True, False):
        res = client.infer("mlp", _inputs(x, binary), request_compression_algorithm=algorithm)
        np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)
    # a compressed response may be asked for; tritonclient inflates it when the server sends one
    res = client.infer("mlp", _inputs(x), request_compression_algorithm=algorithm,
                       response_compression_algorithm=algorithm)
    np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)


def test_compressed_bodies_over_raw_http(server, mlp_path):
    """gzip and zlib-wrapped deflate bodies; the response's Content-Encoding (if any) is one we asked for."""
    x = _x(3, seed=10)
    raw = httpx.Request("POST", "/", json=infer_json(x)).content
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for enc, body in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
            r = c.post("/v2/models/mlp/infer", content=body,
                       headers={"Content-Encoding": enc, "Content-Type": "application/json", "Accept-Encoding": enc})
            assert r.status_code == 200, r.text
            assert r.headers.get("content-encoding") in (None, "identity", enc), r.headers
            y = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(3, 4)
            np.testing.assert_allclose(y, local_outputs(mlp_path, x), **TOL)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_large_responses_are_compressed_when_asked(server, client, mlp_path, algorithm):
    """A response past 4 KiB is sent compressed with the algorithm the client accepts, and reads back equal."""
    x = _x(400, seed=12)  # 400 x 4 outputs as JSON: ~15 KB
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post("/v2/models/mlp/infer", json=infer_json(x), headers={"Accept-Encoding": algorithm})
        assert r.status_code == 200 and r.headers["content-encoding"] == algorithm, r.headers
        assert int(r.headers["content-length"]) < 0.75 * len(r.content)  # httpx inflated it; the wire held less
        y = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(400, 4)
        np.testing.assert_allclose(y, local_outputs(mlp_path, x), **TOL)
        r = c.post("/v2/models/mlp/infer", json=infer_json(x), headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in r.headers
    res = client.infer("mlp", _inputs(x, binary=False), outputs=[tritonclient_http.InferRequestedOutput("y", binary_data=False)],
                       response_compression_algorithm=algorithm)
    np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)


def test_tritonclient_repository_index_unload_load(client, mlp_path):
    index = client.get_model_repository_index()
    by_name = {item["name"]: item for item in index}
    assert by_name["mlp"]["state"] == "READY" and by_name["mlp"]["version"] == "1", index
    assert by_name["broken"]["state"] == "UNAVAILABLE" and "not valid JSON" in by_name["broken"]["reason"], index

    x = _x(2, seed=11)
    try:
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", _inputs(x))
        assert e.value.status() == "404", (e.value.status(), e.value.message())
        assert "mlp" in e.value.message()
        state = {item["name"]: item for item in client.get_model_repository_index()}["mlp"]
        assert state["state"] == "UNAVAILABLE", state
    finally:
        client.load_model("mlp")
    assert client.is_model_ready("mlp")
    res = client.infer("mlp", _inputs(x))
    np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)

    with pytest.raises(InferenceServerException) as e:  # the broken config.json is reported again
        client.load_model("broken")
    assert e.value.status() == "400" and "not valid JSON" in e.value.message()


# ---- 5. the command line: environment, keys and the errors that must exit 2 ------------------------------
def test_ember_port_environment_variable_and_api_key(tmp_path, mlp_path):
    port = free_port()
    key = tmp_path / "key.txt"
    key.write_text("s3cret-token\n")
    with live_server(mlp_path, "--api-key-file", key, port=None, env=server_env(EMBER_PORT=port)) as s:
        assert s.port == port and f"ready at http://127.0.0.1:{port} " in s.stdout, s.describe()
        x = _x(2, seed=12)
        c = _client(s)
        try:
            assert c.is_server_ready()  # health routes need no token
            with pytest.raises(InferenceServerException) as e:
                c.infer("model", _inputs(x))
            assert e.value.status() == "401"
            res = c.infer("model", _inputs(x), headers={"Authorization": "Bearer s3cret-token"})
            np.testing.assert_allclose(res.as_numpy("y"), local_outputs(mlp_path, x), **TOL)
        finally:
            c.close()


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ember serve: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()


def test_cli_missing_file_exits_2(tmp_path):
    _one_line_error(run_cli("missing.ember", cwd=tmp_path), "missing.ember", "no such file")


def test_cli_port_in_use_fails_with_a_message(tmp_path, mlp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli(mlp_path, "--port", port, cwd=tmp_path)
    _one_line_error(proc, f"cannot listen on 127.0.0.1:{port}", "already in use")
    assert "ready at" not in proc.stdout


def test_cli_demo_without_trained_models_exits_2(tmp_path):
    _one_line_error(run_cli("--demo", cwd=tmp_path), "examples/train_digits.py")


def test_cli_empty_api_key_file_exits_2(tmp_path, mlp_path):
    key = tmp_path / "empty.key"
    key.write_text("  \n")
    _one_line_error(run_cli(mlp_path, "--api-key-file", key, cwd=tmp_path), "--api-key-file", "empty")


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
