"""The server's HTTP behaviour over ASGI: every client mistake is a 4xx/5xx with a {"error": ...} body that
names what was wrong, the server keeps serving good requests afterwards, and good requests (JSON and
binary) return exactly what the same file returns when run locally."""
import gzip
import re
import zlib

import numpy as np
import orjson
import pytest

from ember.serve import ServerConfig

from .models import (assert_outputs, binary_body, error, good, json_body, local, metric, result, rows, run,
                     serving)


X = rows(3, seed=11)


def header_and_binary(header: dict, blob: bytes):
    h = orjson.dumps(header)
    return h + blob, {"Inference-Header-Content-Length": str(len(h)), "Content-Type": "application/octet-stream"}


# ---- good requests equal the local run ----------------------------------------------------------------
def test_json_and_binary_results_equal_the_local_program(models):
    async def main():
        async with serving(models["mlp"]) as (c, app):
            want = local(models["mlp"], {"x": X})
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": X}, request_id="r-1"))
            assert r.headers["content-type"] == "application/json"
            body = r.json()
            assert body["model_name"] == "mlp" and body["model_version"] == "1" and body["id"] == "r-1"
            assert body["outputs"][0]["name"] == "y" and body["outputs"][0]["datatype"] == "FP32"
            assert body["outputs"][0]["shape"] == [3, 4]
            assert_outputs(result(r), want)
            # nested JSON data reads the same as flat
            req = json_body({"x": X})
            req["inputs"][0]["data"] = X.tolist()
            assert_outputs(result(await c.post("/v2/models/mlp/infer", json=req)), want)
            # binary in, binary out (tritonclient's own encoder and parser)
            body, headers = binary_body({"x": X}, outputs=["y"])
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert "inference-header-content-length" in r.headers
            assert r.headers["content-type"] == "application/octet-stream"
            assert_outputs(result(r), want)
            # binary in, JSON out
            body, headers = binary_body({"x": X}, outputs=["y"], binary_outputs=False)
            r = await c.post("/v2/models/mlp/versions/1/infer", content=body, headers=headers)
            assert "inference-header-content-length" not in r.headers
            assert_outputs(result(r), want)
            # tritonclient's default: binary inputs, no outputs named -> binary_data_output
            body, headers = binary_body({"x": X})
            r = await c.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert "inference-header-content-length" in r.headers
            assert_outputs(result(r), want)
            # binary_data_output for all outputs
            r = await c.post("/v2/models/mlp/infer", json=json_body({"x": X}, parameters={"binary_data_output": True}))
            assert "inference-header-content-length" in r.headers
            assert_outputs(result(r), want)
            # raw binary (Inference-Header-Content-Length: 0): the body is the only input's bytes
            r = await c.post("/v2/models/mlp/infer", content=X.tobytes(),
                             headers={"Inference-Header-Content-Length": "0"})
            assert_outputs(result(r), want)
            # gzip and deflate bodies
            raw = orjson.dumps(json_body({"x": X}))
            for enc, data in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
                r = await c.post("/v2/models/mlp/infer", content=data,
                                 headers={"Content-Encoding": enc, "Content-Type": "application/json"})
                assert_outputs(result(r), want)

    run(main())


def test_two_input_two_output_model_and_requested_outputs(models):
    a, b = rows(4, 3, seed=1), rows(4, 3, seed=2)

    async def main():
        async with serving(models["pair"]) as (c, app):
            want = local(models["pair"], {"a": a, "b": b})
            assert_outputs(result(await c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b}))), want)
            # inputs in any order; only the requested output, in the requested order
            r = await c.post("/v2/models/pair/infer", json=json_body({"b": b, "a": a}, outputs=["p"]))
            assert_outputs(result(r), {"p": want["p"]})
            r = await c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b}, outputs=["p", "s"]))
            assert [o["name"] for o in r.json()["outputs"]] == ["p", "s"]
            body, headers = binary_body({"a": a, "b": b}, outputs=["s", "p"])
            assert_outputs(result(await c.post("/v2/models/pair/infer", content=body, headers=headers)), want)

    run(main())


