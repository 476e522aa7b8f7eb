"""``Conv2d``: 2-D convolution over ``(N, C, H, W)`` inputs, with torch's arguments, init and repr."""
from __future__ import annotations

import math

from . import functional as F
from . import init
from .linear import _uniform_bias_
from .module import Module, empty_parameter

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(x, int) for x in v):
        raise ValueError(f"Conv2d: {name} must be an int or a pair of ints, got {v!r}")
    return v


class Conv2d(Module):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
    bias=True, padding_mode="zeros")``; padding may also be ``"same"`` or ``"valid"``.
    Weight ``(out_channels, in_channels // groups, kh, kw)``, initialised as torch."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError(f"in_channels must be divisible by groups (in_channels={in_channels}, groups={groups})")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels must be divisible by groups (out_channels={out_channels}, groups={groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {list(_PADDING_MODES)}, but got padding_mode='{padding_mode}'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of ['valid', 'same']")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self.output_padding = (0, 0)
        self.transposed = False
        self.groups = groups
        self.padding_mode = padding_mode
        # (left, right, top, bottom) as F.pad wants, for "same" and the non-zero padding modes
        self._reversed_padding_repeated_twice = self._pad_amounts()
        self.weight = empty_parameter(out_channels, in_channels // groups, *self.kernel_size, device=device, dtype=dtype)
        if bias:
            self.bias = empty_parameter(out_channels, device=device, dtype=dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _pad_amounts(self):
        if self.padding == "valid":
            return [0, 0, 0, 0]
        if self.padding == "same":
            amounts = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                amounts += [total // 2, total - total // 2]
            return amounts
        ph, pw = self.padding
        return [pw, pw, ph, ph]

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            _uniform_bias_(self.bias, self.weight)

    def forward(self, input):
        if input.ndim not in (3, 4):
            raise RuntimeError(
                f"Conv2d: expected a 3D (C, H, W) or 4D (N, C, H, W) input, got shape {tuple(input.shape)}"
            )
        if input.ndim == 3:  # unbatched (C, H, W)
            out = self._conv(input.reshape((1,) + tuple(input.shape)))
            return out.reshape(tuple(out.shape[1:]))
        return self._conv(input)

    def _conv(self, input):
        left, right, top, bottom = self._reversed_padding_repeated_twice
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        if left != right or top != bottom:
            # "same" with an even kernel needs one more zero on the right/bottom than conv2d's symmetric padding
            padded = F.pad(input, self._reversed_padding_repeated_twice)
            return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s
