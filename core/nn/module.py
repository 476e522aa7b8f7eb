"""``nn.Module``: the base class of layers and models, with torch's registration and traversal rules.

Assigning a Parameter, a Module or (for a registered name) a buffer to an attribute registers it,
so ``parameters()``, ``state_dict()``, ``to()`` and ``train()`` reach everything a model holds.
Checkpoint I/O (state_dict / load_state_dict) lives in ``_state.py``; this file holds the rest.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..device import as_device
from ..tensor import Tensor
from ._state import StateDictMixin
from .hooks import RemovableHandle, _HookDict
from .parameter import Parameter


def _indent(text, spaces):
    """Indent every line but the first (how torch nests child module reprs)."""
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line for line in rest])


class Module(StateDictMixin):
    """Base class for all layers and models: subclass it, assign layers in ``__init__``, write ``forward``."""

    training: bool

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise TypeError(
                f"{type(self).__name__}.__init__() got unexpected arguments: Module.__init__ takes none "
                f"(got {len(args)} positional, keywords {sorted(kwargs)})"
            )
        set_ = object.__setattr__
        set_(self, "training", True)
        set_(self, "_parameters", OrderedDict())
        set_(self, "_buffers", OrderedDict())
        set_(self, "_non_persistent_buffers_set", set())
        set_(self, "_modules", OrderedDict())
        set_(self, "_forward_pre_hooks", _HookDict())
        set_(self, "_forward_hooks", _HookDict())
        set_(self, "_forward_hooks_with_kwargs", set())
        set_(self, "_forward_pre_hooks_with_kwargs", set())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    # ---- registration -------------------------------------------------------------------
    def _check_name(self, name, kind, table):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {kind} before Module.__init__() call")
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
        if "." in name:
            raise KeyError(f'{kind} name can\'t contain ".", got: {name}')
        if name == "":
            raise KeyError(f'{kind} name can\'t be empty string ""')
        if hasattr(self, name) and name not in table:
            raise KeyError(f"attribute '{name}' already exists")

    def register_buffer(self, name, tensor, persistent=True):
        """Register a tensor that is state but not a parameter (BatchNorm's running_mean ...)."""
        self._check_name(name, "buffer", self._buffers)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer '{name}' (ember Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def register_parameter(self, name, param):
        self._check_name(name, "parameter", self._parameters)
        if param is None:
            self._parameters[name] = None
            return
        if not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{type(param).__name__}' object to parameter '{name}' (nn.Parameter or None required)"
            )
        if param.grad_fn is not None:
            raise ValueError(
                f"Cannot assign non-leaf Tensor to parameter '{name}'. Model parameters must be created explicitly: "
                f"use nn.Parameter(t.detach())"
            )
        self._parameters[name] = param

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._check_name(name, "module", self._modules)
        self._modules[name] = module

    register_module = add_module

    def _remove_from(self, name, *tables):
        for table in tables:
            if isinstance(table, dict):
                table.pop(name, None)
            else:
                table.discard(name)

    def __setattr__(self, name, value):
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            self._remove_from(name, d, self._buffers, self._modules, self._non_persistent_buffers_set)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' (nn.Parameter or None expected)")
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            if params is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            self._remove_from(name, d, self._parameters, self._buffers, self._non_persistent_buffers_set)
            self._modules[name] = value
        elif params is not None and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' (nn.Module or None expected)")
            self._modules[name] = value
        elif params is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' (ember Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: look in the registries.
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            t = d.get(table)
            if t is not None and name in t:
                return t[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        keys = list(object.__dir__(self)) + list(self._parameters) + list(self._buffers) + list(self._modules)
        return sorted(k for k in set(keys) if not k[0].isdigit())

    def get_submodule(self, target: str) -> "Module":
        """``model.get_submodule("encoder.layers.0")``; ``""`` is the module itself."""
        mod = self
        if target == "":
            return mod
        for i, item in enumerate(target.split(".")):
            if item not in mod._modules:
                where = ".".join(target.split(".")[:i]) or type(self).__name__
                raise AttributeError(f"{mod._get_name()} ({where}) has no submodule `{item}` (looking up {target!r})")
            mod = mod._modules[item]
        return mod

    def get_parameter(self, target: str) -> Parameter:
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._parameters:
            raise AttributeError(f"{mod._get_name()} has no parameter `{name}` (looking up {target!r})")
        return mod._parameters[name]

    def get_buffer(self, target: str) -> Tensor:
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._buffers:
            raise AttributeError(f"{mod._get_name()} has no buffer `{name}` (looking up {target!r})")
        return mod._buffers[name]

    # ---- traversal ----------------------------------------------------------------------
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """Yield ``(qualified_name, module)`` for this module and all below, each module once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            sub = f"{prefix}.{name}" if prefix else name
            yield from child.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, table, prefix, recurse, remove_duplicate):
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        seen = set()
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, table).items():
                if value is None:
                    continue
                if remove_duplicate:
                    if id(value) in seen:
                        continue
                    seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        """``(name, Parameter)`` pairs; a parameter shared by two modules is yielded once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, remove_duplicate=True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes and gradients ------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode here and in every submodule (Dropout, BatchNorm behave differently)."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {type(mode).__name__}")
        self.training = mode
        for m in self.children():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        """Clear the ``.grad`` of every parameter (to None by default, as torch >= 2.0)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            elif p.grad._data.flags.writeable:
                p.grad.detach_()
                p.grad._data[...] = 0
                p.grad._bump_version()
            else:
                p.grad = Tensor._wrap(np.zeros_like(p.grad._data))  # e.g. a read-only broadcast view

    # ---- conversion ---------------------------------------------------------------------
    def apply(self, fn):
        """Call ``fn(module)`` on every submodule (children first) and then on self, e.g. for custom init."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def _apply_dtype(self, dtype, only_floating=True):
        with no_grad():
            for m in self.modules():
                for p in m._parameters.values():
                    if p is None or (only_floating and not p.is_floating_point()) or p.dtype == dtype:
                        continue
                    p.data = p.data.to(dtype)  # keeps the Parameter object (optimizers hold it)
                    if p.grad is not None:
                        p.grad = p.grad.to(dtype)
                for name, b in m._buffers.items():
                    if b is not None and b.is_floating_point() and b.dtype != dtype:
                        m._buffers[name] = b.to(dtype)
        return self

    def to(self, *args, **kwargs):
        """``module.to("cpu")``, ``module.to(ember.float64)``, ``module.to(device, dtype)``, ``module.to(tensor)``.
        dtype conversion touches floating parameters and buffers only, in place."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("non_blocking", None)
        if kwargs:
            raise TypeError(f"Module.to() got unexpected keyword arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, _dt.dtype) or (isinstance(a, str) and a in _dt._NAMES):
                dtype = a
            elif a is not None:
                device = a
        if device is not None:
            self._apply_device(as_device(device))
        if dtype is not None:
            dtype = _dt.as_dtype(dtype)
            if not dtype.is_floating_point:
                raise TypeError(f"nn.Module.to only accepts floating point dtypes, but got desired dtype={dtype}")
            self._apply_dtype(dtype)
        return self

    def float(self):
        return self._apply_dtype(_dt.float32)

    def double(self):
        return self._apply_dtype(_dt.float64)

    def half(self):
        return self._apply_dtype(_dt.float16)

    def _apply_device(self, dev):
        """Move parameters (keeping the Parameter objects, which optimizers hold), their grads and buffers."""
        with no_grad():
            for m in self.modules():
                for p in m._parameters.values():
                    if p is None or p.device == dev:
                        continue
                    p.data = p.data.to(dev)
                    if p.grad is not None:
                        p.grad = p.grad.to(dev)
                for name, b in m._buffers.items():
                    if b is not None and b.device != dev:
                        m._buffers[name] = b.to(dev)
        return self

    def cpu(self):
        return self._apply_device(as_device("cpu"))

    def cuda(self, device=None):
        return self._apply_device(as_device("cuda" if device is None else f"cuda:{device}" if isinstance(device, int)
                                            else device))

    # ---- hooks and calling --------------------------------------------------------------
    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """``hook(module, args)`` (or ``(module, args, kwargs)`` with_kwargs) runs before forward; a
        non-None return replaces the inputs."""
        return _add_hook(self._forward_pre_hooks, self._forward_pre_hooks_with_kwargs, hook, prepend, with_kwargs)

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False):
        """``hook(module, args, output)`` (or ``(module, args, kwargs, output)``) runs after forward; a
        non-None return replaces the output."""
        return _add_hook(self._forward_hooks, self._forward_hooks_with_kwargs, hook, prepend, with_kwargs)

    def __call__(self, *args, **kwargs):
        if not self._forward_pre_hooks and not self._forward_hooks:
            return self.forward(*args, **kwargs)
        for hid, hook in list(self._forward_pre_hooks.items()):
            if hid in self._forward_pre_hooks_with_kwargs:
                res = hook(self, args, kwargs)
                if res is not None:
                    if not (isinstance(res, tuple) and len(res) == 2):
                        raise RuntimeError(
                            f"forward pre-hook must return None or a tuple of (new_args, new_kwargs), but got {res!r}"
                        )
                    args, kwargs = res
            else:
                res = hook(self, args)
                if res is not None:
                    args = res if isinstance(res, tuple) else (res,)
        out = self.forward(*args, **kwargs)
        for hid, hook in list(self._forward_hooks.items()):
            if hid in self._forward_hooks_with_kwargs:
                res = hook(self, args, kwargs, out)
            else:
                res = hook(self, args, out)
            if res is not None:
                out = res
        return out

    # ---- printing -----------------------------------------------------------------------
    def _get_name(self):
        return type(self).__name__

    def extra_repr(self) -> str:
        """The text inside ``Name(...)`` for this module's own settings; layers override it."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_indent(repr(m), 2)}" for name, m in self._modules.items()]
        lines = extra_lines + child_lines
        if not lines:
            return self._get_name() + "()"
        if len(extra_lines) == 1 and not child_lines:
            return f"{self._get_name()}({extra_lines[0]})"
        return self._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name, default in (("_forward_hooks_with_kwargs", set), ("_forward_pre_hooks_with_kwargs", set),
                              ("_non_persistent_buffers_set", set)):
            if name not in self.__dict__:
                object.__setattr__(self, name, default())


def empty_parameter(*shape, device=None, dtype=None) -> Parameter:
    """An uninitialised floating Parameter for a layer's ``__init__`` (honours device=/dtype= factory kwargs)."""
    as_device(device)
    dt = _dt.as_dtype(dtype) if dtype is not None else _dt.default_float
    if not dt.is_floating_point:
        raise TypeError(f"layer parameters must be floating point, got dtype={dt}")
    return Parameter(Tensor._wrap(np.empty(shape, dt.np)))


def _add_hook(table, with_kwargs_ids, hook, prepend, with_kwargs):
    """Register ``hook`` in an ordered hook table; the handle removes it again."""
    handle = RemovableHandle(table)
    table[handle.id] = hook
    if with_kwargs:
        with_kwargs_ids.add(handle.id)
    if prepend:
        table.move_to_end(handle.id, last=False)
    return handle
