"""``Program``: a captured model — callable like the module, with its graph, signature and metadata."""
from __future__ import annotations

import numpy as np

import ember
from ember.device import as_device

from .ir import Graph
from .passes import optimize as _optimize
from .runtime import Executor


class Program:
    """What ``trace`` returns and ``load`` gives back. ``prog(x)`` runs the graph and returns Tensors."""

    def __init__(self, graph: Graph, metadata=None, device="cpu", optimize=True):
        self.graph = graph  # the unoptimised graph: what is saved and exported
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.device = as_device(device)
        self._optimize = optimize
        self._executor = Executor(_optimize(graph, self.device.type) if optimize else graph, self.device.type)
        # per input: name, numpy dtype, IR shape (checked on every call, so computed once)
        self._specs = [(n, np.dtype(graph.values[n].dtype), tuple(graph.values[n].shape)) for n in graph.inputs]
        # the common case, checked without a loop: one input whose dim 0 alone is symbolic (its fixed tail)
        only = self._specs[0][2] if len(self._specs) == 1 else ()
        self._tail = (only[1:] if only and isinstance(only[0], str) and not any(isinstance(d, str) for d in only[1:])
                      else None)
        self._cpu = self.device.type == "cpu"

    # ---- description ----------------------------------------------------------------------
    @property
    def signature(self) -> dict:
        def describe(names):
            return [{"name": n, "dtype": self.graph.values[n].dtype, "shape": list(self.graph.values[n].shape)}
                    for n in names]

        return {"inputs": describe(self.graph.inputs), "outputs": describe(self.graph.outputs)}

    @property
    def code(self) -> str:
        return self.graph.code()

    @property
    def constants(self) -> dict:
        return {k: ember.from_numpy(v) for k, v in self.graph.constants.items()}

    def state_dict(self) -> dict:
        return self.constants

    def save(self, path, metadata=None) -> None:
        """Write this program to a ``.ember`` file (see ``ember.serialize.save``)."""
        from .archive import save

        save(self, path, metadata=metadata)

    def __repr__(self):
        ins = ", ".join(f"{d['name']}: {d['dtype']}{d['shape']}" for d in self.signature["inputs"])
        return f"Program({ins}) with {len(self.graph.nodes)} nodes, {len(self.graph.constants)} constants"

    def to_onnx(self, path, **kwargs):
        """Write this program as an ONNX model (``ember.export.to_onnx``; needs the ``onnx`` package)."""
        from ember.export import to_onnx  # export builds on serialize: imported only when asked for

        return to_onnx(self, path, **kwargs)

    # ---- execution --------------------------------------------------------------------------
    def to(self, device) -> "Program":
        dev = as_device(device)
        return self if dev == self.device else Program(self.graph, self.metadata, dev, optimize=self._optimize)

    def __call__(self, *args, **kwargs):
        arrays = self._bind(args, kwargs)
        outs = self._executor.run(arrays)
        if self._cpu:
            if len(outs) == 1 and outs[0].__class__ is np.ndarray:
                return ember.Tensor._wrap(outs[0])
            res = tuple(ember.from_numpy(np.asarray(o)) for o in outs)
        else:
            res = tuple(ember.Tensor._wrap(o) for o in outs)
        return res[0] if len(res) == 1 else res

    def run(self, inputs: dict) -> dict:
        """numpy in, numpy out, like ONNX Runtime's ``session.run``: ``inputs`` maps input names to arrays
        (checked against the signature); returns output name -> array. No Tensor wrapping: what a
        server calls."""
        outs = self._executor.run(self._bind((), inputs))
        if self.device.type != "cpu":
            outs = [o if o.__class__ is np.ndarray else o.get() for o in outs]
        return {name: np.asarray(o) for name, o in zip(self.graph.outputs, outs)}

    def _bind(self, args, kwargs) -> dict:
        if self._tail is not None and not kwargs and len(args) == 1:  # (checks as _check's, without its loop)
            x = args[0]
            a = x._data if isinstance(x, ember.Tensor) else x
            spec = self._specs[0]
            if (a.__class__ is np.ndarray and self._cpu and a.dtype == spec[1] and a.shape[1:] == self._tail
                    and a.ndim == len(spec[2]) and a.flags.c_contiguous):
                return {spec[0]: a}
        if not kwargs and len(args) == len(self._specs):
            seen = {}
            return {spec[0]: self._check(spec, x, seen) for spec, x in zip(self._specs, args)}
        names = self.graph.inputs
        if len(args) > len(names):
            raise TypeError(f"program takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        given = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"program has no input named {k!r}; inputs: {', '.join(names)}")
            if k in given:
                raise TypeError(f"input {k!r} given twice")
            given[k] = v
        missing = [n for n in names if n not in given]
        if missing:
            raise TypeError(f"missing input(s) {', '.join(missing)}; the program's inputs: {', '.join(names)}")
        seen = {}  # symbol -> (size, input name): a symbol means one size across all inputs
        return {spec[0]: self._check(spec, given[spec[0]], seen) for spec in self._specs}

    def _check(self, spec, x, seen):
        name, want, shape = spec
        if isinstance(x, ember.Tensor):
            a = x._data  # (the runtime records no gradients)
        elif isinstance(x, np.ndarray):
            a = x
        else:
            raise TypeError(f"input {name!r}: expected an ember Tensor or a numpy array, got {type(x).__name__}")
        if a.dtype != want:
            raise TypeError(f"input {name!r}: expected dtype {want.name}, got {a.dtype.name}")
        if a.ndim != len(shape):
            raise ValueError(f"input {name!r}: expected {len(shape)} dims {_fmt(shape)}, got shape {a.shape}")
        for i, (d, s) in enumerate(zip(a.shape, shape)):
            if isinstance(s, str):
                size, where = seen.setdefault(s, (d, name))
                if size != d:
                    raise ValueError(f"input {name!r}: dim {i} ({s!r}) is {d}, but {s!r} is {size} in input {where!r}")
            elif d != s:
                raise ValueError(f"input {name!r}: dim {i} must be {s} {_fmt(shape)}, got shape {a.shape}")
        if self.device.type == "cpu":
            if a.__class__ is not np.ndarray:
                raise TypeError(f"input {name!r} is on {x.device}, but this program runs on cpu; "
                                f"move the input with .cpu() or the program with .to({str(x.device)!r})")
            return np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d input 1-d)
        if a.__class__ is np.ndarray:  # host data for a CUDA program: copied to the device
            from ember.cuda import _backend

            return _backend().to_device(a)
        return a


def _fmt(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"
