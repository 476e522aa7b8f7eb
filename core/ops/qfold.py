"""The int8 ops that the runtime's quantization folding (``ember.serialize.passes``) puts in a graph.

A converted static model dequantizes after every int8 layer and quantizes again before the next, with
float max pooling and reshapes in between. Both of these ops let the runtime stay in uint8 instead,
and both are exact:

- ``requantize(q, s1, z1, s2, z2)`` is ``quantize(dequantize(q, s1, z1), s2, z2)``: with 256 possible
  codes it is a table, computed with the very kernels it replaces, then one lookup per element;
- ``quantized_max_pool2d`` is max pooling of the codes, values only: dequantization is monotonic
  (scale > 0), so the max of the dequantized window is the dequantized max of the codes;
- ``quantized_conv2d_pool`` is ``quantized_conv2d`` then a 2x2 / stride-2 ``quantized_max_pool2d``; a
  first layer (short reduction) pools its exact accumulators before the requantizing epilogue, which is
  monotonic in them, so a quarter of the epilogue runs and the full-size codes are never written. On CPU its
  optional attribute ``in_requant`` = (s1, z1, s2, z2) takes the ``requantize`` before it in too: its input codes
  go through that table first (the integer Winograd path looks them up while laying the input out: no pass).

They are never traced or saved (the passes run when a Program is built), but they have kernels,
shape rules and ONNX lowerings like every registry op.
"""
from __future__ import annotations

import threading

import numpy as np

from ..backends.cpu import lut as _lut
from ..backends.cpu.jit import njit
from ..backends.cpu.quant_kernels import _dequantize, _quantize
from .pool import _window_rule
from .quantized import QRANGES, _check_qparams
from .registry import kernel, prepared_kernel, register_op

_TABLES = {}  # (q dtype, s1, z1, s2, z2, dtype) -> 256-entry table
_TABLES_LOCK = threading.Lock()


def requantize_table(q_dtype, s1, z1, s2, z2, dtype) -> np.ndarray:
    """out[code] for every code of ``q_dtype``, indexed by the code's bits as uint8."""
    key = (np.dtype(q_dtype).name, float(s1), int(z1), float(s2), int(z2), dtype)
    table = _TABLES.get(key)
    if table is None:  # checked once per qparams, as the table is built
        if dtype not in QRANGES:
            raise RuntimeError(f"requantize: dtype must be 'uint8' or 'int8', got {dtype!r}")
        q_name = np.dtype(q_dtype).name
        _check_qparams("requantize (input qparams)", np.asarray(s1), np.asarray(z1), np.dtype(q_name), *QRANGES[q_name])
        _check_qparams("requantize (output qparams)", np.asarray(s2), np.asarray(z2), np.dtype(dtype), *QRANGES[dtype])
        codes = np.arange(256, dtype=np.uint8).view(q_dtype)
        table = _quantize(_dequantize(codes, np.asarray(s1), np.asarray(z1), None), np.asarray(s2), np.asarray(z2),
                          None, dtype)
        with _TABLES_LOCK:
            _TABLES[key] = table
    return table


def fold_table(in_requant) -> np.ndarray:
    """The uint8 -> uint8 table of a ``quantized_conv2d_pool``'s ``in_requant`` = (s1, z1, s2, z2)."""
    s1, z1, s2, z2 = in_requant
    return requantize_table(np.uint8, np.float32(s1), np.uint8(z1), np.float32(s2), np.uint8(z2), "uint8")


def _check_codes(op, q):
    if q.dtype.name not in QRANGES:
        raise RuntimeError(f"{op}: input must be a uint8 or int8 tensor, got {q.dtype} (shape {q.shape})")


def _requantize_rule(q, s1, z1, s2, z2, dtype="uint8"):
    if dtype not in QRANGES:
        raise RuntimeError(f"requantize: dtype must be 'uint8' or 'int8', got {dtype!r}")
    for name, shape in (("in_scale", s1), ("in_zero_point", z1), ("out_scale", s2), ("out_zero_point", z2)):
        if tuple(shape) != ():
            raise RuntimeError(f"requantize: {name} must be a 0-d tensor (per-tensor qparams), got shape {tuple(shape)}")
    return q


register_op("requantize", attrs={"dtype": "uint8"}, shape=_requantize_rule,
            doc="quantize(dequantize(q, in_scale, in_zero_point), out_scale, out_zero_point) as a 256-entry table; "
                "made by the runtime's quantization folding")


