"""Dense and reshaping layers: ``Linear``, ``Identity``, ``Flatten``, ``Unflatten``."""
from __future__ import annotations

import math

from ..ops.util import norm_dim
from . import functional as F
from . import init
from .module import Module, empty_parameter


class Identity(Module):
    """Returns its input unchanged (any constructor arguments are ignored, as torch)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """``y = x @ weight.T + bias`` with weight ``(out_features, in_features)``; PyTorch's default init."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = empty_parameter(out_features, in_features, device=device, dtype=dtype)
        if bias:
            self.bias = empty_parameter(out_features, device=device, dtype=dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # kaiming_uniform_(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's long-standing default
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            _uniform_bias_(self.bias, self.weight)

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _uniform_bias_(bias, weight):
    """Bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch's Linear and Conv layers (0 when fan_in is 0)."""
    fan_in, _ = init._calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    init.uniform_(bias, -bound, bound)


class Flatten(Module):
    """Merges dims ``start_dim..end_dim`` into one: ``(N, C, H, W) -> (N, C*H*W)`` by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, input):
        shape = tuple(input.shape)
        if not shape:
            return input.reshape(1)
        s = norm_dim(self.start_dim, len(shape), "flatten")
        e = norm_dim(self.end_dim, len(shape), "flatten")
        if s > e:
            raise RuntimeError(f"flatten: start_dim ({self.start_dim}) cannot come after end_dim ({self.end_dim}) "
                               f"for input shape {shape}")
        merged = 1
        for n in shape[s:e + 1]:
            merged *= n
        return input.reshape(shape[:s] + (merged,) + shape[e + 1:])

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Splits dim ``dim`` into ``unflattened_size``: ``Unflatten(1, (2, 5))`` maps ``(N, 10) -> (N, 2, 5)``."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        if not isinstance(dim, int):
            raise TypeError(f"Unflatten: invalid type for dim: {type(dim).__name__}; expected an int")
        if not isinstance(unflattened_size, (tuple, list)) or not all(isinstance(s, int) for s in unflattened_size):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple or list of ints, got {unflattened_size!r}")
        self.dim = dim
        self.unflattened_size = unflattened_size

    def forward(self, input):
        shape = tuple(input.shape)
        d = norm_dim(self.dim, len(shape), "unflatten")
        sizes = list(self.unflattened_size)
        known = 1
        for s in sizes:
            if s != -1:
                known *= s
        if sizes.count(-1) > 1 or (-1 not in sizes and known != shape[d]) or (-1 in sizes and shape[d] % max(known, 1)):
            raise RuntimeError(
                f"unflatten: provided sizes {tuple(sizes)} don't multiply up to the size of dim {self.dim} "
                f"({shape[d]}) in the input tensor of shape {shape}"
            )
        if -1 in sizes:
            sizes[sizes.index(-1)] = shape[d] // known
        return input.reshape(shape[:d] + tuple(sizes) + shape[d + 1:])

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
