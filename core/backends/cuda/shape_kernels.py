"""CUDA kernels of the shape family: reshape, permute, expand, narrow, flip, repeat, cat, stack, pad (+ its
gradient), tril/triu, cumsum; indexing is in getitem_kernels.py (getitem, getitem_backward) and
index_kernels.py (index, index_put).

CUDA arrays are always contiguous, so every op that is a view on the CPU is a copy here (reshape excepted:
a new header over the same buffer). Most are one gather: a thread per output element turns its index into
a flat source offset (``launch.strided_copy`` for non-negative strides, ``_strided_k`` with a base offset
for flip's negative ones). pad_backward is a gather too: each input element sums the few padded positions
that copied it, one pass per padded dim. cumsum scans a row per thread when rows are many or short, else a
row per block (a shared-memory scan of TPB-element tiles).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from ... import dtypes as _dt
from ...ops.registry import kernel
from .array import empty
from .index_math import unravel3
from .kernel import jit
from .launch import MAXD, TPB, blocks, broadcast_to, cast, strided_copy, strided_offset
from .reduce_launch import row_base

_I64 = np.dtype(np.int64)


def _cstrides(shape):
    """Element strides of a contiguous ``shape``."""
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


def _padded(shape, fill=1, what="shape"):
    if len(shape) > MAXD:
        raise NotImplementedError(f"CUDA shape kernels support at most {MAXD} dims, got {what} {tuple(shape)}")
    return (fill,) * (MAXD - len(shape)) + tuple(int(s) for s in shape)


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


@jit
def _strided_k(x, out, n, shape, st, base):
    i = cuda.grid(1)
    if i < n:
        out[i] = x[strided_offset(i, shape, st, base)]


# ---- reshape, permute, expand, narrow, flip, repeat --------------------------------------------------------------
@kernel("reshape", "cuda")
def _reshape(x, shape):
    return x.reshape(shape)


@kernel("permute", "cuda")
def _permute(x, dims):
    st = _cstrides(x.shape)
    return strided_copy(x, [x.shape[d] for d in dims], [st[d] for d in dims])


@kernel("expand", "cuda")
def _expand(x, shape):
    return broadcast_to(x, shape)


@kernel("narrow", "cuda")
def _narrow(x, dim, start, length):
    dim %= x.ndim
    st = _cstrides(x.shape)
    return strided_copy(x, x.shape[:dim] + (length,) + x.shape[dim + 1:], st, start * st[dim])


@kernel("flip", "cuda")
def _flip(x, dims):
    st = list(_cstrides(x.shape))
    base = 0
    for d in dims:
        base += (x.shape[d] - 1) * st[d]
        st[d] = -st[d]
    out = empty(x.shape, x.dtype)
    if out.size:
        _strided_k[blocks(out.size), TPB](x.d, out.d, out.size, _padded(x.shape), _padded(st, 0), base)
    return out


@jit
def _tile_k(x, out, n, oshape, xshape, xst):
    i = cuda.grid(1)
    if i < n:
        r = i
        ix = 0
        for d in range(MAXD - 1, -1, -1):
            s = oshape[d]
            j = r % s
            r //= s
            ix += (j % xshape[d]) * xst[d]
        out[i] = x[ix]


@kernel("repeat", "cuda")
def _repeat(x, sizes):
    xshape = (1,) * (len(sizes) - x.ndim) + tuple(x.shape)
    oshape = tuple(a * b for a, b in zip(xshape, sizes))
    out = empty(oshape, x.dtype)
    if out.size:
        _tile_k[blocks(out.size), TPB](x.d, out.d, out.size, _padded(oshape), _padded(xshape),
                                       _padded(_cstrides(xshape), 0))
    return out


# ---- cat, stack ------------------------------------------------------------------------------------------------
@jit
def _cat_k(x, out, n, chunk, out_chunk, off):
    # x is (outer, chunk) and lands at column ``off`` of out viewed as (outer, out_chunk)
    i = cuda.grid(1)
    if i < n:
        o = i // chunk
        out[o * out_chunk + off + i - o * chunk] = x[i]


@kernel("cat", "cuda")
def _cat(*xs, dim):
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    out = empty(tuple(shape), np.result_type(*(x.dtype for x in xs)))
    inner = _prod(shape[dim + 1:])
    start = 0
    for x in xs:
        if x.dtype != out.dtype:
            x = cast(x, out.dtype)
        if x.size:
            _cat_k[blocks(x.size), TPB](x.d, out.d, x.size, x.shape[dim] * inner, shape[dim] * inner, start * inner)
        start += x.shape[dim]
    return out


@kernel("stack", "cuda")
def _stack(*xs, dim):
    return _cat(*(x.reshape(x.shape[:dim] + (1,) + x.shape[dim:]) for x in xs), dim=dim)


# ---- pad, pad_backward -------------------------------------------------------------------------------------------
_PAD_MODES = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}


@jit
def _pad_k(x, out, n, oshape, xshape, left, mode, value):
    i = cuda.grid(1)
    if i < n:
        r = i
        ix = 0
        acc = 1
        inside = True
        for d in range(MAXD - 1, -1, -1):
            s = oshape[d]
            j = r % s
            r //= s
            m = xshape[d]
            p = j - left[d]
            if p < 0 or p >= m:
                if mode == 0:
                    inside = False
                elif mode == 1:  # reflect: pads < m, so one reflection suffices
                    p = abs(p)
                    if p >= m:
                        p = 2 * (m - 1) - p
                elif mode == 2:
                    p = 0 if p < 0 else m - 1
                elif p < 0:  # circular: pads <= m wrap once
                    p += m
                else:
                    p -= m
            ix += p * acc
            acc *= m
        if inside:
            out[i] = x[ix]
        else:
            out[i] = value


def _pads(ndim, pad):
    left = [0] * ndim
    for j in range(len(pad) // 2):
        left[ndim - 1 - j] = pad[2 * j]
    return left


@kernel("pad", "cuda")
def _pad(x, pad, mode, value):
    oshape = list(x.shape)
    for j in range(len(pad) // 2):
        oshape[x.ndim - 1 - j] += pad[2 * j] + pad[2 * j + 1]
    out = empty(tuple(oshape), x.dtype)
    if out.size:
        _pad_k[blocks(out.size), TPB](x.d, out.d, out.size, _padded(oshape), _padded(x.shape),
                                      _padded(_pads(x.ndim, pad), 0), _PAD_MODES[mode], x.dtype.type(value))
    return out


@jit
def _pad_bw_k(g, out, n, m, nn, inner, left, mode, zero):
    # out (outer, nn, inner)[o, p, q] = sum of g (outer, m, inner)[o, j, q] over the j whose source is p
    i = cuda.grid(1)
    if i < n:
        o, p, q = unravel3(i, nn, inner)
        gb = o * m * inner + q
        acc = zero
        if mode == 2:  # replicate: the edge positions take a whole run of j
            lo = 0 if p == 0 else left + p
            hi = m - 1 if p == nn - 1 else left + p
            for j in range(max(lo, 0), min(hi, m - 1) + 1):
                acc += g[gb + j * inner]
        else:
            for c in range(3):  # the one-to-one position, then the left and right preimages
                j = left + p
                ok = c == 0
                if mode == 1:
                    if c == 1:
                        j = left - p
                        ok = p > 0
                    elif c == 2:
                        j = left + 2 * (nn - 1) - p
                        ok = p < nn - 1
                elif c > 0:
                    j = left + p + (nn if c == 2 else -nn)
                    ok = True
                if ok and 0 <= j < m:
                    acc += g[gb + j * inner]
        out[i] = acc


@kernel("pad_backward", "cuda")
def _pad_backward(g, pad, mode, shape):
    if mode not in ("reflect", "replicate", "circular"):
        raise NotImplementedError(f"pad_backward on CUDA supports reflect/replicate/circular, got mode {mode!r}")
    nd = len(shape)
    for j in reversed(range(len(pad) // 2)):  # one gather pass per padded dim
        d, nn = nd - 1 - j, shape[nd - 1 - j]
        out = empty(g.shape[:d] + (nn,) + g.shape[d + 1:], g.dtype)
        if out.size:
            _pad_bw_k[blocks(out.size), TPB](g.d, out.d, out.size, g.shape[d], nn, _prod(g.shape[d + 1:]),
                                             pad[2 * j], _PAD_MODES[mode], g.dtype.type(0))
        g = out
    return g


# ---- tril, triu ----------------------------------------------------------------------------------------------------
@jit
def _tri_k(x, out, n, rows, cols, diagonal, upper):
    i = cuda.grid(1)
    if i < n:
        _, r, c = unravel3(i, rows, cols)
        keep = (c - r >= diagonal) if upper else (c - r <= diagonal)
        if keep:
            out[i] = x[i]
        else:
            out[i] = 0


def _tri(x, diagonal, upper):
    out = empty(x.shape, x.dtype)
    if out.size:
        _tri_k[blocks(out.size), TPB](x.d, out.d, out.size, x.shape[-2], x.shape[-1], int(diagonal), upper)
    return out


@kernel("tril", "cuda")
def _tril(x, diagonal=0):
    return _tri(x, diagonal, False)


@kernel("triu", "cuda")
def _triu(x, diagonal=0):
    return _tri(x, diagonal, True)


# ---- cumsum ------------------------------------------------------------------------------------------------------
@jit
def _cumsum_rows_k(x, out, rows, length, inner, rev, zero):
    # one thread per row: neighbouring threads walk neighbouring columns (coalesced when inner > 1)
    t = cuda.grid(1)
    if t < rows:
        base = row_base(t, length, inner)
        acc = zero
        for k in range(length):
            idx = base + (length - 1 - k if rev else k) * inner
            acc += x[idx]
            out[idx] = acc


_SCANS: dict = {}


def _block_scan(dtype):
    """A one-block-per-row scan kernel for ``dtype``: tiles of TPB elements, each a Hillis-Steele scan in
    shared memory plus the running total of the tiles before it."""
    scan = _SCANS.get(dtype)
    if scan is not None:
        return scan
    nb_dt = numba.from_dtype(dtype)

    @jit
    def scan(x, out, length, inner, rev, zero):
        row = cuda.blockIdx.x
        t = cuda.threadIdx.x
        base = row_base(row, length, inner)
        sh = cuda.shared.array(TPB, nb_dt)
        carry = zero
        for start in range(0, length, TPB):
            c = start + t
            idx = base + (length - 1 - c if rev else c) * inner
            v = zero
            if c < length:
                v = x[idx]
            sh[t] = v
            cuda.syncthreads()
            off = 1
            while off < TPB:
                u = sh[t - off] if t >= off else zero
                cuda.syncthreads()
                sh[t] += u
                cuda.syncthreads()
                off *= 2
            if c < length:
                out[idx] = carry + sh[t]
            carry += sh[TPB - 1]
            cuda.syncthreads()

    _SCANS[dtype] = scan
    return scan


@kernel("cumsum", "cuda")
def _cumsum(x, dim=0, reverse=False, dtype=None):
    acc = _dt.as_dtype(dtype).np if dtype is not None else (_I64 if x.dtype.kind in "biu" else x.dtype)
    fresh = x.dtype != acc
    if fresh:
        x = cast(x, acc)  # numpy casts each element before summing
    if x.ndim == 0:
        return x if fresh else x.copy()
    dim %= x.ndim
    out = empty(x.shape, acc)
    length, inner = x.shape[dim], _prod(x.shape[dim + 1:])
    rows = x.size // length if length else 0
    if rows == 0:
        return out
    if length <= 64 or rows >= 4096:
        _cumsum_rows_k[blocks(rows), TPB](x.d, out.d, rows, length, inner, bool(reverse), acc.type(0))
    else:
        _block_scan(acc)[rows, TPB](x.d, out.d, length, inner, bool(reverse), acc.type(0))
    return out
