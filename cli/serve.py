"""``ember serve``: serve a model file, several files, or a model repository over the V2 protocol.

Flags not given fall back to ``EMBER_*`` environment variables (what the Docker image sets), then to
the defaults of ``ember.serve.ServerConfig``.
"""
from __future__ import annotations

import os
import sys

EXIT_BAD_INPUT = 2
DEMO_FILES = ("digits_cnn.ember", "digits_cnn_int8.ember")


def add_parser(sub):
    p = sub.add_parser(
        "serve", help="serve models over HTTP (KServe V2 / Triton protocol)",
        description="Serve .ember / .onnx models with the Open Inference Protocol (KServe V2): tritonclient.http, "
                    "KServe and curl work unchanged. PATH is a model file (served under its file name's stem), "
                    "several files, or a model repository <repo>/<model>/<version>/model.ember with optional "
                    "<repo>/<model>/config.json. Unset flags fall back to EMBER_* environment variables.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="model file(s) or repository directory "
                   "(default: $EMBER_MODEL_PATH)")
    p.add_argument("--demo", action="store_true", help="serve the models examples/train_digits.py wrote "
                   f"({', '.join(DEMO_FILES)}) from the current directory")
    p.add_argument("--model-name", help="name for a single model file or a folder holding model.ember itself "
                   "(default: the file's stem / the folder's name)")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, help="server processes sharing the port (default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="device for models whose config.json sets none")
    p.add_argument("--max-batch-size", type=int, help="rows per batched execution; 0 disables batching (default 64)")
    p.add_argument("--batch-delay-ms", type=float, help="how long a request waits for others to batch with "
                   "(default 0: batch what queues up while the model runs)")
    p.add_argument("--max-request-mb", type=float, help="largest request body in MiB (default 64; 413 past it)")
    p.add_argument("--request-timeout-s", type=float, help="longest a request may queue and run (default 60)")
    p.add_argument("--drain-timeout-s", type=float, help="on SIGTERM, how long in-flight requests may take (default 30)")
    p.add_argument("--warmup", type=int, help="synthetic requests per model before it is ready (default 1)")
    p.add_argument("--api-key-file", help="file holding the bearer token required by the model and infer routes")
    p.add_argument("--repository-key-file", help="file holding a separate bearer token for the repository "
                   "routes (default: the --api-key-file token)")
    p.set_defaults(func=cmd_serve)
    return p


def _read_key(path, flag):
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot read: {e.strerror or e}") from None
    if not key:
        raise ValueError(f"{flag} {path}: the file is empty")
    return key


def _paths(args):
    if args.demo:
        if args.paths:
            raise ValueError("give either --demo or PATH, not both")
        found = [f for f in DEMO_FILES if os.path.isfile(f)]
        if not found:
            raise ValueError(f"--demo serves {' and '.join(DEMO_FILES)} from the current directory "
                             f"({os.getcwd()}), and neither is there: run python examples/train_digits.py first")
        return found
    paths = args.paths or ([os.environ["EMBER_MODEL_PATH"]] if os.environ.get("EMBER_MODEL_PATH") else [])
    if not paths:
        raise ValueError("give a model file or repository directory (or set EMBER_MODEL_PATH, or use --demo)")
    for p in paths:
        if not os.path.exists(p):
            raise ValueError(f"{p}: no such file or directory")
    if len(paths) > 1 and any(os.path.isdir(p) for p in paths):
        raise ValueError("give one repository directory, or one or more model files, not a mix")
    return paths if len(paths) > 1 else paths[0]


def cmd_serve(args) -> int:
    from ember.serve.config import ConfigError, config_from_env
    from ember.serve.server import run

    try:
        path = _paths(args)
        given = dict(model_name=args.model_name, host=args.host, port=args.port, workers=args.workers, device=args.device,
                     max_batch_size=args.max_batch_size, batch_delay_ms=args.batch_delay_ms,
                     max_request_mb=args.max_request_mb, request_timeout_s=args.request_timeout_s,
                     drain_timeout_s=args.drain_timeout_s, warmup=args.warmup)
        if args.api_key_file:
            given["api_key"] = _read_key(args.api_key_file, "--api-key-file")
        if args.repository_key_file:
            given["repository_key"] = _read_key(args.repository_key_file, "--repository-key-file")
        cfg = config_from_env(**given)
        _check(cfg)
    except (ValueError, ConfigError) as e:
        print(f"ember serve: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return run(path, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"ember serve: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _check(cfg):
    checks = [(cfg.port, 0, 65535, "--port"), (cfg.workers, 1, 64, "--workers"),
              (cfg.max_batch_size, 0, 1 << 16, "--max-batch-size"), (cfg.batch_delay_ms, 0, 60_000, "--batch-delay-ms"),
              (cfg.max_request_mb, 0.001, 1 << 16, "--max-request-mb"), (cfg.request_timeout_s, 0.001, 86400,
                                                                         "--request-timeout-s"),
              (cfg.drain_timeout_s, 0, 86400, "--drain-timeout-s"), (cfg.warmup, 0, 10_000, "--warmup")]
    for value, lo, hi, flag in checks:
        if not lo <= value <= hi:
            raise ValueError(f"{flag} {value} is out of range; valid: {lo}..{hi}")
