"""Quantized layers, torch.ao.nn.quantized style: ``DynamicLinear`` (dynamic), ``Linear`` and ``Conv2d``
(static, with an optional fused ReLU)."""
from .modules import DynamicLinear  # noqa: F401
from .static import Conv2d, Linear  # noqa: F401

__all__ = ["DynamicLinear", "Linear", "Conv2d"]
