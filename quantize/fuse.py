"""Module fusion before quantization (``torch.ao.quantization.fuse_modules``, eager mode): Conv/Linear +
BatchNorm fold into one layer, and a layer + ReLU become one fused module that ``convert`` can map to a
quantized layer with the ReLU inside its requantizing epilogue. ``fuse_modules_qat`` keeps Conv+BatchNorm
as a ``ConvBn2d`` / ``ConvBnReLU2d`` container instead, which ``prepare_qat`` turns into a layer that trains
with the BatchNorm folded into its fake-quantized weight."""
from __future__ import annotations

import copy
import difflib

import numpy as np

import ember
from ember import nn

__all__ = [
    "BNReLU2d", "ConvBn2d", "ConvBnReLU2d", "ConvReLU2d", "LinearReLU", "fuse_conv_bn", "fuse_conv_bn_eval",
    "fuse_conv_bn_relu", "fuse_known_modules", "fuse_linear_bn", "fuse_linear_bn_eval", "fuse_modules",
    "fuse_modules_qat",
]


# ---- fused modules (torch.ao.nn.intrinsic) ---------------------------------------------------------
class _FusedModule(nn.Sequential):
    """A Sequential of float modules that quantization treats as one layer; its children keep their
    state_dict keys ``0.weight`` ... as torch's intrinsic modules do, so torch checkpoints load."""

    _types: tuple = ()

    def __init__(self, *mods):
        if len(mods) != len(self._types) or any(type(m) is not t for m, t in zip(mods, self._types)):
            raise TypeError(f"{type(self).__name__}: expected modules ({_type_names(self._types)}), "
                            f"got ({_type_names(type(m) for m in mods)})")
        super().__init__(*mods)


class ConvReLU2d(_FusedModule):
    """``relu(conv(x))`` held as ``(Conv2d, ReLU)``: what Conv2d(+BatchNorm2d)+ReLU fuse into."""

    _types = (nn.Conv2d, nn.ReLU)


class LinearReLU(_FusedModule):
    """``relu(linear(x))`` held as ``(Linear, ReLU)``."""

    _types = (nn.Linear, nn.ReLU)


class BNReLU2d(_FusedModule):
    """``relu(batch_norm(x))`` held as ``(BatchNorm2d, ReLU)``; works in training and eval mode."""

    _types = (nn.BatchNorm2d, nn.ReLU)


class ConvBn2d(_FusedModule):
    """``batch_norm(conv(x))`` held as ``(Conv2d, BatchNorm2d)`` for quantization-aware training
    (``fuse_modules_qat``): computes exactly what the two modules did, in either mode, until ``prepare_qat``."""

    _types = (nn.Conv2d, nn.BatchNorm2d)

    def __init__(self, *mods):
        super().__init__(*mods)
        conv, bn = mods[0], mods[1]
        if bn.num_features != conv.out_channels:
            raise ValueError(f"{type(self).__name__}: the BatchNorm2d has num_features={bn.num_features} but the "
                             f"Conv2d before it has out_channels={conv.out_channels} (weight shape "
                             f"{tuple(conv.weight.shape)}); they must be equal")


class ConvBnReLU2d(ConvBn2d):
    """``relu(batch_norm(conv(x)))`` held as ``(Conv2d, BatchNorm2d, ReLU)`` (``fuse_modules_qat``)."""

    _types = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)


