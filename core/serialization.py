"""``ember.save`` / ``ember.load``: training checkpoints without pickle.

Tensors go to a safetensors container (``safetensors_io``) under names built from their path in the
object ("model/fc.weight"); the nesting and the plain values go to its ``__metadata__`` as a JSON tree
(docs/checkpoint-format.md). Loading only rebuilds dicts, lists, tuples, tensors and plain values:
nothing from the file is executed, imported or looked up by name.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np

from .safetensors_io import DTYPES, FormatError, read, strict_json, write
from .device import as_device
from .tensor import Tensor, from_numpy

__all__ = ["save", "load", "FormatError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "ember.checkpoint"
FORMAT_VERSION = "1.0"
PROGRAM_FORMAT = "ember.program"  # ember.serialize's archives share the container
MAX_DEPTH = 256
_SUPPORTED = ("dicts (str or int keys), lists, tuples, ember Tensors, numpy arrays, and int, float, str, "
              "bool, None")
_NODE_FIELDS = {
    "none": (), "bool": ("value",), "int": ("value",), "float": ("value",), "str": ("value",),
    "tensor": ("key", "requires_grad"), "list": ("items",), "tuple": ("items",), "dict": ("items",),
}
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_STORABLE = set(DTYPES.values())


def _ember_version() -> str:
    from . import __version__

    return __version__


# ---- save ----------------------------------------------------------------------------------
def save(obj, path) -> None:
    """Write ``obj`` (e.g. ``{"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}``) to
    ``path`` atomically. numpy arrays are stored as tensors and load back as ember Tensors."""
    enc = _Encoder()
    tree = enc.node(obj, "checkpoint", (), 0)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": f"ember {_ember_version()}",
        "structure": json.dumps(tree, separators=(",", ":"), allow_nan=False),
    }
    write(path, enc.tensors, metadata)


def _key_repr(key) -> str:
    return f"[{key!r}]"


class _Encoder:
    """Walks the object once: collects tensors by generated name and returns the JSON structure tree."""

    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}
        self._shared: dict[tuple, str] = {}  # arrays met twice (the same storage view) are stored once
        self._active: set[int] = set()

    def node(self, obj, where, parts, depth):
        if depth > MAX_DEPTH:
            raise ValueError(f"ember.save: {where} is nested more than {MAX_DEPTH} levels deep")
        if obj is None:
            return {"type": "none"}
        if isinstance(obj, (bool, np.bool_)):
            return {"type": "bool", "value": bool(obj)}
        if isinstance(obj, (int, np.integer)):
            return {"type": "int", "value": int(obj)}
        if isinstance(obj, (float, np.floating)):
            v = float(obj)
            if math.isfinite(v):
                return {"type": "float", "value": v}
            return {"type": "float", "value": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(obj, str):
            _check_utf8(obj, where)
            return {"type": "str", "value": str(obj)}
        if isinstance(obj, Tensor):
            out = {"type": "tensor", "key": self._tensor(obj.detach()._host(), where, parts)}  # CUDA: a host copy
            if obj.requires_grad:
                out["requires_grad"] = True
            return out
        if isinstance(obj, np.ndarray):
            return {"type": "tensor", "key": self._tensor(obj, where, parts)}
        if isinstance(obj, (dict, list, tuple)):
            return self._container(obj, where, parts, depth)
        raise TypeError(_unsupported(obj, where))

    def _container(self, obj, where, parts, depth):
        if isinstance(obj, (list, tuple)) and type(obj) not in (list, tuple):
            raise TypeError(f"ember.save: {where} is a {type(obj).__name__} (a {type(obj).__mro__[1].__name__} "
                            f"subclass), which would load back as a plain one; convert it to a "
                            f"{type(obj).__mro__[1].__name__} or dict first")
        if id(obj) in self._active:
            raise ValueError(f"ember.save: {where} contains itself (a reference cycle)")
        self._active.add(id(obj))
        try:
            if isinstance(obj, dict):
                items = []
                for k, v in obj.items():
                    if isinstance(k, bool) or not isinstance(k, (str, int)):
                        raise TypeError(f"ember.save: {where} has a key {k!r} of type {type(k).__name__}; "
                                        f"checkpoint dict keys must be str or int")
                    if isinstance(k, str):
                        _check_utf8(k, where + _key_repr(k))
                    items.append([k if isinstance(k, str) else int(k),
                                  self.node(v, where + _key_repr(k), parts + (str(k),), depth + 1)])
                return {"type": "dict", "items": items}
            nodes = [self.node(v, f"{where}[{i}]", parts + (str(i),), depth + 1) for i, v in enumerate(obj)]
            return {"type": "list" if type(obj) is list else "tuple", "items": nodes}
        finally:
            self._active.discard(id(obj))

    def _tensor(self, arr: np.ndarray, where, parts) -> str:
        native = arr.dtype.newbyteorder("=") if arr.dtype.byteorder in "<>" else arr.dtype
        if native not in _STORABLE:
            valid = ", ".join(str(d) for d in DTYPES.values())
            raise TypeError(f"ember.save: {where} is an array of dtype {arr.dtype}, which checkpoints cannot hold; "
                            f"valid dtypes: {valid}")
        ident = (arr.__array_interface__["data"][0], arr.shape, arr.strides, arr.dtype.str)
        name = self._shared.get(ident)
        if name is not None:
            return name
        base = "/".join(parts) if parts else "tensor"
        _check_utf8(base, where)
        name, n = base, 1
        while name in self.tensors or name == "__metadata__":
            n += 1
            name = f"{base}~{n}"
        self.tensors[name] = arr
        self._shared[ident] = name
        return name


def _check_utf8(s, where):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"ember.save: {where}: string {s!r:.80} cannot be encoded as UTF-8 ({e.reason})") from None


def _unsupported(obj, where) -> str:
    kind = type(obj).__name__
    if isinstance(obj, (set, frozenset)):
        hint = "Sets have no order; store a sorted list instead"
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):
        hint = "Store its state_dict() instead (the object itself is code, not data)"
    elif callable(obj):
        hint = "Checkpoints hold data only, never code; store what is needed to rebuild it"
    else:
        hint = "Convert it to one of those"
    return f"ember.save: {where} is a {kind}; checkpoints can hold {_SUPPORTED}. {hint}"


# ---- load ----------------------------------------------------------------------------------
def load(path, *, map_location=None, mmap=False, verify=True):
    """Rebuild the object ``save`` wrote. Tensors are private copies (the file can then be replaced);
    ``mmap=True`` returns read-only tensors mapped from the file. ``verify`` checks the SHA-256.
    Tensors load on the CPU (CUDA tensors were saved as host copies); ``map_location="cuda"`` puts them
    on that device, as torch's ``map_location`` does.

    A plain safetensors file (not written by ``ember.save``) loads as ``{name: Tensor}`` in header order.
    """
    c = read(path, verify=verify)
    try:
        obj = _build(c, mmap)
        return obj if map_location is None else _to_device(obj, as_device(map_location))
    finally:
        if not mmap:  # every tensor is a copy now, so the file can be unmapped at once
            c.close()


def _build(c, mmap):
    arrays = _Arrays(c.tensors, mmap)
    fmt = c.metadata.get("format")
    if fmt == FORMAT:
        return _load_structure(c, arrays)
    if fmt == PROGRAM_FORMAT:
        raise FormatError(f"{c.path}: this is an ember program archive, not a checkpoint; "
                          f"load it with ember.serialize.load")
    return {name: arrays.tensor(name, False) for name in c.tensors}


class _Arrays:
    """One numpy array per stored tensor (a copy, or the mapped view), shared by every reference to it."""

    def __init__(self, views, mmap):
        self.views = views
        self.mmap = mmap
        self.cache: dict[str, np.ndarray] = {}

    def tensor(self, name, requires_grad):
        arr = self.cache.get(name)
        if arr is None:
            view = self.views[name]
            if not self.mmap:
                arr = np.array(view)
            elif view.flags.aligned:
                arr = view
            else:  # another writer left it unaligned for its dtype: kernels want aligned data, so copy
                arr = np.array(view)
                arr.flags.writeable = False
            self.cache[name] = arr
        t = from_numpy(arr)
        if requires_grad:
            t.requires_grad_(True)
        return t


def _load_structure(c, arrays):
    meta = c.metadata
    version = meta.get("format_version")
    m = re.fullmatch(r"(\d{1,9})\.(\d{1,9})", version) if isinstance(version, str) else None
    if m is None:
        raise FormatError(f"{c.path}: __metadata__['format_version'] must be 'major.minor', got {version!r:.80}")
    major = int(m.group(1))
    supported = int(FORMAT_VERSION.split(".")[0])
    if major != supported:
        by = meta.get("producer", "an unknown producer")
        advice = "upgrade ember" if major > supported else "this format version was never released"
        raise FormatError(f"{c.path}: written by {by:.80} in checkpoint format {version}; this is ember "
                          f"{_ember_version()}, which reads format {supported}.x: {advice}")
    text = meta.get("structure")
    if not isinstance(text, str):
        raise FormatError(f"{c.path}: __metadata__ has no 'structure' entry")
    tree = strict_json(text, f"{c.path}: __metadata__['structure']")
    dec = _Decoder(c.path, arrays)
    obj = dec.node(tree, "checkpoint", 0)
    unused = [n for n in c.tensors if n not in dec.used]
    if unused:
        raise FormatError(f"{c.path}: tensors {unused[:5]!r} are stored but the structure never refers to them")
    return obj


def _brief(v) -> str:
    """A short description of a JSON value for an error message (never the whole of a big one)."""
    if isinstance(v, (dict, list)):
        return f"a JSON {'object' if isinstance(v, dict) else 'array'} of {len(v)} entries"
    return repr(v)[:80]


class _Decoder:
    """Checks each structure node before building it; errors say where in the object it sits."""

    def __init__(self, path, arrays):
        self.path = path
        self.arrays = arrays
        self.used: set[str] = set()

    def fail(self, where, what):
        return FormatError(f"{self.path}: structure node at {where:.200}: {what}")

    def node(self, n, where, depth):
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nested more than {MAX_DEPTH} levels deep")
        if not isinstance(n, dict) or not isinstance(n.get("type"), str):
            raise self.fail(where, f"expected an object with a string 'type', got {_brief(n)}")
        kind = n["type"]
        fields = _NODE_FIELDS.get(kind)
        if fields is None:
            raise self.fail(where, f"unknown node type {kind!r:.40}; valid: {', '.join(_NODE_FIELDS)}")
        extra = set(n) - {"type", *fields}
        if extra:
            raise self.fail(where, f"{kind} node has unexpected fields {sorted(extra)!r:.120}")
        value = n.get("value")
        if kind == "none":
            return None
        if kind in ("bool", "str"):
            if type(value) is not (bool if kind == "bool" else str):
                raise self.fail(where, f"{kind} node needs a {kind} 'value', got {_brief(value)}")
            return value
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.fail(where, f"int node needs an integer 'value', got {_brief(value)}")
            return value
        if kind == "float":
            if isinstance(value, str) and value in _NONFINITE:
                return _NONFINITE[value]
            try:
                ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
            except OverflowError:  # an integer beyond float range
                ok = False
            if not ok:
                raise self.fail(where, f"float node needs a finite number or 'inf', '-inf', 'nan', "
                                       f"got {_brief(value)}")
            return float(value)
        if kind == "tensor":
            return self._tensor(n, where)
        items = n.get("items")
        if not isinstance(items, list):
            raise self.fail(where, f"{kind} node needs an 'items' list")
        if kind == "dict":
            return self._dict(items, where, depth)
        out = [self.node(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(items)]
        return out if kind == "list" else tuple(out)

    def _tensor(self, n, where):
        key, rg = n.get("key"), n.get("requires_grad", False)
        if not isinstance(key, str) or key not in self.arrays.views:
            raise self.fail(where, f"tensor node refers to {_brief(key)}, which is not a stored tensor")
        if not isinstance(rg, bool):
            raise self.fail(where, "tensor node's 'requires_grad' must be true or false")
        if rg and self.arrays.views[key].dtype.kind != "f":
            raise self.fail(where, f"tensor {key!r} has dtype {self.arrays.views[key].dtype}, which cannot "
                                   f"require gradients")
        self.used.add(key)
        return self.arrays.tensor(key, rg)

    def _dict(self, items, where, depth):
        out = {}
        for item in items:
            if not (isinstance(item, list) and len(item) == 2):
                raise self.fail(where, "dict items must be [key, node] pairs")
            k, v = item
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise self.fail(where, f"dict key {_brief(k)} is not a string or integer")
            if k in out:
                raise self.fail(where, f"duplicate dict key {k!r:.80}")
            out[k] = self.node(v, where + _key_repr(k), depth + 1)
        return out


def _to_device(obj, dev):
    if isinstance(obj, Tensor):
        return obj.detach().to(dev).requires_grad_(obj.requires_grad)  # still a leaf
    if isinstance(obj, dict):
        return obj.__class__((k, _to_device(v, dev)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return obj.__class__(_to_device(v, dev) for v in obj)
    return obj
