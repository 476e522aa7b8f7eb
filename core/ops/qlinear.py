"""int8 compute ops of quantized models (docs/quantize-design.md): ``dynamic_quantized_linear`` (float
in and out), and ``quantized_linear`` / ``quantized_conv2d`` (uint8 in and out, requantized).

The int8 weight is an ordinary int8 tensor input (so files store one byte per weight and the ONNX
export sees the plain (N, K) matrix); the kernels' packed layout is made on first use and cached per
weight array, and the requantization parameters (int32 bias, multipliers) per set of qparam and bias
arrays (an int8 weight, scale or bias changed in place is not seen: assign a new tensor instead).
"""
from __future__ import annotations

import numpy as np

from numba import prange

from ..backends.cpu import int8_chain as _chain
from ..backends.cpu import int8_conv as _qconv
from ..backends.cpu import int8_conv_tiled as _qconv_tiled
from ..backends.cpu import int8_winograd as _qwino
from ..backends.cpu import int8_kernels as _ik
from ..backends.cpu import jit
from ..backends.cpu.conv_tiled import requant_row
from .registry import kernel, prepared_kernel, register_op
from .util import float32_input

_PACKED: dict = {}  # id(weight array) -> (weakref to it, PackedWeight)
_PACKED7: dict = {}  # the same for weights that meet 7-bit activations (dynamic layers with reduce_range)


def packed(w: np.ndarray, reduce_range: bool = False) -> _ik.PackedWeight:
    """The kernels' layout of int8 weight ``w``, packed once per array (for activation codes up to 127 with
    ``reduce_range``: on AVX2 hosts the faster U8S8 tile)."""
    if reduce_range:
        return _ik.cached_per_array(_PACKED7, w, lambda a: _ik.pack_weight(a, act_max=127))
    return _ik.cached_per_array(_PACKED, w, _ik.pack_weight)


def _dql_rule(x, w, w_scale, bias=None, *, relu=False, reduce_range=False):
    if len(w) != 2:
        raise RuntimeError(f"dynamic_quantized_linear: weight must be 2-D (out_features, in_features), got shape "
                           f"{tuple(w)}")
    if not x or x[-1] != w[1]:
        raise RuntimeError(f"dynamic_quantized_linear: input has {x[-1] if x else 0} features, weight expects {w[1]} "
                           f"(input shape {tuple(x)})")
    if tuple(w_scale) not in ((), (w[0],)):
        raise RuntimeError(f"dynamic_quantized_linear: w_scale has shape {tuple(w_scale)}; expected () (per tensor) "
                           f"or ({w[0]},) (per output channel)")
    if bias is not None and tuple(bias) != (w[0],):
        raise RuntimeError(f"dynamic_quantized_linear: bias has shape {tuple(bias)}, expected ({w[0]},)")
    return tuple(x[:-1]) + (w[0],)


register_op("dynamic_quantized_linear", attrs={"relu": False, "reduce_range": False}, shape=_dql_rule,
            doc="float32 x @ dequantized(int8 weight)^T + bias, with x quantized to uint8 per call from its own "
                "min/max (torch's dynamic quantization; codes 0..127 with reduce_range, as torch's x86 backend); "
                "inputs (x, weight int8, w_scale, [bias])")


@kernel("dynamic_quantized_linear")
def _dql_cpu(x, w, w_scale, bias=None, *, relu=False, reduce_range=False):
    if w.dtype != np.int8:
        raise TypeError(f"dynamic_quantized_linear: weight must be int8 (symmetric), got {w.dtype}")
    if x.dtype != np.float32:
        raise TypeError(f"dynamic_quantized_linear: input must be float32, got {x.dtype}")
    rr = bool(reduce_range)
    return _ik.qlinear_dynamic(x, packed(w, rr), w_scale, bias, relu=bool(relu), reduce_range=rr)


def _dqmlp_rule(x, *params, relus=(), reduce_range=False):
    if not params or len(params) % 3 or len(relus) != len(params) // 3:
        raise RuntimeError(f"dynamic_quantized_mlp: inputs are x then (weight, w_scale, bias) per layer with one "
                           f"relus entry each; got {len(params)} parameter inputs and relus={tuple(relus)}")
    for i in range(0, len(params), 3):
        x = _dql_rule(x, *params[i:i + 3])
    return x


