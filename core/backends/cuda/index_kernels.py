"""CUDA kernels of advanced indexing (``index``, ``index_put``) and ``nonzero``, plus the helpers the
index family shares; ``gather_kernels.py`` holds the along-dim ops (gather, scatter, index_select,
index_add, embedding, one_hot, sort, topk).

``index`` / ``index_put`` run one thread per selected element, from the plan of ``index_plan.py`` (shared
with getitem): the basic items (ints, slices, None, Ellipsis) become strides and a base offset, and the
tensor indices are summed on the device into one array of flat offsets over their broadcast shape.

Conventions of the whole family: sums into shared places use ``cuda.atomic.add`` (float32/64,
int32/64, uint32/64; narrower dtypes and bool accumulate in int64 and are cast back), so float sums
are not bit-exact: the order of the additions varies from run to run (compare with a tolerance).
Overwrites with repeated indices (scatter, index_put) keep the last write, as numpy does: each place
is first claimed by the largest source position (``atomic.max``), then written by that one thread.
Indices are not range-checked (that would need a host sync; the CPU backend raises): an out-of-range
read gives 0 and an out-of-range write is dropped.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64

from ...ops.index_rules import TENSOR
from ...ops.registry import kernel
from .array import CudaArray, empty, from_host
from .index_plan import check_nd, plan, plan_pos, pos_args
from .kernel import jit
from .launch import MAXD, TPB, blocks, bstrides, cast, full, pad_shape, strided_copy, strided_offset

_ATOMIC = {np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint32, np.uint64)}


def _dev(a):
    """A CUDA array for an input that may be a 0-d host array (a python scalar operand)."""
    return a if isinstance(a, CudaArray) else from_host(a)


def _wide(a: CudaArray) -> CudaArray:
    """``a`` in a dtype cuda.atomic.add supports (narrow ints and bool accumulate in int64)."""
    return a if a.dtype in _ATOMIC else cast(a, np.int64)


def _narrow(a: CudaArray, dtype) -> CudaArray:
    return a if a.dtype == dtype else cast(a, dtype)


def _winners(size):
    """Claim buffer for last-write-wins overwrites: -1, then the largest writer position per place."""
    return full((size,), -1, np.int64)


# ---- nonzero -------------------------------------------------------------------------------------
# Three passes: per-block counts, one block scanning those into offsets (the last is the total), then
# each block ranks its nonzeros with a shared-memory scan and writes their coordinates in order.
@cuda.jit(device=True)
def _block_scan(sh, t):
    """Inclusive Hillis-Steele scan of the TPB values in shared ``sh`` (all threads of the block call it)."""
    off = 1
    while off < TPB:
        v = sh[t - off] if t >= off else 0
        cuda.syncthreads()
        sh[t] += v
        cuda.syncthreads()
        off *= 2


@jit
def _nz_count_k(x, n, counts):
    sh = cuda.shared.array(TPB, int32)
    t = cuda.threadIdx.x
    i = cuda.blockIdx.x * TPB + t
    sh[t] = 1 if (i < n and x[i] != 0) else 0
    cuda.syncthreads()
    _block_scan(sh, t)
    if t == TPB - 1:
        counts[cuda.blockIdx.x] = sh[t]


@jit
def _nz_offsets_k(counts, nb, offsets):
    sh = cuda.shared.array(TPB, int64)
    t = cuda.threadIdx.x
    per = (nb + TPB - 1) // TPB
    lo = min(t * per, nb)
    hi = min(lo + per, nb)
    s = 0
    for j in range(lo, hi):
        s += counts[j]
    sh[t] = s
    cuda.syncthreads()
    _block_scan(sh, t)
    run = sh[t] - s
    for j in range(lo, hi):
        offsets[j] = run
        run += counts[j]
    if t == TPB - 1:
        offsets[nb] = sh[t]


@jit
def _nz_write_k(x, n, offsets, out, shape, nd):
    sh = cuda.shared.array(TPB, int32)
    t = cuda.threadIdx.x
    i = cuda.blockIdx.x * TPB + t
    f = 1 if (i < n and x[i] != 0) else 0
    sh[t] = f
    cuda.syncthreads()
    _block_scan(sh, t)
    if f:
        row = offsets[cuda.blockIdx.x] + sh[t] - 1
        r = i
        for k in range(nd - 1, -1, -1):
            s = shape[MAXD - nd + k]
            out[row * nd + k] = r % s
            r //= s


@kernel("nonzero", "cuda")
def _nonzero(x):
    check_nd(x.shape, "nonzero")
    n, nb = x.size, blocks(x.size)
    counts, offsets = empty((nb,), np.int32), empty((nb + 1,), np.int64)
    _nz_count_k[nb, TPB](x.d, n, counts.d)
    _nz_offsets_k[1, TPB](counts.d, nb, offsets.d)
    total = int(offsets.d[nb:nb + 1].copy_to_host()[0])  # host sync: the row count is the output's shape
    out = empty((total, x.ndim), np.int64)
    if out.size:
        _nz_write_k[nb, TPB](x.d, n, offsets.d, out.d, pad_shape(x.shape), x.ndim)
    return out


# ---- index, index_put ----------------------------------------------------------------------------
@jit
def _index_k(x, out, m, shape, xs, ls, base, lin):
    i = cuda.grid(1)
    if i < m:
        p = plan_pos(i, shape, xs, ls, base, lin)
        out[i] = x[p] if p >= 0 else 0


@jit
def _put_claim_k(win, m, shape, xs, ls, base, lin):
    i = cuda.grid(1)
    if i < m:
        p = plan_pos(i, shape, xs, ls, base, lin)
        if p >= 0:
            cuda.atomic.max(win, p, i)


@jit
def _put_k(out, val, m, shape, xs, ls, base, lin, vshape, vst, win, check):
    i = cuda.grid(1)
    if i < m:
        p = plan_pos(i, shape, xs, ls, base, lin)
        if p >= 0 and (not check or win[p] == i):
            out[p] = val[strided_offset(i, vshape, vst, 0)]


@kernel("index", "cuda")
def _index(x, *tensors, index):
    p = plan(x.shape, index, tensors)
    out = empty(p[0], x.dtype)
    if out.size:
        _index_k[blocks(out.size), TPB](x.d, out.d, out.size, *pos_args(*p))
    return out


def _masks_to_ints(items, tensors):
    """Boolean masks as the integer indices of their nonzero positions (numpy's meaning of a mask); a 0-d
    mask is a new dim of size 1, selected (True) or not (False). Returns (items, tensors), or None when a
    False 0-d mask selects nothing."""
    new_items, new_tensors, k = [], [], 0
    for it in items:
        if it != TENSOR:
            new_items.append(it)
            continue
        a = tensors[k]
        k += 1
        if a.dtype != np.bool_:
            new_items.append(it)
            new_tensors.append(a)
        elif a.ndim == 0:
            flag = a.get() if isinstance(a, CudaArray) else a  # host sync: the selection's shape depends on it
            if not bool(flag):
                return None
            new_items.append(None)
        else:
            nz = _nonzero(a)  # host sync inside: the count of selected places is data
            for j in range(a.ndim):
                new_items.append(TENSOR)
                new_tensors.append(strided_copy(nz, (nz.shape[0],), (a.ndim,), j))
    return tuple(new_items), new_tensors


@kernel("index_put", "cuda")
def _index_put(x, value, *tensors, index):
    out = x.copy()
    if any(t.dtype == np.bool_ for t in tensors):
        masked = _masks_to_ints(index, tensors)
        if masked is None:
            return out
        index, tensors = masked
    p = plan(x.shape, index, tensors)
    sel = p[0]
    value = _dev(value)
    vshape = value.shape
    while len(vshape) > len(sel) and vshape[0] == 1:  # numpy lets the value carry extra leading 1s
        vshape = vshape[1:]
    if len(vshape) > len(sel) or any(v not in (1, s) for v, s in zip(vshape[::-1], sel[::-1])):
        raise RuntimeError(
            f"setitem: shape mismatch: value tensor of shape {value.shape} cannot be broadcast to indexing result "
            f"of shape {sel}"
        )
    m = 1
    for s in sel:
        m *= s
    if not m:
        return out
    args = (m, *pos_args(*p))
    dup = bool(tensors)  # tensor indices may repeat a place: the last write wins, as in numpy
    win = _winners(x.size).d if dup else args[-1]  # (not read without duplicates: any int64 buffer)
    if dup:
        _put_claim_k[blocks(m), TPB](win, *args)
    _put_k[blocks(m), TPB](out.d, value.d, *args, pad_shape(sel), bstrides(vshape, sel), win, dup)
    return out
