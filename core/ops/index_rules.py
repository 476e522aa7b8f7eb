"""Shape rules of the indexing ops (getitem, index, index_put, getitem_backward) in plain Python, and
the rewrite of boolean masks into integer positions that keeps those rules static.

Items are encoded as described in ``index.py``. Index tensors reaching the ``index`` op are integer
arrays: getitem/setitem turn boolean masks into their nonzero positions first, so the only
data-dependent shape in indexing is ``nonzero``'s. The rules follow numpy's advanced indexing, which
the kernels use: integer items join the advanced indices when there is a tensor, and the broadcast
index shape replaces them in place when they are adjacent, else it comes first.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor
from .registry import apply
from .util import broadcast_shapes

TENSOR, ELLIPSIS = "tensor", "..."


def check_index_items(shape, items, used, op_name="getitem"):
    """torch's errors for an index using ``used`` dims (ellipsis count, too many indices)."""
    n_ell = 0
    for it in items:
        if it == ELLIPSIS:
            n_ell += 1
    if n_ell > 1:
        raise IndexError(f"{op_name}: an index can only have a single ellipsis ('...')")
    ndim = len(shape)
    if used > ndim:
        if ndim == 0:
            raise IndexError(
                f"{op_name}: invalid index of a 0-dim tensor. Use `tensor.item()` to convert a 0-dim tensor to a number"
            )
        raise IndexError(f"{op_name}: too many indices for tensor of dimension {ndim} (shape {tuple(shape)})")


def oob(k, d, n, op_name=None):
    msg = f"index {k} is out of bounds for dimension {d} with size {n}"
    return IndexError(f"{op_name}: {msg}" if op_name else msg)


def slice_length(n, start, stop, step):
    """len(range(n)[start:stop:step]) with Python arithmetic only (slice.indices would need an int)."""
    step = 1 if step is None else step
    if start is None:
        start = 0
    elif start < 0:
        start = max(start + n, 0)
    else:
        start = min(start, n)
    if stop is None:
        stop = n
    elif stop < 0:
        stop = max(stop + n, 0)
    else:
        stop = min(stop, n)
    return max(stop - start + step - 1, 0) // step


def used_dims(items, arrays):
    """How many dims of the indexed tensor an index uses (a mask uses its ndim)."""
    used, k = 0, 0
    for it in items:
        if it == TENSOR:
            a = arrays[k]
            used += a.ndim if a.dtype == np.bool_ else 1
            k += 1
        elif it is not None and it != ELLIPSIS:
            used += 1
    return used


def masks_to_positions(x, items, tensors, op_name):
    """Replace boolean mask indices by their nonzero positions (numpy's definition of a mask index), so
    the index op sees integer tensors and has a static shape rule; returns (x, items, tensors).
    A 0-d mask adds a dim of size 1 that a [0] (True) or [] (False) position indexes."""
    arrays = [t._data for t in tensors]
    used = used_dims(items, arrays)
    check_index_items(x.shape, items, used, op_name)
    new_items, new_tensors, d, k = [], [], 0, 0
    for it in items:
        if it != TENSOR:
            new_items.append(it)
            if it == ELLIPSIS:
                d += x.ndim - used
            elif it is not None:
                d += 1
            continue
        t, a = tensors[k], arrays[k]
        k += 1
        if a.dtype != np.bool_:
            new_items.append(it)
            new_tensors.append(t)
            d += 1
        elif a.ndim == 0:
            x = x.reshape(x.shape[:d] + (1,) + x.shape[d:])
            new_items.append(TENSOR)
            keep = bool(a) if a.__class__ is np.ndarray else bool(t.item())
            new_tensors.append(Tensor._wrap(np.zeros(1 if keep else 0, np.int64)).to(x.device))
            d += 1
        else:
            if a.shape != x.shape[d:d + a.ndim]:
                raise IndexError(
                    f"{op_name}: the shape of the mask {a.shape} at index {d} does not match the shape "
                    f"{tuple(x.shape[d:d + a.ndim])} of the indexed tensor (shape {x.shape}) at index {d}"
                )
            nz = apply("nonzero", t)
            new_items.extend([TENSOR] * a.ndim)
            new_tensors.extend(apply("getitem", nz, index=((None, None, None), j)) for j in range(a.ndim))
            d += a.ndim
    return x, tuple(new_items), new_tensors


def index_shape(x, *t_shapes, index):
    """Output shape of ``x[index]`` for a tensor of shape ``x`` and integer index tensors of ``t_shapes``."""
    used = 0
    for it in index:
        if it is not None and it != ELLIPSIS:
            used += 1
    check_index_items(x, index, used)
    advanced = bool(t_shapes)
    out, adv, k, d = [], [], 0, 0
    insert_at, last, split = None, None, False
    for pos, it in enumerate(index):
        if it is None:
            out.append(1)
            continue
        if it == ELLIPSIS:
            n = len(x) - used
            out.extend(x[d:d + n])
            d += n
            continue
        if it == TENSOR:
            adv.append(t_shapes[k])
            k += 1
        elif it.__class__ is tuple or it.__class__ is list:
            out.append(slice_length(x[d], *it))
            d += 1
            continue
        else:
            n = x[d]
            if not -n <= it < n:
                raise oob(it, d, n)
            if not advanced:
                d += 1
                continue
            adv.append(())
        # an advanced item (tensor, or int among tensors)
        if insert_at is None:
            insert_at = len(out)
        elif last != pos - 1:
            split = True
        last = pos
        d += 1
    out.extend(x[d:])
    if not advanced:
        return tuple(out)
    b = adv[0] if len(adv) == 1 else broadcast_shapes("index", *adv)
    if split:
        return tuple(b) + tuple(out)
    return tuple(out[:insert_at]) + tuple(b) + tuple(out[insert_at:])


def index_put_shape(x, value, *t_shapes, index):
    """``x[index] = value`` out of place: x's shape (the kernel checks that value broadcasts)."""
    return tuple(x)


def getitem_backward_shape(g, *t_shapes, index, shape):
    """The gradient of ``x[index]`` has x's shape, given as the ``shape`` attribute."""
    return tuple(shape)
