"""Layout and launch helpers of the CUDA reductions (``reduce_kernels``, ``argreduce_kernels``,
``softmax_kernels``).

Every reduction first sees its input as ``(outer, R, inner)``: the reduced dims (size-1 dims dropped, adjacent
ones merged) as one run of length ``R``; when they are not one run, a strided gather (``strided_copy``) moves the
kept dims first and the reduced ones last. Output ``t = o * inner + i`` then reduces ``x[(o * R + r) * inner + i]``
over ``r``. A short ``R`` runs one thread per output (reads coalesce across ``i`` when ``inner > 1``); a long one
runs one block per output, its threads striding over ``r`` and meeting in a shared-memory tree (``tree_of``, also
the block sums of the norm, loss and conv kernels). The kernels' row loops take ``(lo, step)``: ``(0, 1)`` for a
thread's whole row, ``(threadIdx, blockDim)`` for a block's threads.
"""
from __future__ import annotations

from numba import cuda

from .launch import SIM, TPB, blocks, device_fn, strided_copy

SHORT = 4 if SIM else 32  # reduced length up to which one thread reduces a whole output
_MANY = 32 if SIM else 32768  # with inner > 1, this many outputs keep one thread each (coalesced) however long R is
_MINB = 4 if SIM else 32  # smallest block of the block-per-output kernels (a power of two)


def out_shape(shape, dims, keepdim):
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def layout(x, dims):
    """``(src, outer, R, inner)``: ``x`` (or a gathered copy) read as (outer, R, inner) with ``dims`` reduced."""
    groups = []  # [size, reduced] runs of non-unit dims
    for d, s in enumerate(x.shape):
        if s == 1:
            continue
        red = d in dims
        if groups and groups[-1][1] == red:
            groups[-1][0] *= s
        else:
            groups.append([s, red])
    if sum(1 for _, red in groups if red) <= 1:
        outer = r_len = inner = 1
        seen = False
        for s, red in groups:
            if red:
                r_len, seen = s, True
            elif seen:
                inner *= s
            else:
                outer *= s
        return x, outer, r_len, inner
    strides, acc = [0] * len(groups), 1
    for k in range(len(groups) - 1, -1, -1):
        strides[k] = acc
        acc *= groups[k][0]
    order = [k for k, g in enumerate(groups) if not g[1]] + [k for k, g in enumerate(groups) if g[1]]
    src = strided_copy(x, [groups[k][0] for k in order], [strides[k] for k in order])
    outer = r_len = 1
    for s, red in groups:
        if red:
            r_len *= s
        else:
            outer *= s
    return src, outer, r_len, 1


def dim_layout(shape, dim):
    """(outer, R, inner) of a contiguous array reduced over the single dim ``dim``."""
    outer = inner = 1
    for s in shape[:dim]:
        outer *= s
    for s in shape[dim + 1:]:
        inner *= s
    return outer, shape[dim], inner


def per_thread(r_len, inner, n_out):
    return r_len <= SHORT or (inner > 1 and n_out >= _MANY)


def launch_rows(per_out, per_block, n_out, r_len, inner, bufs, args=()):
    """Reduce (outer, R, inner) into ``n_out`` outputs: ``per_out(*bufs, n_out, R, inner, *args)`` one thread per
    output, or ``per_block(*bufs, R, inner, *args)`` one block per output."""
    if per_thread(r_len, inner, n_out):
        per_out[blocks(n_out), TPB](*bufs, n_out, r_len, inner, *args)
    else:
        per_block[n_out, block_size(r_len)](*bufs, r_len, inner, *args)


@device_fn
def row_base(t, r_len, inner):
    """Flat offset of element ``r = 0`` of output ``t = o * inner + i``."""
    o = t // inner
    return o * r_len * inner + (t - o * inner)


def block_size(r_len):
    """Threads of a block-per-output launch: the power of two covering ``R``, within [_MINB, TPB]."""
    return min(TPB, max(_MINB, 1 << (r_len - 1).bit_length()))


def tree_of(combine):
    """A device function ``(sh, v)`` folding every thread's ``v`` over the block (blockDim a power of two, ``sh``
    a shared array of at least blockDim) into one value that every thread gets; ``sh`` is free again after it."""

    def tree(sh, v):
        tid = cuda.threadIdx.x
        sh[tid] = v
        cuda.syncthreads()
        s = cuda.blockDim.x // 2
        while s > 0:
            if tid < s:
                sh[tid] = combine(sh[tid], sh[tid + s])
            cuda.syncthreads()
            s //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    return device_fn(tree)


def plus(a, b):
    return a + b


def nan_max(a, b):  # NaN wins, as np.max
    return a if (a > b or a != a) else b


add, dmax = device_fn(plus), device_fn(nan_max)
block_sum = tree_of(add)  # the block's sum, for every thread (with ``sh[:blockDim]`` of the sum's dtype)
