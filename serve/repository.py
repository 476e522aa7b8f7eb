"""The model repository: which models exist on disk, which versions are loaded, and their states.

Layout (Triton's): ``<repo>/<model>/<version>/model.ember`` (or ``model.onnx``) with numeric version
folders and an optional ``<repo>/<model>/config.json``. Model files (``a.ember b.onnx``) are served as
version 1 of models named by their stems; a directory holding ``model.ember`` / ``model.onnx`` itself
(what KServe's storage initializer makes of a single-file storageUri) is one model named after the
directory. ``--model-name`` renames a single served model. Loading runs off the event loop; a reload loads and warms
the new versions first, swaps them in, and only then drains the old ones, so no request fails.
"""
from __future__ import annotations

import asyncio
import os

from .batching import Batcher
from .config import ConfigError, merge, parse_model_config, read_model_config
from .models import MODEL_FILES, ModelLoadError, load_model
from .protocol import ProtocolError

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


class ModelEntry:
    """One model name: its loaded versions (version -> Batcher), state and the reason for it."""

    def __init__(self, name):
        self.name = name
        self.versions: dict[str, Batcher] = {}
        self.state = UNAVAILABLE
        self.reason = "not loaded"
        self.settings = None
        self.lock = asyncio.Lock()

    def latest(self):
        return self.versions[max(self.versions, key=int)] if self.versions else None