def test_int64_and_bool_inputs(models):
    i = np.arange(12, dtype=np.int64).reshape(4, 3) - 5
    m = np.array([[True, False, True], [False, False, True], [True, True, True], [False, False, False]])

    async def main():
        async with serving(models["ints"]) as (c, app):
            want = local(models["ints"], {"i": i, "m": m})
            r = await c.post("/v2/models/ints/infer", json=json_body({"i": i, "m": m}))
            assert {o["name"]: o["datatype"] for o in r.json()["outputs"]} == {"j": "INT64", "n": "BOOL"}
            assert_outputs(result(r), want)
            body, headers = binary_body({"i": i, "m": m}, outputs=["j", "n"])
            assert_outputs(result(await c.post("/v2/models/ints/infer", content=body, headers=headers)), want)
            # bool given as FP32 -> 400
            bad = json_body({"i": i, "m": m.astype(np.float32)})
            msg = error(await c.post("/v2/models/ints/infer", json=bad), 400)
            assert "'m'" in msg and "BOOL" in msg and "FP32" in msg
            assert_outputs(result(await c.post("/v2/models/ints/infer", json=json_body({"i": i, "m": m}))), want)

    run(main())


# ---- request errors: status, message, and the server still serves -------------------------------------
def _json(inputs, **kw):
    return dict(json={"inputs": inputs, **kw})


def _x(shape=(1, 8), datatype="FP32", data=None, name="x"):
    n = int(np.prod(shape))
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data if data is not None else [0.5] * n}


def _binary(header_len_override=None, chop=0, size=None):
    """A binary-extension request for x [1, 8], optionally broken."""
    blob = rows(1, seed=5).tobytes()
    header = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32",
                          "parameters": {"binary_data_size": len(blob) if size is None else size}}]}
    body, headers = header_and_binary(header, blob[:len(blob) - chop] if chop else blob)
    if header_len_override is not None:
        headers["Inference-Header-Content-Length"] = header_len_override
    return dict(content=body, headers=headers)


