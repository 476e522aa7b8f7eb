"""Quantized layers (``ember.quantize.nn``): modules that hold int8 weights and run the int8 ops."""
from __future__ import annotations

import numpy as np

import ember
from ember.nn import Linear, Module
from ember.ops.quantized import quantize_per_channel, quantize_per_tensor
from ember.ops.registry import apply

from .observer import PlaceholderObserver, per_channel_symmetric, per_tensor_symmetric


def quantize_weight(weight, observer_factory, who, observer=None):
    """(int8 weight, float32 scale) of a float weight through a weight observer: symmetric int8 only
    (the int8 kernels take zero-point-free weights), per output channel (axis 0) or per tensor. A trained
    ``observer`` (QAT's weight fake quantizer) gives its learned qparams instead of a fresh observer's."""
    obs = observer if observer is not None else observer_factory()
    if obs.dtype != ember.int8 or obs.qscheme not in (per_channel_symmetric, per_tensor_symmetric):
        raise ValueError(f"{who}: the weight observer must be symmetric int8 (qscheme per_channel_symmetric or "
                         f"per_tensor_symmetric, dtype ember.int8), got {obs.qscheme} / {obs.dtype}")
    per_channel = obs.qscheme == per_channel_symmetric
    if per_channel and getattr(obs, "ch_axis", 0) != 0:
        raise ValueError(f"{who}: per-channel weight observers must use ch_axis=0 (output channels), got "
                         f"{obs.ch_axis}")
    w = weight.detach()
    if observer is None:
        obs(w)
    scale, zero_point = obs.calculate_qparams()
    zp = ember.zeros(scale.shape, dtype=ember.int8)
    assert not zero_point.numpy().any(), "symmetric observers give zero points of 0"
    q = quantize_per_channel(w, scale, zp, 0, ember.int8) if per_channel else quantize_per_tensor(w, scale, zp,
                                                                                                  ember.int8)
    return q, scale


class DynamicLinear(Module):
    """``torch.ao.nn.quantized.dynamic.Linear``: int8 weights (per output channel by default), float32
    in and out; each call quantizes its input to uint8 from the input's own min/max, runs the int8 GEMM
    and dequantizes, in one op (``dynamic_quantized_linear``). Inference only (no gradients).

    ``reduce_range`` (default True, as torch's x86 backend always does): the input's codes span 0 .. 127, not
    0 .. 255. Products of those with any int8 weight pair-sum within int16, which x86 CPUs without VNNI need for
    their fastest int8 instruction (``vpmaddubsw``); the layer's outputs are the same on every CPU. Set from the
    qconfig's activation observer (``PlaceholderObserver.with_args(..., reduce_range=False)`` keeps 8 bits)."""

    def __init__(self, in_features, out_features, bias=True, reduce_range=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.reduce_range = bool(reduce_range)
        self.register_buffer("weight", ember.zeros(out_features, in_features, dtype=ember.int8))
        self.register_buffer("w_scale", ember.ones(out_features))
        self.register_buffer("bias", ember.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, mod: Linear, qconfig) -> "DynamicLinear":
        if not isinstance(mod, Linear):
            raise TypeError(f"DynamicLinear.from_float: expected an nn.Linear, got {type(mod).__name__}")
        act = qconfig.activation() if qconfig.activation is not None else None
        rr = act.reduce_range if isinstance(act, PlaceholderObserver) else None  # (others: torch ignores them too)
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, reduce_range=rr is None or bool(rr))
        q.weight, q.w_scale = quantize_weight(mod.weight, qconfig.weight, "DynamicLinear.from_float")
        if mod.bias is not None:
            q.bias = mod.bias.detach().to(ember.float32).clone()
        return q

    def dequantized_weight(self):
        """The float weight the int8 one stands for: ``weight * w_scale`` (per output channel)."""
        s = self.w_scale.numpy()
        return ember.from_numpy(self.weight.numpy().astype(np.float32) * (s[:, None] if s.ndim else s))

    def forward(self, x):
        args = (x, self.weight, self.w_scale) + ((self.bias,) if self.bias is not None else ())
        return apply("dynamic_quantized_linear", *args, relu=False, reduce_range=self.reduce_range)

    def extra_repr(self):
        scheme = "per_channel" if self.w_scale.ndim else "per_tensor"
        return (f"in_features={self.in_features}, out_features={self.out_features}, dtype=int8, "
                f"qscheme={scheme}_symmetric, reduce_range={self.reduce_range}")
