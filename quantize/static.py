"""Static post-training quantization, torch.ao.quantization's eager workflow: ``prepare`` attaches
observers, ``calibrate`` runs data through them, ``convert`` swaps in int8 layers (docs/quantize-design.md:
each converted layer takes and returns float, quantizing its input and dequantizing its output with the
calibrated qparams; inside, an int8 GEMM/convolution requantizes straight to the output's uint8)."""
from __future__ import annotations

import copy
import warnings

from tqdm import tqdm

import ember
from ember import nn
from ember.ops.quantized import dequantize, quantize_per_tensor
from ember.ops.registry import apply

from .fuse import ConvBn2d, ConvReLU2d, LinearReLU, _FusedModule
from .modules import quantize_weight
from .qconfig import QConfig, get_default_qconfig, require_cpu_model


class QuantStub(nn.Module):
    """Marks where a model's quantized region starts (torch's QuantStub). ember's converted layers
    quantize their own inputs, so the stub stays an identity; it is kept so torch models port as they are."""

    def __init__(self, qconfig=None):
        super().__init__()
        if qconfig is not None:
            self.qconfig = qconfig

    def forward(self, x):
        return x


class DeQuantStub(QuantStub):
    """Marks where a model's quantized region ends (torch's DeQuantStub); an identity, as QuantStub."""


class _QuantizedLayer(nn.Module):
    """Shared state of the static int8 layers: int8 weight, float bias, input/output qparams."""

    def _init_q(self, mod, qconfig, relu, observers, who):
        pre, post = observers
        weight, w_scale = quantize_weight(mod.weight, qconfig.weight, who, mod.__dict__.get("_quant_weight_observer"))
        self.register_buffer("weight", weight)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", None if mod.bias is None else mod.bias.detach().to(ember.float32).clone())
        for prefix, obs in (("x", pre), ("y", post)):
            scale, zp = obs.calculate_qparams()  # raises when no calibration data went through
            if obs.dtype != ember.uint8:
                raise ValueError(f"{who}: activation observers must be uint8 (quint8), got {obs.dtype}")
            self.register_buffer(f"{prefix}_scale", scale.to(ember.float32).reshape(()))
            self.register_buffer(f"{prefix}_zero_point", zp.to(ember.uint8).reshape(()))
        self.relu = relu

    def _run(self, op, x, **attrs):
        xq = quantize_per_tensor(x, self.x_scale, self.x_zero_point, ember.uint8)
        args = (xq, self.x_scale, self.x_zero_point, self.weight, self.w_scale, self.y_scale, self.y_zero_point)
        if self.bias is not None:
            args += (self.bias,)
        yq = apply(op, *args, relu=self.relu, **attrs)
        return dequantize(yq, self.y_scale, self.y_zero_point)


class Linear(_QuantizedLayer):
    """Static int8 Linear (optionally with a fused ReLU): float in, float out, int8 inside."""

    def __init__(self, mod, qconfig, relu, observers):
        super().__init__()
        self.in_features, self.out_features = mod.in_features, mod.out_features
        self._init_q(mod, qconfig, relu, observers, "quantize.nn.Linear")

    def forward(self, x):
        return self._run("quantized_linear", x)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, relu={self.relu}, "
                f"x_scale={float(self.x_scale.item()):.4g}, y_scale={float(self.y_scale.item()):.4g}")


