"""Containers: ``Sequential`` (a pipeline), ``ModuleList`` and ``ModuleDict`` (registered collections)."""
from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..ops.conv_pool import conv2d_maxpool
from ..ops.linear_relu import fusable, linear_relu
from ..ops.registry import get_trace_hook
from .activation import ReLU
from .conv import Conv2d
from .linear import Linear
from .module import Module, _indent
from .pooling import MaxPool2d


def _index(idx, n, what):
    """Normalise an int index against length ``n`` with torch's error text."""
    idx = operator.index(idx)
    if not -n <= idx < n:
        raise IndexError(f"index {idx} is out of range for {what} of length {n}")
    return idx % n


class Sequential(Module):
    """Runs its modules in order, each output feeding the next: ``Sequential(Linear(4, 8), ReLU())``
    or ``Sequential(OrderedDict(fc=..., act=...))``."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), module)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self.__class__(OrderedDict(list(self._modules.items())[idx]))
        keys = list(self._modules)
        return self._modules[keys[_index(idx, len(keys), "Sequential")]]

    def __setitem__(self, idx, module):
        keys = list(self._modules)
        setattr(self, keys[_index(idx, len(keys), "Sequential")], module)

    def __delitem__(self, idx):
        keys = list(self._modules)
        if isinstance(idx, slice):
            for k in keys[idx]:
                del self._modules[k]
        else:
            del self._modules[keys[_index(idx, len(keys), "Sequential")]]
        # keep the string keys consecutive, as torch does
        items = list(self._modules.items())
        if all(k.isdigit() for k, _ in items):
            self._modules.clear()
            self._modules.update((str(i), m) for i, (_, m) in enumerate(items))

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __add__(self, other):
        if not isinstance(other, Sequential):
            raise ValueError(f"add operator supports only objects of Sequential class, but {type(other).__name__} is given.")
        return Sequential(*self, *other)

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        if not isinstance(module, Module):
            raise AssertionError(f"module should be of type: Module, got {type(module).__name__}")
        n = len(self._modules)
        if not -n <= index <= n:
            raise IndexError(f"Index out of range: {index} (Sequential of length {n})")
        if index < 0:
            index += n
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        self._modules.update((str(i), m) for i, m in enumerate(mods))
        return self

    def pop(self, key):
        v = self[key]
        del self[key]
        return v

    def forward(self, input):
        modules = list(self._modules.values())
        i, n = 0, len(modules)
        while i < n:
            m = modules[i]
            if m.__class__ is Conv2d and i + 1 < n:
                span = _conv_pool_span(m, modules[i + 1:i + 3], input)
                if span:
                    left, _, top, _ = m._reversed_padding_repeated_twice
                    input = conv2d_maxpool(input, m.weight, m.bias, m.stride, (top, left), m.dilation, m.groups,
                                           relu=span == 3)  # (the ReLU on the pooled output)
                    i += span
                    continue
            if m.__class__ is Linear and i + 1 < n and _linear_then_relu(m, modules[i + 1], input):
                input = linear_relu(input, m.weight, m.bias)
                i += 2
                continue
            if i + 1 < n and m.__class__ is ReLU and _pool_first(m, modules[i + 1]):
                input = m(modules[i + 1](input))
                i += 2
            else:
                input = m(input)
                i += 1
        return input


def _pool_first(relu, pool) -> bool:
    """Whether ``ReLU`` then ``MaxPool2d`` may run as the pool, then the ReLU on its 4x smaller output.

    max_pool(relu(x)) == relu(max_pool(x)) exactly (NaN included), and so are the input gradients: where a
    window's max is positive its argmax is the same element either way, and where it is <= 0 (or NaN) both
    orders give a zero gradient; so only the work differs (in the cnn's training step the two full-size
    ReLU passes cost ~0.5-0.9 ms of ~6 ms). Not when the modules have hooks (they would see other tensors),
    the pool returns indices (they may differ where a window's max is <= 0), or a tracer records the ops
    (the runtime fuses the conv -> relu -> pool order)."""
    return (pool.__class__ is MaxPool2d and not pool.return_indices and get_trace_hook() is None
            and not (relu._forward_hooks or relu._forward_pre_hooks or pool._forward_hooks
                     or pool._forward_pre_hooks))


def _linear_then_relu(linear, relu, x) -> bool:
    """Whether ``Linear`` then ``ReLU`` may run as one ``linear_relu`` op (ops/linear_relu.py: the same values and
    gradients with two passes over memory and two ops fewer per step). Not when the modules have hooks (they would
    see other tensors), a tracer records the ops (files hold linear and relu; the runtime fuses them itself), or the
    input is not a 2-d float32/float64 CPU tensor."""
    return (relu.__class__ is ReLU and get_trace_hook() is None and fusable(x, linear.weight, linear.bias)
            and not _hooked(linear, relu))


def _hooked(*modules) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _both(v, want) -> bool:
    """An int or int pair setting of a pooling module that is ``want`` in both dims."""
    return v == want or (isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1] == want)


def _plain_pool2(pool) -> bool:
    """A MaxPool2d with a 2x2 window, stride 2, no padding / dilation / ceil mode / returned indices."""
    return (pool.__class__ is MaxPool2d and _both(pool.kernel_size, 2) and _both(pool.stride, 2)
            and _both(pool.padding, 0) and _both(pool.dilation, 1) and not pool.ceil_mode and not pool.return_indices)


def _conv_pool_span(conv, following, x) -> int:
    """3 when ``Conv2d`` -> ``ReLU`` -> ``MaxPool2d(2)``, 2 when ``Conv2d`` -> ``MaxPool2d(2)`` may run as one
    ``conv2d_maxpool`` (then the ReLU on the pooled output), else 0.

    The same values and gradients as the modules one by one (max pooling and ReLU commute, and the op's argmax is
    max_pool2d's), for less work: the tiles pool each image's conv result while it is in cache, so the full-size
    output is never written, read back and scattered into (cnn training step on CPU: conv2d + max_pool2d forward
    and backward ~4.5 ms of ~7). Only for a 4-d float32 CPU input and a zero-padded (symmetrically) convolution;
    not with hooks on any of the modules (they would see other tensors) nor while a tracer records ops (the
    runtime fuses the standard ops itself)."""
    if not following or get_trace_hook() is not None:
        return 0
    span = 2
    if following[0].__class__ is ReLU:
        if len(following) < 2:
            return 0
        span = 3
    pool = following[span - 2]
    if not _plain_pool2(pool) or _hooked(conv, pool, *following[:span - 2]):
        return 0
    data = getattr(x, "_data", None)
    if (data.__class__ is not np.ndarray or data.ndim != 4 or data.dtype != np.float32
            or conv.weight._data.dtype != np.float32 or conv.padding_mode != "zeros"):
        return 0
    if conv.weight._data.__class__ is not np.ndarray:
        return 0
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    if left != right or top != bottom or data.shape[1] != conv.in_channels:
        return 0
    for size, p, d, k, st in zip(data.shape[2:], (top, left), conv.dilation, conv.kernel_size, conv.stride):
        if (size + 2 * p - d * (k - 1) - 1) // st + 1 < 2:  # (the modules one by one say what is wrong)
            return 0
    return span


class ModuleList(Module):
    """A list of modules that registers them (so their parameters are found); has no forward."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self.__class__(list(self._modules.values())[idx])
        return self._modules[str(_index(idx, len(self), "ModuleList"))]

    def __setitem__(self, idx, module):
        setattr(self, str(_index(idx, len(self), "ModuleList")), module)

    def __delitem__(self, idx):
        if isinstance(idx, slice):
            for k in range(len(self))[idx]:
                del self._modules[str(k)]
        else:
            del self._modules[str(_index(idx, len(self), "ModuleList"))]
        mods = list(self._modules.values())
        self._modules.clear()
        self._modules.update((str(i), m) for i, m in enumerate(mods))

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules):
        return self.extend(modules)

    def __add__(self, other):
        return ModuleList(list(self) + list(other))

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        if isinstance(modules, (Module, Mapping)) or not hasattr(modules, "__iter__"):
            raise TypeError(f"ModuleList.extend should be called with an iterable, but got {type(modules).__name__}")
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def pop(self, key=-1):
        v = self[key]
        del self[key]
        return v

    def __repr__(self):
        # torch compresses runs of identical children: "(0-2): 3 x Linear(...)"
        reprs = [repr(m) for m in self]
        if not reprs:
            return self._get_name() + "()"
        runs = []  # [first_index, last_index, text]
        for i, r in enumerate(reprs):
            if runs and runs[-1][2] == r:
                runs[-1][1] = i
            else:
                runs.append([i, i, r])
        lines = []
        for first, last, r in runs:
            text = f"({first}): {r}" if first == last else f"({first}-{last}): {last - first + 1} x {r}"
            lines.append(_indent(text, 2))
        return self._get_name() + "(\n  " + "\n  ".join(lines) + "\n)"


class ModuleDict(Module):
    """A dict of modules (insertion-ordered) that registers them; has no forward."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def clear(self):
        self._modules.clear()

    def pop(self, key):
        v = self[key]
        del self[key]
        return v

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def update(self, modules):
        if isinstance(modules, (Mapping, ModuleDict)):
            for k, m in modules.items():
                self[k] = m
            return
        for j, pair in enumerate(modules):
            if len(pair) != 2:
                raise ValueError(f"ModuleDict update sequence element #{j} has length {len(pair)}; 2 is required")
            self[pair[0]] = pair[1]
