"""Server settings (``ServerConfig``: CLI flags / ``EMBER_*`` environment) and per-model settings
(``ModelConfig``: ``<repo>/<model>/config.json``), validated with pydantic so a bad field is reported
with the file and the field's name, and that model alone is not loaded."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config file or setting that cannot be used; the message names the file and the field."""


@dataclasses.dataclass
class ServerConfig:
    """Settings of one server process. Model-level fields are the defaults for models whose
    ``config.json`` does not set them."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    device: str = "cpu"
    max_batch_size: int = 64  # rows per execution when requests are batched; 0 turns batching off
    batch_delay_ms: float = 0.0  # how long the first queued request waits for others (0: only what queued up meanwhile)
    max_queue_size: int = 1024  # queued requests per model version before 503
    instances: int = 1  # concurrent executions per model version
    max_request_mb: float = 64.0  # request body limit (413 past it)
    max_decompressed_mb: float = 256.0  # limit on a gzip/deflate body once inflated
    request_timeout_s: float = 60.0  # longest a request may wait and run (503 past it); per-request "timeout" may lower it
    drain_timeout_s: float = 30.0  # on SIGTERM: how long in-flight and queued requests may take to finish
    api_key: Optional[str] = None  # bearer token for the infer and model routes (None: no auth)
    repository_key: Optional[str] = None  # bearer token for the repository routes (None: api_key's rule)
    warmup: int = 1  # synthetic requests run per model before it is ready
    model_name: Optional[str] = None  # the name of a single served model (default: its file's stem / folder)
    log_level: str = "warning"

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * (1 << 20))

    @property
    def max_decompressed_bytes(self) -> int:
        return int(self.max_decompressed_mb * (1 << 20))


# flag name -> (environment variable, parser); `ember serve` reads these for flags not given
ENV_VARS = {
    "host": ("EMBER_HOST", str),
    "port": ("EMBER_PORT", int),
    "workers": ("EMBER_WORKERS", int),
    "model_name": ("EMBER_MODEL_NAME", str),
    "device": ("EMBER_DEVICE", str),
    "max_batch_size": ("EMBER_MAX_BATCH_SIZE", int),
    "batch_delay_ms": ("EMBER_BATCH_DELAY_MS", float),
    "max_request_mb": ("EMBER_MAX_REQUEST_MB", float),
    "request_timeout_s": ("EMBER_REQUEST_TIMEOUT_S", float),
    "drain_timeout_s": ("EMBER_DRAIN_TIMEOUT_S", float),
}


def config_from_env(environ=None, **given) -> ServerConfig:
    """A ServerConfig from explicit values, then ``EMBER_*`` environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for field, (var, parse) in ENV_VARS.items():
        if given.get(field) is not None:
            continue
        raw = environ.get(var)
        if raw not in (None, ""):
            try:
                values[field] = parse(raw)
            except ValueError:
                raise ConfigError(f"environment variable {var}={raw!r} is not a valid {parse.__name__}") from None
    values.update({k: v for k, v in given.items() if v is not None})
    return ServerConfig(**values)


# ---- config.json ------------------------------------------------------------------------------
class _Latest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_versions: int = Field(1, ge=1)


class _Specific(BaseModel):
    model_config = ConfigDict(extra="forbid")
    versions: list[int] = Field(min_length=1)


class VersionPolicy(BaseModel):
    """Triton's version_policy: ``{"latest": {"num_versions": N}}``, ``{"all": {}}`` or
    ``{"specific": {"versions": [1, 3]}}``; the short forms ``{"latest": N}`` and ``{"specific": [1, 3]}``
    are accepted too."""

    model_config = ConfigDict(extra="forbid")
    latest: Optional[_Latest] = None
    all: Optional[dict] = None
    specific: Optional[_Specific] = None

    @field_validator("latest", mode="before")
    @classmethod
    def _short_latest(cls, v):
        return {"num_versions": v} if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("specific", mode="before")
    @classmethod
    def _short_specific(cls, v):
        return {"versions": v} if isinstance(v, list) else v

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of those found on disk (ascending)."""
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give one of latest / all / specific, not {' and '.join(chosen)}")
        if self.all is not None:
            return sorted(available)
        if self.specific is not None:
            missing = sorted(set(self.specific.versions) - set(available))
            if missing:
                raise ValueError(f"specific versions {missing} not found; the model has versions {sorted(available)}")
            return sorted(self.specific.versions)
        n = self.latest.num_versions if self.latest is not None else 1
        return sorted(available)[-n:]


class ModelConfig(BaseModel):
    """``<repo>/<model>/config.json``. Unset fields take the server's defaults; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: Optional[int] = Field(None, ge=0)
    max_queue_delay_ms: Optional[float] = Field(None, ge=0, le=60_000)
    max_queue_size: Optional[int] = Field(None, ge=1)
    device: Optional[str] = None
    instances: Optional[int] = Field(None, ge=1, le=64)
    version_policy: Optional[VersionPolicy] = None
    warmup: Optional[int] = Field(None, ge=0, le=10_000)
    input_names: Optional[list[str]] = Field(None, min_length=1)  # rename the model's inputs, in order
    output_names: Optional[list[str]] = Field(None, min_length=1)  # rename its outputs, in order

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if v is not None and v.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device {v!r} is not one of 'cpu', 'cuda', 'cuda:N'")
        return v


@dataclasses.dataclass(frozen=True)
class Effective:
    """A model's settings once config.json and the server defaults are merged."""

    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    device: str
    instances: int
    warmup: int
    version_policy: VersionPolicy
    input_names: Optional[list] = None
    output_names: Optional[list] = None


def merge(cfg: ModelConfig, server: ServerConfig) -> Effective:
    def pick(value, default):
        return default if value is None else value

    return Effective(
        max_batch_size=pick(cfg.max_batch_size, server.max_batch_size),
        max_queue_delay_ms=pick(cfg.max_queue_delay_ms, server.batch_delay_ms),
        max_queue_size=pick(cfg.max_queue_size, server.max_queue_size),
        device=pick(cfg.device, server.device),
        instances=pick(cfg.instances, server.instances),
        warmup=pick(cfg.warmup, server.warmup),
        version_policy=cfg.version_policy or VersionPolicy(),
        input_names=cfg.input_names,
        output_names=cfg.output_names,
    )


def parse_model_config(data: Union[bytes, str, dict, None], where: str) -> ModelConfig:
    """Validate config.json content; ``where`` (the file, or "load request") prefixes every error."""
    if data is None:
        return ModelConfig()
    if isinstance(data, (bytes, str)):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].replace("Extra inputs are not permitted", "unknown field")
            problems.append(f"field {field!r}: {msg}")
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None


def read_model_config(path: str) -> ModelConfig:
    """config.json at ``path`` (defaults when the file does not exist)."""
    if not os.path.exists(path):
        return ModelConfig()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_model_config(raw, path)
