"""The Open Inference Protocol (KServe V2) wire codec, requests: parsing (JSON, Triton's binary tensor
extension, raw binary, gzip/deflate bodies) and validation against a model's tensor specs. Responses are
encoded by response.py.

Pure functions over bytes and numpy arrays; the HTTP layer (serve/infer.py, serve/app.py) maps
ProtocolError.status to the response status. The reference client is tritonclient.http.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

import numpy as np
import orjson


class ProtocolError(Exception):
    """A request the server cannot serve; ``status`` is the HTTP status, ``message`` names what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}   # extra response headers (415 lists the encodings we accept)


DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items()}
_SUPPORTED = ", ".join(DATATYPES)
_KNOWN_UNSUPPORTED = ("BYTES", "BF16")   # V2 datatypes ember does not serve: 501, not 400


def datatype_of(dtype) -> str:
    """The V2 datatype string of a numpy dtype ("FP32" for float32)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSUV":
        raise ProtocolError(501, f"datatype BYTES is not supported; supported: {_SUPPORTED}")
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise ProtocolError(501, f"numpy dtype {dt} has no supported V2 datatype; supported: {_SUPPORTED}")
    return name


@dataclass
class TensorSpec:
    """What a model declares for one input or output; -1 in ``shape`` is a symbolic (any-size) dim."""
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None      # the output's parameters.binary_data, None if not given
    parameters: dict


@dataclass
class InferRequest:
    id: str | None
    parameters: dict
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None   # None = all outputs


# ---------------------------------------------------------------------------------------------- bodies

_CHUNK = 64 * 1024


def parse_header_length(value: str | None) -> int | None:
    """The Inference-Header-Content-Length header as an int (None when absent)."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ProtocolError(400, f"Inference-Header-Content-Length must be a non-negative integer, got {value!r}")
    return n


