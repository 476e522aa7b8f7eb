"""ember.serve: a KServe V2 (Open Inference Protocol) model server on FastAPI + uvicorn.

``create_app(path, config)`` returns the ASGI app (for embedding and tests); ``run(path, config)``
serves it under uvicorn until SIGTERM; ``ember serve PATH`` is the command line. See docs/serve.md.
"""
from .app import create_app
from .config import ConfigError, ModelConfig, ServerConfig
from .protocol import ProtocolError
from .server import run

__all__ = ["create_app", "run", "ServerConfig", "ModelConfig", "ConfigError", "ProtocolError"]
