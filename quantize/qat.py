"""Quantization-aware training (torch.ao.quantization's ``prepare_qat``): Linear / Conv2d (and their fused
ReLU forms) become layers that train through fake quantization of their weights, inputs and outputs,
so the model learns around int8 rounding; ``convert`` then turns them into the int8 layers of
``static.py`` with the qparams the fake quantizers learned. Conv+BatchNorm(+ReLU) fused by
``fuse_modules_qat`` train with the BatchNorm folded into the fake-quantized weight (torch's
``intrinsic.qat.ConvBn2d``), and ``convert`` folds the running statistics in for good."""
from __future__ import annotations

import copy

import ember.nn.functional as F
from ember import nn

from .fuse import ConvBn2d, ConvBnReLU2d, ConvReLU2d, LinearReLU, _check_qat_bn, _fold_bn
from .qconfig import QConfig, get_default_qat_qconfig, require_cpu_model
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

    def _float_for_convert(self):
        """The float layer whose weight and bias ``convert`` quantizes (carrying its weight fake quantizer)."""
        return self


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


class QATConvBn2d(_QATLayer, nn.Conv2d):
    """``torch.ao.nn.intrinsic.qat.ConvBn2d``: Conv2d + BatchNorm2d trained with the BatchNorm folded into the
    fake-quantized weight, so the weight QAT rounds is the one ``convert`` keeps. torch's one-pass approximation:
    ``s = gamma / sqrt(running_var + eps)``, ``y = conv(x, fake_quant(W * s)) / s + b``, then the BatchNorm
    itself (batch statistics and running-stat updates in training; running statistics once frozen or in eval).
    Built by ``prepare_qat`` from a ``ConvBn2d`` of ``fuse_modules_qat``; holds the conv's Parameters and the
    BatchNorm module itself (``self.bn``)."""

    _FLOAT_MODULE = ConvBn2d
    _RELU = False

    def __init__(self, mod, qconfig, freeze_bn=False):
        who = type(self).__name__
        if type(mod) is not self._FLOAT_MODULE:
            raise TypeError(f"{who}: expected a {self._FLOAT_MODULE.__name__} (from fuse_modules_qat), got "
                            f"{type(mod).__name__}")
        conv, bn = mod[0], mod[1]
        if isinstance(conv.padding, str) or getattr(conv, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"{who}: the Conv2d has padding={conv.padding!r}, padding_mode="
                             f"{getattr(conv, 'padding_mode', 'zeros')!r}; QAT Conv+BN (and the int8 Conv2d it "
                             f"converts to) supports numeric padding with padding_mode='zeros': give the padding as "
                             f"ints, or set this module's qconfig = None to keep it float")
        try:
            _check_qat_bn(conv, bn)
        except ValueError as e:
            raise ValueError(f"{who}: {e}") from e
        nn.Conv2d.__init__(self, conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                           bias=conv.bias is not None)
        self.bn = bn
        self.freeze_bn = bool(freeze_bn)
        self._setup_qat(conv, qconfig, self._RELU)

    def train(self, mode=True):
        """As torch: ``model.train()`` leaves a frozen BatchNorm in eval mode (running statistics)."""
        super().train(mode)
        if self.freeze_bn:
            self.bn.training = False
        return self

    def freeze_bn_stats(self):
        """Stop the BatchNorm's batch statistics and running-stat updates: it normalises with its running
        statistics from now on, in training too (usual late in QAT)."""
        self.freeze_bn = True
        self.bn.training = False
        return self

    def update_bn_stats(self):
        """Undo ``freeze_bn_stats``: batch statistics and running-stat updates again while training."""
        self.freeze_bn = False
        self.bn.training = self.training
        return self

    def forward(self, x):
        x = self.activation_pre_process(x)
        bn = self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()  # gamma / running std, per output channel
        w = self.weight_fake_quant(self.weight * scale.reshape(-1, 1, 1, 1))
        y = F.conv2d(x, w, None, stride=self.stride, padding=self.padding, dilation=self.dilation,
                     groups=self.groups)
        # undo the scale so the BatchNorm sees the unfolded conv's output (and normalises it by its batch std)
        y = y / scale.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return self._out(bn(y))

    def to_float(self):
        """A float ``nn.Conv2d`` (``ConvReLU2d`` with the ReLU) with the BatchNorm's running statistics folded
        into its weight and bias (torch's ``to_float``)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups, bias=True)
        conv.weight, conv.bias = _fold_bn(self, self.bn, self.out_channels)
        out = ConvReLU2d(conv, nn.ReLU()) if self.relu else conv
        return out.train(self.training)

    def _float_for_convert(self):
        # torch's convert folds the running statistics in and runs the weight fake quantizer once more on the
        # folded weight (its observer updates only while enabled) before quantizing with its qparams
        conv = self.to_float()
        conv = conv[0] if self.relu else conv
        self.weight_fake_quant(conv.weight.detach())
        conv.__dict__["_quant_weight_observer"] = self.weight_fake_quant
        return conv

    def extra_repr(self):
        return f"{super().extra_repr()}, relu={self.relu}, freeze_bn={self.freeze_bn}"


class QATConvBnReLU2d(QATConvBn2d):
    """``torch.ao.nn.intrinsic.qat.ConvBnReLU2d``: ``QATConvBn2d`` followed by a ReLU (from a ``ConvBnReLU2d``)."""

    _FLOAT_MODULE = ConvBnReLU2d
    _RELU = True


# ---- model.apply helpers, as torch.ao.nn.intrinsic.qat's ----------------------------------------------
def freeze_bn_stats(mod):
    """``model.apply(freeze_bn_stats)``: QAT Conv+BN layers normalise with their running statistics from now on."""
    if isinstance(mod, QATConvBn2d):
        mod.freeze_bn_stats()


def update_bn_stats(mod):
    """``model.apply(update_bn_stats)``: QAT Conv+BN layers use batch statistics (and update the running ones)
    again while training."""
    if isinstance(mod, QATConvBn2d):
        mod.update_bn_stats()


def _qat_version(mod, qconfig):
    if type(mod) is ConvBn2d:
        return QATConvBn2d(mod, qconfig)
    if type(mod) is ConvBnReLU2d:
        return QATConvBnReLU2d(mod, qconfig)
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
    """Swap every Linear / Conv2d (and fused LinearReLU / ConvReLU2d, and the ConvBn2d / ConvBnReLU2d of
    ``fuse_modules_qat``) that has a qconfig (``model.qconfig``, inherited; ``qconfig=`` stands in for a
    missing one, default ``get_default_qat_qconfig("x86")``) for its fake-quantized training version. Build
    the optimizer after this call, train (``model.apply(freeze_bn_stats)`` / ``disable_observer`` late in
    training, as in torch), then ``convert``."""
    require_cpu_model(model, "prepare_qat")
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