BAD_REQUESTS = [
    # (id, request kwargs, status, patterns that must all appear in the error message)
    ("wrong-input-name", _json([_x(name="z")]), 400, [r"unknown input 'z'", r"x \(FP32 \[-1, 8\]\)"]),
    ("missing-input", _json([]), 400, [r"missing input 'x'", r"x \(FP32"]),
    ("extra-input", _json([_x(), _x(name="extra")]), 400, [r"unknown input 'extra'"]),
    ("wrong-datatype", _json([_x(datatype="FP64")]), 400, [r"input 'x'", r"expected (datatype )?FP32, got FP64"]),
    ("wrong-shape", _json([_x(shape=(1, 7))]), 400, [r"input 'x'", r"expected shape \[-1, 8\], got \[1, 7\]"]),
    ("wrong-rank", _json([_x(shape=(8,))]), 400, [r"input 'x'", r"\[-1, 8\]", r"rank 2, got rank 1"]),
    ("data-count", _json([_x(shape=(2, 8), data=[0.0] * 8)]), 400, [r"input 'x'", r"16 elements", r"has 8"]),
    ("non-numeric", _json([_x(data=["a"] * 8)]), 400, [r"input 'x'", r"FP32 data must be numbers", '"a"']),
    ("malformed-json", dict(content=b'{"inputs": [', headers={"Content-Type": "application/json"}), 400,
     [r"malformed"]),
    ("json-not-object", dict(content=b"[1, 2]", headers={"Content-Type": "application/json"}), 400,
     [r"must be an object, got list"]),
    ("no-inputs", dict(json={"id": "a"}), 400, [r"no 'inputs'"]),
    ("truncated-binary", _binary(chop=4), 400, [r"28 bytes of binary data", r"declare 32"]),
    ("binary-size-vs-shape", _binary(size=28), 400, [r"input 'x'", r"binary_data_size is 28", r"needs 32 bytes"]),
    ("header-length-negative", _binary(header_len_override="-3"), 400,
     [r"Inference-Header-Content-Length must be a non-negative integer", r"'-3'"]),
    ("header-length-not-int", _binary(header_len_override="ten"), 400,
     [r"Inference-Header-Content-Length must be a non-negative integer", r"'ten'"]),
    ("header-length-past-body", _binary(header_len_override="100000"), 400,
     [r"Inference-Header-Content-Length is 100000", r"only \d+ bytes"]),
    ("bad-gzip", dict(content=b"definitely not gzip", headers={"Content-Encoding": "gzip"}), 400,
     [r"gzip request body cannot be decompressed"]),
    ("truncated-gzip", dict(content=gzip.compress(orjson.dumps(json_body({"x": X})))[:-12],
                            headers={"Content-Encoding": "gzip"}), 400, [r"gzip request body"]),
    ("unknown-encoding", dict(content=b"{}", headers={"Content-Encoding": "br"}), 415,
     [r"Content-Encoding 'br' is not supported", r"gzip"]),
    ("bytes-datatype", _json([{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]), 501,
     [r"BYTES is not supported"]),
    ("unknown-datatype", _json([_x(datatype="FP8")]), 400, [r"unknown datatype 'FP8'"]),
    ("timeout-negative", _json([_x()], parameters={"timeout": -5}), 400,
     [r"parameter 'timeout' must be a positive number of microseconds", r"-5"]),
    ("timeout-string", _json([_x()], parameters={"timeout": "soon"}), 400, [r"parameter 'timeout'", r"'soon'"]),
    ("timeout-bool", _json([_x()], parameters={"timeout": True}), 400, [r"parameter 'timeout'"]),
    ("timeout-nan", dict(content=orjson.dumps(json_body({"x": X})).replace(
        b'"inputs"', b'"parameters":{"timeout":NaN},"inputs"'), headers={"Content-Type": "application/json"}), 400,
     [r"parameter 'timeout'"]),
    ("unknown-output", _json([_x()], outputs=[{"name": "nope"}]), 400,
     [r"unknown output 'nope' requested", r"y \(FP32 \[-1, 4\]\)"]),
    ("raw-binary-partial", dict(content=b"\0" * 30, headers={"Inference-Header-Content-Length": "0"}), 400,
     [r"raw binary body has 30 bytes"]),
]


@pytest.mark.parametrize("kwargs,status,patterns", [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_reported_and_the_server_keeps_serving(models, kwargs, status, patterns):
    async def main():
        async with serving(models["mlp"]) as (c, app):
            r = await c.post("/v2/models/mlp/infer", **kwargs)
            msg = error(r, status)
            for p in patterns:
                assert re.search(p, msg), (p, msg)
            if status == 415:
                assert r.headers.get("accept-encoding") == "gzip, deflate"
            await good(c, models["mlp"])
            # the failure is counted by status code, the good request as a success
            assert metric(app, "ember_request_failure_total", model="mlp", version="1", code=str(status)) == 1
            assert metric(app, "ember_request_success_total", model="mlp", version="1") == 1

    run(main())


def test_unknown_model_and_version(models):
    async def main():
        async with serving([models["mlp"], models["pair"]]) as (c, app):
            msg = error(await c.post("/v2/models/nope/infer", json=json_body({"x": X})), 404)
            assert "unknown model 'nope'" in msg and "mlp" in msg and "pair" in msg
            msg = error(await c.get("/v2/models/nope"), 404)
            assert "unknown model 'nope'" in msg
            error(await c.get("/v2/models/nope/ready"), 404)
            error(await c.get("/v2/models/nope/config"), 404)
            msg = error(await c.post("/v2/models/mlp/versions/7/infer", json=json_body({"x": X})), 404)
            assert "no version '7'" in msg and "versions: 1" in msg
            error(await c.get("/v2/models/mlp/versions/7"), 404)
            error(await c.get("/v2/models/mlp/versions/7/ready"), 404)
            assert (await c.get("/v2/models/mlp/versions/1/ready")).status_code == 200
            assert (await c.get("/v2/models/mlp/ready")).status_code == 200
            await good(c, models["mlp"])

    run(main())


def test_symbolic_dims_that_disagree_across_inputs_are_400(models):
    async def main():
        async with serving(models["pair"]) as (c, app):
            r = await c.post("/v2/models/pair/infer", json=json_body({"a": rows(2, 3), "b": rows(3, 3)}))
            msg = error(r, 400)
            assert "batch" in msg and "'b'" in msg, msg
            a, b = rows(2, 3, seed=3), rows(2, 3, seed=4)
            assert_outputs(result(await c.post("/v2/models/pair/infer", json=json_body({"a": a, "b": b}))),
                           local(models["pair"], {"a": a, "b": b}))
            assert metric(app, "ember_request_failure_total", model="pair", version="1", code="400") == 1

    run(main())


def test_unknown_route_and_method_are_json_errors(models):
    async def main():
        async with serving(models["mlp"]) as (c, app):
            msg = error(await c.get("/v2/nothing/here"), 404)
            assert "GET /v2/nothing/here" in msg and "/docs" in msg
            error(await c.get("/v2/models/mlp/infer"), 405)
            await good(c, models["mlp"])

    run(main())


# ---- body limits ------------------------------------------------------------------------------------------
SMALL = ServerConfig(max_request_mb=0.01)  # 10485 bytes


def test_oversized_body_with_content_length_is_413(models):
    big = json_body({"x": rows(400, seed=1)})  # about 40 kB of JSON

    async def main():
        async with serving(models["mlp"], SMALL) as (c, app):
            r = await c.post("/v2/models/mlp/infer", content=orjson.dumps(big),
                             headers={"Content-Type": "application/json"})
            msg = error(r, 413)
            assert "limit is 10485 bytes" in msg and "--max-request-mb" in msg
            await good(c, models["mlp"])

    run(main())


def test_oversized_chunked_body_is_413(models):
    data = orjson.dumps(json_body({"x": rows(400, seed=1)}))

    async def chunks():
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    async def main():
        async with serving(models["mlp"], SMALL) as (c, app):
            r = await c.post("/v2/models/mlp/infer", content=chunks(), headers={"Content-Type": "application/json"})
            assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
            msg = error(r, 413)
            assert "exceeds the limit of 10485 bytes" in msg
            # a small chunked body is fine
            small = orjson.dumps(json_body({"x": X}))

            async def one():
                yield small[:10]
                yield small[10:]

            assert_outputs(result(await c.post("/v2/models/mlp/infer", content=one())), local(models["mlp"], {"x": X}))

    run(main())


def test_gzip_bomb_is_413(models):
    bomb = gzip.compress(b" " * (300 << 10))  # 300 KiB of spaces in about 300 bytes

    async def main():
        async with serving(models["mlp"], ServerConfig(max_decompressed_mb=0.1)) as (c, app):
            r = await c.post("/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"})
            msg = error(r, 413)
            assert "decompresses to more than" in msg and str(int(0.1 * (1 << 20))) in msg
            await good(c, models["mlp"])

    run(main())


# ---- authentication ------------------------------------------------------------------------------------------
def test_api_key(models):
    async def main():
        async with serving(models["mlp"], ServerConfig(api_key="k")) as (c, app):
            req = json_body({"x": X})
            seen = set()
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k"},
                            {"Authorization": "k"}):
                r = await c.post("/v2/models/mlp/infer", json=req, headers=headers)
                seen.add(error(r, 401))
                assert r.headers["www-authenticate"] == "Bearer"
            assert len(seen) == 1, seen  # the same message whether the token is missing or wrong
            for route in ("/v2/models/mlp", "/v2/models/mlp/ready", "/v2/models/mlp/config",
                          "/v2/models/mlp/versions/1"):
                error(await c.get(route), 401)
            r = await c.post("/v2/repository/index", headers={"Authorization": "Bearer wrong"})
            error(r, 401)
            # health stays open (probes carry no token); so does server metadata
            assert (await c.get("/v2/health/live")).status_code == 200
            assert (await c.get("/v2/health/ready")).status_code == 200
            assert (await c.get("/v2")).status_code == 200
            ok = {"Authorization": "Bearer k"}
            assert_outputs(result(await c.post("/v2/models/mlp/infer", json=req, headers=ok)),
                           local(models["mlp"], {"x": X}))
            assert (await c.get("/v2/models/mlp", headers=ok)).status_code == 200
            assert (await c.post("/v2/repository/index", headers=ok)).status_code == 200
            assert (await c.get("/v2/models/mlp/ready", headers={"Authorization": "bearer k"})).status_code == 200

    run(main())


def test_repository_key_is_separate_from_api_key(models):
    async def main():
        async with serving(models["mlp"], ServerConfig(api_key="k", repository_key="r")) as (c, app):
            user, admin = {"Authorization": "Bearer k"}, {"Authorization": "Bearer r"}
            r = await c.post("/v2/repository/index", headers=user)
            error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            error(await c.post("/v2/repository/models/mlp/load", headers=user), 401)
            error(await c.post("/v2/repository/models/mlp/unload", headers=user), 401)
            error(await c.post("/v2/models/mlp/infer", json=json_body({"x": X}), headers=admin), 401)
            r = await c.post("/v2/repository/index", headers=admin)
            assert r.status_code == 200 and r.json() == [{"name": "mlp", "version": "1", "state": "READY"}]
            assert_outputs(result(await c.post("/v2/models/mlp/infer", json=json_body({"x": X}), headers=user)),
                           local(models["mlp"], {"x": X}))
            # the admin token reloads
            assert (await c.post("/v2/repository/models/mlp/load", headers=admin)).status_code == 200
            assert_outputs(result(await c.post("/v2/models/mlp/infer", json=json_body({"x": X}), headers=user)),
                           local(models["mlp"], {"x": X}))

    run(main())


def test_repository_key_without_api_key_protects_only_the_repository(models):
    async def main():
        async with serving(models["mlp"], ServerConfig(repository_key="r")) as (c, app):
            error(await c.post("/v2/repository/index"), 401)
            assert (await c.post("/v2/repository/index", headers={"Authorization": "Bearer r"})).status_code == 200
            await good(c, models["mlp"])

    run(main())


def test_repository_load_with_malformed_parameters_is_400(models):
    async def main():
        async with serving(models["mlp"]) as (c, app):
            for body in ({"parameters": 5}, {"parameters": ["config"]}, {"parameters": {"config": 5}}):
                msg = error(await c.post("/v2/repository/models/mlp/load", json=body), 400)
                assert "parameters" in msg, (body, msg)
            await good(c, models["mlp"])

    run(main())


def test_an_id_out_of_range_found_by_the_kernel_is_400(models):
    """The model rejects a value only when it runs (an embedding id past the table): still the client's
    mistake, so 400 naming it, not a 500 that reads as a server bug."""
    async def main():
        async with serving(models["embed"]) as (c, app):
            bad = np.array([[1, 99, 2]], dtype=np.int64)
            msg = error(await c.post("/v2/models/embed/infer", json=json_body({"i": bad})), 400)
            assert "index 99 is out of range" in msg
            ok = np.array([[1, 9, 2]], dtype=np.int64)
            assert_outputs(result(await c.post("/v2/models/embed/infer", json=json_body({"i": ok}))),
                           local(models["embed"], {"i": ok}))

    run(main())
