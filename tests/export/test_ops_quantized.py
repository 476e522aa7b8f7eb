"""ONNX lowerings of the quantization ops (export/ops_quantized.py), run in ONNX Runtime and onnx.reference.

Codes must be equal exactly; the float outputs are exact too in practice (same float32 operations), and
are held to 1e-6. Inputs mix random values, exact .5 ties, near ties and values past both ends of the range.
"""
import numpy as np
import pytest

import ember
from core.op_samples import SAMPLES
from ember.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, ExportError, to_onnx
from ember.export.ops_quantized import ORT_QDQ_MAX_OPSET
from ember.ops import quantized as Q
from ember.ops.registry import apply
from ember.serialize import trace

from .onnx_check import check_export, onnx_op_types

# onnx.reference implements QuantizeLinear / DequantizeLinear from version 19 only (the versions 13 used at
# opsets 17-18 differ in none of the types used here): at opset 17 only ONNX Runtime checks the Q/DQ graphs,
# and opset 19 runs them in both engines
OPSETS = sorted({MIN_OPSET, 19, DEFAULT_OPSET, MAX_OPSET})
TOL = dict(atol=1e-6, rtol=1e-6)
QR = Q.QRANGES


def _check(fn, inputs, opset, **kw):
    """check_export with this file's tolerances, dynamic batch unless told otherwise, and onnx.reference where
    it has the ops."""
    kw.setdefault("batches", () if "dynamic_axes" in kw else (1, 5))
    kw.setdefault("reference", opset >= 19)
    return check_export(fn, inputs, opset=opset, **TOL, **kw)


SCALES = np.array([0.0213, 0.05, 0.125], np.float32)
rng = np.random.default_rng(17)


def _x(*shape, scale=0.05, dtype=np.float32):
    """Values spanning about 300 steps of ``scale`` with a third of them on exact or near .5 ties."""
    codes = rng.normal(0, 100, shape)
    codes = np.where(rng.random(shape) < 0.3, np.floor(codes) + 0.5, codes)
    return (codes * np.float32(scale)).astype(dtype)


