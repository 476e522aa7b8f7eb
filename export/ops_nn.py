"""ONNX lowerings of the layer ops: linear / matmul, conv2d, pooling, batch and layer norm, and the
runtime's fused ops (linear/conv + activation, conv + relu + 2x2 max pool)."""
from __future__ import annotations

import numpy as np

from .lowering import lowers

_NO_F64 = ("ONNX Runtime has no float64 kernel for {}; export the model in float32 "
           "(model.float() before tracing)")


# ---- linear algebra -----------------------------------------------------------------------------

@lowers("matmul")
def _matmul(g, n):
    g.op("MatMul", n.inputs, n.outputs)


@lowers("linear")
def _linear(g, n):
    x, w = n.inputs[:2]
    b = n.inputs[2] if len(n.inputs) > 2 else ""
    if g.rank(x) == 2 and (not b or g.rank(b) == 1):
        g.op("Gemm", [x, w, b] if b else [x, w], n.outputs, transB=1)
        return
    y = g.op("MatMul", [x, g.op("Transpose", [w], perm=[1, 0])], None if b else n.outputs)
    if b:
        g.op("Add", [y, b], n.outputs)


@lowers("linear_act")
def _linear_act(g, n):
    y = g.lower("linear", n.inputs, like=n.outputs[0])
    _activation(g, n.attrs["act"], y, n.outputs)


@lowers("linear_relu")
def _linear_relu(g, n):
    """nn.Sequential's eager Linear -> ReLU op (a tracer records the two ops; this covers a direct call)."""
    y = g.lower("linear", n.inputs, like=n.outputs[0])
    _activation(g, "relu", y, n.outputs)


@lowers("linear_mlp")
def _linear_mlp(g, n):
    """The chain the runtime fuses on CPU, lowered one linear (+ relu) layer at a time."""
    from ember.serialize.ir import Value

    x, params, relus = n.inputs[0], n.inputs[1:], n.attrs["relus"]
    lead = tuple(g.shape(n.outputs[0])[:-1])
    for i, relu in enumerate(relus):
        w, b = params[2 * i:2 * i + 2]
        if i == len(relus) - 1:
            out = n.outputs
        else:
            name = g.fresh("chain")
            g.values[name] = Value(name, "float32", lead + (g.shape(w)[0],))
            out = [name]
        g.lower("linear_act" if relu else "linear", [x, w, b], out, **({"act": "relu"} if relu else {}))
        x = out[0]


def _activation(g, act, x, outputs):
    if act == "relu":
        g.lower("relu", [x], outputs)
    else:
        g.lower("gelu", [x], outputs, approximate="tanh" if act == "gelu_tanh" else "none")


# ---- convolution --------------------------------------------------------------------------------

@lowers("conv2d")
def _conv2d(g, n):
    if g.dtype(n.inputs[0]) == np.float64:
        raise g.error(_NO_F64.format("Conv"))
    a = n.attrs
    (ph, pw), (eh, ew) = a["padding"], a["padding_extra"]
    kh, kw = g.shape(n.inputs[1])[2:]
    g.op("Conv", n.inputs, n.outputs, kernel_shape=[int(kh), int(kw)], strides=list(a["stride"]),
         pads=[ph, pw, ph + eh, pw + ew], dilations=list(a["dilation"]), group=int(a["groups"]))


@lowers("conv2d_act")
def _conv2d_act(g, n):
    attrs = {k: v for k, v in n.attrs.items() if k != "act"}
    y = g.lower("conv2d", n.inputs, like=n.outputs[0], **attrs)
    _activation(g, n.attrs["act"], y, n.outputs)


@lowers("conv2d_pool")
def _conv2d_pool(g, n):
    attrs = {k: v for k, v in n.attrs.items() if k != "act"}
    y = g.lower("conv2d", n.inputs, like=n.outputs[0], **attrs)
    if n.attrs["act"] == "relu":
        y = g.lower("relu", [y], like=n.outputs[0])
    g.op("MaxPool", [y], n.outputs, kernel_shape=[2, 2], strides=[2, 2])


# ---- pooling ------------------------------------------------------------------------------------

def _pads(padding):
    return [padding[0], padding[1], padding[0], padding[1]]


def _plane_index(g, x, flat_idx, outputs):
    """ONNX MaxPool's indices count over the whole NCHW tensor; ember's count inside one plane (h*W + w)."""
    hw = g.op("ReduceProd", [g.op("Shape", [x], start=2)], keepdims=0)
    g.op("Mod", [flat_idx, hw], outputs)


@lowers("max_pool2d")
def _max_pool2d(g, n):
    a = n.attrs
    x = n.inputs[0]
    want_idx = g.used(n.outputs[1])
    outs = [n.outputs[0], g.fresh("flat_idx")] if want_idx else [n.outputs[0]]
    g.op("MaxPool", [x], outs, kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]),
         pads=_pads(a["padding"]), dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))
    if want_idx:
        _plane_index(g, x, outs[1], [n.outputs[1]])


@lowers("avg_pool2d")
def _avg_pool2d(g, n):
    a = n.attrs
    x = n.inputs[0]
    if g.dtype(x) == np.float64:
        raise g.error(_NO_F64.format("AveragePool"))
    k, s, p = a["kernel_size"], a["stride"], a["padding"]
    if a["divisor_override"] is None:
        g.op("AveragePool", [x], n.outputs, kernel_shape=list(k), strides=list(s), pads=_pads(p),
             ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))
        return
    # window sums (count_include_pad=1 divides every window by kh*kw), over the override
    if a["ceil_mode"]:
        raise g.error("avg_pool2d with divisor_override and ceil_mode=True: the windows that run past the "
                      "padded input cannot be summed exactly with ONNX AveragePool; use ceil_mode=False")
    mean = g.op("AveragePool", [x], kernel_shape=list(k), strides=list(s), pads=_pads(p), count_include_pad=1)
    g.op("Mul", [mean, g.scalar(k[0] * k[1] / a["divisor_override"], g.dtype(x))], n.outputs)