def _inflate(data: bytes, wbits: int, max_bytes: int, encoding: str) -> bytes:
    # max_length bounds each step's output, so a zip bomb stops at max_bytes plus one chunk
    chunks, total = [], 0
    while True:   # one pass per gzip member (RFC 1952 allows several back to back)
        d = zlib.decompressobj(wbits)
        while not d.eof:
            chunk = d.decompress(data, _CHUNK)
            total += len(chunk)
            if total > max_bytes:
                raise ProtocolError(413, f"{encoding} request body decompresses to more than {max_bytes} bytes")
            chunks.append(chunk)
            data = d.unconsumed_tail
            if not data and len(chunk) < _CHUNK:
                break   # all input consumed and no output pending
        if not d.eof:
            raise ProtocolError(400, f"{encoding} request body is truncated")
        data = d.unused_data
        if not data:
            return b"".join(chunks)
        if wbits != 31:
            raise ProtocolError(400, f"{encoding} request body has {len(data)} bytes after the compressed stream")


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The request body decoded per its Content-Encoding (gzip, deflate or identity), at most ``max_bytes``.

    An unknown encoding is 415 with ``Accept-Encoding: gzip, deflate``, as Triton answers."""
    enc = (content_encoding or "identity").strip().lower()
    if enc == "identity":
        if len(body) > max_bytes:
            raise ProtocolError(413, f"request body has {len(body)} bytes; the limit is {max_bytes} bytes")
        return body
    try:
        if enc in ("gzip", "x-gzip"):
            return _inflate(body, 31, max_bytes, enc)
        if enc == "deflate":
            # HTTP's "deflate" is the zlib format (what tritonclient sends); some clients send raw deflate
            try:
                return _inflate(body, 15, max_bytes, enc)
            except zlib.error:
                return _inflate(body, -15, max_bytes, enc)
    except zlib.error as e:
        raise ProtocolError(400, f"{enc} request body cannot be decompressed: {e}") from None
    raise ProtocolError(415, f"Content-Encoding {content_encoding!r} is not supported; supported: gzip, deflate, "
                             "identity", headers={"Accept-Encoding": "gzip, deflate"})


# ---------------------------------------------------------------------------------------------- requests

def _load_json(raw) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:   # tritonclient (rapidjson) and Triton write NaN/Infinity literals, which orjson rejects
            return json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(400, f"request JSON is malformed: {e}") from None


def _check_datatype(where: str, datatype) -> np.dtype:
    if datatype in DATATYPES:
        return DATATYPES[datatype]
    if datatype in _KNOWN_UNSUPPORTED:
        raise ProtocolError(501, f"{where}: datatype {datatype} is not supported; supported: {_SUPPORTED}")
    raise ProtocolError(400, f"{where}: unknown datatype {datatype!r}; supported: {_SUPPORTED}")


_NONE = object()


def _first_leaf(data, bad):
    """The first leaf of nested lists for which bad(leaf) holds, else _NONE (error paths only)."""
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            if bad(v):
                return v
        else:
            stack.pop()
    return _NONE


def _show(v) -> str:
    """A JSON value as the client wrote it (true, null, "abc")."""
    try:
        return orjson.dumps(v).decode()
    except TypeError:
        return repr(v)


def _from_json_data(name: str, datatype: str, shape: list[int], data) -> np.ndarray:
    where, dt = f"input {name!r}", DATATYPES[datatype]
    if not isinstance(data, list):
        raise ProtocolError(400, f"{where}: 'data' must be a list, got {type(data).__name__}")
    try:
        arr = np.array(data)   # inferred dtype first: it tells numbers, bools and the rest apart
    except (ValueError, OverflowError):
        raise ProtocolError(400, f"{where}: nested 'data' is ragged (rows of different lengths); "
                                 f"expected shape {shape}") from None
    count = math.prod(shape)
    if arr.ndim > 1 and list(arr.shape) != shape:
        raise ProtocolError(400, f"{where}: nested 'data' has shape {list(arr.shape)} but the input's shape "
                                 f"is {shape}")
    if arr.size != count:
        raise ProtocolError(400, f"{where}: shape {shape} needs {count} elements, 'data' has {arr.size}")
    if count == 0:
        return np.zeros(shape, dt)
    kind = arr.dtype.kind
    # np.array has already folded bools mixed with numbers into numbers: such bools are accepted as 0/1
    if datatype == "BOOL":
        if kind != "b":
            bad = _first_leaf(data, lambda v: not isinstance(v, bool))
            raise ProtocolError(400, f"{where}: BOOL data must be true/false, got {_show(bad)}")
    elif dt.kind == "f":
        if kind not in "iuf":
            bad = _first_leaf(data, lambda v: type(v) not in (int, float))
            if bad is not _NONE:
                raise ProtocolError(400, f"{where}: {datatype} data must be numbers, got {_show(bad)}")
            arr = np.array(data, np.float64)   # ints beyond 64 bits (object dtype): still numbers
    else:
        info = np.iinfo(dt)
        lo, hi = int(info.min), int(info.max)
        if kind not in "iu" or int(arr.min()) < lo or int(arr.max()) > hi:
            bad = _first_leaf(data, lambda v: type(v) is not int or not lo <= v <= hi)
            if type(bad) is int:
                raise ProtocolError(400, f"{where}: value {bad} is out of range for {datatype} [{lo}, {hi}]")
            if bad is not _NONE:
                raise ProtocolError(400, f"{where}: {datatype} data must be integers, got {_show(bad)}")
            arr = np.array(data, dt)   # valid ints numpy typed as float64: UINT64 above 2**63 next to small ones
    if dt.kind == "f" and dt.itemsize < arr.dtype.itemsize:
        with np.errstate(over="raise", invalid="ignore"):  # NaN/Inf given as such stay; 1e39 -> FP32 does not
            try:
                return arr.astype(dt).reshape(shape)
            except FloatingPointError:
                big = float(np.abs(arr[np.isfinite(arr)]).max())
                raise ProtocolError(400, f"{where}: value {big:g} is out of range for {datatype} "
                                         f"(largest {float(np.finfo(dt).max):g})") from None
    return arr.astype(dt).reshape(shape)


def _raw_binary(body: bytes, model_inputs: list[TensorSpec]) -> InferRequest:
    # Triton's raw binary request: no JSON header, the body is the only input's data, outputs binary
    if len(model_inputs) != 1:
        raise ProtocolError(400, f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with "
                                 f"one input; this model has {len(model_inputs)}: {[s.name for s in model_inputs]}")
    spec = model_inputs[0]
    where, dt = f"input {spec.name!r}", _check_datatype(f"input {spec.name!r}", spec.datatype)
    shape, free = list(spec.shape), [i for i, d in enumerate(spec.shape) if d < 0]
    if len(free) > 1:
        raise ProtocolError(400, f"{where}: shape {shape} has {len(free)} symbolic dims; a raw binary request "
                                 "can infer at most one from the byte count")
    fixed = math.prod(d for d in shape if d >= 0) * dt.itemsize
    if free and fixed:
        shape[free[0]] = len(body) // fixed
    if math.prod(shape) * dt.itemsize != len(body):
        raise ProtocolError(400, f"{where}: raw binary body has {len(body)} bytes, which is not a whole "
                                 f"{spec.datatype} tensor of shape {list(spec.shape)}")
    x = _from_binary(where, spec.datatype, body, 0, shape)
    return InferRequest(None, {"binary_data_output": True}, {spec.name: x}, None)


def _from_binary(where: str, datatype: str, body, offset: int, shape: list[int]) -> np.ndarray:
    dt = DATATYPES[datatype]
    # a copy: a view of the immutable body is read-only, which numba compiles as a separate array type
    arr = np.frombuffer(body, dt, math.prod(shape), offset).reshape(shape).copy()
    if datatype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
        raise ProtocolError(400, f"{where}: BOOL binary data must be bytes 0 or 1")
    return arr


def _params(where: str, obj: dict) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise ProtocolError(400, f"{where}: 'parameters' must be an object, got {type(p).__name__}")
    return p


def parse_infer_request(body: bytes, header_length: int | None, model_inputs: list[TensorSpec]) -> InferRequest:
    """Parse an infer request body; ``header_length`` is the Inference-Header-Content-Length (None if absent).

    Checks the request is well formed; names and shapes against the model are validate_inputs' job."""
    if header_length == 0:
        return _raw_binary(body, model_inputs)
    n = len(body) if header_length is None else header_length
    if n > len(body):
        raise ProtocolError(400, f"Inference-Header-Content-Length is {n} but the request body has only "
                                 f"{len(body)} bytes")
    req = _load_json(body if header_length is None else memoryview(body)[:n])
    if not isinstance(req, dict):
        raise ProtocolError(400, f"request JSON must be an object, got {type(req).__name__}")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(400, f"request 'id' must be a string, got {rid!r}")
    params = _params("request", req)
    if not isinstance(params.get("binary_data_output", False), bool):
        raise ProtocolError(400, "request parameter 'binary_data_output' must be true or false, got "
                                 f"{params['binary_data_output']!r}")
    items = req.get("inputs")
    if not isinstance(items, list):
        raise ProtocolError(400, "request JSON has no 'inputs' list" if items is None else
                                 f"request 'inputs' must be a list, got {type(items).__name__}")
    inputs, pending, declared = {}, {}, 0   # pending: binary inputs, read once the sizes add up
    for i, t in enumerate(items):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError(400, f"request input #{i} has no 'name'")
        name = t["name"]
        where = f"input {name!r}"
        if name in inputs or name in pending:
            raise ProtocolError(400, f"{where} is given twice")
        for field in ("shape", "datatype"):
            if field not in t:
                raise ProtocolError(400, f"{where} has no '{field}'")
        shape, datatype = t["shape"], t["datatype"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ProtocolError(400, f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
        dt = _check_datatype(where, datatype)
        p = _params(where, t)
        if "shared_memory_region" in p:
            raise ProtocolError(501, f"{where}: shared-memory inputs are not supported; send 'data' or binary data")
        size = p.get("binary_data_size")
        if size is None:
            if "data" not in t:
                raise ProtocolError(400, f"{where} has neither 'data' nor parameters.binary_data_size")
            inputs[name] = _from_json_data(name, datatype, shape, t["data"])
            continue
        if "data" in t:
            raise ProtocolError(400, f"{where} has both 'data' and parameters.binary_data_size; give one")
        if type(size) is not int or size < 0:
            raise ProtocolError(400, f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        if header_length is None:
            raise ProtocolError(400, f"{where} declares binary_data_size {size} but the request has no binary data "
                                     "(no Inference-Header-Content-Length header)")
        need = math.prod(shape) * dt.itemsize
        if size != need:
            raise ProtocolError(400, f"{where}: binary_data_size is {size} but shape {shape} of {datatype} needs "
                                     f"{need} bytes")
        pending[name] = (datatype, shape)
        declared += size
    if len(body) - n != declared:
        raise ProtocolError(400, f"request body has {len(body) - n} bytes of binary data after the JSON header "
                                 f"but inputs declare {declared}")
    offset = n
    for name, (datatype, shape) in pending.items():   # binary tensors follow the JSON in input order
        inputs[name] = _from_binary(f"input {name!r}", datatype, body, offset, shape)
        offset += inputs[name].nbytes
    return InferRequest(rid, params, inputs, _parse_outputs(req))


def _parse_outputs(req: dict) -> list[RequestedOutput] | None:
    items = req.get("outputs")
    if items is None:
        return None
    if not isinstance(items, list):
        raise ProtocolError(400, f"request 'outputs' must be a list, got {type(items).__name__}")
    out, seen = [], set()
    for i, t in enumerate(items):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError(400, f"requested output #{i} has no 'name'")
        where = f"output {t['name']!r}"
        if t["name"] in seen:
            raise ProtocolError(400, f"{where} is requested twice")
        seen.add(t["name"])
        p = _params(where, t)
        binary = p.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(400, f"{where}: binary_data must be true or false, got {binary!r}")
        if "shared_memory_region" in p:
            raise ProtocolError(501, f"{where}: shared-memory outputs are not supported")
        if p.get("classification"):
            raise ProtocolError(501, f"{where}: the classification extension is not supported")
        out.append(RequestedOutput(t["name"], binary, p))
    return out


def _describe(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in specs)


def validate_inputs(req: InferRequest, model_inputs: list[TensorSpec],
                    model_outputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Check the request's inputs and requested outputs against the model; name -> array in model order."""
    declared = {s.name for s in model_inputs}
    for name in req.inputs:
        if name not in declared:
            raise ProtocolError(400, f"unknown input {name!r}; the model's inputs are: {_describe(model_inputs)}")
    feeds = {}
    for spec in model_inputs:
        where = f"input {spec.name!r}"
        if spec.name not in req.inputs:
            raise ProtocolError(400, f"missing input {spec.name!r}; the model's inputs are: "
                                     f"{_describe(model_inputs)}")
        arr = req.inputs[spec.name]
        got = datatype_of(arr.dtype)
        if got != spec.datatype:
            raise ProtocolError(400, f"{where}: expected datatype {spec.datatype}, got {got}")
        want = list(spec.shape)
        if arr.ndim != len(want) or any(w >= 0 and w != d for w, d in zip(want, arr.shape)):
            rank = f" (rank {len(want)}, got rank {arr.ndim})" if arr.ndim != len(want) else ""
            raise ProtocolError(400, f"{where}: expected shape {want}, got {list(arr.shape)}{rank}")
        feeds[spec.name] = np.ascontiguousarray(arr)
    if req.outputs is not None:
        names = [s.name for s in model_outputs]
        for o in req.outputs:
            if o.name not in names:
                raise ProtocolError(400, f"unknown output {o.name!r} requested; the model's outputs are: "
                                         f"{_describe(model_outputs)}")
    return feeds
