"""What the server runs: one loaded model version with its V2 tensor specs. ``.ember`` programs run
on ember's runtime; ``.onnx`` files run on ONNX Runtime (until ember can import ONNX), which the
``platform`` field says."""
from __future__ import annotations

import os

import numpy as np

from .protocol import DATATYPES, TensorSpec, datatype_of

PLATFORM_EMBER = "ember_program"
PLATFORM_ONNX = "onnxruntime_onnx"
MODEL_FILES = ("model.ember", "model.onnx")


class ModelLoadError(Exception):
    """A model file that cannot be served; the message names the file and why."""


class ServedModel:
    """One model version. ``run`` takes and returns name -> numpy array and may be called from
    several threads at once (the kernels release the GIL)."""

    platform = ""

    def __init__(self, name, version, path, inputs, outputs, input_names=None, output_names=None):
        self.name, self.version, self.path = name, str(version), path
        self._in_names = [s.name for s in inputs]  # the runtime's own names
        self._out_names = [s.name for s in outputs]
        self.inputs = _renamed(inputs, input_names, "input_names", path)
        self.outputs = _renamed(outputs, output_names, "output_names", path)
        # the names the protocol sees -> the runtime's (identity unless config.json renames them)
        self._to_runtime = {s.name: n for s, n in zip(self.inputs, self._in_names)}
        self._from_runtime = {n: s.name for s, n in zip(self.outputs, self._out_names)}
        self.batchable = _batchable(self._dims0)

    def run(self, inputs: dict) -> dict:
        feeds = {self._to_runtime[k]: v for k, v in inputs.items()}
        return {self._from_runtime[k]: v for k, v in self._run(feeds).items()}

    def warmup_inputs(self) -> dict:
        """Synthetic inputs (zeros; batch and other symbolic dims of size 1) for warm-up requests."""
        return {s.name: np.zeros([1 if d < 0 else d for d in s.shape], dtype=DATATYPES[s.datatype])
                for s in self.inputs}

    def close(self):
        """Drop the runtime's resources (the files it mapped, its sessions)."""


class EmberModel(ServedModel):
    platform = PLATFORM_EMBER

    def __init__(self, name, version, path, device="cpu", input_names=None, output_names=None):
        from ember import serialize  # noqa: deferred so an ONNX-only server need not compile anything
        from ember.serialize.archive import FormatError

        try:
            self.program = serialize.load(path, device=device)
        except (FormatError, OSError, ValueError, RuntimeError, NotImplementedError) as e:
            raise ModelLoadError(f"{path}: {e}") from None
        sig = self.program.signature
        # a symbolic dim (a name such as "batch") is -1 on the wire; the symbol itself decides batching
        self._dims0 = [(d["shape"][0] if d["shape"] else None) for d in sig["inputs"] + sig["outputs"]]

        def specs(items):
            return [TensorSpec(d["name"], datatype_of(np.dtype(d["dtype"])),
                               tuple(-1 if isinstance(s, str) else int(s) for s in d["shape"])) for d in items]

        super().__init__(name, version, path, specs(sig["inputs"]), specs(sig["outputs"]), input_names, output_names)

    def _run(self, feeds):
        return self.program.run(feeds)


_ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(bool)": "BOOL",
              "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
              "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
              "tensor(uint64)": "UINT64"}


class OnnxModel(ServedModel):
    platform = PLATFORM_ONNX

    def __init__(self, name, version, path, device="cpu", input_names=None, output_names=None, threads=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(f"{path}: serving .onnx files needs ONNX Runtime: pip install onnxruntime") from None
        if device != "cpu":
            raise ModelLoadError(f"{path}: .onnx models are served on ONNX Runtime's CPU provider; device {device!r} "
                                 "is not supported for them")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {e}") from None
        args = self.session.get_inputs() + self.session.get_outputs()
        self._dims0 = [(a.shape[0] if a.shape else None) for a in args]

        def specs(items):
            out = []
            for a in items:
                if a.type not in _ORT_TYPES:
                    raise ModelLoadError(f"{path}: {a.name!r} has type {a.type}; ember serve supports "
                                         f"{', '.join(sorted(_ORT_TYPES))}")
                out.append(TensorSpec(a.name, _ORT_TYPES[a.type],
                                      tuple(d if isinstance(d, int) and d >= 0 else -1 for d in a.shape)))
            return out

        super().__init__(name, version, path, specs(self.session.get_inputs()), specs(self.session.get_outputs()),
                         input_names, output_names)

    def _run(self, feeds):
        res = self.session.run(self._out_names, feeds)
        return dict(zip(self._out_names, res))


def load_model(name, version, path, device="cpu", input_names=None, output_names=None) -> ServedModel:
    """The ServedModel for ``path`` (``.ember`` or ``.onnx``)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".ember":
        return EmberModel(name, version, path, device, input_names, output_names)
    if ext == ".onnx":
        return OnnxModel(name, version, path, device, input_names, output_names)
    raise ModelLoadError(f"{path}: not a model file; ember serve runs .ember and .onnx files")


def _renamed(specs, names, field, path):
    if names is None:
        return specs
    if len(names) != len(specs) or len(set(names)) != len(names):
        raise ModelLoadError(f"{path}: config.json field {field!r} has {len(names)} names "
                             f"{names}; the model has {len(specs)}: {[s.name for s in specs]} (names must be unique)")
    return [TensorSpec(n, s.datatype, s.shape) for n, s in zip(names, specs)]


def _batchable(dims0) -> bool:
    """Batched when every input and output starts with the same symbolic dim (the batch)."""
    firsts = set(dims0)
    return len(firsts) == 1 and isinstance(next(iter(firsts)), str)
