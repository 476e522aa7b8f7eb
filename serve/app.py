"""The FastAPI app: Open Inference Protocol (KServe V2) routes, Triton's model repository and
configuration extensions, Prometheus metrics, bearer-token auth and readiness that follows model state.

The infer route reads the raw body and answers with a plain Response: the V2 codec (protocol.py, response.py) does
the parsing and encoding with orjson, so no pydantic validation sits on the hot path. The pydantic
models in schemas.py describe the routes in the OpenAPI docs at /docs.
"""
from __future__ import annotations

import asyncio
import sys
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import ember

from . import schemas
from .config import ServerConfig
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from .infer import InferFastPath, InferHandler, authorize as check_token, error_headers
from .protocol import ProtocolError
from .response import error_body
from .repository import Repository

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]
JSON = "application/json"


class ServerState:
    """What the routes share: the repository, metrics, config and the lifecycle flags."""

    def __init__(self, path, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self.repository = Repository(path, config, self.metrics)
        self.started = False  # the startup loads have finished
        self.draining = False  # SIGTERM or shutdown: not ready, no new requests
        self.load_errors: dict[str, str] = {}
        self.on_ready = None  # called once with this state when the startup loads finish
        # False: models load in the background and the health routes answer meanwhile (one process).
        # True: the process accepts no connection before its models are ready: with --workers N the port is
        # shared, and a worker still loading must not take requests another worker could answer.
        self.load_before_serving = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.repository.ready()

    async def startup(self):
        async def one(name):
            try:
                await self.repository.load(name)
            except ProtocolError as e:
                self.load_errors[name] = e.message
                print(f"ember serve: {e.message}", file=sys.stderr, flush=True)

        await asyncio.gather(*(one(n) for n in self.repository.available()))
        self.started = True
        if self.on_ready is not None:
            self.on_ready(self)

    async def shutdown(self):
        self.draining = True
        await self.repository.close()


def _json(data, status=200, headers=None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def _error(status, message, headers=None) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)


def create_app(repository_or_path, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving a ``.ember``/``.onnx`` file or a model repository directory. Models load in
    the background when the app starts (its lifespan); ``/v2/health/ready`` turns 200 once they have."""
    config = config or ServerConfig()
    state = ServerState(repository_or_path, config)

    @asynccontextmanager
    async def lifespan(app):
        if state.load_before_serving:
            await state.startup()
            loader = None
        else:
            loader = asyncio.create_task(state.startup())
        yield
        if loader is not None:
            loader.cancel()
        await state.shutdown()

    app = FastAPI(title="ember serve", version=ember.__version__, lifespan=lifespan,
                  description="Open Inference Protocol (KServe V2) server for ember models. Works with "
                              "tritonclient.http; JSON and binary tensor data; Triton's model repository "
                              "extension; Prometheus metrics at /metrics.")
    app.state.ember = state
    default_openapi = app.openapi

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = schemas.add_request_schemas(default_openapi())
        return app.openapi_schema

    app.openapi = openapi

    # ---- errors: {"error": "..."} everywhere, never a bare 500 for a client mistake -------------
    @app.exception_handler(ProtocolError)
    async def _protocol_error(request, exc):
        return _error(exc.status, exc.message, error_headers(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        msg = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else \
            f"no route {request.method} {request.url.path}; see /docs for the API"
        return _error(exc.status_code, str(msg))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(400, "invalid request: " + "; ".join(parts))

    def authorize(request: Request, repository=False):
        check_token(config, request.headers, repository)

    # ---- server ---------------------------------------------------------------------------
    @app.get("/v2", tags=["server"], summary="Server metadata", responses={200: {"model": schemas.ServerMetadata}})
    async def server_metadata():
        return _json({"name": "ember", "version": ember.__version__, "extensions": EXTENSIONS})

    @app.get("/v2/health/live", tags=["health"], summary="Liveness: the process answers")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=["health"],
             summary="Readiness: models loaded and warmed, not draining (503 otherwise)")
    async def ready():
        return Response(status_code=200 if state.ready else 503)

    @app.get("/metrics", tags=["server"], summary="Prometheus metrics")
    async def metrics():
        for name, e in state.repository.models.items():
            for v, b in e.versions.items():
                state.metrics.pending.labels(name, v).set(b.pending)
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # ---- models ---------------------------------------------------------------------------
    def model_metadata(name, version=None):
        m = state.repository.get(name, version).model
        e = state.repository.models[name]
        return {"name": name, "versions": sorted(e.versions, key=int), "platform": m.platform,
                "inputs": [_spec(s) for s in m.inputs], "outputs": [_spec(s) for s in m.outputs]}

    meta_doc = {200: {"model": schemas.ModelMetadata}, 404: {"model": schemas.Error}}

    @app.get("/v2/models/{model_name}", tags=["models"], summary="Model metadata", responses=meta_doc)
    async def model_meta(model_name: str, request: Request):
        authorize(request)
        return _json(model_metadata(model_name))

    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=["models"],
             summary="Model version metadata", responses=meta_doc)
    async def model_version_meta(model_name: str, model_version: str, request: Request):
        authorize(request)
        return _json(model_metadata(model_name, model_version))

    @app.get("/v2/models/{model_name}/ready", tags=["models"], summary="Model readiness")
    async def model_ready(model_name: str, request: Request):
        authorize(request)
        state.repository.get(model_name)
        return Response(status_code=200)

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=["models"],
             summary="Model version readiness")
    async def model_version_ready(model_name: str, model_version: str, request: Request):
        authorize(request)
        state.repository.get(model_name, model_version)
        return Response(status_code=200)

    @app.get("/v2/models/{model_name}/config", tags=["models"],
             summary="Triton-style model configuration (for perf_analyzer-like tools)")
    async def model_config(model_name: str, request: Request):
        authorize(request)
        return _json(triton_config(state, model_name))

    # ---- inference ------------------------------------------------------------------------
    handler = InferHandler(state)
    app.add_middleware(InferFastPath, handler=handler)

    async def infer(request: Request, model_name: str, model_version=None):
        # reached only when the app is mounted without its middleware: InferFastPath answers these paths
        async def read_body(limit):
            return await _read_body(request, limit)

        status, body, headers = await handler({k.lower(): v for k, v in request.headers.items()}, read_body,
                                               model_name, model_version)
        return Response(body, status_code=status, headers=headers)

    infer_doc = dict(tags=["inference"], openapi_extra=schemas.INFER_REQUEST_DOC,
                     responses={200: {"model": schemas.InferResponse}, 400: {"model": schemas.Error},
                                404: {"model": schemas.Error}, 413: {"model": schemas.Error},
                                503: {"model": schemas.Error}})

    @app.post("/v2/models/{model_name}/infer", summary="Run inference on the latest version", **infer_doc)
    async def infer_latest(model_name: str, request: Request):
        return await infer(request, model_name)

    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", summary="Run inference on a version",
              **infer_doc)
    async def infer_version(model_name: str, model_version: str, request: Request):
        return await infer(request, model_name, model_version)

    # ---- repository extension -------------------------------------------------------------
    @app.post("/v2/repository/index", tags=["repository"], summary="Models in the repository and their state",
              responses={200: {"model": list[schemas.IndexEntry]}})
    async def repo_index(request: Request):
        authorize(request, repository=True)
        body = await _small_json(request)
        return _json(state.repository.index(ready_only=bool(body.get("ready", False))))

    @app.post("/v2/repository/models/{model_name}/load", tags=["repository"],
              summary="Load or reload a model (new versions serve before old ones drain)")
    async def repo_load(model_name: str, request: Request):
        authorize(request, repository=True)
        params = (await _small_json(request)).get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(400, f"load request 'parameters' must be an object, got {type(params).__name__}")
        await state.repository.load(model_name, params.get("config"))
        return _json({})

    @app.post("/v2/repository/models/{model_name}/unload", tags=["repository"],
              summary="Unload a model after its queued requests finish")
    async def repo_unload(model_name: str, request: Request):
        authorize(request, repository=True)
        await _small_json(request)
        await state.repository.unload(model_name)
        return _json({})

    return app


# ---- helpers ------------------------------------------------------------------------------
def _spec(s):
    return {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(413, f"request body is {int(declared)} bytes; the limit is {limit} bytes "
                                 "(ember serve --max-request-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"request body exceeds the limit of {limit} bytes (ember serve --max-request-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _small_json(request: Request) -> dict:
    body = await _read_body(request, 1 << 20)
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError(400, f"request body must be a JSON object, got {type(data).__name__}")
    return data


_TRITON_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
                 "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                 "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64"}


def triton_config(state, name) -> dict:
    """The model's configuration as Triton reports it: with max_batch_size > 0, dims leave out the batch."""
    b = state.repository.get(name)
    m, s = b.model, state.repository.models[name].settings
    mbs = b.max_rows if b.batching else 0

    def tensors(specs):
        return [{"name": t.name, "data_type": _TRITON_TYPES[t.datatype],
                 "dims": list(t.shape[1:] if mbs else t.shape)} for t in specs]

    policy = s.version_policy.model_dump(exclude_none=True) or {"latest": {"num_versions": 1}}
    cfg = {"name": name, "platform": m.platform, "backend": "ember" if m.platform == "ember_program" else "onnxruntime",
           "version_policy": policy, "max_batch_size": mbs, "input": tensors(m.inputs), "output": tensors(m.outputs),
           "instance_group": [{"count": s.instances, "kind": "KIND_GPU" if s.device.startswith("cuda") else "KIND_CPU"}]}
    if mbs:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": int(s.max_queue_delay_ms * 1000),
                                   "default_queue_policy": {"max_queue_size": s.max_queue_size}}
    return cfg