def _qdq_expected(model, opset, *types):
    ops = onnx_op_types(model)
    for t in types:
        assert (t in ops) == (opset <= ORT_QDQ_MAX_OPSET), ops


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype,zp", [("uint8", 128), ("uint8", 3), ("int8", -5), ("int8", 0)])
def test_quantize_dequantize_per_tensor(opset, dtype, zp):
    model = _check(lambda x: Q.quantize_per_tensor(x, 0.05, zp, dtype), [_x(4, 6)], opset)
    _qdq_expected(model, opset, "QuantizeLinear")
    codes = rng.integers(*QR[dtype], (4, 6), endpoint=True).astype(dtype)
    model = _check(lambda q: Q.dequantize(q, 0.05, zp), [codes], opset)
    _qdq_expected(model, opset, "DequantizeLinear")
    _check(lambda x: Q.dequantize(Q.quantize_per_tensor(x, 0.05, zp, dtype), 0.05, zp), [_x(3, 2, 5)], opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("axis", [1, 2, -1])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_dequantize_per_channel(opset, axis, dtype):
    zp = {"uint8": np.array([0, 128, 255]), "int8": np.array([-128, 0, 127])}[dtype]
    s, z = ember.tensor(SCALES), ember.tensor(zp.astype(dtype))

    def f(x):
        q = Q.quantize_per_channel(x, s, z, axis, dtype)
        return q, Q.dequantize(q, s, z, axis=axis)

    model = _check(f, [_x(4, 3, 3)], opset)
    _qdq_expected(model, opset, "QuantizeLinear", "DequantizeLinear")


@pytest.mark.parametrize("opset", OPSETS)
def test_per_channel_along_dim_0_with_fixed_shape(opset):
    s, z = ember.tensor(SCALES), ember.tensor(np.array([1, 2, 3], np.uint8))
    _check(lambda x: Q.dequantize(Q.quantize_per_channel(x, s, z, 0, "uint8"), s, z, axis=0), [_x(3, 4)], opset,
           dynamic_axes={"x": None})


@pytest.mark.parametrize("opset", OPSETS)
def test_scale_and_zero_point_as_graph_inputs(opset):
    x = _x(4, 3)
    _check(lambda x, s, z: Q.quantize_per_tensor(x, s, z, "int8"),
           [x, np.array(0.05, np.float32), np.array(-7, np.int8)], opset)
    _check(lambda x, s, z: Q.fake_quantize_per_tensor_affine(x, s, z, 0, 127),
           [x, np.array(0.05, np.float32), np.array(60, np.int32)], opset)
    _check(lambda x, s, z: Q.fake_quantize_per_channel_affine(x, s, z, 1, -64, 63),
           [x, SCALES, np.array([-3, 0, 9], np.int32)], opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("qrange,zp", [((0, 255), 128), ((-128, 127), -3), ((0, 127), 64), ((-64, 63), 1),
                                       ((0, 15), 8), ((-512, 511), 17)],
                         ids=["uint8", "int8", "uint8-reduce-range", "int8-reduce-range", "4-bit", "10-bit"])
def test_fake_quantize(opset, qrange, zp):
    qmin, qmax = qrange
    model = _check(lambda x: Q.fake_quantize_per_tensor_affine(x, 0.05, zp, qmin, qmax), [_x(4, 3, 2)], opset)
    qdq = qmax - qmin <= 255 and opset <= ORT_QDQ_MAX_OPSET
    ops = onnx_op_types(model)
    assert ("QuantizeLinear" in ops) == qdq, ops
    assert ("Clip" in ops) == (qdq and qrange not in QR.values()), ops  # reduce_range clamps the codes
    zps = ember.tensor(np.array([qmin, zp, qmax], np.int32))
    _check(lambda x: Q.fake_quantize_per_channel_affine(x, ember.tensor(SCALES), zps, 1, qmin, qmax), [_x(4, 3, 2)],
           opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("i", range(len(SAMPLES["fake_quantize"])))
def test_fake_quantize_samples(opset, i):
    """The gradcheck samples: float32 with a dynamic batch, and float64 as they are."""
    s = SAMPLES["fake_quantize"][i]
    _check(s.fn, [a.astype(np.float32) for a in s.inputs], opset)
    _check(s.fn, s.inputs, opset)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes(opset, dtype):
    zps = ember.tensor(np.array([0, 100, 255], np.int32))

    def f(x):
        return (Q.fake_quantize_per_tensor_affine(x, 0.05, 3, 0, 255),
                Q.fake_quantize_per_channel_affine(x, ember.tensor(SCALES), zps, 1, 0, 255),
                Q.quantize_per_tensor(x, 0.05, 3, "int8"),
                Q.quantize_per_channel(x, ember.tensor(SCALES), zps.to(ember.uint8), 1, "uint8"))

    _check(f, [_x(4, 3, dtype=dtype)], opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_nan_and_inf_saturate_like_ember(opset):
    x = np.array([[np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5]], np.float32)
    s6, zps = ember.tensor(np.full(6, 0.1, np.float32)), ember.tensor(np.array([0, 100, 250, 9, 7, 5], np.int32))

    def f(x):
        return (Q.quantize_per_tensor(x, 0.1, 3, "uint8"), Q.quantize_per_tensor(x, 0.1, -3, "int8"),
                Q.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 127),
                Q.fake_quantize_per_channel_affine(x, s6, zps, 1, 0, 255))

    # onnx.reference casts the unclamped code to int32 first, so +-inf and 1e30 come out wrong there (NaN as
    # well for uint8); ONNX Runtime saturates them as ember does
    _check(f, [x], opset, dynamic_axes={"x": None}, reference=False)


def test_fake_quantize_backward_is_refused(tmp_path):
    s, z = ember.tensor(np.float32(0.1)), ember.tensor(np.int32(3))
    prog = trace(lambda g, x: apply("fake_quantize_backward", g, x, s, z, quant_min=0, quant_max=255, axis=None),
                 (ember.ones(2, 3), ember.ones(2, 3)))
    with pytest.raises(ExportError, match="fake_quantize_backward.*computes a gradient"):
        to_onnx(prog, str(tmp_path / "m.onnx"))