register_op("dynamic_quantized_mlp", attrs={"relus": (), "reduce_range": False}, shape=_dqmlp_rule,
            doc="a chain of dynamic_quantized_linear layers, each feeding the next, in one kernel call (made by the "
                "runtime's load-time passes on CPU, never saved); inputs (x, then weight, w_scale, bias per layer)")


def _dqmlp_layers(params, relus, reduce_range):
    layers = []
    for i, relu in enumerate(relus):
        w, w_scale, bias = params[3 * i:3 * i + 3]
        if w.dtype != np.int8:
            raise TypeError(f"dynamic_quantized_mlp: weight {i} must be int8 (symmetric), got {w.dtype}")
        layers.append((packed(w, bool(reduce_range)), w_scale, bias, bool(relu)))
    return _chain.plan(layers, bool(reduce_range))


@kernel("dynamic_quantized_mlp")
def _dqmlp_cpu(x, *params, relus=(), reduce_range=False):
    plan = _dqmlp_layers(params, relus, reduce_range)
    return _chain.run(float32_input("dynamic_quantized_mlp", x), plan)


@prepared_kernel("dynamic_quantized_mlp")
def _dqmlp_prepare(inputs, attrs):
    x, *params = inputs
    if x is not None or any(p is None for p in params):
        return None
    plan = _dqmlp_layers(params, attrs.get("relus", ()), attrs.get("reduce_range", False))  # (no lookup per call)
    return lambda x: _chain.run(float32_input("dynamic_quantized_mlp", x), plan)


# ---- static quantization: uint8 in, uint8 out ---------------------------------------------------------
# Inputs follow ONNX's QLinearConv / QLinearMatMul: (x, x_scale, x_zero_point, w, w_scale, y_scale,
# y_zero_point[, bias]); weights are symmetric int8 (zero point 0), w_scale per tensor or per output
# channel; the float bias is quantized to int32 with x_scale * w_scale inside the kernel.

def _qparams_rule(op, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias):
    for name, s in (("x_scale", x_scale), ("x_zero_point", x_zp), ("y_scale", y_scale), ("y_zero_point", y_zp)):
        if tuple(s) != ():
            raise RuntimeError(f"{op}: {name} must be a scalar (per-tensor activation qparams), got shape {tuple(s)}")
    if tuple(w_scale) not in ((), (w[0],)):
        raise RuntimeError(f"{op}: w_scale has shape {tuple(w_scale)}; expected () or ({w[0]},) for weight shape "
                           f"{tuple(w)}")
    if bias is not None and tuple(bias) != (w[0],):
        raise RuntimeError(f"{op}: bias has shape {tuple(bias)}, expected ({w[0]},)")


def _ql_rule(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, relu=False):
    if len(w) != 2:
        raise RuntimeError(f"quantized_linear: weight must be 2-D (out_features, in_features), got shape {tuple(w)}")
    if not x or x[-1] != w[1]:
        raise RuntimeError(f"quantized_linear: input has {x[-1] if x else 0} features, weight expects {w[1]} "
                           f"(input shape {tuple(x)})")
    _qparams_rule("quantized_linear", x_scale, x_zp, w, w_scale, y_scale, y_zp, bias)
    return tuple(x[:-1]) + (w[0],)


register_op("quantized_linear", attrs={"relu": False}, shape=_ql_rule,
            doc="uint8 x -> uint8 y: the int8 GEMM with a requantizing epilogue (ONNX QLinearMatMul + bias + "
                "optional ReLU); inputs (x, x_scale, x_zp, weight int8, w_scale, y_scale, y_zp, [bias])")


_REQUANT: dict = {}  # ids of (x_scale, w_scale, y_scale, bias, w) -> (weakrefs to them, (bias_i32, multipliers))


def _requant(op, x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias):
    """(bias_i32, multipliers) of a requantizing layer, computed once per set of arrays (the dtypes are checked
    on every call)."""
    if x.dtype != np.uint8 or x_zp.dtype != np.uint8 or y_zp.dtype != np.uint8:
        return _requant_checked(op, x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias)  # raises
    return _ik.cached_per_arrays(_REQUANT, (x_scale, w_scale, y_scale, bias, w), None,
                                 lambda: _requant_checked(op, x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias))


