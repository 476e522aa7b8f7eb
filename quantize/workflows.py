"""The quantization workflows (torch.ao.quantization's eager-mode API): ``quantize_dynamic`` and the
layer report ``summary``."""
from __future__ import annotations

import copy
import warnings

import ember
from ember import nn

from .modules import DynamicLinear
from .qconfig import QConfig, per_channel_dynamic_qconfig, require_cpu_model

# float module type -> its dynamically quantized replacement
DYNAMIC_MAPPING = {nn.Linear: DynamicLinear}


def quantize_dynamic(model, qconfig_spec=None, dtype=ember.int8, mapping=None, inplace=False):
    """``torch.ao.quantization.quantize_dynamic``: replace the layers named by ``qconfig_spec`` with
    dynamically quantized ones (int8 weights, activations quantized per call). ``qconfig_spec`` is a set
    of module types (``{nn.Linear}``, the default) or a dict from types or submodule names to QConfigs;
    weights are quantized per output channel by default. Layers of requested types that have no int8
    version stay in float, with a warning that lists them (see ``summary``)."""
    require_cpu_model(model, "quantize_dynamic")
    if dtype != ember.int8:
        raise ValueError(f"quantize_dynamic: dtype must be ember.int8 (int8 weights, uint8 activations), got {dtype}")
    mapping = dict(DYNAMIC_MAPPING if mapping is None else mapping)
    spec = _as_spec(qconfig_spec)
    if not inplace:
        model = copy.deepcopy(model)
    left = []
    for name, parent, child_name, child in _children(model):
        qconfig = spec.get(name, spec.get(type(child)))
        if qconfig is None:
            continue
        target = mapping.get(type(child))
        if target is None:
            left.append((name, type(child).__name__))
            continue
        q = target.from_float(child, qconfig)
        q._quant_note = "int8 dynamic"
        setattr(parent, child_name, q)
    if left:
        warnings.warn("quantize_dynamic: these layers have no dynamically quantized version and stay in float: "
                      + ", ".join(f"{n} ({t})" for n, t in left)
                      + f"; supported types: {', '.join(t.__name__ for t in mapping)}", stacklevel=2)
    return model


def _as_spec(qconfig_spec) -> dict:
    if qconfig_spec is None:
        return {nn.Linear: per_channel_dynamic_qconfig}
    if isinstance(qconfig_spec, dict):
        for k, v in qconfig_spec.items():
            if not isinstance(v, QConfig):
                raise TypeError(f"quantize_dynamic: qconfig_spec[{k!r}] must be a QConfig, got {type(v).__name__}")
        return dict(qconfig_spec)
    try:
        types = set(qconfig_spec)
    except TypeError:
        raise TypeError(f"quantize_dynamic: qconfig_spec must be a set of module types or a dict of QConfigs, got "
                        f"{type(qconfig_spec).__name__}") from None
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"quantize_dynamic: qconfig_spec holds {t!r}, not an nn.Module type")
    return {t: per_channel_dynamic_qconfig for t in types}


def _children(model):
    """(qualified name, parent, attribute name, module) for every submodule, parents before children,
    not descending into modules that get replaced."""
    out = []
    stack = [("", model)]
    while stack:
        prefix, parent = stack.pop()
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            out.append((name, parent, child_name, child))
            stack.append((name, child))
    return out


def summary(model) -> str:
    """A table of the model's layers and how each runs: int8 (how) or float."""
    rows = [("layer", "type", "runs as")]
    for name, mod in model.named_modules():
        if not name or mod._modules:
            continue
        note = getattr(mod, "_quant_note", None)
        params = any(True for _ in mod.parameters(recurse=False))
        if note is None and not params:
            continue  # parameter-free float layers (ReLU, Flatten ...) are not interesting
        rows.append((name, type(mod).__name__, note or "float"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c}" for a, b, c in rows)