# ---- BatchNorm folding (torch.nn.utils.fusion) ------------------------------------------------------
def _fold_bn(layer, bn, out_features):
    """New (weight, bias) Parameters of ``layer`` with eval-mode ``bn`` folded in: ``w * g / sqrt(var + eps)``
    along the output axis, ``(b - mean) * g / sqrt(var + eps) + beta``, in float64 and rounded once."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__}(track_running_stats=False) keeps no running statistics, so there "
                         f"is nothing to fold into the {type(layer).__name__}; fuse only layers whose BatchNorm "
                         f"tracks running stats")

    def f64(t, fill, n=bn.num_features):
        return np.full(n, fill) if t is None else t.detach().numpy().astype(np.float64)

    w = layer.weight.detach().numpy()
    scale = f64(bn.weight, 1.0) / np.sqrt(f64(bn.running_var, 1.0) + bn.eps)
    mean, beta, b = f64(bn.running_mean, 0.0), f64(bn.bias, 0.0), f64(layer.bias, 0.0, out_features)
    b_dtype = w.dtype if layer.bias is None else layer.bias.dtype.np
    new_w = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    new_b = (b - mean) * scale + beta
    return (nn.Parameter(ember.from_numpy(new_w.astype(w.dtype)), requires_grad=layer.weight.requires_grad),
            nn.Parameter(ember.from_numpy(new_b.astype(b_dtype)), requires_grad=layer.weight.requires_grad))


def _modes(mods):
    return ", ".join(f"{type(m).__name__} {'training' if m.training else 'eval'}" for m in mods)


def _check_eval(mods):
    if any(m.training for m in mods):
        raise NotImplementedError(
            f"folding BatchNorm needs eval mode (its running statistics), but the modules are in training mode "
            f"({_modes(mods)}): call model.eval() before fuse_modules (torch's fuse_modules refuses this too); for "
            f"quantization-aware training (QAT) fuse Conv2d+BatchNorm2d(+ReLU) with fuse_modules_qat, which keeps "
            f"the BatchNorm training (ConvBn2d / ConvBnReLU2d; Linear+BatchNorm1d has no QAT fusion: fold it in eval "
            f"mode); Conv2d+ReLU / Linear+ReLU / BatchNorm2d+ReLU fuse in both modes")


def _check_qat_bn(conv, bn):
    """torch's conditions for a QAT Conv+BN fusion: same mode, matching channels, affine, running statistics."""
    if conv.training != bn.training:
        raise ValueError(f"the Conv2d and the BatchNorm2d must be in the same mode (train or eval), got "
                         f"{_modes((conv, bn))}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"{type(bn).__name__} has num_features={bn.num_features} but the Conv2d before it has "
                         f"out_channels={conv.out_channels}; they must be equal")
    if not bn.affine or bn.weight is None or bn.bias is None:
        raise ValueError(f"QAT Conv+BN fusion needs a BatchNorm2d with a weight and a bias (affine=True, bias=True), "
                         f"got {bn.extra_repr()}; fold it in eval mode with fuse_modules instead")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("QAT Conv+BN fusion needs a BatchNorm2d that tracks running statistics, got "
                         "track_running_stats=False; fold it in eval mode with fuse_modules instead")


def fuse_conv_bn_eval(conv, bn):
    """A copy of ``conv`` with eval-mode ``bn`` folded into its weight and bias
    (``torch.nn.utils.fuse_conv_bn_eval``)."""
    _check_eval((conv, bn))
    if bn.num_features != conv.out_channels:
        raise ValueError(f"{type(bn).__name__} has num_features={bn.num_features} but the Conv2d before it has "
                         f"out_channels={conv.out_channels}; they must be equal")
    fused = _copy_without_hooks(conv)
    fused.weight, fused.bias = _fold_bn(conv, bn, conv.out_channels)
    return fused


def fuse_linear_bn_eval(linear, bn):
    """A copy of ``linear`` with eval-mode ``bn`` folded in; ``bn`` has ``out_features`` channels, or one
    (``(N, 1, L)`` inputs), as ``torch.nn.utils.fuse_linear_bn_eval`` allows."""
    _check_eval((linear, bn))
    if bn.num_features not in (linear.out_features, 1):
        raise ValueError(f"{type(bn).__name__} has num_features={bn.num_features} but the Linear before it has "
                         f"out_features={linear.out_features}; they must be equal (or num_features=1)")
    fused = _copy_without_hooks(linear)
    fused.weight, fused.bias = _fold_bn(linear, bn, linear.out_features)
    return fused


def _copy_without_hooks(mod):
    """A deep copy whose hook tables start empty: ``fuse_known_modules`` moves the hooks itself."""
    out = copy.deepcopy(mod)
    for table in (out._forward_pre_hooks, out._forward_hooks, out._forward_pre_hooks_with_kwargs,
                  out._forward_hooks_with_kwargs):
        table.clear()
    return out


# ---- fuser methods: (is_qat, *modules) -> one module, torch's signature ---------------------------------
def fuse_conv_bn(is_qat, conv, bn):
    """Conv2d + BatchNorm2d -> ``ConvBn2d(conv, bn)`` for QAT (either mode), else one Conv2d with the eval-mode
    BatchNorm folded in."""
    if is_qat:
        _check_qat_bn(conv, bn)
        return ConvBn2d(conv, bn)
    return fuse_conv_bn_eval(conv, bn)


def fuse_conv_bn_relu(is_qat, conv, bn, relu):
    """Conv2d + BatchNorm2d + ReLU -> ``ConvBnReLU2d`` for QAT, else ``ConvReLU2d(folded conv, relu)``."""
    if is_qat:
        _check_qat_bn(conv, bn)
        return ConvBnReLU2d(conv, bn, relu)
    return ConvReLU2d(fuse_conv_bn(is_qat, conv, bn), relu)


