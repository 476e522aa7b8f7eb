"""CUDA kernels of basic indexing, getitem (``x[index]``), and of getitem_backward, the gradient of both
getitem and the advanced ``index`` op (whose forward is in index_kernels.py).

An index (encoded as in ``ops/index.py``) is planned on the host into a base offset plus, per output dim, a
stride into ``x`` (basic items: slices, ints, None, Ellipsis) and a stride into the broadcast shape of the
index tensors (advanced items). A basic index is then one ``launch.strided_copy``. With index tensors,
``_adv_k`` first sums, per element of the broadcast index shape, each tensor's (wrapped) position times its
dim's stride (one launch per tensor), to be added to the strided offset. The gradient runs this map
backwards into zeros: a plain store for a basic index (no two elements share a target) and an atomic add
when index tensors may repeat a position.

Index tensors are integer CUDA arrays (boolean masks become positions in ``masks_to_positions`` first).
Their values are not bounds-checked on the device (that would need a host sync); an out-of-range
position is dropped from the gradient instead of touching memory outside the array.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...ops.index_rules import ELLIPSIS, TENSOR, slice_length
from ...ops.registry import kernel
from .array import CudaArray, from_host
from .launch import MAXD, TPB, blocks, broadcast_shape, bstrides, device_fn, full, pad_shape, strided_copy
from .shape_kernels import _cstrides, _padded

_BAD = -(1 << 58)  # the offset of an out-of-range index: keeps the sum negative, so the element is dropped
_ATOMIC = {np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64)}


def _plan(shape, items, arrays):
    """``(out_shape, base, x_strides, b_strides, adv)`` for ``x[items]``: output element ``j`` reads
    ``x[base + sum(j * x_strides) + offsets[sum(j * b_strides)]]``, where ``offsets`` (built from ``adv``, a list
    of ``(index array, x stride, dim size)``) covers the broadcast index shape; ``adv`` is None for a basic
    index. Follows ``index_rules.index_shape``, which has already checked the index."""
    st = _cstrides(shape)
    used = sum(1 for it in items if it is not None and it != ELLIPSIS)
    advanced = bool(arrays)
    dims, adv, adv_shapes = [], [], []  # dims: (size, x stride) of the basic output dims
    base = d = k = 0
    insert_at, last, split = None, None, False
    for pos, it in enumerate(items):
        if it is None:
            dims.append((1, 0))
            continue
        if it == ELLIPSIS:
            for _ in range(len(shape) - used):
                dims.append((shape[d], st[d]))
                d += 1
            continue
        if it.__class__ is tuple or it.__class__ is list:
            start, _, step = slice(*it).indices(shape[d])
            dims.append((slice_length(shape[d], *it), st[d] * step))
            base += start * st[d]
            d += 1
            continue
        if it == TENSOR:
            a = arrays[k]
            k += 1
            adv.append((a, st[d], shape[d]))
            adv_shapes.append(a.shape)
        else:
            base += (it % shape[d]) * st[d]
            if not advanced:
                d += 1
                continue
            adv_shapes.append(())
        # an advanced item (tensor, or int among tensors): numpy places the broadcast index dims at the
        # first one if they are adjacent, else in front
        if insert_at is None:
            insert_at = len(dims)
        elif last != pos - 1:
            split = True
        last = pos
        d += 1
    dims += [(shape[j], st[j]) for j in range(d, len(shape))]
    if not advanced:
        return tuple(s for s, _ in dims), base, [x for _, x in dims], None, None
    b = broadcast_shape(*adv_shapes)
    bdims = [(s, 0, bs) for s, bs in zip(b, _cstrides(b))]
    dims = [(s, x, 0) for s, x in dims]
    dims = bdims + dims if split else dims[:insert_at] + bdims + dims[insert_at:]
    return tuple(s for s, _, _ in dims), base, [x for _, x, _ in dims], [bs for _, _, bs in dims], (b, adv)


@cuda.jit
def _adv_k(offsets, a, n, bshape, ast, xst, size):
    # offsets[i] += (a at the broadcast position of i, wrapped) * xst
    i = cuda.grid(1)
    if i < n:
        r = i
        ia = 0
        for d in range(MAXD - 1, -1, -1):
            s = bshape[d]
            j = r % s
            r //= s
            ia += j * ast[d]
        v = a[ia]
        if v < 0:
            v += size
        offsets[i] += v * xst if 0 <= v < size else _BAD


def _offsets(b, adv):
    """The summed source offsets of the index tensors over their broadcast shape ``b``."""
    offsets = full(b, 0, np.int64)
    n = offsets.size
    if n:
        for a, xst, size in adv:
            if not isinstance(a, CudaArray):
                a = from_host(a)  # a 0-d CPU tensor used as an index
            if a.dtype.kind not in "iu":
                raise NotImplementedError(
                    f"CUDA indexing takes integer index tensors, got {a.dtype}; boolean masks are turned into "
                    f"positions (nonzero) by getitem before they reach the kernel")
            _adv_k[blocks(n), TPB](offsets.d, a.d, n, pad_shape(b), bstrides(a.shape, b), xst, size)
    return offsets


@device_fn
def _source(i, shape, xst, bst, base, offsets):
    r = i
    ix = base
    ib = 0
    for d in range(MAXD - 1, -1, -1):
        s = shape[d]
        j = r % s
        r //= s
        ix += j * xst[d]
        ib += j * bst[d]
    return ix + offsets[ib]


@cuda.jit
def _put_k(g, out, n, total, shape, xst, bst, base, offsets):
    i = cuda.grid(1)
    if i < n:
        p = _source(i, shape, xst, bst, base, offsets)
        if 0 <= p < total:
            out[p] = g[i]


@cuda.jit
def _add_k(g, out, n, total, shape, xst, bst, base, offsets):
    i = cuda.grid(1)
    if i < n:
        p = _source(i, shape, xst, bst, base, offsets)
        if 0 <= p < total:
            cuda.atomic.add(out, p, g[i])


@kernel("getitem", "cuda")
def _getitem(x, *tensors, index):
    if tensors:
        raise NotImplementedError("getitem on CUDA takes basic indices only; index tensors go to the index op")
    shape, base, xst, _, _ = _plan(x.shape, index, ())
    return strided_copy(x, shape, xst, base)


@kernel("getitem_backward", "cuda")
def _getitem_backward(g, *tensors, index, shape):
    oshape, base, xst, bst, adv = _plan(tuple(shape), index, tensors)
    out = full(tuple(shape), 0, g.dtype)
    if not g.size:
        return out
    if adv is None:
        kern, offsets, bst = _put_k, full((1,), 0, np.int64), [0] * len(xst)
    else:
        if g.dtype not in _ATOMIC:
            raise NotImplementedError(f"getitem_backward with index tensors on CUDA needs atomic adds, which numba "
                                      f"supports for float32/float64/int32/int64/uint32/uint64, not {g.dtype}")
        kern, offsets = _add_k, _offsets(*adv)
    kern[blocks(g.size), TPB](g.d, out.d, g.size, out.size, _padded(oshape), _padded(xst, 0), _padded(bst, 0),
                              base, offsets.d)
    return out
