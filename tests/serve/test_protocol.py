"""ember.serve.protocol and .response against tritonclient.http, the independent V2 implementation: requests are built by
tritonclient's own request-body builder and responses read back by its InferResult parser."""
from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
import tritonclient.http as th
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ember.serve.protocol import (DATATYPES, InferRequest, ProtocolError, RequestedOutput, TensorSpec,
                                  datatype_of, decompress, parse_header_length, parse_infer_request,
                                  validate_inputs)
from ember.serve.response import encode_infer_response, error_body

NAMES = list(DATATYPES)
rng = np.random.default_rng(5)


def sample(datatype: str, shape) -> np.ndarray:
    dt = DATATYPES[datatype]
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)


def triton_body(arrays: dict, binary=True, outputs=None, **kw):
    """The (body, header_length) tritonclient sends for these inputs."""
    inputs = []
    for name, arr in arrays.items():
        i = th.InferInput(name, list(arr.shape), datatype_of(arr.dtype))
        i.set_data_from_numpy(arr, binary_data=binary[name] if isinstance(binary, dict) else binary)
        inputs.append(i)
    outs = None if outputs is None else [th.InferRequestedOutput(n, binary_data=b) for n, b in outputs]
    return th.InferenceServerClient.generate_request_body(inputs, outputs=outs, **kw)


def parse(arrays: dict, binary=True, specs=None, **kw) -> InferRequest:
    body, n = triton_body(arrays, binary, **kw)
    return parse_infer_request(body, n, specs or [])


def triton_result(body: bytes, headers: dict) -> th.InferResult:
    n = headers.get("Inference-Header-Content-Length")
    return th.InferResult.from_response_body(body, verbose=False, header_length=None if n is None else int(n))


def specs_for(arrays: dict) -> list[TensorSpec]:
    return [TensorSpec(k, datatype_of(v.dtype), v.shape) for k, v in arrays.items()]


@contextmanager
def fails(status: int, *fragments: str):
    """Expect a ProtocolError with this status whose message holds every fragment."""
    with pytest.raises(ProtocolError) as info:
        yield info
    e = info.value
    assert e.status == status, (e.status, e.message)
    for f in fragments:
        assert f in e.message, (f, e.message)


# ---------------------------------------------------------------------------------------------- datatypes

def test_datatype_of_every_datatype_and_bytes():
    for name, dt in DATATYPES.items():
        assert datatype_of(dt) == name
        assert th.InferInput("x", [1], name).datatype() == name   # same spelling as tritonclient
    assert datatype_of(np.float32) == "FP32" and datatype_of(bool) == "BOOL"
    assert datatype_of(np.dtype(">f4")) == "FP32"
    with fails(501, "datatype BYTES is not supported; supported: BOOL, UINT8"):
        datatype_of(np.object_)
    with fails(501, "datatype BYTES is not supported"):
        datatype_of(np.dtype("U5"))
    with fails(501, "complex64"):
        datatype_of(np.complex64)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", NAMES)
def test_every_datatype_round_trips_through_tritonclient(datatype, binary):
    x, y = sample(datatype, (3, 4)), sample(datatype, (2,))
    req = parse({"x": x, "y": y}, binary=binary, outputs=[("x", binary), ("y", not binary)])
    assert list(req.inputs) == ["x", "y"]
    for name, want in (("x", x), ("y", y)):
        got = req.inputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape and got.flags.writeable
        np.testing.assert_array_equal(got, want)
    feeds = validate_inputs(req, specs_for({"x": x, "y": y}), specs_for({"x": x, "y": y}))
    body, headers = encode_infer_response("m", "1", req.id, feeds, specs_for(feeds), req.outputs, req.parameters)
    res = triton_result(body, headers)
    for name, want in (("x", x), ("y", y)):
        got = res.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert ("binary_data_size" in (res.get_output("x").get("parameters") or {})) == binary
    assert ("data" in res.get_output("y")) == binary