class Repository:
    def __init__(self, path, server, metrics):
        """``path``: a repository directory, a model file, or a list of model files."""
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        for p in paths:
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p}: no such file or directory (give a .ember/.onnx file or a model repository)")
        self.files = None  # model name -> file, when serving files rather than a directory
        if len(paths) == 1 and os.path.isdir(paths[0]):
            self.path = paths[0]
            top = [f for f in MODEL_FILES if os.path.isfile(os.path.join(self.path, f))]
            if len(top) > 1:
                raise ValueError(f"{self.path}: has both {' and '.join(top)} at its top; keep one")
            if top:  # KServe's storage initializer puts a single-file storageUri straight into /mnt/models
                name = server.model_name or os.path.basename(self.path.rstrip(os.sep)) or "model"
                self.files = {name: os.path.join(self.path, top[0])}
        else:
            self.files = {}
            for p in paths:
                if os.path.isdir(p) or os.path.splitext(p)[1].lower() not in (".ember", ".onnx"):
                    raise ValueError(f"{p}: not a model file; give .ember/.onnx files or one model repository directory")
                name = os.path.splitext(os.path.basename(p))[0]
                if server.model_name and len(paths) == 1:
                    name = server.model_name
                if name in self.files:
                    raise ValueError(f"{p} and {self.files[name]} would both be served as model {name!r}; rename one")
                self.files[name] = p
            self.path = os.path.dirname(paths[0])
        if server.model_name and (self.files is None or len(self.files) != 1):
            raise ValueError(f"--model-name names a single served model; {path} holds "
                             f"{'a model repository' if self.files is None else f'{len(self.files)} model files'}")
        self.server, self.metrics = server, metrics
        self.models: dict[str, ModelEntry] = {}

    # ---- what is on disk ---------------------------------------------------------------------
    def available(self) -> list[str]:
        if self.files is not None:
            return sorted(self.files)
        return sorted(d for d in os.listdir(self.path)
                      if os.path.isdir(os.path.join(self.path, d)) and not d.startswith("."))

    def _versions_on_disk(self, name) -> dict[int, str]:
        """version -> model file path."""
        if self.files is not None:
            return {1: self.files[name]}
        mdir = os.path.join(self.path, name)
        found = {}
        for v in os.listdir(mdir):
            if not v.isdigit() or not os.path.isdir(os.path.join(mdir, v)):
                continue
            files = [f for f in MODEL_FILES if os.path.isfile(os.path.join(mdir, v, f))]
            if len(files) > 1:
                raise ModelLoadError(f"{os.path.join(mdir, v)}: has both {' and '.join(files)}; keep one")
            if files:
                found[int(v)] = os.path.join(mdir, v, files[0])
        if not found:
            raise ModelLoadError(f"{mdir}: no version folders holding {' or '.join(MODEL_FILES)} "
                                 f"(expected {mdir}/1/model.ember)")
        return found

    def _config(self, name, override):
        if override is not None:
            cfg = parse_model_config(override, f"load request for {name!r}: parameters.config")
        elif self.files is not None:
            cfg = parse_model_config(None, "")
        else:
            cfg = read_model_config(os.path.join(self.path, name, "config.json"))
        return merge(cfg, self.server)

    # ---- loading -----------------------------------------------------------------------------
    def entry(self, name) -> ModelEntry:
        if name not in self.models:
            self.models[name] = ModelEntry(name)
        return self.models[name]

    async def load_all(self):
        names = self.available()
        await asyncio.gather(*(self.load(n) for n in names))

    async def load(self, name, config_override=None):
        """(Re)load ``name``: new versions are ready before old ones stop serving. Raises ProtocolError."""
        if name not in self.available():
            raise ProtocolError(404, f"model {name!r} is not in the repository {self.path}; "
                                     f"models: {', '.join(self.available()) or '(none)'}")
        e = self.entry(name)
        async with e.lock:
            old = dict(e.versions)
            if not old:
                e.state, e.reason = LOADING, "loading"
            try:
                settings = self._config(name, config_override)
                on_disk = self._versions_on_disk(name)
                try:
                    wanted = settings.version_policy.select(list(on_disk))
                except ValueError as err:
                    where = (f"load request for {name!r}: parameters.config" if config_override is not None
                             else os.path.join(self.path, name, "config.json"))
                    raise ConfigError(f"{where}: field 'version_policy': {err}") from None
                for v in wanted:
                    self.metrics.set_state(name, v, "loading")
                models = await asyncio.to_thread(self._load_versions, name, wanted, on_disk, settings)
            except (ConfigError, ModelLoadError) as err:
                if not old:
                    e.state, e.reason = UNAVAILABLE, str(err)
                raise ProtocolError(400, f"failed to load model {name!r}: {err}") from None
            except Exception as err:  # a loader bug or MemoryError: this model fails, the server goes on
                reason = f"{type(err).__name__}: {err}"
                if not old:
                    e.state, e.reason = UNAVAILABLE, reason
                raise ProtocolError(500, f"failed to load model {name!r}: {reason}") from None
            e.settings = settings
            e.versions = {m.version: Batcher(m, settings, self.metrics) for m in models}
            e.state, e.reason = READY, ""
            for m in models:
                self.metrics.set_state(name, m.version, "ready")
        await self._retire(name, old, keep=e.versions)

    def _load_versions(self, name, wanted, on_disk, settings):
        models = []
        try:
            for v in wanted:
                m = load_model(name, v, on_disk[v], settings.device, settings.input_names, settings.output_names)
                models.append(m)
                feeds = m.warmup_inputs() if settings.warmup else None
                for _ in range(settings.warmup):
                    try:
                        m.run(feeds)
                    except Exception as err:  # a model that cannot run zeros still serves; say why it was not warmed
                        print(f"ember serve: warm-up of {name} version {v} skipped: {err}", flush=True)
                        break
        except BaseException:
            for m in models:
                m.close()
            raise
        return models

    async def _retire(self, name, old, keep):
        drain = [b for v, b in old.items() if keep.get(v) is not b]
        for b in drain:
            if b.model.version not in keep:
                self.metrics.set_state(name, b.model.version, "unloading")
        await asyncio.gather(*(b.close(self.server.drain_timeout_s) for b in drain))
        for b in drain:
            if b.model.version not in keep:
                self.metrics.set_state(name, b.model.version, "unavailable")

    async def unload(self, name):
        e = self.models.get(name)
        if e is None or not e.versions:
            raise ProtocolError(404 if name not in self.available() else 400,
                                f"model {name!r} is not loaded" + ("" if name in self.available()
                                                                    else " and not in the repository"))
        async with e.lock:
            old, e.versions = e.versions, {}
            e.state, e.reason = UNLOADING, "unloading"
            await self._retire(name, old, keep={})
            e.state, e.reason = UNAVAILABLE, "unloaded"

    async def close(self):
        await asyncio.gather(*(self._retire(n, e.versions, keep={}) for n, e in self.models.items()))

    # ---- lookups -----------------------------------------------------------------------------
    def get(self, name, version=None) -> Batcher:
        """The batcher serving ``name`` (``version`` or the latest); 404 unknown, 503 not ready."""
        e = self.models.get(name)
        if e is None:
            known = sorted(n for n, m in self.models.items() if m.versions)
            raise ProtocolError(404, f"unknown model {name!r}; models: {', '.join(known) or '(none loaded)'}")
        if not e.versions:
            status = 503 if e.state in (LOADING, UNLOADING) else 404
            raise ProtocolError(status, f"model {name!r} is not ready ({e.state.lower()}: {e.reason})")
        if version is None:
            return e.latest()
        b = e.versions.get(str(version))
        if b is None:
            raise ProtocolError(404, f"model {name!r} has no version {version!r}; "
                                     f"versions: {', '.join(sorted(e.versions, key=int))}")
        return b

    def ready(self) -> bool:
        """Every model that was asked to load is loaded (failed ones are reported, not waited for)."""
        return all(e.state != LOADING for e in self.models.values())

    def index(self, ready_only=False) -> list[dict]:
        out = []
        for name in sorted(set(self.available()) | set(self.models)):
            e = self.models.get(name)
            if e is not None and e.versions:
                out += [{"name": name, "version": v, "state": READY} for v in sorted(e.versions, key=int)]
            elif not ready_only:
                item = {"name": name, "state": e.state if e else UNAVAILABLE}
                reason = e.reason if e else "not loaded"
                if reason:
                    item["reason"] = reason
                out.append(item)
        return out
