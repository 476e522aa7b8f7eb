"""2-d pooling ops (torch.nn.functional names): max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d.

Each forward op takes an NCHW tensor and computes its output size from the input shape and its
attributes (int pairs, as torch's pooling_output_shape does), so a traced graph works for any
image size. Max pooling returns the argmax indices (int64, flat h*W + w inside the plane) as a
second output; their backward is the shared scatter op ``max_pool2d_backward``.
"""
from __future__ import annotations

import numpy as np

from ..backends.cpu import pool_kernels as _pk
from ..tensor import Tensor
from .conv import _pair
from .registry import apply, backward, kernel, register_op


def _pool_out(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape: with ceil_mode the last window must start inside input + left pad."""
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff + ((s - 1) if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _check_input(op, shape):
    if len(shape) != 4 or shape[1] * shape[2] * shape[3] == 0:
        raise RuntimeError(
            f"{op}: expected a non-empty input with 4 dims (N, C, H, W) or 3 (C, H, W), got shape {tuple(shape)}"
        )


def _window_rule(op, shape, kernel_size, stride, padding, dilation, ceil_mode):
    _check_input(op, shape)
    for p, k, d in zip(padding, kernel_size, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise RuntimeError(
                f"{op}: pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k} and "
                f"dilation={d} (input shape {tuple(shape)})"
            )
    # torch's second check ignores the dilation
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise RuntimeError(
            f"{op}: pad should be smaller than or equal to half of kernel size, but got padW = {padding[1]}, "
            f"padH = {padding[0]}, kW = {kernel_size[1]}, kH = {kernel_size[0]} (input shape {tuple(shape)})"
        )
    n, c, h, w = shape
    ho = _pool_out(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    wo = _pool_out(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    if ho < 1 or wo < 1:
        raise RuntimeError(
            f"{op}: given input size ({c}x{h}x{w}), the calculated output size ({c}x{ho}x{wo}) is too small "
            f"(kernel_size {tuple(kernel_size)}, stride {tuple(stride)}, padding {tuple(padding)}, "
            f"dilation {tuple(dilation)})"
        )
    return (n, c, ho, wo)


# ---- max_pool2d ---------------------------------------------------------------------------------

def _max_pool2d_rule(x_shape, *, kernel_size, stride, padding, dilation, ceil_mode):
    out = _window_rule("max_pool2d", x_shape, kernel_size, stride, padding, dilation, ceil_mode)
    return out, out


_max_pool2d = register_op(
    "max_pool2d",
    attrs={"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False},
    shape=_max_pool2d_rule, n_outputs=2, save_inputs=False, save_outputs=True,
    doc="window max of an NCHW tensor and its int64 argmax (flat position in the input plane)",
)


@kernel("max_pool2d")
def _max_pool2d_cpu(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    out_hw = _max_pool2d_rule(x.shape, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                              ceil_mode=ceil_mode)[0][2:]
    return _pk.max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_hw)


@backward("max_pool2d")
def _max_pool2d_bw(ctx, g, _g_indices):
    return (apply(_max_pool2d_backward, g, ctx.outputs[1], input_hw=tuple(ctx.input_shapes[0][2:])),)


def _scatter_rule(g_shape, *rest, input_hw, **_attrs):
    """A pooling backward's grad_input shape: grad_output's (N, C) and the input's (H, W)."""
    if len(g_shape) != 4:
        raise RuntimeError(f"pooling backward: expected a 4-d grad_output (N, C, Ho, Wo), got {tuple(g_shape)}")
    if rest and tuple(rest[0]) != tuple(g_shape):
        raise RuntimeError(
            f"max_pool2d_backward: indices of shape {tuple(rest[0])} do not match grad_output {tuple(g_shape)}"
        )
    return (g_shape[0], g_shape[1], input_hw[0], input_hw[1])


_max_pool2d_backward = register_op(
    "max_pool2d_backward", attrs={"input_hw": (0, 0)}, shape=_scatter_rule,
    doc="gradient of max pooling: scatter-add grad_output (N, C, Ho, Wo) to the argmax indices",
)


@kernel("max_pool2d_backward")
def _max_pool2d_backward_cpu(g, indices, *, input_hw):
    return _pk.max_pool2d_backward(g, indices, input_hw)


def _batched(op, x):
    if x.ndim not in (3, 4):
        raise RuntimeError(
            f"{op}: expected a non-empty input with 4 dims (N, C, H, W) or 3 (C, H, W), got shape {x.shape}"
        )
    return (x.reshape((1,) + x.shape), True) if x.ndim == 3 else (x, False)


def _window_args(op, kernel_size, stride, padding, dilation=1):
    k = _pair(kernel_size, "kernel_size", op, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        s = k  # torch: the stride defaults to the kernel size
    else:
        s = _pair(stride, "stride", op, 1)
    return k, s, _pair(padding, "padding", op), _pair(dilation, "dilation", op, 1)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """torch.nn.functional.max_pool2d; with ``return_indices`` also the int64 argmax (flat h*W + w)."""
    if input.dtype.name == "bool":
        raise RuntimeError(f"max_pool2d: expected a numeric input, got dtype {input.dtype.name}")
    k, s, p, d = _window_args("max_pool2d", kernel_size, stride, padding, dilation)
    x, unbatched = _batched("max_pool2d", input)
    out, idx = apply(_max_pool2d, x, kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=bool(ceil_mode))
    if unbatched:
        out, idx = out.reshape(out.shape[1:]), idx.reshape(idx.shape[1:])
    return (out, idx) if return_indices else out


# ---- avg_pool2d ---------------------------------------------------------------------------------

def _avg_pool2d_rule(x_shape, *, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("avg_pool2d: divisor_override must be non-zero")
    return _window_rule("avg_pool2d", x_shape, kernel_size, stride, padding, (1, 1), ceil_mode)


_AVG_ATTRS = {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "ceil_mode": False,
              "count_include_pad": True, "divisor_override": None}

_avg_pool2d = register_op("avg_pool2d", attrs=_AVG_ATTRS, shape=_avg_pool2d_rule, save_inputs=False,
                          doc="window mean of an NCHW tensor (torch's divisor rules)")


@kernel("avg_pool2d")
def _avg_pool2d_cpu(x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    out_hw = _avg_pool2d_rule(x.shape, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                              count_include_pad=count_include_pad, divisor_override=divisor_override)[2:]
    return _pk.avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad, divisor_override or 0, out_hw)


@backward("avg_pool2d")
def _avg_pool2d_bw(ctx, g):
    return (apply(_avg_pool2d_backward, g, input_hw=tuple(ctx.input_shapes[0][2:]), **ctx.attrs),)


_avg_pool2d_backward = register_op("avg_pool2d_backward", attrs=dict(_AVG_ATTRS, input_hw=(0, 0)), shape=_scatter_rule,
                                   doc="gradient of avg_pool2d: spread grad_output over each window")


@kernel("avg_pool2d_backward")
def _avg_pool2d_backward_cpu(g, *, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                             input_hw):
    return _pk.avg_pool2d_backward(g, kernel_size, stride, padding, count_include_pad, divisor_override or 0, input_hw)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None) -> Tensor:
    """torch.nn.functional.avg_pool2d on (N, C, H, W) or (C, H, W) floating tensors."""
    if not input.dtype.is_floating_point:
        raise RuntimeError(
            f"avg_pool2d: expected a floating point input, got dtype {input.dtype.name}; convert with .float()"
        )
    k, s, p, _ = _window_args("avg_pool2d", kernel_size, stride, padding)
    if divisor_override is not None:
        divisor_override = int(divisor_override)
    x, unbatched = _batched("avg_pool2d", input)
    out = apply(_avg_pool2d, x, kernel_size=k, stride=s, padding=p, ceil_mode=bool(ceil_mode),
                count_include_pad=bool(count_include_pad), divisor_override=divisor_override)
    return out.reshape(out.shape[1:]) if unbatched else out


# ---- adaptive pooling ---------------------------------------------------------------------------

def _adaptive_rule(op, x_shape, output_size):
    if len(x_shape) != 4 or 0 in x_shape[1:]:
        raise RuntimeError(
            f"{op}: expected input with 4 dims (N, C, H, W) or 3 (C, H, W) and non-zero C, H, W, "
            f"got shape {tuple(x_shape)}"
        )
    return tuple(x_shape[:2]) + tuple(output_size)


_adaptive_avg = register_op(
    "adaptive_avg_pool2d", attrs={"output_size": (1, 1)},
    shape=lambda x_shape, *, output_size: _adaptive_rule("adaptive_avg_pool2d", x_shape, output_size),
    save_inputs=False, doc="mean over torch's adaptive windows [floor(i*H/Ho), ceil((i+1)*H/Ho))",
)


@kernel("adaptive_avg_pool2d")
def _adaptive_avg_cpu(x, *, output_size):
    return _pk.adaptive_avg_pool2d_forward(x, output_size)


@backward("adaptive_avg_pool2d")
def _adaptive_avg_bw(ctx, g):
    return (apply(_adaptive_avg_backward, g, input_hw=tuple(ctx.input_shapes[0][2:])),)


_adaptive_avg_backward = register_op("adaptive_avg_pool2d_backward", attrs={"input_hw": (0, 0)}, shape=_scatter_rule,
                                     doc="gradient of adaptive_avg_pool2d")


@kernel("adaptive_avg_pool2d_backward")
def _adaptive_avg_backward_cpu(g, *, input_hw):
    return _pk.adaptive_avg_pool2d_backward(g, input_hw)


_adaptive_max = register_op(
    "adaptive_max_pool2d", attrs={"output_size": (1, 1)},
    shape=lambda x_shape, *, output_size: (_adaptive_rule("adaptive_max_pool2d", x_shape, output_size),) * 2,
    n_outputs=2, save_inputs=False, save_outputs=True,
    doc="max over torch's adaptive windows and its int64 argmax (flat position in the input plane)",
)


@kernel("adaptive_max_pool2d")
def _adaptive_max_cpu(x, *, output_size):
    return _pk.adaptive_max_pool2d_forward(x, output_size)


@backward("adaptive_max_pool2d")
def _adaptive_max_bw(ctx, g, _g_indices):
    return (apply(_max_pool2d_backward, g, ctx.outputs[1], input_hw=tuple(ctx.input_shapes[0][2:])),)


def _output_size(op, output_size, x):
    """int or pair, where None keeps the input's size."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise RuntimeError(f"{op}: output_size must be an int or a pair, got {tuple(output_size)}")
        sizes = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(output_size))
    else:
        sizes = (output_size, output_size)
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in sizes):
        raise RuntimeError(f"{op}: output_size must hold non-negative ints (or None), got {output_size!r}")
    return tuple(int(s) for s in sizes)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """torch.nn.functional.adaptive_avg_pool2d (output_size an int or a pair; None keeps that input size)."""
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"adaptive_avg_pool2d: expected a floating point input, got dtype {input.dtype.name}")
    x, unbatched = _batched("adaptive_avg_pool2d", input)
    out = apply(_adaptive_avg, x, output_size=_output_size("adaptive_avg_pool2d", output_size, x))
    return out.reshape(out.shape[1:]) if unbatched else out


def adaptive_max_pool2d(input: Tensor, output_size, return_indices=False):
    """torch.nn.functional.adaptive_max_pool2d; with ``return_indices`` also the int64 argmax."""
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"adaptive_max_pool2d: expected a floating point input, got dtype {input.dtype.name}")
    x, unbatched = _batched("adaptive_max_pool2d", input)
    out, idx = apply(_adaptive_max, x, output_size=_output_size("adaptive_max_pool2d", output_size, x))
    if unbatched:
        out, idx = out.reshape(out.shape[1:]), idx.reshape(idx.shape[1:])
    return (out, idx) if return_indices else out


__all__ = []
