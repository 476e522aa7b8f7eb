"""Running the app under uvicorn: the ready banner, SIGTERM draining, and several worker processes.

On SIGTERM (or Ctrl-C) readiness turns false at once, new infer requests get 503, uvicorn stops
accepting connections and waits up to ``drain_timeout_s`` for in-flight requests (queued ones
included: they are in flight from the client's side), then the models are released and the process
exits 0.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import threading

import orjson
import uvicorn

from .app import create_app
from .config import ServerConfig

_FACTORY_ENV = "EMBER_SERVE_FACTORY_ARGS"


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app it is draining the moment a signal arrives."""

    def __init__(self, config, state):
        super().__init__(config)
        self._ember_state = state

    def handle_exit(self, sig, frame):
        self._ember_state.draining = True
        super().handle_exit(sig, frame)


def banner(state, url) -> str:
    """What ``ember serve`` prints when ready: the URL and every model with its signature."""
    lines = [f"ember serve: ready at {url} (pid {os.getpid()})"]
    for name, e in sorted(state.repository.models.items()):
        b = e.latest()
        if b is None:
            continue
        m = b.model
        sig = ", ".join(f"{s.name}: {s.datatype}{list(s.shape)}" for s in m.inputs)
        out = ", ".join(f"{s.name}: {s.datatype}{list(s.shape)}" for s in m.outputs)
        batching = f"batching up to {b.max_rows}" if b.batching else "not batched"
        dev = getattr(getattr(m, "program", None), "device", None)
        where = f" on {dev}" if dev is not None and dev.type != "cpu" else ""
        lines.append(f"  {name} v{','.join(sorted(e.versions, key=int))} [{m.platform}{where}, {batching}]: ({sig}) -> ({out})")
    for name, err in sorted(state.load_errors.items()):
        lines.append(f"  {name}: NOT LOADED: {err}")
    return "\n".join(lines)


def _uvicorn_config(app, cfg: ServerConfig, **kw):
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                          timeout_graceful_shutdown=cfg.drain_timeout_s, **kw)


def run(path, config: ServerConfig | None = None, on_ready=None) -> int:
    """Serve ``path`` until SIGTERM/Ctrl-C; returns the exit status. ``on_ready(state)`` runs once the
    models are loaded (default: print the banner)."""
    cfg = config or ServerConfig()
    if cfg.workers > 1:
        _check_port(cfg.host, cfg.port)
        return _run_workers(path, cfg)
    _check_port(cfg.host, cfg.port)
    app = create_app(path, cfg)
    state = app.state.ember
    url = f"http://{cfg.host}:{cfg.port}"
    state.on_ready = on_ready or (lambda st: print(banner(st, url), flush=True))
    server = _Server(_uvicorn_config(app, cfg), state)
    # uvicorn re-raises the signal that stopped it once it has shut down, to let the previous handler
    # act; a no-op one makes a drained SIGTERM / Ctrl-C end in a clean exit 0 instead of a kill or a traceback
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1


def _check_port(host, port):
    """Fail early, with one line, when the address is taken (uvicorn would log and exit 3 after loading)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _run_workers(path, cfg) -> int:
    """Several processes on one port (uvicorn's supervisor): each loads the models and serves."""
    os.environ[_FACTORY_ENV] = orjson.dumps({"path": path, "config": dataclasses.asdict(cfg)}).decode()
    print(f"ember serve: starting {cfg.workers} worker processes at http://{cfg.host}:{cfg.port}", flush=True)
    uvicorn.run("ember.serve.server:_worker_app", factory=True, workers=cfg.workers, host=cfg.host,
                port=cfg.port, log_level=cfg.log_level, access_log=False,
                timeout_graceful_shutdown=cfg.drain_timeout_s)
    return 0


def _worker_app():
    args = orjson.loads(os.environ[_FACTORY_ENV])
    cfg = ServerConfig(**args["config"])
    app = create_app(args["path"], cfg)
    url = f"http://{cfg.host}:{cfg.port}"
    app.state.ember.on_ready = lambda st: print(banner(st, url), file=sys.stdout, flush=True)
    app.state.ember.load_before_serving = True
    return app
