"""ONNX lowerings of the quantization ops: QuantizeLinear / DequantizeLinear, or the same math written out.

ember's kernels compute ONNX's formula (a float32 division rounded half to even, then the zero point,
saturation; NaN gives qmin as in ONNX Runtime), so Q/DQ reproduce them exactly. Where Q/DQ cannot be
used the formula is spelled out with Div / Round / Where / Cast, clamping in float64 as the kernel does:
float64 inputs (which Q/DQ do not take), fake_quantize ranges wider than int8/uint8, and opset 28, whose
QuantizeLinear/DequantizeLinear (new versions there) have no ONNX Runtime 1.32 kernel.
"""
from __future__ import annotations

import numpy as np

from ember.ops.quantized import QRANGES

from .lowering import lowers, onnx_dtype, refuses

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
ORT_QDQ_MAX_OPSET = 27  # the newest opset at which ONNX Runtime 1.32 runs QuantizeLinear / DequantizeLinear (probed)


def _use_qdq(g, x_dtype):
    return g.opset <= ORT_QDQ_MAX_OPSET and x_dtype != _F64


def _compute_dtype(x_dtype):
    """The dtype ember's kernel divides in: float64 for float64 input, float32 otherwise (float16 widened)."""
    return _F64 if x_dtype == _F64 else _F32


def _along(g, name, axis, rank):
    """A per-axis (C,) parameter shaped (C, 1, ..., 1) to broadcast against a rank-``rank`` input."""
    k = 0 if axis is None else rank - axis - 1
    if k == 0:
        return name
    return g.op("Unsqueeze", [name, g.const(np.arange(1, k + 1, dtype=np.int64), "axes")])


def _codes(g, x, scale, zp, axis, qmin, qmax):
    """``clamp(rint(x / scale), qmin - zp, qmax - zp)`` as float64 (NaN -> the lower bound), and the zero point
    as float64 shaped to broadcast: the kernel's steps, op for op."""
    rank, ct = g.rank(x), _compute_dtype(g.dtype(x))
    s = _along(g, g.cast(scale, ct), axis, rank)
    r = g.op("Round", [g.op("Div", [g.cast(x, ct), s])])
    if ct != _F64:
        r = g.op("Cast", [r], to=onnx_dtype(_F64))
    z = _along(g, g.cast(zp, _F64), axis, rank)
    lo = g.op("Sub", [g.scalar(qmin, _F64), z])
    hi = g.op("Sub", [g.scalar(qmax, _F64), z])
    r = g.op("Where", [g.op("Greater", [r, lo]), r, lo])
    return g.op("Where", [g.op("Greater", [r, hi]), hi, r]), z


def _zero_point_as(g, zp, qtype):
    """The zero point as a ``qtype`` tensor (ONNX wants the quantized type): a new initializer for a constant,
    else a Cast (exact: the kernel checked the zero point lies in the range)."""
    value = g.constant_value(zp)
    if value is not None:
        return g.const(np.asarray(value).astype(qtype), "zero_point")
    return g.cast(zp, qtype)


@lowers("quantize_per_tensor", "quantize_per_channel")
def _quantize(g, node):
    x, scale, zp = node.inputs
    axis = node.attrs["axis"] if node.op == "quantize_per_channel" else None
    dtype, out = node.attrs["dtype"], node.outputs[0]
    if _use_qdq(g, g.dtype(x)):
        g.op("QuantizeLinear", [g.cast(x, _F32), scale, zp], out, axis=axis)
        return
    r, z = _codes(g, x, scale, zp, axis, *QRANGES[dtype])
    g.op("Cast", [g.op("Add", [r, z])], out, to=onnx_dtype(dtype))


@lowers("dequantize")
def _dequantize(g, node):
    q, scale, zp = node.inputs
    axis, out = node.attrs["axis"], node.outputs[0]
    if g.opset <= ORT_QDQ_MAX_OPSET:
        g.op("DequantizeLinear", [q, scale, zp], out, axis=axis)
        return
    rank = g.rank(q)
    # q - zero_point is a small integer, exact in float32, as in the kernel
    d = g.op("Sub", [g.cast(q, _F32), _along(g, g.cast(zp, _F32), axis, rank)])
    g.op("Mul", [d, _along(g, scale, axis, rank)], out)