def _requant_checked(op, x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias):
    if x.dtype != np.uint8 or x_zp.dtype != np.uint8 or y_zp.dtype != np.uint8:
        raise TypeError(f"{op}: activations and their zero points must be uint8, got x {x.dtype}, x_zero_point "
                        f"{x_zp.dtype}, y_zero_point {y_zp.dtype}")
    if w.dtype != np.int8:
        raise TypeError(f"{op}: weight must be int8 (symmetric), got {w.dtype}")
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32), (w.shape[0],))  # per tensor -> per channel
    return _ik.requant_params(x_scale, w_scale, y_scale, bias)


def _fixed_requant(op, inputs):
    """For a prepared kernel: (x_zp, weight, its packed layout, bias_i32, multipliers, y_zp) of a layer whose inputs
    past x are constants, or None (then the plain kernel runs, and raises what it raises)."""
    x, x_scale, x_zp, w, w_scale, y_scale, y_zp, *rest = inputs
    if x is not None or any(v is None for v in inputs[1:7]) or (rest and rest[0] is None):
        return None
    try:
        bias_i32, mult = _requant_checked(op, np.zeros(0, np.uint8), x_scale, x_zp, w, w_scale, y_scale, y_zp,
                                          rest[0] if rest else None)
    except (TypeError, ValueError, RuntimeError):
        return None
    return int(x_zp), w, packed(w), bias_i32, mult, int(y_zp)


def _uint8_input(op, x):
    if x.dtype != np.uint8:
        raise TypeError(f"{op}: activations must be uint8, got x {x.dtype} (shape {x.shape})")
    return x


@kernel("quantized_linear")
def _ql_cpu(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, relu=False):
    bias_i32, mult = _requant("quantized_linear", x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias)
    return _ik.qlinear(x, int(x_zp), packed(w), bias_i32, mult, int(y_zp), relu=bool(relu))


@prepared_kernel("quantized_linear")
def _ql_prepare(inputs, attrs):
    fixed = _fixed_requant("quantized_linear", inputs)
    if fixed is None:
        return None
    xz, _, pw, bias_i32, mult, yz = fixed
    run = _ik.qlinear_fixed(xz, pw, bias_i32, mult, yz, relu=bool(attrs.get("relu", False)))
    return lambda x: run(_uint8_input("quantized_linear", x))


def _qc_rule(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, stride, padding, dilation, groups, relu=False):
    from .conv import _conv2d_rule

    _qparams_rule("quantized_conv2d", x_scale, x_zp, w, w_scale, y_scale, y_zp, bias)
    return _conv2d_rule(x, w, None, stride=stride, padding=padding, dilation=dilation, groups=groups)


register_op("quantized_conv2d", attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
                                       "relu": False}, shape=_qc_rule,
            doc="uint8 NCHW x -> uint8 y: int8 convolution with a requantizing epilogue (ONNX QLinearConv + "
                "optional ReLU); inputs (x, x_scale, x_zp, weight int8 (Cout, C/groups, kh, kw), w_scale, y_scale, "
                "y_zp, [bias])")


@kernel("quantized_conv2d")
def _qc_cpu(x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias=None, *, stride, padding, dilation, groups, relu=False,
            pool=False):
    """``pool``: followed by 2x2 / stride-2 max pooling of the codes (quantized_conv2d_pool)."""
    bias_i32, mult = _requant("quantized_conv2d", x, x_scale, x_zp, w, w_scale, y_scale, y_zp, bias)
    return qconv_apply(x, int(x_zp), w, packed(w), bias_i32, mult, int(y_zp), stride, padding, dilation, groups, relu,
                       pool)


def qconv_apply(x, xz, w, pw, bias_i32, mult, yz, stride, padding, dilation, groups, relu, pool):
    """quantized_conv2d (pooled 2x2 when ``pool``) of uint8 x with the layer's fixed fields."""
    if short_k(x, w, groups):
        return _short_k_conv(x, xz, w, stride, padding, dilation, groups, bias_i32, mult, yz, relu, pool=pool)
    if pool and not _qconv_tiled.usable(x, w.shape, stride, groups):  # pooled after, not in the tile's epilogue
        from .qfold import _POOL_2X2, _qmax_pool_cpu

        y = _qconv.qconv2d(x, xz, pw, stride, padding, dilation, groups, bias_i32, mult, yz, relu=bool(relu),
                           weight=w)
        return _qmax_pool_cpu(y, **_POOL_2X2)
    return _qconv.qconv2d(x, xz, pw, stride, padding, dilation, groups, bias_i32, mult, yz, relu=bool(relu),
                          pool=pool, weight=w)