@settings(deadline=None, max_examples=25)
@given(st.sampled_from(NAMES).flatmap(lambda n: st.tuples(
    st.just(n), hnp.arrays(DATATYPES[n], hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))),
    st.booleans(), st.booleans())
def test_round_trip_property(case, binary_in, binary_out):
    """Any shape (rank 0 to 3, empty dims), any values (NaN and +-inf included) in, and back out."""
    datatype, x = case
    req = parse({"x": x}, binary=binary_in, outputs=[("x", binary_out)])
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.inputs["x"].dtype == x.dtype and req.inputs["x"].shape == x.shape
    body, headers = encode_infer_response("m", None, None, {"x": req.inputs["x"]}, specs_for({"x": x}),
                                          req.outputs, req.parameters)
    got = triton_result(body, headers).as_numpy("x")
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, x)


# ---------------------------------------------------------------------------------------------- requests

def test_id_parameters_and_outputs_are_parsed():
    x = sample("FP32", (1, 784))
    req = parse({"x": x}, request_id="req-7", parameters={"note": "hi", "n": 3}, timeout=1000,
                outputs=[("probs", True), ("logits", False)])
    assert req.id == "req-7"
    assert req.parameters == {"timeout": 1000, "note": "hi", "n": 3}
    assert req.outputs == [RequestedOutput("probs", True, {"binary_data": True}),
                           RequestedOutput("logits", False, {"binary_data": False})]
    # no outputs listed: tritonclient asks for every output in binary
    req = parse({"x": x})
    assert req.id is None and req.outputs is None and req.parameters == {"binary_data_output": True}


def test_mixed_json_and_binary_inputs_in_request_order():
    a, b, c = sample("FP32", (2, 3)), sample("INT64", (4,)), sample("BOOL", (5,))
    req = parse({"a": a, "b": b, "c": c}, binary={"a": True, "b": False, "c": True})
    for k, v in (("a", a), ("b", b), ("c", c)):
        np.testing.assert_array_equal(req.inputs[k], v)


def test_nested_json_data_matching_the_shape():
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32",
                                   "data": [[1, 2, 3], [4, 5, 6]]}]}).encode()
    x = parse_infer_request(body, None, []).inputs["x"]
    np.testing.assert_array_equal(x, np.arange(1, 7, dtype=np.int32).reshape(2, 3))


def test_nan_and_infinity_literals_in_json_input():
    x = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    body, n = triton_body({"x": x}, binary=False)
    assert b"NaN" in body and b"-Infinity" in body   # what tritonclient (rapidjson) writes
    np.testing.assert_array_equal(parse_infer_request(body, n, []).inputs["x"], x)


def test_raw_binary_request():
    x = sample("FP32", (3, 4))
    req = parse_infer_request(x.tobytes(), 0, [TensorSpec("x", "FP32", (-1, 4))])
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.parameters == {"binary_data_output": True} and req.outputs is None and req.id is None
    # all outputs come back binary, as Triton answers a raw request
    body, headers = encode_infer_response("m", "1", None, {"y": x}, [TensorSpec("y", "FP32", (-1, 4))],
                                          req.outputs, req.parameters)
    assert "Inference-Header-Content-Length" in headers
    np.testing.assert_array_equal(triton_result(body, headers).as_numpy("y"), x)
    # no symbolic dim: the byte count must be the whole tensor
    assert parse_infer_request(bytes(6), 0, [TensorSpec("b", "UINT8", (2, 3))]).inputs["b"].shape == (2, 3)
    with fails(400, "one input", "has 2"):
        parse_infer_request(x.tobytes(), 0, [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("z", "FP32", (1,))])
    with fails(400, "input 'x'", "raw binary body has 47 bytes", "FP32", "[-1, 4]"):
        parse_infer_request(x.tobytes()[:-1], 0, [TensorSpec("x", "FP32", (-1, 4))])
    with fails(400, "input 'x'", "2 symbolic dims"):
        parse_infer_request(x.tobytes(), 0, [TensorSpec("x", "FP32", (-1, -1))])
    with fails(501, "BYTES"):
        parse_infer_request(b"abc", 0, [TensorSpec("s", "BYTES", (-1,))])


