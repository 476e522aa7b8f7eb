"""The infer endpoint, and the ASGI fast path that serves it without FastAPI's routing and dependency
machinery.

``InferHandler`` turns (headers, body reader, model, version) into (status, body, headers): auth, limits,
decoding (protocol.py), batching (batching.py), encoding, compression, metrics. ``InferFastPath`` is a
plain ASGI middleware that matches ``POST /v2/models/{m}[/versions/{v}]/infer`` itself and calls the
handler straight from the ASGI messages: FastAPI's per-request route matching, dependency solving and
Request/Response objects cost more than decoding, batching and encoding together (docs/serve.md has
the profile). The FastAPI routes of the same paths stay, for /docs, and call the same handler.
"""
from __future__ import annotations

import asyncio
import gzip
import hmac
import re
import time
import traceback
import zlib

from .protocol import ProtocolError, decompress, parse_header_length, parse_infer_request, validate_inputs
from .response import encode_infer_response, error_body

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
COMPRESS_MIN_BYTES = 4096  # smaller responses go out as they are: compressing them costs more than it saves
JSON_HEADERS = {"Content-Type": "application/json"}


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def authorize(config, headers, repository=False):
    """401 unless the bearer token matches (the same message for a missing and a wrong token)."""
    key = config.repository_key if repository and config.repository_key else config.api_key
    if key is None:
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ProtocolError(401, "missing or invalid bearer token")


def error_headers(exc):
    h = dict(JSON_HEADERS)
    h.update(getattr(exc, "headers", None) or {})
    if exc.status == 401:
        h["WWW-Authenticate"] = "Bearer"
    return h


class InferHandler:
    def __init__(self, state):
        self.state = state

    async def __call__(self, headers, read_body, model_name, model_version=None):
        """``headers``: lower-case name -> value; ``read_body(limit)`` -> bytes. Returns (status, body, headers)."""
        state, config = self.state, self.state.config
        t0 = time.perf_counter()
        status, version = 200, None
        try:
            authorize(config, headers)
            version = state.repository.get(model_name, model_version).model.version  # 404 / 503 before the body
            if state.draining:
                raise ProtocolError(503, "server is shutting down; not accepting new requests")
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > config.max_request_bytes:
                raise ProtocolError(413, f"request body is {int(declared)} bytes; the limit is "
                                         f"{config.max_request_bytes} bytes (ember serve --max-request-mb)")
            body = await read_body(config.max_request_bytes)
            body = decompress(body, headers.get("content-encoding"), config.max_decompressed_bytes)
            # looked up again after the awaits: a reload may have swapped versions while the body arrived
            batcher = state.repository.get(model_name, model_version)
            model = batcher.model
            version = model.version
            req = parse_infer_request(body, parse_header_length(headers.get("inference-header-content-length")),
                                      model.inputs)
            arrays = validate_inputs(req, model.inputs, model.outputs)
            try:
                outputs = await batcher.infer(arrays, _timeout(req.parameters, config.request_timeout_s))
            except (ValueError, TypeError, IndexError) as e:  # the model rejected inputs the specs allow
                raise ProtocolError(400, f"model {model_name!r}: {e}") from None
            out, out_headers = encode_infer_response(model.name, model.version, req.id, outputs, model.outputs,
                                                     req.outputs, req.parameters)
            return (200, *_compressed(out, out_headers, headers.get("accept-encoding")))
        except ProtocolError as e:
            status = e.status
            return e.status, error_body(e.message), error_headers(e)
        except (asyncio.CancelledError, ClientGone):  # the client went away (or shutdown): no answer is sent
            status = 499
            raise
        except Exception as e:  # a bug on our side: say so, keep serving
            status = 500
            traceback.print_exc()
            return 500, error_body(f"model {model_name!r} failed: {type(e).__name__}: {e}"), dict(JSON_HEADERS)
        finally:
            if version is not None:  # only loaded versions get label sets
                state.metrics.request_done(model_name, version, status, time.perf_counter() - t0)


class InferFastPath:
    """ASGI middleware: infer requests go straight to the handler; everything else to the FastAPI app."""

    def __init__(self, app, handler: InferHandler):
        self.app, self.handler = app, handler

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            m = INFER_PATH.fullmatch(scope["path"])
            if m is not None:
                return await self._infer(scope, receive, send, m.group(1), m.group(2))
        await self.app(scope, receive, send)

    async def _infer(self, scope, receive, send, model, version):
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        async def read_body(limit):
            chunks, size, more = [], 0, True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(413, f"request body exceeds the limit of {limit} bytes "
                                             "(ember serve --max-request-mb)")
                chunks.append(chunk)
                more = msg.get("more_body", False)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        try:
            status, body, out_headers = await self.handler(headers, read_body, model, version)
        except ClientGone:
            return
        raw = [(b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _compressed(body, headers, accept):
    """gzip / deflate the response when the client accepts it (Triton does the same for large responses)."""
    if accept is None or len(body) < COMPRESS_MIN_BYTES:
        return body, headers
    accepted = {a.split(";")[0].strip().lower() for a in accept.split(",")}
    if "gzip" in accepted:
        body, enc = gzip.compress(body, compresslevel=1), "gzip"
    elif "deflate" in accepted:
        body, enc = zlib.compress(body, 1), "deflate"
    else:
        return body, headers
    return body, {**headers, "Content-Encoding": enc}


def _timeout(params, default_s):
    """Triton's per-request ``timeout`` parameter is in microseconds; it can only shorten the server's."""
    t = params.get("timeout") if params else None
    if t is None:
        return default_s
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:  # NaN too
        raise ProtocolError(400, f"parameter 'timeout' must be a positive number of microseconds, got {t!r}")
    return min(default_s, t / 1e6)
