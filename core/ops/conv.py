"""2-d convolution: the ``conv2d`` op and its fused backward ``conv2d_backward`` (torch.nn.functional names).

``conv2d`` takes (input, weight) or (input, weight, bias); its attributes are int pairs (stride,
padding, dilation, padding_extra) and the int ``groups``. ``padding_extra`` is added at the bottom
and right only (0 unless padding="same" meets an even dilated kernel), so that case needs no pad op.
``conv2d_backward`` returns the three gradients, an empty array where not asked for.
"""
from __future__ import annotations

import numpy as np

from ..backends.cpu import conv_kernels as _ck
from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op

_EMPTY = np.zeros((0,), np.float32)


def _pair(v, name, op="conv2d", minimum=0):
    """int or length-2 sequence of ints -> (int, int), each >= minimum."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, (int, np.integer)) for e in v):
        v = (int(v[0]), int(v[1]))
    elif isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], (int, np.integer)):
        v = (int(v[0]), int(v[0]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if v[0] < minimum or v[1] < minimum:
        raise RuntimeError(f"{op}: {name} must be >= {minimum}, got {v}")
    return v


def _out_hw(x_shape, w_shape, stride, padding, dilation, padding_extra):
    return (_ck.out_size(x_shape[2], w_shape[2], stride[0], padding[0], padding[0] + padding_extra[0], dilation[0]),
            _ck.out_size(x_shape[3], w_shape[3], stride[1], padding[1], padding[1] + padding_extra[1], dilation[1]))


def _conv2d_rule(x_shape, w_shape, b_shape=None, *, stride, padding, dilation, groups, padding_extra=(0, 0)):
    if len(x_shape) != 4:
        raise RuntimeError(
            f"conv2d: expected input with 4 dims (N, C, H, W) or 3 (C, H, W), got shape {tuple(x_shape)}"
        )
    if len(w_shape) != 4:
        raise RuntimeError(
            f"conv2d: expected weight with 4 dims (out_channels, in_channels / groups, kH, kW), "
            f"got shape {tuple(w_shape)}"
        )
    n, c, h, w = x_shape
    co, cg, kh, kw = w_shape
    if c != cg * groups:
        raise RuntimeError(
            f"conv2d: input has {c} channels (shape {tuple(x_shape)}), but weight of shape {tuple(w_shape)} with "
            f"groups={groups} expects in_channels = {cg} * {groups} = {cg * groups}"
        )
    if co % groups:
        raise RuntimeError(
            f"conv2d: out_channels {co} (weight shape {tuple(w_shape)}) must be divisible by groups={groups}"
        )
    if b_shape is not None and tuple(b_shape) != (co,):
        raise RuntimeError(
            f"conv2d: bias must have shape ({co},) for weight of shape {tuple(w_shape)}, got {tuple(b_shape)}"
        )
    out_hw = _out_hw(x_shape, w_shape, stride, padding, dilation, padding_extra)
    for name, size, k, s, p, d, got in (("height", h, kh, stride[0], padding[0], dilation[0], out_hw[0]),
                                         ("width", w, kw, stride[1], padding[1], dilation[1], out_hw[1])):
        if got <= 0:
            raise RuntimeError(
                f"conv2d: output {name} would be {got}: input {name} {size} with padding {p}, kernel {k}, "
                f"dilation {d}, stride {s} is smaller than the dilated kernel {d * (k - 1) + 1} "
                f"(input shape {tuple(x_shape)}, weight shape {tuple(w_shape)})"
            )
    return (n, co, out_hw[0], out_hw[1])


_conv2d = register_op(
    "conv2d",
    attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "padding_extra": (0, 0)},
    shape=_conv2d_rule,
    doc="NCHW 2-d cross-correlation (torch conv2d); optional third input is the bias",
)


@kernel("conv2d")
def _conv2d_cpu(x, w, b=None, *, stride, padding, dilation, groups, padding_extra=(0, 0)):
    out_hw = _out_hw(x.shape, w.shape, stride, padding, dilation, padding_extra)
    out = _ck.conv2d_forward(x, w, b, stride, padding, dilation, groups, out_hw)
    return out.astype(x.dtype, copy=False)


@backward("conv2d")
def _conv2d_bw(ctx, g):
    needs = ctx.needs_input_grad
    has_bias = len(needs) == 3
    mask = (bool(needs[0]), bool(needs[1]), has_bias and bool(needs[2]))
    x, w = ctx.inputs[0], ctx.inputs[1]
    a = ctx.attrs
    gx, gw, gb = apply(_conv2d_backward, g, x, w, stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                       groups=a["groups"], padding_extra=a["padding_extra"], output_mask=mask)
    grads = (gx if mask[0] else None, gw if mask[1] else None)
    return grads + ((gb if mask[2] else None),) if has_bias else grads


def _conv2d_backward_rule(g_shape, x_shape, w_shape, *, stride, padding, dilation, groups, padding_extra=(0, 0),
                          output_mask):
    """(grad_input, grad_weight, grad_bias) shapes; (0,) for a gradient not in ``output_mask``."""
    want = _conv2d_rule(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        padding_extra=padding_extra)
    if tuple(g_shape) != want:
        raise RuntimeError(
            f"conv2d_backward: grad_output has shape {tuple(g_shape)}, but input {tuple(x_shape)} and weight "
            f"{tuple(w_shape)} give an output of shape {want}"
        )
    return (tuple(x_shape) if output_mask[0] else (0,), tuple(w_shape) if output_mask[1] else (0,),
            (w_shape[0],) if output_mask[2] else (0,))


_conv2d_backward = register_op(
    "conv2d_backward", shape=_conv2d_backward_rule,
    attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "padding_extra": (0, 0),
           "output_mask": (True, True, True)},
    n_outputs=3,
    doc="gradients of conv2d w.r.t. (input, weight, bias) from (grad_output, input, weight); an output "
        "not in output_mask is an empty array",
)


@kernel("conv2d_backward")
def _conv2d_backward_cpu(g, x, w, *, stride, padding, dilation, groups, padding_extra=(0, 0), output_mask):
    outs = _ck.conv2d_backward(g, x, w, stride, padding, dilation, groups, output_mask)
    dts = (x.dtype, w.dtype, w.dtype)
    return tuple(_EMPTY.astype(dt) if o is None else o.astype(dt, copy=False) for o, dt in zip(outs, dts))


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups=1) -> Tensor:
    """torch.nn.functional.conv2d: input (N, C, H, W) or (C, H, W), weight (Cout, C/groups, kH, kW)."""
    if input.ndim not in (3, 4):
        raise RuntimeError(f"conv2d: expected input with 4 dims (N, C, H, W) or 3 (C, H, W), got shape {input.shape}")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"conv2d: expected a floating point input, got dtype {input.dtype.name}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise RuntimeError(
            f"conv2d: input dtype {input.dtype.name}, weight dtype {weight.dtype.name}"
            + ("" if bias is None else f" and bias dtype {bias.dtype.name}") + " must be the same"
        )
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise RuntimeError(f"conv2d: groups must be a positive int, got {groups!r}")
    stride = _pair(stride, "stride", minimum=1)
    dilation = _pair(dilation, "dilation", minimum=1)
    unbatched = input.ndim == 3
    x = input.reshape((1,) + input.shape) if unbatched else input
    extra = (0, 0)
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise RuntimeError(
                    f"conv2d: padding='same' is not supported for strided convolutions (stride {stride})"
                )
            kh, kw = (weight.shape[2], weight.shape[3]) if weight.ndim == 4 else (1, 1)
            # torch puts the odd one out of an even total padding at the bottom/right
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            pad, extra = (th // 2, tw // 2), (th % 2, tw % 2)
        else:
            raise ValueError(f"conv2d: invalid padding string {padding!r}; expected 'valid', 'same', an int or a pair")
    else:
        pad = _pair(padding, "padding")
    tensors = (x, weight) if bias is None else (x, weight, bias)
    out = apply(_conv2d, *tensors, stride=stride, padding=pad, dilation=dilation, groups=int(groups),
                padding_extra=extra)
    return out.reshape(out.shape[1:]) if unbatched else out


__all__ = []
