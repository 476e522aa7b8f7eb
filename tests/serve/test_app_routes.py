"""The server's routes over ASGI besides the error paths: server and model metadata, Triton-style model
config, Prometheus metrics, the OpenAPI document, compressed responses, and the FastAPI infer routes
answering like the ASGI fast path; results against the same file run locally."""
import re

import orjson
import prometheus_client.parser

import ember
from ember.serve import ServerConfig, create_app
from ember.serve.infer import InferFastPath

from .models import assert_outputs, binary_body, error, good, json_body, local, result, rows, run, serving

X = rows(3, seed=11)


# ---- metadata, config, metrics, docs ---------------------------------------------------------------------------
def test_server_and_model_metadata(models):
    async def main():
        async with serving([models["mlp"], models["pair"]]) as (c, app):
            meta = (await c.get("/v2")).json()
            assert meta["name"] == "ember" and meta["version"] == ember.__version__
            assert {"binary_tensor_data", "model_repository", "model_configuration"} <= set(meta["extensions"])
            m = (await c.get("/v2/models/mlp")).json()
            assert m == {"name": "mlp", "versions": ["1"], "platform": "ember_program",
                         "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
                         "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
            assert (await c.get("/v2/models/mlp/versions/1")).json() == m
            p = (await c.get("/v2/models/pair")).json()
            assert [(t["name"], t["shape"]) for t in p["inputs"]] == [("a", [-1, 3]), ("b", [-1, 3])]
            assert [(t["name"], t["shape"]) for t in p["outputs"]] == [("s", [-1, 3]), ("p", [-1])]

    run(main())


def test_model_config_is_triton_style(models):
    async def main():
        cfg = ServerConfig(max_batch_size=8, batch_delay_ms=2.5, max_queue_size=77)
        async with serving([models["mlp"], models["fixed"]], cfg) as (c, app):
            m = (await c.get("/v2/models/mlp/config")).json()
            assert m["name"] == "mlp" and m["platform"] == "ember_program" and m["max_batch_size"] == 8
            assert m["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [8]}]
            assert m["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}]
            assert m["dynamic_batching"]["max_queue_delay_microseconds"] == 2500
            assert m["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 77
            assert m["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
            f = (await c.get("/v2/models/fixed/config")).json()
            assert f["max_batch_size"] == 0 and "dynamic_batching" not in f
            assert f["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 8]}]
            assert f["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [2, 4]}]
        async with serving(models["mlp"], ServerConfig(max_batch_size=0)) as (c, app):
            m = (await c.get("/v2/models/mlp/config")).json()
            assert m["max_batch_size"] == 0 and m["input"][0]["dims"] == [-1, 8]

    run(main())


def test_metrics_count_successes_and_failures_by_code(models):
    async def main():
        async with serving(models["mlp"]) as (c, app):
            for _ in range(3):
                await good(c, models["mlp"])
            error(await c.post("/v2/models/mlp/infer", json={"inputs": []}), 400)
            error(await c.post("/v2/models/mlp/infer", json={"inputs": [{"name": "x", "shape": [1, 8], "datatype": "BYTES",
                                                                      "data": ["a"] * 8}]}),
                  501)
            error(await c.post("/v2/models/mlp/versions/9/infer", json=json_body({"x": X})), 404)
            r = await c.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            samples = {}
            for fam in prometheus_client.parser.text_string_to_metric_families(r.text):
                for s in fam.samples:
                    samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
            mv = (("model", "mlp"), ("version", "1"))
            assert samples[("ember_request_success_total", mv)] == 3
            assert samples[("ember_request_failure_total", (("code", "400"),) + mv)] == 1
            assert samples[("ember_request_failure_total", (("code", "501"),) + mv)] == 1
            assert samples[("ember_inference_count_total", mv)] == 9  # 3 requests of 3 rows
            assert samples[("ember_execution_count_total", mv)] == 3
            assert samples[("ember_request_duration_seconds_count", mv)] == 3
            assert samples[("ember_pending_requests", mv)] == 0
            assert samples[("ember_model_state", (("ember_model_state", "ready"),) + mv)] == 1
            # requests for unknown models or versions do not create label sets: a client must not be able to
            # grow the metrics without bound by inventing names
            await c.post("/v2/models/nope/infer", json=json_body({"x": X}))
            text = (await c.get("/metrics")).text
            assert 'model="nope"' not in text
            assert 'version="9"' not in text, [line for line in text.splitlines() if 'version="9"' in line]

    run(main())


def test_openapi_documents_the_infer_routes(models):
    async def main():
        async with serving(models["mlp"]) as (c, app):
            doc = (await c.get("/openapi.json")).json()
            schemas = doc["components"]["schemas"]
            for route in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
                body = doc["paths"][route]["post"]["requestBody"]
                ref = body["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/InferRequest"
                assert "application/octet-stream" in body["content"]
            infer = schemas["InferRequest"]
            assert "inputs" in infer["required"]
            # every $ref in the document resolves
            text = orjson.dumps(doc).decode()
            for ref in set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text)):
                assert ref in schemas, ref
            for route in ("/v2", "/v2/health/ready", "/v2/repository/index", "/metrics"):
                assert route in doc["paths"], route
            r = await c.get("/docs")
            assert r.status_code == 200 and "swagger" in r.text.lower()

    run(main())


def test_large_responses_are_compressed_when_the_client_accepts_it(models):
    big = rows(300, seed=9)  # about 14 kB of JSON output

    async def main():
        async with serving(models["mlp"]) as (c, app):
            want = local(models["mlp"], {"x": big})
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": big}), headers={"Accept-Encoding": "gzip"})
            assert r.headers.get("content-encoding") == "gzip"
            assert int(r.headers["content-length"]) < len(r.content)  # httpx inflated it
            assert_outputs(result(r), want)
            body, headers = binary_body({"x": big}, outputs=["y"])
            r = await c.post("/v2/models/mlp/infer", content=body, headers={**headers, "Accept-Encoding": "deflate"})
            assert r.headers.get("content-encoding") == "deflate"
            assert_outputs(result(r), want)
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": big}),
                             headers={"Accept-Encoding": "identity"})
            assert "content-encoding" not in r.headers
            assert_outputs(result(r), want)
            # small responses are never compressed
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": X}), headers={"Accept-Encoding": "gzip"})
            assert "content-encoding" not in r.headers
            assert_outputs(result(r), local(models["mlp"], {"x": X}))

    run(main())


def test_the_fastapi_infer_routes_answer_like_the_fast_path(models):
    """InferFastPath (ASGI middleware) answers infer requests; the FastAPI routes of the same paths (for /docs,
    or an app mounted without its middleware) must give the same answers through the same handler."""
    x = rows(3, seed=7)

    async def main():
        plain = create_app(models["mlp"])
        plain.user_middleware = [m for m in plain.user_middleware if m.cls is not InferFastPath]
        async with serving(models["mlp"]) as (c, app), serving(None, app=plain) as (r, _):
            assert not any(m.cls is InferFastPath for m in plain.user_middleware)
            for route in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"):
                fast, slow = (await c.post(route, json=json_body({"x": x})),
                              await r.post(route, json=json_body({"x": x})))
                assert fast.status_code == slow.status_code == 200
                assert fast.json() == slow.json()
                assert_outputs(result(slow), local(models["mlp"], {"x": x}))
            bad = await r.post("/v2/models/mlp/infer", json=json_body({"x": rows(1, cols=7)}))
            assert bad.status_code == 400 and "expected shape [-1, 8]" in bad.json()["error"]

    run(main())
