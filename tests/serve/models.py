"""Small models and ASGI helpers shared by the server tests (tests/serve/test_app_errors.py,
test_batching.py, test_repository.py).

``build_models(dir)`` traces a handful of tiny models and writes them as ``.ember`` (and one ``.onnx``);
``serving(path, config)`` runs ``create_app`` under its lifespan with an httpx client over ASGI (no
sockets) and waits until the server is ready. Requests are built as JSON (``json_infer``) or with
tritonclient's binary tensor extension (``binary_infer``), and results are compared with the local
``ember.serialize.load(path).run`` of the same file.
"""
from __future__ import annotations

import asyncio
import contextlib
import os

import httpx
import numpy as np
import orjson

import ember
import ember.nn as nn
from ember.serialize import load, trace
from ember.serve import ServerConfig, create_app

DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
            np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}


# ---- models ---------------------------------------------------------------------------------------
def mlp_program(seed=0, **kwargs):
    """Linear(8, 16) - ReLU - Linear(16, 4); input "x" [batch, 8] -> output "y" [batch, 4]."""
    ember.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return trace(model, ember.randn(2, 8), input_names=["x"], output_names=["y"], **kwargs)


def _pair(a, b):
    return a + b, (a * b).sum(dim=1)


class _SeqSum(nn.Module):
    """[batch, seq, 4] -> [batch, 2]: a second symbolic dim (seq) the batcher must not mix."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x).sum(dim=1)


def _ints(i, m):
    return i * 2 + 1, ~m


class _Embed(nn.Module):
    """Token ids [batch, 3] -> [batch, 4]; an id outside 0..9 fails inside the kernel, i.e. only when run."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, i):
        return self.emb(i).sum(dim=1)


def write_mlp(path, seed=0):
    mlp_program(seed).save(os.fspath(path))
    return os.fspath(path)


def build_models(directory) -> dict:
    """Write the test models into ``directory``; returns name -> path.

    mlp    (.ember)  x FP32 [-1, 8] -> y FP32 [-1, 4]                         batchable
    mlp_onnx (.onnx) the same program exported to ONNX                          batchable
    pair   (.ember)  a, b FP32 [-1, 3] -> s FP32 [-1, 3], p FP32 [-1]           batchable, 2 in / 2 out
    fixed  (.ember)  x FP32 [2, 8] -> y FP32 [2, 4]                             not batchable
    seq    (.ember)  x FP32 [-1, -1, 4] (batch, seq) -> y FP32 [-1, 2]          batchable, second symbolic dim
    ints   (.ember)  i INT64 [-1, 3], m BOOL [-1, 3] -> j INT64, n BOOL          batchable
    embed  (.ember)  i INT64 [-1, 3] (ids 0..9) -> y FP32 [-1, 4]                batchable, fails on a bad id
    """
    d = os.fspath(directory)
    os.makedirs(d, exist_ok=True)
    paths = {}
    prog = mlp_program(0)
    paths["mlp"] = os.path.join(d, "mlp.ember")
    prog.save(paths["mlp"])
    paths["mlp_onnx"] = os.path.join(d, "mlp_onnx.onnx")
    prog.to_onnx(paths["mlp_onnx"])

    ember.manual_seed(1)
    paths["pair"] = os.path.join(d, "pair.ember")
    trace(_pair, (ember.randn(2, 3), ember.randn(2, 3)), input_names=["a", "b"],
          output_names=["s", "p"]).save(paths["pair"])

    paths["fixed"] = os.path.join(d, "fixed.ember")
    mlp_program(2, dynamic_axes={"x": None}).save(paths["fixed"])

    ember.manual_seed(3)
    paths["seq"] = os.path.join(d, "seq.ember")
    trace(_SeqSum(), ember.randn(2, 5, 4), input_names=["x"], output_names=["y"],
          dynamic_axes={"x": {0: "batch", 1: "seq"}}).save(paths["seq"])

    paths["ints"] = os.path.join(d, "ints.ember")
    trace(_ints, (ember.tensor(np.arange(6).reshape(2, 3)), ember.tensor(np.array([[True, False, True]] * 2))),
          input_names=["i", "m"], output_names=["j", "n"]).save(paths["ints"])

    ember.manual_seed(4)
    paths["embed"] = os.path.join(d, "embed.ember")
    trace(_Embed(), ember.tensor(np.array([[1, 2, 3], [4, 5, 6]])), input_names=["i"],
          output_names=["y"]).save(paths["embed"])
    return paths