@lowers("fake_quantize")
def _fake_quantize(g, node):
    x, scale, zp = node.inputs
    qmin, qmax, axis = node.attrs["quant_min"], node.attrs["quant_max"], node.attrs["axis"]
    out, x_dtype = node.outputs[0], g.dtype(x)
    ct = _compute_dtype(x_dtype)
    last = out if x_dtype == ct else None
    qtype = next((name for name, (lo, hi) in QRANGES.items() if lo <= qmin and qmax <= hi), None)
    if _use_qdq(g, x_dtype) and qtype is not None:
        z = _zero_point_as(g, zp, qtype)
        q = g.op("QuantizeLinear", [g.cast(x, _F32), scale, z], axis=axis)
        if (qmin, qmax) != QRANGES[qtype]:  # a narrower range (reduce_range): saturate at its bounds too
            q = g.op("Clip", [q, g.scalar(qmin, qtype), g.scalar(qmax, qtype)])
        y = g.op("DequantizeLinear", [q, scale, z], last, axis=axis)
    else:
        r, _ = _codes(g, x, scale, zp, axis, qmin, qmax)
        s = _along(g, g.cast(scale, ct), axis, g.rank(x))
        y = g.op("Mul", [g.op("Cast", [r], to=onnx_dtype(ct)), s], last)
    if last is None:
        g.op("Cast", [y], out, to=onnx_dtype(x_dtype))


refuses(["fake_quantize_backward"], "it computes a gradient (the straight-through mask of fake_quantize); ONNX "
                                    "export covers inference graphs: export the model's forward, traced in eval mode")


@lowers("dynamic_quantized_linear")
def _dynamic_quantized_linear(g, n):
    """The kernel's steps as ONNX ops: uint8 qparams from the input's min/max (range widened to 0, scale at
    least float32 eps), QuantizeLinear (with ``reduce_range``, codes 0 .. 127: Round, Add and a Clip at 127, as
    QuantizeLinear saturates at 255 and ties at both ends can round to 128), MatMulInteger with the weight as uint8
    codes around zero point 128 (see ``_weight_u8``), ``float(acc) * (a_scale * w_scale)`` + bias (float32, one
    rounding per op, as the kernel's epilogue)."""
    x, w, w_scale = n.inputs[:3]
    bias = n.inputs[3] if len(n.inputs) > 3 else None
    f32 = np.float32
    qmax = 127 if n.attrs.get("reduce_range", False) else 255
    zero = g.scalar(0, f32)
    lo = g.op("Min", [g.reduce("ReduceMin", x, None, False), zero])
    hi = g.op("Max", [g.reduce("ReduceMax", x, None, False), zero])
    scale = g.op("Max", [g.op("Div", [g.op("Sub", [hi, lo]), g.scalar(qmax, f32)]),
                         g.scalar(np.finfo(f32).eps, f32)])
    zpf = g.op("Clip", [g.op("Neg", [g.op("Round", [g.op("Div", [lo, scale])])]), zero, g.scalar(qmax, f32)])
    zp = g.op("Cast", [zpf], to=onnx_dtype(np.uint8))
    if g.opset <= ORT_QDQ_MAX_OPSET and qmax == 255:
        xq = g.op("QuantizeLinear", [x, scale, zp])
    else:
        codes = g.op("Clip", [g.op("Add", [g.op("Round", [g.op("Div", [x, scale])]), zpf]), zero, g.scalar(qmax, f32)])
        xq = g.op("Cast", [codes], to=onnx_dtype(np.uint8))
    acc = g.op("MatMulInteger", [xq, _weight_u8(g, w, transpose=True), zp, g.scalar(128, np.uint8)])
    y = g.op("Mul", [g.op("Cast", [acc], to=onnx_dtype(f32)), g.op("Mul", [scale, w_scale])])
    last = not n.attrs["relu"]
    if bias is not None:
        y = g.op("Add", [y, bias], n.outputs if last else None)
    elif last:
        y = g.op("Identity", [y], n.outputs)
    if not last:
        g.op("Relu", [y], n.outputs)


def _weight_u8(g, w, transpose=False):
    """The int8 weight (transposed when asked) as uint8 codes w + 128, to be read with zero point 128: the same
    integer products. ONNX Runtime multiplies uint8 by int8 with ``vpmaddubsw`` on x86 CPUs without VNNI, whose int16
    pair sums saturate for activations above 127 (outputs off by many steps); with uint8 weights it takes its exact
    kernels on every CPU. A constant weight is converted here (still one byte per weight)."""
    const = g.constant_value(w)
    if const is not None:
        c = np.asarray(const)
        out = g.const(((c.T if transpose else c).astype(np.int16) + 128).astype(np.uint8), "w_u8")
    else:
        shifted = g.op("Add", [g.op("Cast", [w], to=onnx_dtype(np.int32)), g.scalar(128, np.int32)])
        out = g.op("Cast", [shifted], to=onnx_dtype(np.uint8))
        if transpose:
            out = g.op("Transpose", [out], perm=[1, 0])
    shape = tuple(g.shape(w))
    g.values[out] = type(g.values[w])(out, "uint8", shape[::-1] if transpose else shape)
    return out


@lowers("dynamic_quantized_mlp")
def _dynamic_quantized_mlp(g, n):
    """The chain the runtime fuses on CPU, lowered one dynamic_quantized_linear at a time."""
    x, params, relus = n.inputs[0], n.inputs[1:], n.attrs["relus"]
    lead = tuple(g.shape(n.outputs[0])[:-1])
    for i, relu in enumerate(relus):
        w, w_scale, bias = params[3 * i:3 * i + 3]
        last = i == len(relus) - 1
        out = n.outputs if last else [_declare_float(g, g.fresh("chain"), lead + (g.shape(w)[0],))]
        g.lower("dynamic_quantized_linear", [x, w, w_scale, bias], out, relu=bool(relu),
                reduce_range=bool(n.attrs.get("reduce_range", False)))
        x = out[0]


