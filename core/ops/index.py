"""Indexing: ``x[index]``, ``x[index] = value`` and select.

An index is stored in op attributes as plain data (the tracer writes attributes as JSON): a tuple
with one entry per index item,

    int k              select position k of the next dim (negative counts from the end)
    (start, stop, step) a slice; entries may be None; step > 0 (torch has no negative steps)
    None               insert a new dim of size 1
    "..."              Ellipsis
    "tensor"           the next of the op's extra tensor inputs: an integer index or a boolean mask

Tensor indices are op inputs after the indexed tensor, in the order their "tensor" markers appear.
A pure basic index (no tensors) is the ``getitem`` op (a view); any tensor index makes it the
``index`` op (numpy advanced-indexing semantics, which torch shares).
"""
from __future__ import annotations

import numpy as np

from ..autograd.grad_mode import is_grad_enabled
from .. import _hooks
from ..tensor import Tensor
from ..backends.cpu import index_kernels
from .registry import apply, backward, kernel, register_op
from .index_rules import (ELLIPSIS, TENSOR, check_index_items, getitem_backward_shape, index_put_shape, index_shape,
                          masks_to_positions, used_dims)
from .index_rules import oob as _oob
from .util import as_size, norm_dim, unbroadcast

_FULL = (None, None, None)


# ---- encoding: python index -> (items, tensors) -------------------------------------------------

def _as_index_tensor(a, op_name) -> Tensor:
    if isinstance(a, Tensor):
        kind = a._data.dtype.kind
    else:
        arr = np.asarray(a)
        if arr.size == 0 and arr.dtype.kind == "f":  # x[[]] means an empty integer index
            arr = arr.astype(np.int64)
        kind = arr.dtype.kind
        a = Tensor._wrap(arr)
    if kind not in "biu":
        raise IndexError(
            f"{op_name}: tensors used as indices must be long, int, byte or bool tensors, got {a.dtype} "
            f"(shape {a.shape})"
        )
    if a._data.dtype == np.uint8:  # torch reads uint8 indices as masks
        a = Tensor._wrap(a._data.astype(bool)) if a._data.__class__ is np.ndarray else a.detach() != 0
    return a


def _slice_item(s, op_name):
    start, stop, step = (None if v is None else as_size(v) for v in (s.start, s.stop, s.step))
    if step is not None and step <= 0:
        raise ValueError(
            f"{op_name}: step must be greater than zero, got slice step {step} (negative steps are not supported, "
            f"as in torch; use flip())"
        )
    return (start, stop, step)


def encode_index(index, op_name="getitem"):
    """Split a python index into (items, tensors) as described in the module docstring."""
    if index.__class__ is int:
        return (index,), []
    if not isinstance(index, tuple):
        index = (index,)
    items, tensors = [], []
    for it in index:
        if it is None:
            items.append(None)
        elif it is Ellipsis:
            items.append(ELLIPSIS)
        elif isinstance(it, slice):
            items.append(_slice_item(it, op_name))
        elif isinstance(it, (bool, np.bool_)):
            items.append(TENSOR)
            tensors.append(Tensor._wrap(np.asarray(bool(it))))
        elif isinstance(it, (int, np.integer)):
            items.append(as_size(it))
        elif isinstance(it, (Tensor, list, tuple, np.ndarray)):
            items.append(TENSOR)
            tensors.append(_as_index_tensor(it, op_name))
        else:
            raise IndexError(
                f"{op_name}: only integers, slices (`:`), ellipsis (`...`), None and integer or boolean tensors are "
                f"valid indices, got {type(it).__name__}"
            )
    return tuple(items), tensors


# ---- decoding: items + arrays -> numpy index, with torch's checks --------------------------------

def check_int_index(a, d, n, op_name=None, allow_negative=True):
    """Raise torch's out-of-bounds error for integer array ``a`` indexing a dim of size ``n``."""
    if a.size == 0:
        return
    lo, hi = int(a.min()), int(a.max())
    if hi >= n:
        raise _oob(hi, d, n, op_name)
    if lo < (-n if allow_negative else 0):
        raise _oob(lo, d, n, op_name)


def numpy_index(shape, items, arrays, op_name="getitem"):
    """The numpy index tuple for ``items`` on a tensor of ``shape``; raises torch-style errors."""
    ndim = len(shape)
    used, n_ell = used_dims(items, arrays), ELLIPSIS in items
    check_index_items(shape, items, used, op_name)
    out, d, k = [], 0, 0
    for it in items:
        if it is None:
            out.append(None)
        elif it == ELLIPSIS:
            out.append(Ellipsis)
            d += ndim - used
        elif it == TENSOR:
            a = arrays[k]
            k += 1
            if a.dtype == np.bool_:
                if a.shape != tuple(shape[d:d + a.ndim]):
                    raise IndexError(
                        f"{op_name}: the shape of the mask {a.shape} at index {d} does not match the shape "
                        f"{tuple(shape[d:d + a.ndim])} of the indexed tensor (shape {tuple(shape)}) at index {d}"
                    )
                d += a.ndim
            else:
                check_int_index(a, d, shape[d])
                d += 1
            out.append(a)
        elif isinstance(it, (tuple, list)):
            out.append(slice(*it))
            d += 1
        else:
            if not -shape[d] <= it < shape[d]:
                raise _oob(it, d, shape[d])
            out.append(it)
            d += 1
    if not n_ell:
        out.append(Ellipsis)  # keeps x[0] on a 1-D array a 0-d view instead of a numpy scalar copy
    return tuple(out)