_LOCAL = {}


def local(path, inputs: dict) -> dict:
    """The reference: the same file run in-process with ``ember.serialize.load(path).run``."""
    path = os.fspath(path)
    if path not in _LOCAL:
        _LOCAL[path] = load(path)
    return _LOCAL[path].run({k: np.ascontiguousarray(v) for k, v in inputs.items()})


def rows(n, cols=8, seed=0, dtype=np.float32):
    """Distinct deterministic rows."""
    return np.random.default_rng(seed).standard_normal((n, cols)).astype(dtype)


# ---- requests and responses -------------------------------------------------------------------------
def json_body(inputs: dict, outputs=None, parameters=None, request_id=None) -> dict:
    """A V2 JSON request for name -> array (datatype from the array's dtype)."""
    req = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": DATATYPE[v.dtype], "data": v.reshape(-1).tolist()}
                      for k, v in inputs.items()]}
    if outputs is not None:
        req["outputs"] = [{"name": o} for o in outputs]
    if parameters:
        req["parameters"] = parameters
    if request_id is not None:
        req["id"] = request_id
    return req


def binary_body(inputs: dict, outputs=None, parameters=None, binary_outputs=True):
    """(body, headers) of a request with every input in the binary extension, built by tritonclient
    (which asks for binary outputs unless ``outputs`` are named with ``binary_outputs=False``)."""
    import tritonclient.http as th

    tin = []
    for k, v in inputs.items():
        t = th.InferInput(k, list(v.shape), DATATYPE[v.dtype])
        t.set_data_from_numpy(v, binary_data=True)
        tin.append(t)
    touts = [th.InferRequestedOutput(o, binary_data=binary_outputs) for o in outputs] if outputs else None
    body, json_size = th.InferenceServerClient.generate_request_body(tin, outputs=touts, parameters=parameters)
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def result(response: httpx.Response) -> dict:
    """name -> array of a 200 infer response (JSON or binary), parsed by tritonclient's InferResult."""
    import tritonclient.http as th

    assert response.status_code == 200, (response.status_code, response.text)
    hl = response.headers.get("inference-header-content-length")
    res = th.InferResult.from_response_body(response.content, header_length=int(hl) if hl is not None else None)
    return {o["name"]: res.as_numpy(o["name"]) for o in res.get_response()["outputs"]}


def error(response: httpx.Response, status: int) -> str:
    """The {"error": ...} message of an error response, after checking its status and content type."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = orjson.loads(response.content)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def assert_outputs(got: dict, want: dict, exact=True):
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
        assert got[k].dtype == want[k].dtype, (k, got[k].dtype, want[k].dtype)
        if exact:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ---- the server over ASGI -----------------------------------------------------------------------------
async def wait_ready(client, timeout_s=30.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await client.get("/v2/health/ready")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, "server did not become ready"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(path, config: ServerConfig | None = None, ready=True, app=None):
    """(client, app) for ``create_app(path, config)`` running under its lifespan; waits for readiness."""
    app = app if app is not None else create_app(path, config or ServerConfig())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=30.0) as client:
            if ready:
                await wait_ready(client)
            yield client, app


def run(coro):
    """Run a test coroutine on a fresh event loop."""
    return asyncio.run(coro)


def metric(app, name, **labels) -> float:
    """The current value of a sample in the app's own Prometheus registry (0 when absent)."""
    v = app.state.ember.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def write_version(repo, model, version, seed=0, filename="model.ember"):
    """<repo>/<model>/<version>/model.ember (an MLP with weights from ``seed``); returns its path."""
    d = os.path.join(os.fspath(repo), model, str(version))
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, filename)
    prog = mlp_program(seed)
    if filename.endswith(".onnx"):
        prog.to_onnx(p)
    else:
        prog.save(p)
    return p


def write_config(repo, model, content):
    """<repo>/<model>/config.json: a dict (written as JSON) or raw text."""
    p = os.path.join(os.fspath(repo), model, "config.json")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(orjson.dumps(content) if isinstance(content, (dict, list)) else content.encode())
    return p


async def good(c, path, model="mlp", x=None):
    """A good JSON request still answers with what the file gives when run locally."""
    x = rows(3, seed=11) if x is None else x
    r = await c.post(f"/v2/models/{model}/infer", json=json_body({"x": x}))
    assert_outputs(result(r), local(path, {"x": x}))