@kernel("requantize")
def _requantize_cpu(q, s1, z1, s2, z2, dtype="uint8"):
    _check_codes("requantize", q)
    return _lookup(q, requantize_table(q.dtype, s1, z1, s2, z2, dtype))


def _lookup(q, table):
    out = np.empty(q.shape, table.dtype)
    _lut.lookup(np.ascontiguousarray(q).reshape(-1).view(np.uint8), table, out.reshape(-1))
    return out


@prepared_kernel("requantize")
def _requantize_prepare(inputs, attrs):
    q, *qparams = inputs
    if q is not None or any(v is None for v in qparams):
        return None
    dtype, tables = attrs.get("dtype", "uint8"), {}

    def run(q):
        table = tables.get(q.dtype)
        if table is None:  # (checked and built once per input dtype)
            _check_codes("requantize", q)
            table = tables[q.dtype] = requantize_table(q.dtype, *qparams, dtype)
        return _lookup(q, table)
    return run


def _qpool_rule(x_shape, *, kernel_size, stride, padding, dilation, ceil_mode):
    return _window_rule("quantized_max_pool2d", x_shape, kernel_size, stride, padding, dilation, ceil_mode)


register_op("quantized_max_pool2d",
            attrs={"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False},
            shape=_qpool_rule,
            doc="window max of uint8/int8 NCHW codes, values only (max_pool2d commutes with dequantize); made by the "
                "runtime's quantization folding")


@njit
def _qmax_pool(x, out, kh, kw, sh, sw, ph, pw, dh, dw, lowest):
    n, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    plain = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1
    for b in range(n):
        for ch in range(c):
            xs, os_ = x[b, ch], out[b, ch]
            if plain and 2 * ho <= h and 2 * wo <= w:
                for i in range(ho):
                    r0, r1 = xs[2 * i], xs[2 * i + 1]
                    for j in range(wo):
                        os_[i, j] = max(max(r0[2 * j], r0[2 * j + 1]), max(r1[2 * j], r1[2 * j + 1]))
                continue
            for i in range(ho):
                for j in range(wo):
                    m = lowest
                    for a in range(kh):
                        y = i * sh - ph + a * dh
                        if 0 <= y < h:
                            for e in range(kw):
                                xx = j * sw - pw + e * dw
                                if 0 <= xx < w and xs[y, xx] > m:
                                    m = xs[y, xx]
                    os_[i, j] = m


@kernel("quantized_max_pool2d")
def _qmax_pool_cpu(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    _check_codes("quantized_max_pool2d", x)
    n, c, ho, wo = _qpool_rule(x.shape, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                               ceil_mode=ceil_mode)
    out = np.empty((n, c, ho, wo), x.dtype)
    lowest = np.iinfo(x.dtype).min
    _qmax_pool(np.ascontiguousarray(x), out, *kernel_size, *stride, *padding, *dilation, x.dtype.type(lowest))
    return out


def _qconv_pool_rule(x, *params, stride, padding, dilation, groups, relu=False, in_requant=None):
    from .qlinear import _qc_rule

    n, c, h, w = _qc_rule(x, *params, stride=stride, padding=padding, dilation=dilation, groups=groups, relu=relu)
    return _qpool_rule((n, c, h, w), **_POOL_2X2)


_POOL_2X2 = {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False}

register_op("quantized_conv2d_pool", attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
                                            "relu": False}, shape=_qconv_pool_rule,
            doc="quantized_conv2d then 2x2 / stride-2 max pooling of its uint8 codes (inputs as quantized_conv2d); "
                "made by the runtime's quantization folding")


@kernel("quantized_conv2d_pool")
def _qconv_pool_cpu(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, stride, padding, dilation, groups,
                    relu=False, in_requant=None):
    from . import qlinear as ql

    if in_requant is not None:
        _check_codes("quantized_conv2d_pool", x)
        x = _lookup(x, fold_table(in_requant)) if x.dtype == np.uint8 else x  # (int8: the conv's own error)
    return ql._qc_cpu(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, relu=relu, pool=True)


@prepared_kernel("quantized_conv2d_pool")
def _qconv_pool_prepare(inputs, attrs):
    from . import qlinear as ql

    return ql.qconv_prepare("quantized_conv2d_pool", inputs, attrs, True)