# ---- getitem (basic, a view) and index (advanced) -------------------------------------------------

_getitem = register_op("getitem", attrs={"index": ()}, shape=index_shape, save_inputs=False,
                       doc="basic indexing: ints, slices, None, Ellipsis (a view)")
_index = register_op("index", attrs={"index": ()}, shape=index_shape,
                     doc="advanced indexing: integer tensor indices mixed with basic items (masks become positions)")


@kernel("getitem")
@kernel("index")
def _getitem_cpu(x, *tensors, index):
    return x[numpy_index(x.shape, index, tensors)]


@backward("getitem")
def _getitem_bw(ctx, g):
    return (apply(_getitem_backward, g, index=ctx.attrs["index"], shape=ctx.input_shapes[0]),)


@backward("index")
def _index_bw(ctx, g):
    tensors = ctx.inputs[1:]
    gx = None
    if ctx.needs_input_grad[0]:
        gx = apply(_getitem_backward, g, *tensors, index=ctx.attrs["index"], shape=ctx.input_shapes[0])
    return (gx,) + (None,) * len(tensors)


_getitem_backward = register_op(
    "getitem_backward", attrs={"index": (), "shape": ()}, shape=getitem_backward_shape,
    doc="gradient of x[index]: g written (basic) or summed (advanced) into zeros of x's shape")


@kernel("getitem_backward")
def _getitem_backward_cpu(g, *tensors, index, shape):
    out = np.zeros(shape, dtype=g.dtype)
    idx = numpy_index(shape, index, tensors)
    if not tensors:
        out[idx] = g
        return out
    rows = _single_int_index(shape, index, tensors)
    if rows is not None:  # x[..., i, ...] with one integer tensor: a row scatter (embedding gradients)
        d, a = rows
        index_kernels.index_add(out, d, np.where(a < 0, a + shape[d], a).reshape(-1),
                                g.reshape(g.shape[:d] + (a.size,) + g.shape[d + a.ndim:]))
    else:
        np.add.at(out, idx, g)
    return out


@backward("getitem_backward")
def _getitem_backward_bw(ctx, gg):
    tensors = ctx.inputs[1:]
    op = _index if tensors else _getitem
    return (apply(op, gg, *tensors, index=ctx.attrs["index"]),) + (None,) * len(tensors)


def _single_int_index(shape, items, arrays):
    """(dim, array) when the index is full slices around exactly one integer array, else None."""
    if len(arrays) != 1 or arrays[0].dtype == np.bool_:
        return None
    pos = items.index(TENSOR)
    for i, it in enumerate(items):
        full = isinstance(it, (tuple, list)) and tuple(it) == _FULL
        if i != pos and it != ELLIPSIS and not full:
            return None
    d = pos if ELLIPSIS not in items[:pos] else len(shape) - (len(items) - pos)
    return d, arrays[0]


def _on_device_of(x: Tensor, tensors):
    """Index tensors built from python lists / numpy arrays live on the CPU: move them to a CUDA ``x``'s device."""
    if not tensors or not x.is_cuda:
        return tensors
    return [t if t.device == x.device else t.to(x.device) for t in tensors]


def getitem(x: Tensor, index) -> Tensor:
    items, tensors = encode_index(index)
    tensors = _on_device_of(x, tensors)
    if tensors:
        if any(t._data.dtype == np.bool_ for t in tensors):
            x, items, tensors = masks_to_positions(x, items, tensors, "getitem")
        return getitem_items(x, items, tensors)
    out = apply(_getitem, x, index=items)
    out._vbox = x._vbox  # a view shares its base's version counter, as in torch
    return out


def getitem_items(x: Tensor, items, tensors) -> Tensor:
    """``x[index]`` from encoded items and integer index tensors."""
    if tensors:
        return apply(_index, x, *tensors, index=items)
    out = apply(_getitem, x, index=items)
    out._vbox = x._vbox
    return out


def select(x: Tensor, dim: int, index: int) -> Tensor:
    """``x`` at position ``index`` of ``dim``, without that dim (torch.select)."""
    d = norm_dim(dim, x.ndim, "select")
    n = x.shape[d]
    if not -n <= index < n:
        raise IndexError(f"select: index {index} is out of bounds for dimension {d} with size {n} (shape {x.shape})")
    out = apply(_getitem, x, index=(_FULL,) * d + (as_size(index),))
    out._vbox = x._vbox
    return out