# ---------------------------------------------------------------------------------------------- compression

def test_gzip_and_deflate_bodies():
    body, _ = triton_body({"x": sample("FP32", (2, 5))}, binary=False)
    # what tritonclient's infer() sends for request_compression_algorithm="gzip" / "deflate"
    assert decompress(gzip.compress(body), "gzip", 1 << 20) == body
    assert decompress(zlib.compress(body), "deflate", 1 << 20) == body
    raw = zlib.compressobj(wbits=-15)
    assert decompress(raw.compress(body) + raw.flush(), "Deflate", 1 << 20) == body   # raw deflate too
    assert decompress(gzip.compress(body), " GZIP ", 1 << 20) == body
    assert decompress(gzip.compress(body[:10]) + gzip.compress(body[10:]), "gzip", 1 << 20) == body
    assert decompress(body, None, 1 << 20) is body and decompress(body, "identity", 1 << 20) is body


def test_compression_errors():
    body = gzip.compress(b'{"inputs": []}')
    with fails(415, "'br'", "gzip, deflate") as e:
        decompress(body, "br", 1 << 20)
    assert e.value.headers == {"Accept-Encoding": "gzip, deflate"}
    with fails(400, "gzip", "truncated"):
        decompress(body[:-12], "gzip", 1 << 20)
    with fails(400, "gzip", "cannot be decompressed"):
        decompress(b"not gzip at all", "gzip", 1 << 20)
    with fails(400, "deflate", "cannot be decompressed"):
        decompress(b"\xff\xff\xff", "deflate", 1 << 20)
    with fails(413, "100 bytes"):
        decompress(bytes(101), None, 100)


def test_zip_bomb_is_cut_off_without_inflating_it():
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)   # 64 MiB of zeros in ~64 KiB
    limit = 1 << 20
    tracemalloc.start()
    try:
        with fails(413, "more than 1048576 bytes"):
            decompress(bomb, "gzip", limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit, peak
    assert len(decompress(gzip.compress(bytes(limit)), "gzip", limit)) == limit   # exactly the limit is fine


# ---------------------------------------------------------------------------------------------- request errors

def _json(inputs, **top) -> bytes:
    return json.dumps({"inputs": inputs, **top}).encode()


def _x(**kw):
    return {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3], **kw}