def _adaptive_static_hw(g, n):
    h, w = g.shape(n.inputs[0])[2:]
    if isinstance(h, str) or isinstance(w, str):
        raise g.error(f"adaptive pooling over symbolic spatial dims ({h}, {w}) with output size "
                      f"{tuple(n.attrs['output_size'])}: only output size (1, 1) is exported for dynamic "
                      f"image sizes; trace with fixed H and W")
    return int(h), int(w)


def _window_matrix(out, size, dtype):
    """(out, size) averaging matrix of torch's adaptive windows [floor(i*size/out), ceil((i+1)*size/out))."""
    m = np.zeros((out, size), dtype)
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


@lowers("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(g, n):
    x = n.inputs[0]
    ho, wo = n.attrs["output_size"]
    if (ho, wo) == (1, 1):
        if g.dtype(x) == np.float64:
            g.reduce("ReduceMean", x, [2, 3], True, n.outputs)
        else:
            g.op("GlobalAveragePool", [x], n.outputs)
        return
    h, w = _adaptive_static_hw(g, n)
    dt = g.dtype(x)
    if h % ho == 0 and w % wo == 0 and dt != np.float64:
        g.op("AveragePool", [x], n.outputs, kernel_shape=[h // ho, w // wo], strides=[h // ho, w // wo])
        return
    # uneven windows: out = Ph @ x @ Pw^T with constant averaging matrices
    rows = g.op("MatMul", [x, g.const(_window_matrix(wo, w, dt).T, "adaptive_w")])
    g.op("MatMul", [g.const(_window_matrix(ho, h, dt), "adaptive_h"), rows], n.outputs)


@lowers("adaptive_max_pool2d")
def _adaptive_max_pool2d(g, n):
    x = n.inputs[0]
    ho, wo = n.attrs["output_size"]
    want_idx = g.used(n.outputs[1])
    if (ho, wo) == (1, 1):
        g.reduce("ReduceMax", x, [2, 3], True, [n.outputs[0]])
        if want_idx:
            flat = g.op("Reshape", [x, g.ints([0, 0, -1])])  # (N, C, H*W); 0 copies the dim
            idx = g.op("ArgMax", [flat], axis=2, keepdims=1)
            g.op("Unsqueeze", [idx, g.ints([3])], [n.outputs[1]])
        return
    h, w = _adaptive_static_hw(g, n)
    if h % ho or w % wo:
        raise g.error(f"adaptive_max_pool2d from {h}x{w} to {ho}x{wo}: uneven windows have no ONNX equivalent "
                      f"here; choose an output size that divides the input size, or use adaptive_avg_pool2d")
    kh, kw = h // ho, w // wo
    outs = [n.outputs[0], g.fresh("flat_idx")] if want_idx else [n.outputs[0]]
    g.op("MaxPool", [x], outs, kernel_shape=[kh, kw], strides=[kh, kw])
    if want_idx:
        _plane_index(g, x, outs[1], [n.outputs[1]])


# ---- normalisation ------------------------------------------------------------------------------

@lowers("batch_norm")
def _batch_norm(g, n):
    x, rm, rv, w, b = n.inputs
    g.op("BatchNormalization", [x, w, b, rm, rv], n.outputs, epsilon=float(n.attrs["eps"]))


@lowers("batch_norm_train")
def _batch_norm_train(g, n):
    """Batch statistics (biased variance), as the kernel computes them; outputs (y, mean, var)."""
    x, w, b = n.inputs
    rank = g.rank(x)
    axes = [0] + list(range(2, rank))
    dt = g.dtype(x)
    mean = g.reduce("ReduceMean", x, axes, True)
    d = g.op("Sub", [x, mean])
    var = g.reduce("ReduceMean", g.op("Mul", [d, d]), axes, True)
    std = g.op("Sqrt", [g.op("Add", [var, g.scalar(n.attrs["eps"], dt)])])
    chan = g.ints([-1] + [1] * (rank - 2))
    scale = g.op("Div", [g.op("Reshape", [w, chan]), std])
    g.op("Add", [g.op("Mul", [d, scale]), g.op("Reshape", [b, chan])], [n.outputs[0]])
    flat = g.ints([-1])
    if g.used(n.outputs[1]):
        g.op("Reshape", [mean, flat], [n.outputs[1]])
    if g.used(n.outputs[2]):
        g.op("Reshape", [var, flat], [n.outputs[2]])


@lowers("layer_norm")
def _layer_norm(g, n):
    x, w, b = n.inputs
    k = len(n.attrs["normalized_shape"])
    stats = [o if g.used(o) else "" for o in n.outputs[1:]]
    outs = [n.outputs[0]] + [g.fresh("ln_stat") if s else "" for s in stats]
    while outs and outs[-1] == "":
        outs.pop()
    g.op("LayerNormalization", [x, w, b], outs, axis=-k, epsilon=float(n.attrs["eps"]))
    for want, got in zip(stats, outs[1:]):
        if want:  # ONNX keeps the reduced dims as 1s; ember's statistics are one value per row
            g.op("Reshape", [got, g.ints([-1])], [want])