class Conv2d(_QuantizedLayer):
    """Static int8 Conv2d (optionally with a fused ReLU): float NCHW in, float out, int8 inside."""

    def __init__(self, mod, qconfig, relu, observers):
        super().__init__()
        self.in_channels, self.out_channels = mod.in_channels, mod.out_channels
        self.kernel_size, self.stride, self.padding = mod.kernel_size, mod.stride, mod.padding
        self.dilation, self.groups = mod.dilation, mod.groups
        self._init_q(mod, qconfig, relu, observers, "quantize.nn.Conv2d")

    def forward(self, x):
        return self._run("quantized_conv2d", x, stride=tuple(self.stride), padding=tuple(self.padding),
                         dilation=tuple(self.dilation), groups=self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, relu={self.relu}")


def _float_parts(mod):
    """(the float Linear/Conv2d, fused relu?) of a quantizable module, or None."""
    if type(mod) in (nn.Linear, nn.Conv2d):
        return mod, False
    if type(mod) in (LinearReLU, ConvReLU2d):
        return mod[0], True
    if "_quant_weight_observer" in mod.__dict__:  # a QAT layer: its own float parameters
        return mod, mod.relu
    return None


def _why_not(mod):
    """Why a float Conv2d cannot become an int8 one (None when it can)."""
    if isinstance(mod, nn.Conv2d):
        if isinstance(mod.padding, str) or getattr(mod, "padding_mode", "zeros") != "zeros":
            return f"padding={mod.padding!r}, padding_mode={getattr(mod, 'padding_mode', 'zeros')!r}"
    return None


def _propagate(model, qconfig):
    """(qualified name, module, its qconfig) for each module, torch's rule: a module's own ``qconfig``
    attribute (None excludes it) overrides its parent's."""
    out = []

    def walk(prefix, mod, inherited):
        q = mod.__dict__.get("qconfig", inherited)
        out.append((prefix, mod, q))
        if _float_parts(mod) is not None or isinstance(mod, _FusedModule):
            return  # a fused layer's parts are not visited on their own
        for name, child in mod._modules.items():
            if child is not None:
                walk(f"{prefix}.{name}" if prefix else name, child, q)

    walk("", model, qconfig)
    return out


def _observe_in(mod, args):
    mod.__dict__["_quant_observers"][0](args[0])


def _observe_out(mod, args, out):
    mod.__dict__["_quant_observers"][1](out)


def prepare(model, inplace=False, qconfig=None):
    """Attach observers to every quantizable layer (Linear, Conv2d and their fused ReLU forms) that has a
    qconfig (``model.qconfig``, inherited by children; ``qconfig`` here stands in for a missing
    ``model.qconfig``). Run calibration data through the result (``calibrate``), then ``convert`` it."""
    require_cpu_model(model, "prepare")
    if not inplace:
        model = copy.deepcopy(model)
    root = model.__dict__.get("qconfig", qconfig)
    if root is None and not any("qconfig" in m.__dict__ for m in model.modules()):
        raise ValueError("prepare: the model has no qconfig: set model.qconfig = "
                         "ember.quantize.get_default_qconfig('x86') (or pass qconfig=) first")
    model.eval()
    for _, mod, q in _propagate(model, root):
        if q is None or _float_parts(mod) is None or _why_not(_float_parts(mod)[0]) is not None:
            continue
        if not isinstance(q, QConfig):
            raise TypeError(f"prepare: qconfig must be a QConfig, got {type(q).__name__}")
        # plain attributes, not submodules: a fused container's forward must not run them
        mod.__dict__["_quant_observers"] = (q.activation(), q.activation())
        mod.__dict__["_quant_qconfig"] = q
        mod.register_forward_pre_hook(_observe_in)
        mod.register_forward_hook(_observe_out)
    return model


def calibrate(model, data, num_batches=None, progress=True):
    """Run calibration batches through a prepared model (eval mode, no autograd): ``data`` yields inputs or
    (input, target) pairs, e.g. a DataLoader; a tqdm bar shows progress."""
    model.eval()
    total = num_batches if num_batches is not None else (len(data) if hasattr(data, "__len__") else None)
    with ember.no_grad():
        for i, batch in enumerate(tqdm(data, total=total, desc="calibrating", disable=not progress, leave=False)):
            if num_batches is not None and i >= num_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return model


def convert(model, inplace=False):
    """Swap every prepared layer for its int8 version, with the qparams its observers calibrated; layers
    that stay float are listed in a warning (and by ``summary``)."""
    require_cpu_model(model, "convert")
    if not inplace:
        model = copy.deepcopy(model)
    prepared = [(name, mod) for name, mod in model.named_modules() if "_quant_qconfig" in mod.__dict__]
    if not prepared:
        raise ValueError("convert: no prepared layers: call ember.quantize.prepare(model) and calibrate it first")
    for name, mod in prepared:
        for obs in mod.__dict__["_quant_observers"]:
            if not _saw_data(obs):
                raise RuntimeError(f"convert: layer {name!r} ({type(mod).__name__}) saw no calibration data: run "
                                   f"ember.quantize.calibrate(model, loader) (or a few forward passes) before convert")
    left = [(name, type(mod).__name__, why) for name, mod, q in _propagate(model, model.__dict__.get("qconfig"))
            if q is not None and (why := _stays_float(mod))]
    for name, mod in prepared:
        base, relu = _float_parts(mod)
        if "_quant_weight_observer" in mod.__dict__:  # a QAT layer: what it trained, any BatchNorm folded in
            base = mod._float_for_convert()
        q = (Linear if isinstance(base, nn.Linear) else Conv2d)(base, mod.__dict__["_quant_qconfig"], relu,
                                                                mod.__dict__["_quant_observers"])
        q._quant_note = "int8 static" + (" (+relu)" if relu else "")
        _replace(model, name, q)
    if left:
        warnings.warn("convert: these layers stay in float: "
                      + ", ".join(f"{n} ({t}: {why})" for n, t, why in left), stacklevel=2)
    return model


def _stays_float(mod):
    """Why a layer with parameters stays float under a qconfig (None for layers that convert, and for
    parameter-free or container modules)."""
    parts = _float_parts(mod)
    if parts is not None:
        return _why_not(parts[0])
    if isinstance(mod, ConvBn2d):
        return ("Conv+BatchNorm fused for QAT (fuse_modules_qat): prepare it with prepare_qat, or fuse it in eval "
                "mode with fuse_modules for post-training quantization")
    if mod._modules or not any(True for _ in mod.parameters(recurse=False)):
        return None
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "fold it into the Conv2d / Linear before it with fuse_modules, in eval mode"
    return "no int8 version: Linear, Conv2d and their fused ReLU forms are quantized"


def _saw_data(obs):
    try:
        obs.calculate_qparams()
    except RuntimeError:
        return False
    return True


def _replace(model, name, new):
    parent = model
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


def quantize_static(model, data, qconfig=None, num_batches=None, progress=True):
    """prepare -> calibrate -> convert in one call (``qconfig`` defaults to the x86 one: histogram
    activations, per-channel symmetric int8 weights)."""
    model = prepare(model, qconfig=qconfig or model.__dict__.get("qconfig") or get_default_qconfig("x86"))
    calibrate(model, data, num_batches=num_batches, progress=progress)
    return convert(model, inplace=True)
