"""conv2d followed by a 2x2 / stride-2 max pool, for training: ``conv2d_maxpool`` and ``conv2d_maxpool_backward``.

``conv2d_maxpool(x, weight, bias)`` returns the pooled conv output and, per pooled element, a uint8 code of where
in its window the max was (dy*2 + dx); with the convolution tiles the pooling happens in the tiles' epilogue on
each image's result while it is in cache, so the full-size conv output is never written nor read back by a
separate pool. The argmax is torch's max_pool2d's (bias added first, the window scanned in order, the first max on
ties, the last NaN). Its backward puts the pooled gradient back at the codes' places as conv2d's backward reads it:
with the tiles, image by image straight into the weight gradient's and the input gradient's scratch (the full-size
gradient never exists); otherwise into a full-size array (every element written once) for conv2d's backward.

``nn.Sequential`` runs ``Conv2d`` -> [``ReLU``] -> ``MaxPool2d(2)`` on CPU as this op (then the ReLU on the 4x smaller
output: max pooling and ReLU commute exactly); a tracer never sees it (the runtime fuses the standard ops itself).
"""
from __future__ import annotations

import numpy as np

from ..autograd.grad_mode import is_grad_enabled
from ..backends.cpu import conv_tiled as _ct
from ..backends.cpu import pool_kernels as _pk
from ..tensor import Tensor
from .conv import _EMPTY, _conv2d_backward_cpu, _conv2d_cpu, _conv2d_rule
from .registry import apply, backward, kernel, register_op

_CONV_ATTRS = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "padding_extra": (0, 0)}


def _conv_hw(x, w, b, attrs):
    return _conv2d_rule(x, w, b, **attrs)[2:]


def _conv2d_maxpool_rule(x, w, b=None, **attrs):
    n, c, h, w_ = _conv2d_rule(x, w, b, **{**_CONV_ATTRS, **attrs})
    if h < 2 or w_ < 2:
        raise RuntimeError(f"conv2d_maxpool: the conv output ({h}x{w_}) is smaller than the 2x2 pooling window")
    out = (n, c, h // 2, w_ // 2)
    return out, out


_conv2d_maxpool = register_op(
    "conv2d_maxpool", attrs=dict(_CONV_ATTRS), shape=_conv2d_maxpool_rule, n_outputs=2, save_inputs=(0, 1),
    save_outputs=(1,),
    doc="max_pool2d(conv2d(x, weight, bias), 2) and the uint8 place of each max in its 2x2 window (dy*2 + dx): "
        "conv2d and a 2x2 / stride-2 max pool in one pass over the conv result, for training")


@kernel("conv2d_maxpool")
def _conv2d_maxpool_cpu(x, w, b=None, **attrs):
    attrs = {**_CONV_ATTRS, **attrs}
    h, w_ = _conv_hw(x.shape, w.shape, None if b is None else b.shape, attrs)
    if (x.dtype == np.float32 and tuple(attrs["stride"]) == (1, 1) and _ct.usable(x, w, (1, 1))):
        return _ct.forward_pool_codes(x, w, b, attrs["padding"], attrs["dilation"], attrs["groups"], (h, w_))
    return _pk.pool2x2_codes_forward(_conv2d_cpu(x, w, b, **attrs))


@backward("conv2d_maxpool")
def _conv2d_maxpool_bw(ctx, g, _g_codes):
    needs = ctx.needs_input_grad
    has_bias = len(needs) == 3
    mask = (bool(needs[0]), bool(needs[1]), has_bias and bool(needs[2]))
    attrs = {**_CONV_ATTRS, **ctx.attrs}
    gx, gw, gb = apply(_conv2d_maxpool_backward, g, ctx.outputs[1], ctx.inputs[0], ctx.inputs[1], output_mask=mask,
                       **attrs)
    grads = (gx if mask[0] else None, gw if mask[1] else None)
    return grads + ((gb if mask[2] else None),) if has_bias else grads


def _backward_rule(g, codes, x, w, *, output_mask, **attrs):
    want, _ = _conv2d_maxpool_rule(x, w, **attrs)
    if tuple(g) != want or tuple(codes) != want:
        raise RuntimeError(f"conv2d_maxpool_backward: grad_output {tuple(g)} and codes {tuple(codes)} must both have "
                           f"the pooled output's shape {want} (input {tuple(x)}, weight {tuple(w)})")
    return (tuple(x) if output_mask[0] else (0,), tuple(w) if output_mask[1] else (0,),
            (w[0],) if output_mask[2] else (0,))


_conv2d_maxpool_backward = register_op(
    "conv2d_maxpool_backward", attrs={**_CONV_ATTRS, "output_mask": (True, True, True)}, shape=_backward_rule,
    n_outputs=3,
    doc="gradients of conv2d_maxpool w.r.t. (input, weight, bias) from (grad_output, codes, input, weight): the "
        "pooled gradient put back at each window's max, then conv2d's backward; an output not in output_mask is an "
        "empty array")


@kernel("conv2d_maxpool_backward")
def _conv2d_maxpool_backward_cpu(g, codes, x, w, *, output_mask, **attrs):
    attrs = {**_CONV_ATTRS, **attrs}
    hw = tuple(_conv_hw(x.shape, w.shape, None, attrs))
    pad, dil, groups = attrs["padding"], attrs["dilation"], attrs["groups"]
    tiled = (g.dtype == np.float32 and tuple(attrs["stride"]) == (1, 1) and (output_mask[0] or output_mask[1])
             and _ct.usable(x, w, (1, 1)) and (not output_mask[0] or _ct.usable(x, w, (1, 1), True, pad, dil)))
    if not tiled:  # the full-size gradient, then conv2d's backward
        return _conv2d_backward_cpu(_pk.unpool2x2_backward(g, codes, hw), x, w, output_mask=output_mask, **attrs)
    gw = gb = None
    if output_mask[1]:
        gw, gb = _ct.weight_grad(g, x, w.shape, pad, dil, groups, output_mask[2], codes, hw)
    elif output_mask[2]:
        gb = np.sum(g, axis=(0, 2, 3), dtype=np.float64)  # (each pooled gradient lands once)
    gx = _ct.input_grad(g, w, pad, dil, groups, x.shape[2:], codes, hw) if output_mask[0] else None
    return (_EMPTY if gx is None else gx, _EMPTY if gw is None else gw,
            _EMPTY if gb is None else gb.astype(np.float32))


def conv2d_maxpool(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups,
                   relu=False):
    """relu(max_pool2d(conv2d(input, weight, bias, ...), 2)) (the ReLU only with ``relu``) of a 4-d input with int-pair
    stride / padding / dilation (nn.Sequential's fused path: ``Conv2d`` has checked its arguments). Where autograd
    would record nothing (grad mode off, or no input requiring grad) it is the inference op ``conv2d_pool`` (ReLU
    fused, no window codes); else ``conv2d_maxpool``, then ``relu`` on the pooled tensor."""
    tensors = (input, weight) if bias is None else (input, weight, bias)
    attrs = {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation), "groups": int(groups),
             "padding_extra": (0, 0)}
    if not (is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return apply("conv2d_pool", *tensors, act="relu" if relu else "none", **attrs)
    out = apply(_conv2d_maxpool, *tensors, **attrs)[0]
    return apply("relu", out) if relu else out


__all__ = []
