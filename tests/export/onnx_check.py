"""Shared checks for the export tests: trace -> to_onnx -> run in ONNX Runtime and onnx.reference ->
compare with ember's own outputs (eager, and the Program)."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

import ember
from ember.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, to_onnx
from ember.serialize import Program, trace

ATOL, RTOL = 1e-5, 1e-4
OPSETS = sorted({MIN_OPSET, DEFAULT_OPSET, MAX_OPSET})  # the ends of the supported range and the default


def ort_session(path_or_model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_onnx(model_path, feeds, reference=True):
    """Outputs of ONNX Runtime (and of onnx.reference when ``reference``) for ``feeds`` (name -> array)."""
    out = {"onnxruntime": ort_session(model_path).run(None, feeds)}
    if reference:
        out["onnx.reference"] = ReferenceEvaluator(onnx.load(model_path)).run(None, feeds)
    return out


def _as_tuple(out):
    return (out,) if isinstance(out, ember.Tensor) else tuple(out)


def assert_same(got, want, what, atol=ATOL, rtol=RTOL):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, ember gives {want.shape}"
    if want.dtype.kind in "biu":
        assert got.dtype.kind == want.dtype.kind, f"{what}: dtype {got.dtype}, ember gives {want.dtype}"
        if atol >= 1:  # integer codes within ``atol`` steps (a QDQ lowering rounds float sums)
            np.testing.assert_allclose(got.astype(np.int64), want.astype(np.int64), atol=int(atol), rtol=0,
                                       err_msg=what)
        else:
            np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, ember gives {want.dtype}"
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, equal_nan=True, err_msg=what)


def check_export(fn, inputs, *, opset=None, batches=(), dynamic_axes=None, atol=ATOL, rtol=RTOL, reference=True,
                 tmp_dir=None):
    """Trace ``fn`` (module, function or Program) on numpy ``inputs``, export it, and check that ONNX Runtime
    and onnx.reference reproduce ember at the example and at each batch size in ``batches`` (inputs whose
    dim 0 equals input 0's are tiled/cut along dim 0). Returns the ONNX model."""
    xs = tuple(ember.tensor(np.asarray(a, order="C")) for a in inputs)
    prog = fn if isinstance(fn, Program) else trace(fn, xs, dynamic_axes=dynamic_axes)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        path = os.path.join(d, "model.onnx")
        model = to_onnx(prog, path, opset=opset)
        sizes = [None] + list(batches)
        for n in sizes:
            arrays = list(inputs) if n is None else resize(inputs, n)
            ts = tuple(ember.tensor(np.asarray(a, order="C")) for a in arrays)
            if isinstance(fn, Program):
                want = _as_tuple(fn(*ts))
            else:
                with ember.no_grad():
                    want = _as_tuple(fn(*ts))
            feeds = {name: np.asarray(a, order="C") for name, a in zip(prog.graph.inputs, arrays)}
            for engine, got in run_onnx(path, feeds, reference=reference).items():
                assert len(got) == len(want), f"{engine}: {len(got)} outputs, ember gives {len(want)}"
                for i, (g, w) in enumerate(zip(got, want)):
                    assert_same(g, w.numpy(), f"{engine}, output {i}, batch {n or 'example'}", atol, rtol)
    return model


def resize(arrays, n):
    """The inputs at batch ``n``: those sharing input 0's leading size are tiled/cut along dim 0."""
    b = arrays[0].shape[0]
    out = []
    for a in arrays:
        if a.ndim and a.shape[0] == b:
            a = np.concatenate([a] * (n // b + 1))[:n]
        out.append(np.asarray(a, order="C"))
    return out


class Data:
    """Seeded test inputs: normal float32 (``f32``), small int64 in [-5, 5] (``i64``), bools, indices in
    [0, high) (``idx``)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def f32(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)

    def i64(self, *shape):
        return self.rng.integers(-5, 6, shape).astype(np.int64)

    def bools(self, *shape):
        return self.rng.random(shape) > 0.5

    def idx(self, high, *shape, dtype=np.int64):
        return self.rng.integers(0, high, shape).astype(dtype)


def onnx_op_types(model) -> list:
    return [n.op_type for n in model.graph.node]