def _declare_float(g, name, shape):
    from ember.serialize.ir import Value

    g.values[name] = Value(name, "float32", tuple(shape))
    return name


@lowers("quantized_linear", "quantized_conv2d")
def _quantized_layer(g, n):
    """QDQ form: DequantizeLinear on the activation and the weight (per output channel; as uint8 codes around 128,
    see ``_weight_u8``), the float
    Gemm/MatMul or Conv with the float bias, ReLU, QuantizeLinear to the output's qparams (ONNX Runtime
    fuses the pattern into its int8 kernels). Within one output step of ember's integer arithmetic (its
    bias is rounded to int32 first)."""
    x, x_scale, x_zp, w, w_scale, y_scale, y_zp = n.inputs[:7]
    bias = n.inputs[7] if len(n.inputs) > 7 else None
    out_shape = g.shape(n.outputs[0])
    xf = g.lower("dequantize", [x, x_scale, x_zp], _declare_float(g, g.fresh("x_dq"), g.shape(x)), axis=None)
    per_channel = len(g.shape(w_scale)) == 1
    w_zp = g.const(np.full(g.shape(w)[0] if per_channel else (), 128, np.uint8), "w_zp")
    g.values[w_zp] = type(g.values[w])(w_zp, "uint8", (g.shape(w)[0],) if per_channel else ())
    wf = g.lower("dequantize", [_weight_u8(g, w), w_scale, w_zp], _declare_float(g, g.fresh("w_dq"), g.shape(w)),
                 axis=0 if per_channel else None)
    yf = _declare_float(g, g.fresh("y_float"), out_shape)
    if n.op == "quantized_conv2d":
        a = n.attrs
        kh, kw = g.shape(w)[2:]
        (ph, pw) = a["padding"]
        g.op("Conv", [xf, wf] + ([bias] if bias else []), [yf], kernel_shape=[int(kh), int(kw)],
             strides=list(a["stride"]), pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=int(a["groups"]))
    else:
        wt = g.op("Transpose", [wf], perm=[1, 0])
        if bias:
            g.op("Add", [g.op("MatMul", [xf, wt]), bias], [yf])
        else:
            g.op("MatMul", [xf, wt], [yf])
    if n.attrs["relu"]:
        yf = g.op("Relu", [yf], [_declare_float(g, g.fresh("y_relu"), out_shape)])
    g.lower("quantize_per_tensor", [yf, y_scale, y_zp], n.outputs, dtype="uint8")


@lowers("requantize")
def _requantize(g, n):
    """DequantizeLinear then QuantizeLinear: the two ops the runtime's table stands for (exact as each is)."""
    q, s1, z1, s2, z2 = n.inputs
    f = g.lower("dequantize", [q, s1, z1], _declare_float(g, g.fresh("requant_dq"), g.shape(q)), axis=None)
    g.lower("quantize_per_tensor", [f, s2, z2], n.outputs, dtype=n.attrs["dtype"])


@lowers("quantized_max_pool2d")
def _quantized_max_pool2d(g, n):
    """MaxPool on the uint8/int8 codes (ONNX MaxPool takes 8-bit integers from opset 12)."""
    a = n.attrs
    (ph, pw) = a["padding"]
    g.op("MaxPool", [n.inputs[0]], n.outputs, kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]),
         pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


@lowers("quantized_conv2d_pool")
def _quantized_conv2d_pool(g, n):
    """The int8 convolution's own lowering, then MaxPool 2x2 / stride 2 on its uint8 codes (after ``requantize``'s
    lowering of the input for a folded ``in_requant``)."""
    codes = g.fresh("qconv_codes")
    x, w = n.inputs[0], n.inputs[3]
    attrs = dict(n.attrs)
    fold = attrs.pop("in_requant", None)
    if fold is not None:
        s1, z1, s2, z2 = fold
        req = g.fresh("requantized")
        g.values[req] = type(g.values[x])(req, "uint8", g.shape(x))
        g.lower("requantize", [x, g.const(np.float32(s1)), g.const(np.uint8(z1)), g.const(np.float32(s2)),
                               g.const(np.uint8(z2))], [req], dtype="uint8")
        x = req
    nb, _, h, wd = g.shape(n.outputs[0])
    g.values[codes] = type(g.values[x])(codes, "uint8", (nb, g.shape(w)[0], None, None))
    g.lower("quantized_conv2d", [x] + list(n.inputs[1:]), [codes], **attrs)
    g.op("MaxPool", [codes], n.outputs, kernel_shape=[2, 2], strides=[2, 2])