def qconv_prepare(op, inputs, attrs, pool):
    """The prepared kernel of quantized_conv2d (pool False) and quantized_conv2d_pool (with its ``in_requant``)."""
    fixed = _fixed_requant(op, inputs)
    if fixed is None:
        return None
    attrs = dict(attrs)  # (the caller's stay as they are)
    in_requant = attrs.pop("in_requant", None)
    if in_requant is not None:  # the input's table first: inside the Winograd layout pass, else one lookup
        from .qfold import _check_codes, _lookup, fold_table

        table = fold_table(in_requant)
        inner = qconv_prepare(op, inputs, attrs, pool)
        wino = getattr(inner, "wino", None)
        folded, w, pad = (None if wino is None else wino.with_table(table)), inputs[3], attrs["padding"]

        def run(x):
            _check_codes(op, x)
            if x.dtype != np.uint8:
                return inner(x)  # (int8 codes: the kernel's own error)
            return folded(x) if folded is not None and _qwino.fits(x, w, pad) else inner(_lookup(x, table))
        return run
    xz, w, pw, bias_i32, mult, yz = fixed
    geometry = tuple(attrs[k] for k in ("stride", "padding", "dilation", "groups"))
    relu = bool(attrs.get("relu", False))
    short = _prepared_short_k(w, xz, bias_i32, mult, yz, geometry, relu, pool)
    if short is not None:
        return lambda x: short(x) if x.dtype == np.uint8 and short_k(x, w, geometry[3]) else qconv_apply(
            _uint8_input(op, x), xz, w, pw, bias_i32, mult, yz, *geometry, relu, pool)
    if pool and _qwino.usable(w, *geometry, mult):  # 3x3 + pool on AVX2: exact integer Winograd
        wino = _qwino.PreparedPool(w, xz, bias_i32, mult, yz, max(0, yz) if relu else 0, 255, geometry[1])

        def run(x):
            return wino(x) if _qwino.fits(x, w, geometry[1]) else qconv_apply(
                _uint8_input(op, x), xz, w, pw, bias_i32, mult, yz, *geometry, relu, pool)
        run.wino = wino  # (for in_requant: the same layer with the input table inside)
        return run
    if tuple(geometry[0]) == (1, 1) and geometry[3] == 1 and w.shape[1] >= 4 and _qconv_tiled.tile() is not None:
        ep, dt = _ik.requant_epilogue(pw, xz, bias_i32, mult, yz, relu, "uint8", None, None, op)
        tiled = _qconv_tiled.PreparedQConv(w, xz, ep, geometry[1], geometry[2], pool)
        return lambda x: tiled(x, dt) if x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] == w.shape[1] else (
            qconv_apply(_uint8_input(op, x), xz, w, pw, bias_i32, mult, yz, *geometry, relu, pool))
    return lambda x: qconv_apply(_uint8_input(op, x), xz, w, pw, bias_i32, mult, yz, *geometry, relu, pool)


def _prepared_short_k(w, xz, bias_i32, mult, yz, geometry, relu, pool):
    """_short_k_conv with its float weights packed and its geometry worked out once (conv_tiled.PreparedForward with
    the requantizing epilogue; the codes minus the zero point xz padded straight into the tiles' scratch), for a
    stride-1 first layer on the tiles; None otherwise. Bit-identical to it. A pooled 3x3 layer of one input channel
    runs Winograd F(2x2, 3x3) instead (winograd.PreparedPool with the same epilogue: exact integer sums)."""
    from ..backends.cpu import conv_tiled, winograd
    from ..backends.cpu.conv_kernels import out_size

    stride, padding, dilation, groups = geometry
    co, _, kh, kw = w.shape
    if w.shape[1] * kh * kw > SHORT_K or tuple(stride) != (1, 1) or conv_tiled.host_tiles() is None:
        return None
    bias = np.zeros(co, np.float64) if bias_i32 is None else np.asarray(bias_i32, np.float64)
    mult = np.broadcast_to(np.asarray(mult, np.float32).reshape(-1), (co,))
    qep, wf = (bias, mult, yz, max(0, yz) if relu else 0, 255), w.astype(np.float32)
    if pool and w.shape[1] == 1 and winograd.usable(wf, stride, padding, dilation, groups):
        fwd = winograd.PreparedPool(wf, None, padding, False, qep=qep, shift=xz)  # (exact for one channel)
    else:
        fwd = conv_tiled.PreparedForward(wf, None, padding, dilation, groups, pool, qep=qep, shift=xz)
    sizes = {}

    def run(x):
        hw = sizes.get(x.shape)
        if hw is None:
            hw = sizes[x.shape] = (out_size(x.shape[2], kh, 1, padding[0], padding[0], dilation[0]),
                                   out_size(x.shape[3], kw, 1, padding[1], padding[1], dilation[1]))
        return fwd(x, hw)
    return run