def fuse_linear_bn(is_qat, linear, bn):
    """Linear + BatchNorm1d -> one Linear (eval mode only: there is no QAT ``LinearBn1d``)."""
    if is_qat:
        raise NotImplementedError("fuse_linear_bn: QAT fusion of Linear+BatchNorm1d (torch's LinearBn1d) is not "
                                  "built; fold the BatchNorm1d in eval mode with fuse_modules (model.eval()) before "
                                  "prepare_qat, or leave it out of the groups")
    return fuse_linear_bn_eval(linear, bn)


def _wrap(cls):
    def fuser(is_qat, *mods):
        return cls(*mods)

    fuser.__name__ = f"fuse_{cls.__name__}"
    return fuser


DEFAULT_FUSER_METHODS = {
    (nn.Conv2d, nn.BatchNorm2d): fuse_conv_bn,
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU): fuse_conv_bn_relu,
    (nn.Conv2d, nn.ReLU): _wrap(ConvReLU2d),
    (nn.Linear, nn.BatchNorm1d): fuse_linear_bn,
    (nn.Linear, nn.ReLU): _wrap(LinearReLU),
    (nn.BatchNorm2d, nn.ReLU): _wrap(BNReLU2d),
}


def _type_names(types):
    return ", ".join(t.__name__ for t in types)


def _fuse_group(mods, is_qat, mapping):
    """The replacement list for one group (fused module, then Identities), touching nothing in ``mods``."""
    methods = {**DEFAULT_FUSER_METHODS, **(mapping or {})}
    types = tuple(type(m) for m in mods)
    method = methods.get(types)
    if method is None:
        supported = "; ".join(f"({_type_names(p)})" for p in methods)
        raise NotImplementedError(f"no fusion for the pattern ({_type_names(types)}); supported patterns: {supported}")
    fused = method(is_qat, *mods)
    if not isinstance(fused, nn.Module):
        raise TypeError(f"the fuser method for ({_type_names(types)}) returned a {type(fused).__name__}, not a Module")
    fused.training = mods[0].training
    out = [fused]
    for _ in mods[1:]:
        identity = nn.Identity()
        identity.training = mods[0].training
        out.append(identity)
    return out


def _move_hooks(mods, fused):
    """As torch: the first module's forward pre-hooks and the last one's forward hooks move to the fused
    module (hooks on the modules in between are dropped: their inputs and outputs no longer exist)."""
    for src, table, kw in ((mods[0], "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"),
                           (mods[-1], "_forward_hooks", "_forward_hooks_with_kwargs")):
        if src is fused:  # a custom fuser may hand back the module itself
            continue
        hooks, with_kwargs = getattr(src, table), getattr(src, kw)
        for hid, hook in hooks.items():
            getattr(fused, table)[hid] = hook
            if hid in with_kwargs:
                getattr(fused, kw).add(hid)
        hooks.clear()
        with_kwargs.clear()


def fuse_known_modules(mod_list, is_qat=False, additional_fuser_method_mapping=None):
    """torch's default ``fuser_func``: the fused module for ``mod_list`` followed by ``nn.Identity`` for
    the rest. Patterns: see ``DEFAULT_FUSER_METHODS`` (plus ``additional_fuser_method_mapping``)."""
    mods = list(mod_list)
    out = _fuse_group(mods, is_qat, additional_fuser_method_mapping)
    _move_hooks(mods, out[0])
    return out


# ---- fuse_modules ---------------------------------------------------------------------------------------
def fuse_modules(model, modules_to_fuse, inplace=False, fuser_func=None, fuse_custom_config_dict=None):
    """``torch.ao.quantization.fuse_modules``: fuse each group of submodules (``[["conv1", "bn1", "relu1"],
    ["block.fc", "block.relu"]]``, or one group as a flat list) into its first name; the other names
    become ``nn.Identity``. Conv2d+BatchNorm2d(+ReLU) and Linear+BatchNorm1d fold the BatchNorm (eval mode;
    for QAT use ``fuse_modules_qat``); Conv2d+ReLU, Linear+ReLU and BatchNorm2d+ReLU become ConvReLU2d /
    LinearReLU / BNReLU2d in either mode.
    ``fuser_func(modules, is_qat, additional_fuser_method_mapping)`` replaces ``fuse_known_modules``, and
    ``fuse_custom_config_dict={"additional_fuser_method_mapping": {(A, B): fn}}`` adds patterns, as in torch.
    Every group is checked and fused before the model changes, so an error leaves an inplace model as it was."""
    return _fuse_modules("fuse_modules", model, modules_to_fuse, False, inplace, fuser_func, fuse_custom_config_dict)


