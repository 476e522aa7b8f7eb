"""The op registry: one entry per primitive op.

An entry has a stable ``name`` and ``version``, its attribute names and defaults, a shape rule,
a forward kernel per device, and (if differentiable) a backward. ``apply`` is the single path by
which every primitive runs: it checks devices, runs the device kernel on backend arrays, records
the autograd node, and reports the call to the tracing hook (``set_trace_hook``), so the tracer of
``ember.serialize`` records exactly these entries and its runtime can execute them.

Kernels take backend arrays (numpy on CPU) plus attributes as keyword arguments and return an
array, or a tuple of ``n_outputs`` arrays. A backward takes ``(ctx, *grad_outputs)`` (Tensors or
None) and returns one Tensor or None per input; it runs under ``no_grad`` and may call any op.
"""
from __future__ import annotations

import numpy as np

from ..autograd.grad_mode import is_grad_enabled
from ..autograd.node import Context, Node
from ..dtypes import _FROM_NP
from ..tensor import Tensor

_ndarray = np.ndarray


class OpDef:
    __slots__ = (
        "name", "version", "attrs", "shape", "backward", "kernels", "prepared", "n_outputs",
        "save_inputs", "save_outputs", "doc", "_bw_name",
    )

    def __init__(self, name, *, version=1, attrs=None, shape=None, n_outputs=1,
                 save_inputs=True, save_outputs=False, doc=""):
        self.name = name
        self.version = version
        self.attrs = dict(attrs or {})
        self.shape = shape
        self.backward = None
        self.kernels = {}
        self.prepared = {}  # device -> prepare(inputs, attrs): see ``prepared_kernel``
        self.n_outputs = n_outputs
        self.save_inputs = save_inputs
        self.save_outputs = save_outputs
        self.doc = doc
        self._bw_name = "".join(p.capitalize() for p in name.split("_")) + "Backward0"

    @property
    def differentiable(self) -> bool:
        return self.backward is not None

    def __repr__(self):
        return f"OpDef({self.name!r}, v{self.version}, devices={sorted(self.kernels)})"


_REGISTRY: dict[str, OpDef] = {}
_TRACE_HOOK = None


def register_op(name, **kw) -> OpDef:
    """Declare a primitive op. Returns the entry; attach kernels with ``@kernel(name)`` and
    the gradient with ``@backward(name)``."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already registered")
    op = OpDef(name, **kw)
    _REGISTRY[name] = op
    return op


def kernel(name, device="cpu"):
    def deco(fn):
        _REGISTRY[name].kernels[device] = fn
        return fn

    return deco


def prepared_kernel(name, device="cpu"):
    """Register ``prepare(inputs, attrs)`` for a runtime that calls the op many times with the same constant
    inputs (weights): ``inputs`` lists the constant arrays and None for the values computed per call; it returns
    a function of those per-call values alone (the constants' preprocessing done once, like ONNX Runtime's
    weight prepacking), or None where it cannot specialise. It must compute what the kernel computes."""
    def deco(fn):
        _REGISTRY[name].prepared[device] = fn
        return fn

    return deco


def backward(name):
    def deco(fn):
        _REGISTRY[name].backward = fn
        return fn

    return deco


def get_op(name) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(sorted(_REGISTRY))}") from None


def list_ops() -> list[str]:
    return sorted(_REGISTRY)


def set_trace_hook(hook):
    """Install ``hook(op, inputs, attrs, outputs)`` called after every op; returns the previous hook.
    Used by ``ember.serialize``'s tracer; pass None to remove."""
    global _TRACE_HOOK
    prev, _TRACE_HOOK = _TRACE_HOOK, hook
    return prev


def get_trace_hook():
    return _TRACE_HOOK


class OpContext(Context):
    """Context of a primitive op: ``ctx.inputs`` / ``ctx.outputs`` (those the op saves; None for the
    others), ``ctx.attrs``, ``ctx.needs_input_grad``, ``ctx.input_shapes``, ``ctx.input_dtypes``.
    Saved tensors are version-checked when read, so an in-place change after the forward is caught."""

    def __init__(self, attrs, needs=(), shapes=(), dtypes=()):
        Context.__init__(self, needs, shapes)
        self.attrs = attrs
        self.input_dtypes = dtypes
        self._n_in = 0

    @property
    def inputs(self):
        return self.saved_tensors[: self._n_in]

    @property
    def outputs(self):
        return self.saved_tensors[self._n_in:]


def apply(op, *inputs, **attrs):
    """Run primitive ``op`` (an OpDef or its name) on Tensor ``inputs``; returns a Tensor or a tuple."""
    if op.__class__ is str:
        op = get_op(op)
    arrays = [t._data for t in inputs]
    for a in arrays:
        if a.__class__ is not _ndarray:  # another device's array: check they all agree
            _check_devices(op, inputs)
            device_type = "cuda"
            break
    else:
        device_type = "cpu"
    if op.shape is not None:
        op.shape(*[a.shape for a in arrays], **attrs)
    fn = op.kernels.get(device_type)
    if fn is None:
        raise NotImplementedError(f"op {op.name!r} has no kernel for device {device_type!r}; it has: {sorted(op.kernels)}")
    out = fn(*arrays, **attrs)

    multi = op.n_outputs > 1
    outs = tuple([Tensor._wrap(a) for a in out]) if multi else (Tensor._wrap(out),)

    if op.backward is not None and is_grad_enabled():
        needs = tuple([t._requires_grad for t in inputs])
        if True in needs:
            _record(op, inputs, arrays, attrs, outs, needs)

    hook = _TRACE_HOOK
    if hook is not None:
        hook(op, inputs, attrs, outs)
    return outs if multi else outs[0]


def _record(op, inputs, arrays, attrs, outs, needs):
    """Attach the autograd node of one op application to its floating outputs. (Runs once per op application:
    list comprehensions rather than generator expressions, a few us less per op.)"""
    ctx = OpContext(attrs, needs, tuple([a.shape for a in arrays]), tuple([_FROM_NP[a.dtype] for a in arrays]))
    si = op.save_inputs
    if si is True:
        saved = inputs
    elif si is False:
        saved = ()
    else:
        saved = tuple([t if i in si else None for i, t in enumerate(inputs)])
    ctx._n_in = len(saved)
    so = op.save_outputs
    if so:
        # aliases, not the outputs themselves: no output -> node -> output reference cycle
        saved = saved + tuple([_alias(o) if so is True or i in so else None for i, o in enumerate(outs)])
    if saved:
        ctx._save(saved)
    node = Node(op._bw_name, op.backward, ctx, tuple([_edge(t) for t in inputs]), op.n_outputs)
    for i, o in enumerate(outs):
        if o._data.dtype.kind == "f":
            o._requires_grad = True
            o.grad_fn = node
            o._out_idx = i


def _check_devices(op, inputs):
    """All inputs on one device; a 0-d CPU tensor (a python scalar operand) may join CUDA tensors, as in torch."""
    dev = None
    for t in inputs:
        if t._data.__class__ is not _ndarray:
            dev = t.device
            break
    for t in inputs:
        if t.device != dev and not (t._data.__class__ is _ndarray and t._data.ndim == 0):
            raise RuntimeError(
                f"{op.name}: expected all tensors to be on the same device, but found at least two devices, "
                f"{dev} and {t.device}"
            )


def _alias(t):
    a = Tensor._wrap(t._data)
    a._vbox = t._vbox  # shares the version counter, so in-place changes to the output are caught
    return a


def _edge(t):
    if not t._requires_grad:
        return None
    if t.grad_fn is None:
        return t
    return (t.grad_fn, t._out_idx)
