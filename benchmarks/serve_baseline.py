"""The serve-mlp peer: a minimal hand-written FastAPI + ONNX Runtime server, as a typical user writes one.

    python benchmarks/serve_baseline.py MODEL.onnx [--port 8001] [--threads 2] [--handler async|sync]

``POST /predict`` takes ``{"data": [784 floats]}`` (one B=1 request, validated by a pydantic model) and
returns ``{"logits": [...]}``; ``GET /health`` answers 200 once the session is loaded. ONNX Runtime runs
on the CPU provider with ``intra_op_num_threads=--threads`` (BENCHMARKS.md: 2, like ember) and one
inter-op thread. uvicorn runs the app the way ``ember serve`` does: ``uvicorn.run`` on 127.0.0.1, log
level warning, no access log, loop and HTTP parser left on uvicorn's defaults ("auto": uvloop and
httptools, both installed with ``uvicorn[standard]``), one worker process.

``--handler async`` (the default) declares the endpoint ``async def``: the ~30-50 us ORT call runs on
the event loop. ``--handler sync`` declares it ``def``: FastAPI then runs each request in its thread
pool (the other common way to write it; it pays a thread hand-off per request).
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Req(BaseModel):
    data: list[float]


def make_app(model_path: str, threads: int = 2, handler: str = "async") -> FastAPI:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    n_features = sess.get_inputs()[0].shape[1]

    app = FastAPI(title="baseline: FastAPI + ONNX Runtime")

    def infer(req: Req) -> dict:
        x = np.asarray(req.data, dtype=np.float32).reshape(1, n_features)
        logits = sess.run(None, {input_name: x})[0]
        return {"logits": logits[0].tolist()}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    if handler == "sync":
        @app.post("/predict")
        def predict(req: Req):
            return infer(req)
    else:
        @app.post("/predict")
        async def predict(req: Req):
            return infer(req)

    return app


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an .onnx file with one float32 input of shape (batch, features)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    ap.add_argument("--handler", choices=("async", "sync"), default="async")
    args = ap.parse_args(argv)
    app = make_app(args.model, args.threads, args.handler)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