@pytest.mark.parametrize("body, fragments", [
    (b"{nope", ["malformed"]),
    (b"[1, 2]", ["must be an object", "list"]),
    (b'{"outputs": []}', ["no 'inputs'"]),
    (_json([{"shape": [1], "datatype": "FP32", "data": [1]}]), ["input #0 has no 'name'"]),
    (_json([{"name": "x", "datatype": "FP32", "data": [1]}]), ["input 'x' has no 'shape'"]),
    (_json([{"name": "x", "shape": [1], "data": [1]}]), ["input 'x' has no 'datatype'"]),
    (_json([_x(shape=[1, -3])]), ["input 'x'", "non-negative integers"]),
    (_json([_x(datatype="FP8")]), ["input 'x'", "unknown datatype 'FP8'", "FP32"]),
    (_json([_x(data=[1, 2])]), ["input 'x'", "shape [1, 3] needs 3 elements, 'data' has 2"]),
    (_json([_x(data=[[1, 2], [3]])]), ["input 'x'", "ragged"]),
    (_json([_x(data=[[1], [2], [3]])]), ["input 'x'", "nested 'data' has shape [3, 1]", "[1, 3]"]),
    (_json([_x(data=[1, "a", 3])]), ["input 'x'", "FP32 data must be numbers", '"a"']),
    (_json([_x(data=[1, None, 3])]), ["input 'x'", "FP32", "null"]),
    (_json([_x(data=[True, False, True])]), ["input 'x'", "FP32", "true"]),
    (_json([_x(datatype="UINT8", data=[1, 300, 3])]), ["input 'x'", "300 is out of range for UINT8 [0, 255]"]),
    (_json([_x(datatype="UINT32", data=[1, -1, 3])]), ["input 'x'", "-1 is out of range for UINT32"]),
    (_json([_x(datatype="INT64", data=[1, 2 ** 70, 3])]), ["input 'x'", "INT64 data must be integers"]),
    (_json([_x(datatype="INT64", data=[1, 2 ** 63, 3])]), ["input 'x'", "out of range for INT64"]),
    (_json([_x(datatype="UINT64", data=[1, 2 ** 64, 3])]), ["input 'x'", "UINT64"]),
    (_json([_x(datatype="INT32", data=[1, 2.5, 3])]), ["input 'x'", "INT32 data must be integers, got 2.5"]),
    (_json([_x(datatype="INT8", data=[True, False, True])]), ["input 'x'", "INT8", "got true"]),
    (_json([_x(datatype="BOOL", data=[1, 0, 1])]), ["input 'x'", "BOOL data must be true/false, got 1"]),
    (_json([_x(data=5)]), ["input 'x'", "'data' must be a list"]),
    (_json([_x(data=None, parameters={})]), ["input 'x'", "'data' must be a list"]),
    (_json([{"name": "x", "shape": [1], "datatype": "FP32"}]), ["input 'x' has neither 'data' nor"]),
    (_json([_x(), _x()]), ["input 'x' is given twice"]),
    (_json([_x(parameters={"binary_data_size": 12})]), ["input 'x' has both 'data' and"]),
    (_json([_x(parameters=[1])]), ["input 'x'", "'parameters' must be an object"]),
    (_json([_x()], id=7), ["'id' must be a string"]),
    (_json([_x()], parameters={"binary_data_output": "yes"}), ["binary_data_output", "true or false"]),
    (_json([_x()], outputs=[{"name": "y"}, {"name": "y"}]), ["output 'y' is requested twice"]),
    (_json([_x()], outputs=[{"name": "y", "parameters": {"binary_data": 1}}]), ["output 'y'", "binary_data"]),
    (_json([_x()], outputs=[{}]), ["requested output #0 has no 'name'"]),
])
def test_malformed_requests_are_400(body, fragments):
    with fails(400, *fragments):
        parse_infer_request(body, None, [])


def test_unsupported_features_are_501():
    with fails(501, "input 'x'", "datatype BYTES is not supported; supported: BOOL"):
        parse_infer_request(_json([_x(datatype="BYTES", data=["a", "b", "c"])]), None, [])
    with fails(501, "BF16"):
        parse_infer_request(_json([_x(datatype="BF16")]), None, [])
    with fails(501, "input 'x'", "shared-memory"):
        parse_infer_request(_json([{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {
            "shared_memory_region": "r", "shared_memory_byte_size": 4}}]), None, [])
    with fails(501, "output 'y'", "classification"):
        parse_infer_request(_json([_x()], outputs=[{"name": "y", "parameters": {"classification": 3}}]), None, [])


def test_binary_sizes_that_do_not_add_up():
    x = sample("FP32", (1, 784))
    body, n = triton_body({"x": x})
    assert parse_infer_request(body, n, []).inputs["x"].shape == (1, 784)
    with fails(400, "request body has 3135 bytes of binary data after the JSON header but inputs declare 3136"):
        parse_infer_request(body[:-1], n, [])
    with fails(400, "request body has 3140 bytes of binary data", "inputs declare 3136"):
        parse_infer_request(body + bytes(4), n, [])
    with fails(400, "input 'x': binary_data_size is 3132 but shape [1, 784] of FP32 needs 3136 bytes"):
        parse_infer_request(body[:n].replace(b"3136", b"3132") + body[n:-4], n, [])
    with fails(400, "input 'x' declares binary_data_size 3136", "no Inference-Header-Content-Length"):
        parse_infer_request(body[:n], None, [])
    with fails(400, "Inference-Header-Content-Length is", "only"):
        parse_infer_request(body[:n - 5], n, [])
    with fails(400, "input 'x'", "binary_data_size must be a non-negative integer"):
        head = _json([{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "4"}}])
        parse_infer_request(head + bytes(4), len(head), [])
    flags = np.array([1, 0, 1], np.bool_)
    body, n = triton_body({"b": flags})
    with fails(400, "input 'b'", "BOOL binary data must be bytes 0 or 1"):
        parse_infer_request(body[:-1] + b"\x07", n, [])


