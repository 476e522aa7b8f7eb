"""The plan of a numpy-style index, shared by the CUDA index kernels: ``index`` / ``index_put``
(index_kernels.py) and ``getitem`` / ``getitem_backward`` (getitem_kernels.py).

An index (encoded as in ``ops/index.py``: ints, slices as tuples, None, Ellipsis, TENSOR for an index tensor) is
planned on the host into a base offset plus, per selected dim, a stride into ``x`` (basic items) and a stride into
the broadcast shape of the index tensors (advanced items). A basic index is then one ``launch.strided_copy``. With
index tensors, ``offsets`` sums on the device, one launch per tensor, each tensor's (wrapped) position times its
dim's stride over their broadcast shape, and selected element ``i`` lies at ``plan_pos`` in ``x``. Index values
are not range-checked on the host (that would sync): an out-of-range one makes the position negative, so the
kernels read 0 or drop the element.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...ops.index_rules import ELLIPSIS, TENSOR
from .array import CudaArray
from .kernel import jit
from .launch import MAXD, TPB, blocks, bstrides, device_fn, full, pad_shape, strided_offset
from .shape_kernels import _cstrides, _padded

_BAD = -(1 << 58)  # added to a flat offset whose index is out of range: the sum stays negative


def check_nd(shape, op):
    if len(shape) > MAXD:
        raise NotImplementedError(f"{op} on CUDA supports at most {MAXD} dims, got shape {tuple(shape)}")


def plan(shape, items, arrays):
    """numpy's indexing of a tensor of ``shape`` by ``items`` as ``(sel, xs, ls, base, adv)``: the selected shape,
    per selected dim the stride into x and the stride into the index tensors' broadcast shape, the base offset,
    and ``adv``, None for a basic index, else ``(broadcast shape, [(index array, x stride, dim size)])`` for
    ``offsets``. A 0-d host array among ``arrays`` (a CPU scalar tensor) acts as an int, as do ints among index
    tensors. Mirrors ``index_rules.index_shape``, which has already checked the index."""
    ndim, xst = len(shape), _cstrides(shape)
    used = sum(1 for it in items if it is not None and it != ELLIPSIS)
    basic, adv = [], []  # basic: (size, x stride) per selected dim; adv: (index array or int, x dim)
    base, d, k, insert_at, last, split = 0, 0, 0, None, None, False
    for pos, it in enumerate(items):
        if it is None:
            basic.append((1, 0))
            continue
        if it == ELLIPSIS:
            basic.extend((shape[j], xst[j]) for j in range(d, d + ndim - used))
            d += ndim - used
            continue
        if it.__class__ in (tuple, list):
            start, stop, step = slice(*it).indices(shape[d])
            basic.append((len(range(start, stop, step)), step * xst[d]))
            base += start * xst[d]
            d += 1
            continue
        if it == TENSOR:
            a = arrays[k]
            k += 1
            adv.append((a if isinstance(a, CudaArray) else int(a), d))
        elif not arrays:
            base += (it % shape[d]) * xst[d]
            d += 1
            continue
        else:
            adv.append((it, d))
        # numpy puts the broadcast index dims at the first advanced item if those are adjacent, else in front
        if insert_at is None:
            insert_at = len(basic)
        elif last != pos - 1:
            split = True
        last = pos
        d += 1
    basic.extend((shape[j], xst[j]) for j in range(d, ndim))
    ls = [0] * len(basic)
    tensors = []
    for a, dd in adv:
        if isinstance(a, CudaArray):
            tensors.append((a, xst[dd], shape[dd]))
        else:
            base += (a % shape[dd]) * xst[dd]  # the shape rules checked the range of python ints
    bshape = tuple(np.broadcast_shapes(*[a.shape for a, _, _ in tensors]))
    if adv:
        at = 0 if split else insert_at
        basic[at:at] = [(s, 0) for s in bshape]
        ls[at:at] = _cstrides(bshape)
    sel = tuple(s for s, _ in basic)
    check_nd(sel, "indexing")
    return sel, [x for _, x in basic], ls, base, (bshape, tensors) if adv else None


@jit
def _add_offsets_k(idx, lin, m, shape, st, xstride, n):
    i = cuda.grid(1)
    if i < m:
        v = idx[strided_offset(i, shape, st, 0)]
        if v < 0:
            v += n
        lin[i] += v * xstride if 0 <= v < n else _BAD


def offsets(adv):
    """The int64 flat offsets of the index tensors over their broadcast shape (a single 0 for a basic index)."""
    bshape, tensors = adv if adv is not None else ((), ())
    lin = full(bshape, 0, np.int64)
    if lin.size:
        for a, xstride, n in tensors:
            if a.dtype.kind not in "iu":
                raise NotImplementedError(
                    f"CUDA indexing takes integer index tensors, got {a.dtype}; boolean masks are turned into "
                    f"positions (nonzero) by getitem before they reach the kernel")
            _add_offsets_k[blocks(lin.size), TPB](a.d, lin.d, lin.size, pad_shape(bshape), bstrides(a.shape, bshape),
                                                  xstride, n)
    return lin


def pos_args(sel, xs, ls, base, adv):
    """The arguments of ``plan_pos`` (after ``i``) for a ``plan``: builds the offsets on the device."""
    return pad_shape(sel), _padded(xs, 0), _padded(ls, 0), base, offsets(adv).d


@device_fn
def plan_pos(i, shape, xs, ls, base, lin):
    """Flat position in x of selected element i; negative when one of its indices is out of range."""
    r = i
    p = base
    q = 0
    for d in range(MAXD - 1, -1, -1):
        s = shape[d]
        j = r % s
        r //= s
        p += j * xs[d]
        q += j * ls[d]
    off = lin[q]
    return p + off if off >= 0 else -1
