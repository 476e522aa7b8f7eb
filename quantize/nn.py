"""Quantized layers, torch.ao.nn.quantized style: ``ember.quantize.nn.DynamicLinear``."""
from .modules import DynamicLinear  # noqa: F401

__all__ = ["DynamicLinear"]