def test_parse_header_length():
    assert parse_header_length(None) is None
    assert parse_header_length("0") == 0 and parse_header_length("123") == 123
    for bad in ("abc", "-1", ""):
        with fails(400, "Inference-Header-Content-Length must be a non-negative integer"):
            parse_header_length(bad)


# ---------------------------------------------------------------------------------------------- validation

MODEL_IN = [TensorSpec("x", "FP32", (-1, 784)), TensorSpec("mask", "BOOL", (-1,))]
MODEL_OUT = [TensorSpec("probs", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1,))]


def test_validate_inputs_accepts_and_orders():
    req = parse({"mask": np.ones(5, bool), "x": sample("FP32", (5, 784))}, outputs=[("label", True)])
    feeds = validate_inputs(req, MODEL_IN, MODEL_OUT)
    assert list(feeds) == ["x", "mask"] and all(a.flags.c_contiguous for a in feeds.values())


@pytest.mark.parametrize("arrays, outputs, fragments", [
    ({"x": np.zeros((1, 784), np.float32)}, None,
     ["missing input 'mask'", "x (FP32 [-1, 784]), mask (BOOL [-1])"]),
    ({"x": np.zeros((1, 784), np.float32), "mask": np.ones(1, bool), "extra": np.zeros(1, np.float32)}, None,
     ["unknown input 'extra'", "x (FP32 [-1, 784])"]),
    ({"x": np.zeros((1, 784), np.float64), "mask": np.ones(1, bool)}, None,
     ["input 'x': expected datatype FP32, got FP64"]),
    ({"x": np.zeros((1, 783), np.float32), "mask": np.ones(1, bool)}, None,
     ["input 'x': expected shape [-1, 784], got [1, 783]"]),
    ({"x": np.zeros(784, np.float32), "mask": np.ones(1, bool)}, None,
     ["input 'x': expected shape [-1, 784], got [784]", "rank 2, got rank 1"]),
    ({"x": np.zeros((1, 784), np.float32), "mask": np.ones(1, bool)}, [("probs", True), ("logit", False)],
     ["unknown output 'logit' requested", "probs (FP32 [-1, 10]), label (INT64 [-1])"]),
])
def test_validate_inputs_errors(arrays, outputs, fragments):
    req = parse(arrays, outputs=outputs)
    with fails(400, *fragments):
        validate_inputs(req, MODEL_IN, MODEL_OUT)


# ---------------------------------------------------------------------------------------------- responses

OUTS = {"probs": sample("FP32", (2, 10)), "label": np.array([3, 7], np.int64)}


def test_response_all_outputs_json_by_default():
    body, headers = encode_infer_response("mlp", "1", "abc", OUTS, MODEL_OUT, None, {"note": "hi"})
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(body)
    assert "parameters" not in doc  # request parameters are instructions, not echoed (as Triton)
    assert [o["name"] for o in doc["outputs"]] == ["probs", "label"]
    assert doc["outputs"][1] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [3, 7]}
    res = triton_result(body, headers)
    np.testing.assert_array_equal(res.as_numpy("probs"), OUTS["probs"])
    body, _ = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, None, {})
    assert "id" not in json.loads(body) and "parameters" not in json.loads(body)


