"""CUDA kernels of the along-dim index ops: gather / scatter / scatter_add and gather's gradient,
index_select / index_add and index_select's gradient, select_along_backward, embedding and its
gradient, one_hot, and sort / topk. Shared conventions (atomics, last write wins, no range checks)
are described in ``index_kernels.py``.

Every kernel runs one thread per element it reads or writes, computing flat positions from the
padded index shape and the input's element strides, or from an (outer, n, inner) view around ``dim``.
sort / topk run one thread per row: a stable bottom-up merge sort of the row's positions in global
scratch (the CPU's order: stable, NaN largest, a descending sort keeps equal elements in order).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import empty
from .index_kernels import _dev, _narrow, _wide, _winners
from .index_math import unravel3
from .index_plan import check_nd
from .kernel import jit
from .launch import MAXD, TPB, blocks, full, pad_shape
from .reduce_launch import dim_layout, row_base
from .shape_kernels import _cstrides

# ---- gather, scatter, scatter_add, gather_backward ------------------------------------------------
@cuda.jit(device=True)
def _along(i, idx, shape, xst, dpos, n):
    """Flat position in x of index element i (index contiguous, padded ``shape``); -1 when out of range."""
    v = idx[i]
    if v < 0 or v >= n:
        return -1
    r = i
    p = v * xst[dpos]
    for d in range(MAXD - 1, -1, -1):
        s = shape[d]
        if d != dpos:
            p += (r % s) * xst[d]
        r //= s
    return p


@jit
def _gather_k(x, idx, out, m, shape, xst, dpos, n):
    i = cuda.grid(1)
    if i < m:
        p = _along(i, idx, shape, xst, dpos, n)
        out[i] = x[p] if p >= 0 else 0


@jit
def _scatter_add_k(out, idx, src, sstep, m, shape, xst, dpos, n):
    i = cuda.grid(1)
    if i < m:
        p = _along(i, idx, shape, xst, dpos, n)
        if p >= 0:
            cuda.atomic.add(out, p, src[i * sstep])


@jit
def _scatter_claim_k(win, idx, m, shape, xst, dpos, n):
    i = cuda.grid(1)
    if i < m:
        p = _along(i, idx, shape, xst, dpos, n)
        if p >= 0:
            cuda.atomic.max(win, p, i)


@jit
def _scatter_write_k(out, win, idx, src, sstep, m, shape, xst, dpos, n):
    i = cuda.grid(1)
    if i < m:
        p = _along(i, idx, shape, xst, dpos, n)
        if p >= 0 and win[p] == i:
            out[p] = src[i * sstep]


def _along_args(x_shape, index, dim):
    check_nd(x_shape, "gather/scatter")
    xst = _cstrides(x_shape)
    return pad_shape(index.shape), (0,) * (MAXD - len(x_shape)) + xst, MAXD - len(x_shape) + dim, x_shape[dim]


@kernel("gather", "cuda")
def _gather(x, index, dim):
    out = empty(index.shape, x.dtype)
    if out.size:
        _gather_k[blocks(out.size), TPB](x.d, index.d, out.d, out.size, *_along_args(x.shape, index, dim))
    return out


def _scatter_add_into(out, index, src, dim):
    """``out`` (C-contiguous, accumulated in place) += src at index along dim; returns the result array."""
    m = index.size
    if not m:
        return out
    wide = _wide(out)
    src = _wide(_dev(src))
    _scatter_add_k[blocks(m), TPB](wide.d, index.d, src.d, int(src.size == m), m,
                                   *_along_args(out.shape, index, dim))
    return _narrow(wide, out.dtype)


@kernel("gather_backward", "cuda")
def _gather_backward(g, index, dim, shape):
    return _scatter_add_into(full(tuple(shape), 0, g.dtype), index, g, dim)


@kernel("scatter_add", "cuda")
def _scatter_add(x, index, src, dim):
    return _scatter_add_into(x.copy(), index, src, dim)


@kernel("scatter", "cuda")
def _scatter(x, index, src, dim):
    out, m = x.copy(), index.size
    if m:
        src = _dev(src)
        args = _along_args(x.shape, index, dim)
        win = _winners(x.size)
        _scatter_claim_k[blocks(m), TPB](win.d, index.d, m, *args)
        _scatter_write_k[blocks(m), TPB](out.d, win.d, index.d, src.d, int(src.size == m), m, *args)
    return out


# ---- index_select, index_add, index_select_backward, select_along_backward -----------------------
# A tensor is read as (outer, n, inner) around ``dim``; the thread of element (o, j, i) of the
# (outer, J, inner) side moves it to or from (o, idx[j], i).
@jit
def _index_select_k(x, idx, out, m, nj, inner, n):
    t = cuda.grid(1)
    if t < m:
        o, j, i = unravel3(t, nj, inner)
        v = idx[j]
        out[t] = x[(o * n + v) * inner + i] if 0 <= v < n else 0


@jit
def _index_add_k(out, idx, src, alpha, scale, m, nj, inner, n):
    t = cuda.grid(1)
    if t < m:
        o, j, i = unravel3(t, nj, inner)
        v = idx[j]
        if 0 <= v < n:
            cuda.atomic.add(out, (o * n + v) * inner + i, src[t] * alpha if scale else src[t])


@jit
def _put_along_k(out, idx, g, m, inner, n):
    t = cuda.grid(1)
    if t < m:
        i = t % inner
        o = t // inner
        v = idx[t]
        if 0 <= v < n:
            out[(o * n + v) * inner + i] = g[t]


@kernel("index_select", "cuda")
def _index_select(x, index, dim):
    outer, n, inner = dim_layout(x.shape, dim)
    nj = index.size  # a 0-d index selects one entry, as np.take of index.reshape(-1)
    out = empty(x.shape[:dim] + (nj,) + x.shape[dim + 1:], x.dtype)
    if out.size:
        _index_select_k[blocks(out.size), TPB](x.d, index.d, out.d, out.size, nj, inner, n)
    return out


def _index_add_into(out, index, src, dim, alpha=1):
    outer, n, inner = dim_layout(out.shape, dim)
    if not src.size:
        return out
    wide, src = _wide(out), _wide(src)
    a = np.asarray(alpha, dtype=out.dtype)  # the CPU multiplies by alpha in x's dtype
    _index_add_k[blocks(src.size), TPB](wide.d, index.d, src.d, src.dtype.type(a), bool(a != 1), src.size,
                                        index.size, inner, n)
    return _narrow(wide, out.dtype)


@kernel("index_add", "cuda")
def _index_add(x, index, source, dim, alpha):
    return _index_add_into(x.copy(), index, source, dim, alpha)


@kernel("index_select_backward", "cuda")
def _index_select_backward(g, index, dim, shape):
    return _index_add_into(full(tuple(shape), 0, g.dtype), index, g, dim)


@kernel("select_along_backward", "cuda")
def _select_along_backward(g, idx, shape=(), dim=0, keepdim=False):
    if not shape:
        return g.copy()
    out = full(tuple(shape), 0, g.dtype)
    outer, n, inner = dim_layout(tuple(shape), dim)
    if g.size:  # each (o, i) has one index: no collisions
        _put_along_k[blocks(g.size), TPB](out.d, idx.d, g.d, g.size, inner, n)
    return out


# ---- embedding, one_hot ------------------------------------------------------------------------
@jit
def _count_k(idx, counts, one, m, n):
    t = cuda.grid(1)
    if t < m:
        v = idx[t]
        if 0 <= v < n:
            cuda.atomic.add(counts, v, one)


@jit
def _embedding_bw_k(out, idx, g, counts, scaled, m, dim, n, pad):
    t = cuda.grid(1)
    if t < m:
        v = idx[t // dim]
        if 0 <= v < n and v != pad:
            gv = g[t]
            if scaled:
                gv = gv / counts[v]
            cuda.atomic.add(out, v * dim + t % dim, gv)


@jit
def _one_hot_k(x, out, m, c):
    t = cuda.grid(1)
    if t < m:
        out[t] = 1 if x[t // c] == t % c else 0


@kernel("embedding", "cuda")
def _embedding(w, idx, padding_idx, scale_grad_by_freq):
    out = empty(idx.shape + (w.shape[1],), w.dtype)
    if out.size:
        _index_select_k[blocks(out.size), TPB](w.d, idx.d, out.d, out.size, idx.size, w.shape[1], w.shape[0])
    return out


@kernel("embedding_backward", "cuda")
def _embedding_backward(g, idx, num_embeddings, padding_idx, scale_grad_by_freq):
    dim = g.shape[-1]
    out = full((num_embeddings, dim), 0, g.dtype)
    m = idx.size * dim
    if not m:
        return out
    # counts in g's dtype: the CPU divides by the counts cast to it
    counts = full((num_embeddings if scale_grad_by_freq else 1,), 0, g.dtype)
    if scale_grad_by_freq:
        _count_k[blocks(idx.size), TPB](idx.d, counts.d, counts.dtype.type(1), idx.size, num_embeddings)
    wide = _wide(out)
    _embedding_bw_k[blocks(m), TPB](wide.d, idx.d, _wide(g).d, counts.d, bool(scale_grad_by_freq), m, dim,
                                    num_embeddings, padding_idx)
    return _narrow(wide, g.dtype)


@kernel("one_hot", "cuda")
def _one_hot(x, num_classes):
    out = empty(x.shape + (num_classes,), np.int64)
    if out.size:
        _one_hot_k[blocks(out.size), TPB](x.d, out.d, out.size, num_classes)
    return out



# ---- sort, topk ----------------------------------------------------------------------------------
@cuda.jit(device=True)
def _before(b, a, desc):
    """Whether value b goes strictly before value a (NaN is the largest value)."""
    if desc:
        return b > a or (b != b and a == a)
    return b < a or (a != a and b == b)


@jit
def _sort_k(x, vals, idx, sa, sb, rows, n, inner, k, desc):
    r = cuda.grid(1)
    if r < rows:
        base = row_base(r, n, inner)
        s0 = r * n
        for j in range(n):
            sa[s0 + j] = j
        src, dst = sa, sb
        w = 1
        while w < n:
            for lo in range(0, n, 2 * w):
                mid = min(lo + w, n)
                hi = min(lo + 2 * w, n)
                p, q = lo, mid
                for t in range(lo, hi):
                    # take the right run only when strictly before the left: equal elements keep their order
                    if q < hi and (p >= mid or _before(x[base + src[s0 + q] * inner],
                                                       x[base + src[s0 + p] * inner], desc)):
                        dst[s0 + t] = src[s0 + q]
                        q += 1
                    else:
                        dst[s0 + t] = src[s0 + p]
                        p += 1
            src, dst = dst, src
            w *= 2
        ob = row_base(r, k, inner)
        for j in range(k):
            v = src[s0 + j]
            idx[ob + j * inner] = v
            vals[ob + j * inner] = x[base + v * inner]


def _sorted_along(x, dim, k, desc):
    outer, n, inner = dim_layout(x.shape, dim)
    shape = x.shape[:dim] + (k,) + x.shape[dim + 1:]
    vals, idx = empty(shape, x.dtype), empty(shape, np.int64)
    rows = outer * inner
    if vals.size:
        scratch = np.int32 if n < 2 ** 31 else np.int64
        sa, sb = empty((rows * n,), scratch), empty((rows * n,), scratch)
        _sort_k[blocks(rows), TPB](x.d, vals.d, idx.d, sa.d, sb.d, rows, n, inner, k, bool(desc))
    return vals, idx


@kernel("sort", "cuda")
def _sort(x, dim=0, descending=False):
    return _sorted_along(x, dim, x.shape[dim], descending)


@kernel("topk", "cuda")
def _topk(x, k=1, dim=0, largest=True, sorted=True):
    return _sorted_along(x, dim, k, largest)  # always sorted, as the CPU kernel
