"""A real ``ember serve`` process on 127.0.0.1, driven by tritonclient.http, httpx and signals.

One server per module serves the tritonclient tests (a repository with a good model and one whose
config.json is broken); the environment and command-line tests start their own. Reload, drain, workers
and soak: test_live_lifecycle.py. The numba kernel
cache is shared with the child processes (live.py), so each server starts in a second or two.
"""
from __future__ import annotations

import gzip
import socket
import zlib

import httpx
import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from .live import (free_port, infer_json, live_server, local_outputs, make_mlp, run_cli,  # noqa: E402
                   server_env)

TOL = dict(rtol=1e-6, atol=1e-6)


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