def test_requested_subset_order_and_per_output_binary():
    req = parse({"x": sample("FP32", (2, 784))}, outputs=[("label", True), ("probs", False)])
    body, headers = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, req.outputs, req.parameters)
    assert headers["Content-Type"] == "application/octet-stream"
    n = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(body[:n])
    assert [o["name"] for o in doc["outputs"]] == ["label", "probs"]
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 16} and len(body) == n + 16
    res = triton_result(body, headers)
    np.testing.assert_array_equal(res.as_numpy("label"), OUTS["label"])
    np.testing.assert_array_equal(res.as_numpy("probs"), OUTS["probs"])
    req = parse({"x": sample("FP32", (2, 784))}, outputs=[("probs", True)])
    body, headers = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, req.outputs, req.parameters)
    assert triton_result(body, headers).as_numpy("label") is None


def test_binary_data_output_and_binary_default():
    # tritonclient with no outputs listed sends binary_data_output: every output comes back binary
    req = parse({"x": sample("FP32", (2, 784))})
    body, headers = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, req.outputs, req.parameters)
    n = int(headers["Inference-Header-Content-Length"])
    assert all("data" not in o for o in json.loads(body[:n])["outputs"])
    np.testing.assert_array_equal(triton_result(body, headers).as_numpy("probs"), OUTS["probs"])
    # an output's own binary_data wins over binary_data_output
    wanted = [RequestedOutput("probs", False, {"binary_data": False}), RequestedOutput("label", None, {})]
    body, headers = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, wanted, {"binary_data_output": True})
    n = int(headers["Inference-Header-Content-Length"])
    assert ["data" in o for o in json.loads(body[:n])["outputs"]] == [True, False]
    # binary_data_output false wins over the server's default; the default applies when nothing is said
    body, headers = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, None, {"binary_data_output": False},
                                          binary_default=True)
    assert headers == {"Content-Type": "application/json"}
    body, headers = encode_infer_response("mlp", "1", None, OUTS, MODEL_OUT, None, {}, binary_default=True)
    assert "Inference-Header-Content-Length" in headers


def test_non_finite_floats_in_json_responses():
    """Triton writes NaN / Infinity literals (rapidjson kWriteNanAndInfFlag), not orjson's null; so do we."""
    y = np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)
    body, headers = encode_infer_response("m", "1", None, {"y": y}, [TensorSpec("y", "FP32", (-1, 4))], None, {})
    assert b"[NaN,Infinity,-Infinity,0.5]" in body
    np.testing.assert_array_equal(triton_result(body, headers).as_numpy("y"), y)
    np.testing.assert_array_equal(np.array(json.loads(body)["outputs"][0]["data"], np.float32), y.ravel())


def test_outputs_take_the_declared_datatype():
    body, headers = encode_infer_response("m", "1", None, {"probs": OUTS["probs"].astype(np.float64),
                                                           "label": OUTS["label"]}, MODEL_OUT, None, {})
    got = triton_result(body, headers).as_numpy("probs")
    assert got.dtype == np.float32 and json.loads(body)["outputs"][0]["datatype"] == "FP32"
    with fails(500, "output 'label' was not produced", "['probs']"):
        encode_infer_response("m", "1", None, {"probs": OUTS["probs"]}, MODEL_OUT, None, {})


def test_error_body():
    assert json.loads(error_body("input 'x': expected datatype FP32, got FP64")) == {
        "error": "input 'x': expected datatype FP32, got FP64"}
    assert json.loads(error_body('quote " and \\')) == {"error": 'quote " and \\'}


@pytest.mark.parametrize("datatype, value", [("FP32", 1e39), ("FP16", 70000.0)])
def test_json_floats_beyond_the_datatype_range_are_400(datatype, value):
    body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": [1.0, value]}]})
    with pytest.raises(ProtocolError) as e:
        parse_infer_request(body.encode(), None, [TensorSpec("x", datatype, (2,))])
    assert e.value.status == 400 and "out of range for " + datatype in e.value.message
    # infinities sent as such are data, not overflow
    body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": [1.0, float("inf")]}]})
    assert np.isinf(parse_infer_request(body.encode(), None, [TensorSpec("x", datatype, (2,))]).inputs["x"][1])