def fuse_modules_qat(model, modules_to_fuse, inplace=False, fuser_func=None, fuse_custom_config_dict=None):
    """``torch.ao.quantization.fuse_modules_qat``: as ``fuse_modules``, but Conv2d+BatchNorm2d(+ReLU) become
    ``ConvBn2d`` / ``ConvBnReLU2d`` (the BatchNorm kept, in either mode), which ``prepare_qat`` turns into
    layers that train with the BatchNorm folded into the fake-quantized weight; fuser methods get
    ``is_qat=True``."""
    return _fuse_modules("fuse_modules_qat", model, modules_to_fuse, True, inplace, fuser_func,
                         fuse_custom_config_dict)


def _fuse_modules(who, model, modules_to_fuse, is_qat, inplace, fuser_func, fuse_custom_config_dict):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
    groups = _as_groups(modules_to_fuse, who)
    mapping = dict((fuse_custom_config_dict or {}).get("additional_fuser_method_mapping", {}))
    if not inplace:
        model = copy.deepcopy(model)
    resolved, seen = [], {}
    for group in groups:
        for name in group:
            if name in seen:
                raise ValueError(f"{who}: {name!r} is listed twice (in {seen[name]} and {group}); each module "
                                 f"can be fused once")
            seen[name] = group
        resolved.append((group, [_checked_module(model, name, who) for name in group]))
    replacements = []
    for group, mods in resolved:
        try:
            new = _fuse_group(mods, is_qat, mapping) if fuser_func is None else fuser_func(mods, is_qat, mapping)
        except (ValueError, NotImplementedError, TypeError) as e:
            raise type(e)(f"{who}: cannot fuse {group} ({_type_names(type(m) for m in mods)}): {e}") from e
        new = list(new) if isinstance(new, (list, tuple)) else new
        if not isinstance(new, list) or len(new) != len(mods) or not all(isinstance(m, nn.Module) for m in new):
            raise TypeError(f"{who}: fuser_func must return a list of {len(mods)} modules for {group} (the "
                            f"fused module, then nn.Identity()), got {new!r}")
        replacements.append(new)
    for (group, mods), new in zip(resolved, replacements):
        if fuser_func is None:
            _move_hooks(mods, new[0])
        for name, mod in zip(group[1:], new[1:]):
            if isinstance(mod, nn.Identity):
                mod._fused_into = group[0]  # lets a second fusion of this name say what happened
        for name, mod in zip(group, new):
            _set_module(model, name, mod)
    return model


def _as_groups(spec, who):
    """``modules_to_fuse`` as a list of name lists."""
    bad = (f"{who}: modules_to_fuse must be a list of submodule names (['conv', 'bn', 'relu']) or a list "
           "of such lists ([['conv1', 'bn1'], ['fc', 'relu']]), got ")
    if isinstance(spec, str) or not isinstance(spec, (list, tuple)):
        raise TypeError(bad + repr(spec))
    if not spec:
        raise ValueError(f"{who}: modules_to_fuse is empty; name at least one group, e.g. ['conv', 'bn']")
    if all(isinstance(n, str) for n in spec):
        return [list(spec)]
    groups = []
    for g in spec:
        if isinstance(g, str) or not isinstance(g, (list, tuple)) or not all(isinstance(n, str) for n in g):
            raise TypeError(bad + repr(spec))
        if not g:
            raise ValueError(f"{who}: modules_to_fuse holds an empty group ({spec!r})")
        groups.append(list(g))
    return groups


def _checked_module(model, name, who):
    """The submodule at dotted ``name``, refusing unknown names and modules that an earlier fusion made."""
    mod = model
    parts = name.split(".")
    for i, part in enumerate(parts):
        child = mod._modules.get(part)
        if child is None:
            valid = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
            shown = close or valid[:30]
            hint = (f"did you mean {', '.join(map(repr, close))}?" if close else
                    f"the model's submodules: {', '.join(map(repr, shown))}{' ...' if len(valid) > 30 else ''}")
            where = f"{type(mod).__name__} {'.'.join(parts[:i])!r}" if i else f"the model ({type(model).__name__})"
            kids = ", ".join(repr(k) for k, v in mod._modules.items() if v is not None) or "none"
            where += f" has no child {part!r}" + (f"; its children: {kids}" if i else "")
            raise AttributeError(f"{who}: the model has no submodule {name!r} ({where}); {hint}")
        mod = child
    if isinstance(mod, _FusedModule):
        raise ValueError(f"{who}: {name!r} is already a fused {type(mod).__name__}; each module can be "
                         f"fused once (name Conv2d, BatchNorm2d and ReLU in one group to fuse all three)")
    if isinstance(mod, nn.Identity) and hasattr(mod, "_fused_into"):
        raise ValueError(f"{who}: {name!r} was already fused into {mod._fused_into!r} (it is an Identity "
                         f"now); each module can be fused once")
    return mod


def _set_module(model, name, mod):
    *path, last = name.split(".")
    parent = model
    for part in path:
        parent = parent._modules[part]
    setattr(parent, last, mod)