# ---- setitem / index_put --------------------------------------------------------------------------

_index_put = register_op("index_put", attrs={"index": ()}, shape=index_put_shape,
                         doc="out-of-place x[index] = value (value broadcast); backs setitem under autograd")


@kernel("index_put")
def _index_put_cpu(x, value, *tensors, index):
    out = np.array(x, copy=True)
    idx = numpy_index(x.shape, index, tensors, "setitem")
    try:
        out[idx] = value
    except ValueError:
        raise RuntimeError(
            f"setitem: shape mismatch: value tensor of shape {value.shape} cannot be broadcast to indexing result "
            f"of shape {x[idx].shape}"
        ) from None
    return out


@backward("index_put")
def _index_put_bw(ctx, g):
    tensors, index = ctx.inputs[2:], ctx.attrs["index"]
    op = _index if tensors else _getitem
    gx = gv = None
    if ctx.needs_input_grad[0]:
        zero = Tensor._wrap(np.zeros((), dtype=g._data.dtype))
        gx = apply(_index_put, g, zero, *tensors, index=index)
    if ctx.needs_input_grad[1]:
        if any(t._data.dtype == np.bool_ for t in tensors):
            gv = getitem_items(*masks_to_positions(g, index, tensors, "setitem"))
        else:
            gv = apply(op, g, *tensors, index=index)
        vshape = ctx.input_shapes[1]
        extra = len(vshape) - gv.ndim  # numpy lets the value carry extra leading 1s
        gv = unbroadcast(gv, vshape[extra:]).reshape(vshape) if extra > 0 else unbroadcast(gv, vshape)
    return (gx, gv) + (None,) * len(tensors)


def _value_tensor(value, dtype, op_name):
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float, bool, np.number, np.bool_)):
        return Tensor._wrap(np.asarray(value, dtype=dtype.np))
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{op_name}: can't assign a {type(value).__name__} to a {dtype} tensor")
    return Tensor._wrap(arr.astype(dtype.np))


def _private_version(t: Tensor) -> Tensor:
    """The same data and autograd position under a private version counter.

    index_put saves its inputs but its backward reads only the index tensors; x, or a view of x
    used as the value (``y[0] *= 2``), is written right after, which must not trip the saved-tensor
    version check. A leaf keeps its identity: its gradient accumulates into it.
    """
    if t.requires_grad and t.grad_fn is None:
        return t
    h = Tensor._wrap(t._data)
    h._requires_grad, h.grad_fn, h._out_idx = t._requires_grad, t.grad_fn, t._out_idx
    return h


def setitem(x: Tensor, index, value) -> None:
    """``x[index] = value``: in place; under autograd through ``Tensor._inplace`` and ``index_put``."""
    items, tensors = encode_index(index, "setitem")
    tensors = _on_device_of(x, tensors)
    v = _value_tensor(value, x.dtype, "setitem")
    if is_grad_enabled() and (x.requires_grad or v.requires_grad):
        if v.dtype != x.dtype:
            v = v.to(x.dtype)

        def compute(src):
            return apply(_index_put, _private_version(src), _private_version(v), *tensors, index=items)

        x._inplace(compute)
        return
    if _hooks.setitem is not None:
        _hooks.setitem(x, items, v, tensors)
    if x.is_cuda:  # out of place on the device, then copied into x's own buffer (reshapes of x see it)
        v = v.to(device=x.device, dtype=x.dtype)
        x._data[...] = apply(_index_put, x, v, *tensors, index=items)._data
        x._bump_version()
        return
    if not x._data.flags.writeable:
        raise RuntimeError(
            "setitem: unsupported operation: the written-to tensor is read-only memory (e.g. an expand()ed tensor, "
            f"where several elements share one location; shape {x.shape}); clone() the tensor first"
        )
    idx = numpy_index(x.shape, items, [t._data for t in tensors], "setitem")
    try:
        x._data[idx] = v._data
    except ValueError:
        raise RuntimeError(
            f"setitem: shape mismatch: value tensor of shape {v.shape} cannot be broadcast to indexing result of "
            f"shape {x._data[idx].shape}"
        ) from None
    x._bump_version()


def _iter(x: Tensor):
    if x.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    return iter([select(x, 0, i) for i in range(x.shape[0])])


Tensor.__getitem__ = getitem
Tensor.__iter__ = _iter
Tensor.select = select

__all__ = ["select"]

# The rest of the index family: masked.py (masked_fill, masked_select, nonzero) and gather.py
# (gather, scatter, index_select, index_add, one_hot); importing them here registers them.
from .masked import *  # noqa: E402,F401,F403
from .masked import __all__ as _masked_all  # noqa: E402
from .gather import *  # noqa: E402,F401,F403
from .gather import __all__ as _gather_all  # noqa: E402

__all__ += _masked_all + _gather_all
