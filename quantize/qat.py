"""Quantization-aware training (torch.ao.quantization's ``prepare_qat``): Linear / Conv2d (and their fused
ReLU forms) become layers that train through fake quantization of their weights, inputs and outputs,
so the model learns around int8 rounding; ``convert`` then turns them into the int8 layers of
``static.py`` with the qparams the fake quantizers learned."""
from __future__ import annotations

import copy

import ember.nn.functional as F
from ember import nn

from .fuse import ConvReLU2d, LinearReLU
from .qconfig import QConfig, get_default_qat_qconfig
from .static import _propagate, _replace


class _QATLayer:
    """Fake-quantized weight, input and output; the float parameters are the original layer's."""

    def _setup_qat(self, mod, qconfig, relu):
        # the float layer's own Parameters: an optimizer made after prepare_qat trains them
        self.weight, self.bias = mod.weight, mod.bias
        self.weight_fake_quant = qconfig.weight()
        self.activation_pre_process = qconfig.activation()
        self.activation_post_process = qconfig.activation()
        self.relu = relu
        self.train(mod.training)
        d = self.__dict__  # what convert reads (plain attributes, as prepare's)
        d["_quant_qconfig"] = qconfig
        d["_quant_observers"] = (self.activation_pre_process, self.activation_post_process)
        d["_quant_weight_observer"] = self.weight_fake_quant

    def _out(self, y):
        return self.activation_post_process(F.relu(y) if self.relu else y)


class QATLinear(_QATLayer, nn.Linear):
    """``torch.ao.nn.qat.Linear`` (with ``relu=True``: ``intrinsic.qat.LinearReLU``)."""

    def __init__(self, mod, qconfig, relu=False):
        nn.Linear.__init__(self, mod.in_features, mod.out_features, bias=mod.bias is not None)
        self._setup_qat(mod, qconfig, relu)

    def forward(self, x):
        x = self.activation_pre_process(x)
        return self._out(F.linear(x, self.weight_fake_quant(self.weight), self.bias))


class QATConv2d(_QATLayer, nn.Conv2d):
    """``torch.ao.nn.qat.Conv2d`` (with ``relu=True``: ``intrinsic.qat.ConvReLU2d``)."""

    def __init__(self, mod, qconfig, relu=False):
        nn.Conv2d.__init__(self, mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride,
                           padding=mod.padding, dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None)
        self._setup_qat(mod, qconfig, relu)

    def forward(self, x):
        x = self.activation_pre_process(x)
        return self._out(F.conv2d(x, self.weight_fake_quant(self.weight), self.bias, stride=self.stride,
                                  padding=self.padding, dilation=self.dilation, groups=self.groups))


def _qat_version(mod, qconfig):
    if type(mod) is nn.Linear:
        return QATLinear(mod, qconfig)
    if type(mod) is LinearReLU:
        return QATLinear(mod[0], qconfig, relu=True)
    if type(mod) is nn.Conv2d and not isinstance(mod.padding, str) and getattr(mod, "padding_mode", "zeros") == "zeros":
        return QATConv2d(mod, qconfig)
    if type(mod) is ConvReLU2d:
        return QATConv2d(mod[0], qconfig, relu=True)
    return None


def prepare_qat(model, inplace=False, qconfig=None):
    """Swap every Linear / Conv2d (and fused LinearReLU / ConvReLU2d) that has a qconfig (``model.qconfig``,
    inherited; ``qconfig=`` stands in for a missing one, default ``get_default_qat_qconfig("x86")``) for
    its fake-quantized training version. Build the optimizer after this call, train, then ``convert``.
    Fold BatchNorm first (``fuse_modules`` in eval mode): Conv+BN QAT is not built yet."""
    if not inplace:
        model = copy.deepcopy(model)
    root = model.__dict__.get("qconfig", qconfig)
    if root is not None and not isinstance(root, QConfig):
        raise TypeError(f"prepare_qat: qconfig must be a QConfig, got {type(root).__name__}")
    if root is None and not any("qconfig" in m.__dict__ for m in model.modules()):
        root = get_default_qat_qconfig("x86")
    training = model.training
    for name, mod, q in _propagate(model, root):  # (a layer that gets a QAT version is not descended into)
        if q is not None and not isinstance(q, QConfig):
            raise TypeError(f"prepare_qat: qconfig must be a QConfig, got {type(q).__name__}")
        new = _qat_version(mod, q) if q is not None and name else None
        if new is not None:
            _replace(model, name, new)
    model.train(training)
    return model