@prepared_kernel("quantized_conv2d")
def _qc_prepare(inputs, attrs):
    return qconv_prepare("quantized_conv2d", inputs, attrs, False)


# A first layer (one or two input channels) has a reduction of K <= 16 taps: too short for the int8 GEMM's
# tiles. Its int32 accumulators are exact in float32 (|x - zp| <= 255, |w| <= 128: K * 32640 < 2**24, and
# sums of integers below 2**24 are exact in any order), so the float convolution's direct kernel computes
# the same integers, and the shared epilogue makes the result bit-identical to the int8 kernels'.
SHORT_K = 16


def short_k(x, w, groups) -> bool:
    """quantized_conv2d computes this convolution with the float direct kernel (see SHORT_K)."""
    return w.shape[1] * w.shape[2] * w.shape[3] <= SHORT_K and x.ndim == 4 and x.shape[1] == w.shape[1] * groups


def _short_k_conv(x, x_zp, w, stride, padding, dilation, groups, bias_i32, mult, y_zp, relu, pool=False):
    """``pool``: 2x2 / stride-2 max pooling of the accumulators before the epilogue, which is monotonic in them
    (positive multipliers), so it equals pooling the requantized codes (what quantized_conv2d_pool promises)."""
    from ..backends.cpu import conv_tiled
    from ..backends.cpu.conv_kernels import conv2d_forward, out_size

    n, c, h, w_ = x.shape
    co, _, kh, kw = w.shape
    out_hw = (out_size(h, kh, stride[0], padding[0], padding[0], dilation[0]),
              out_size(w_, kw, stride[1], padding[1], padding[1], dilation[1]))
    xf = x.astype(np.float32)
    xf -= np.float32(x_zp)
    bias = np.zeros(co, np.float64) if bias_i32 is None else np.asarray(bias_i32, np.float64)
    lo = max(0, y_zp) if relu else 0
    mult = np.broadcast_to(np.asarray(mult, np.float32).reshape(-1), (co,))
    wf = w.astype(np.float32)
    if conv_tiled.usable(xf, wf, tuple(stride)):  # requantized in the tiles' epilogue
        return conv_tiled.forward_requant(xf, wf, tuple(padding), tuple(dilation), groups, out_hw,
                                          pool, bias, mult, y_zp, lo, 255)
    acc = conv2d_forward(xf, wf, None, tuple(stride), tuple(padding), tuple(dilation), groups,
                         out_hw, pool=pool)
    # as float64: acc (an exact integer below 2**24) + bias is exact below 2**53, so rounding it to float32
    # equals the int8 kernels' float32(int64 sum); float64 adds vectorise where int64 conversions do not
    out = np.empty(acc.shape, np.uint8)
    _requant_planes(acc.size, acc.reshape(n, co, -1), bias, np.ascontiguousarray(mult), np.float32(y_zp),
                    np.float32(lo), np.float32(255), out.reshape(n, co, -1))
    return out


# serial below ~2M elements: one thread does 200K in ~50 us, and waking numba's workqueue for the second one
# cost ~80 us more than it saved (the cnn's first layer at B=64, measured 2026-11-26)
@jit.prange_kernel(1 << 21, fastmath=False)
def _requant_planes(acc, bias, mult, zp, lo, hi, out):
    """out = clip(rint(float32(acc + bias[c]) * mult[c]) + zp, lo, hi), the sum exact in float64: the int8
    kernels' epilogue."""
    n_, co_, hw = acc.shape
    for t in prange(n_ * co_):
        i = t // co_
        c = t - i * co_
        requant_row(acc[i, c], hw, bias[c], mult[c], zp, lo, hi, out[i, c])
