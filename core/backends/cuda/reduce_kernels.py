"""CUDA kernels of the reductions: sum, mean, prod, amax/amin, all/any, norm, var/std and prod's gradient.

The input is read as (outer, R, inner) (``reduce_launch.layout``); a short R runs one thread per output, a long
one a block per output (shared-memory tree). The folds also tile a long R with ``inner >= 16`` as columns
(threads side by side over adjacent outputs, stacked over R: coalesced loads), and cut R into chunks reduced
in two passes when a launch would leave the GPU mostly idle (a full ``x.sum()``, ``x.sum(0)`` of a tall matrix).

A reduction family is three device functions: ``pre(v, p)`` maps an element, ``combine(a, b)`` folds two
values, ``finish(acc, n, p, q)`` makes the output (``n`` the reduced count, ``p``/``q`` the op's parameters).
The accumulator has the output's dtype (sum of int -> int64, as the CPU), so float32 stays float32.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import empty
from .kernel import jit
from .launch import SIM, TPB, blocks, cast, device_fn, result_dtype
from .reduce_launch import (SHORT, block_size, block_sum, dim_layout, launch_rows, layout, out_shape, per_thread,
                            row_base, tree_of)
from .reduce_launch import nan_max as _max
from .reduce_launch import plus as _add

_CW, _CR = (8, 4) if SIM else (32, 16)  # column tiles: _CW adjacent outputs (inner > 1) x _CR threads along R
_FEW, _CHUNK = (2, 16) if SIM else (264, 1024)  # a fold launching under _FEW blocks cuts R into chunks >= _CHUNK


# ---- combine steps ---------------------------------------------------------------------------------
def _mul(a, b):
    return a * b


def _min(a, b):
    return a if (a < b or a != a) else b


def _and(a, b):
    return a and b


def _or(a, b):
    return a or b


# ---- the fold family: sum, mean, prod, amax, amin, all, any, norm ------------------------------------
@device_fn
def _chunk(o2, i, inner, r_len, chunk, n_chunks):
    """(flat offset of the first row, row count) of chunk ``o2 % n_chunks`` of outer row ``o2 // n_chunks``,
    column ``i``."""
    o = o2 // n_chunks
    c = o2 - o * n_chunks
    return (o * r_len + c * chunk) * inner + i, min(chunk, r_len - c * chunk)


class Fold:
    """One reduction family over (outer, R, inner): one thread per output, one block per output, or column tiles.
    Each kernel reduces R in ``n_chunks`` chunks of ``chunk`` rows (one chunk: the whole R); with several, a
    first pass folds the chunks (``partial``: no finish) and a second folds the partials (``merge``: no pre),
    so that a few long outputs still fill the GPU."""

    def __init__(self, pre, combine, finish, widen=True, split=True):
        self.widen = widen
        self.partial, self.merge = (Fold(pre, combine, _keep, split=False),
                                    Fold(_same, combine, finish, split=False)) if split else (None, None)
        pre, combine, finish = device_fn(pre), device_fn(combine), device_fn(finish)
        tree = tree_of(combine)

        @device_fn
        def fold(x, base, inner, lo, count, step, acc, p):
            for r in range(lo, count, step):
                acc = combine(acc, pre(x[base + r * inner], p))
            return acc

        @jit
        def per_out(x, out, n_out, r_len, inner, chunk, n_chunks, ident, n, p, q):
            t = cuda.grid(1)
            if t < n_out:
                o2 = t // inner
                base, count = _chunk(o2, t - o2 * inner, inner, r_len, chunk, n_chunks)
                out[t] = finish(fold(x, base, inner, 0, count, 1, ident, p), n, p, q)

        @jit
        def per_block(x, out, r_len, inner, chunk, n_chunks, ident, n, p, q):
            sh = cuda.shared.array(TPB, out.dtype)
            t = cuda.blockIdx.x
            tid = cuda.threadIdx.x
            o2 = t // inner
            base, count = _chunk(o2, t - o2 * inner, inner, r_len, chunk, n_chunks)
            acc = tree(sh, fold(x, base, inner, tid, count, cuda.blockDim.x, ident, p))
            if tid == 0:
                out[t] = finish(acc, n, p, q)

        @jit
        def per_cols(x, out, r_len, inner, chunk, n_chunks, n_tiles, ident, n, p, q):
            sh = cuda.shared.array((_CR, _CW), out.dtype)
            tx = cuda.threadIdx.x
            ty = cuda.threadIdx.y
            o2 = cuda.blockIdx.x // n_tiles
            i = (cuda.blockIdx.x - o2 * n_tiles) * _CW + tx
            base, count = _chunk(o2, i, inner, r_len, chunk, n_chunks)
            acc = ident
            if i < inner:
                acc = fold(x, base, inner, ty, count, _CR, ident, p)
            sh[ty, tx] = acc
            cuda.syncthreads()
            s = _CR // 2
            while s > 0:
                if ty < s:
                    sh[ty, tx] = combine(sh[ty, tx], sh[ty + s, tx])
                cuda.syncthreads()
                s //= 2
            if ty == 0 and i < inner:
                out[o2 * inner + i] = finish(sh[0, tx], n, p, q)

        self.per_out, self.per_block, self.per_cols = per_out, per_block, per_cols

    def __call__(self, x, dims, keepdim, out_dtype, ident, p=0.0, q=0.0):
        out_dtype = np.dtype(out_dtype)
        if self.widen and np.promote_types(x.dtype, out_dtype) != out_dtype:  # a narrower dtype=: numpy casts first
            x = cast(x, out_dtype)
        dims = tuple(int(d) % max(x.ndim, 1) for d in dims)
        src, outer, r_len, inner = layout(x, dims)
        out = empty(out_shape(x.shape, dims, keepdim), out_dtype)
        if outer * inner:
            T = out_dtype.type
            self.run(src, out, outer, r_len, inner, (T(ident), T(r_len), T(p), T(q)))
        return out

    def run(self, src, out, outer, r_len, inner, args):
        n_chunks = _n_chunks(outer, r_len, inner) if self.partial is not None else 1
        if n_chunks == 1:
            self._launch(src, out, outer, r_len, inner, r_len, 1, args)
            return
        chunk = -(-r_len // n_chunks)
        n_chunks = -(-r_len // chunk)
        part = empty((outer, n_chunks, inner), out.dtype)
        self.partial._launch(src, part, outer, r_len, inner, chunk, n_chunks, args)
        self.merge._launch(part, out, outer, n_chunks, inner, n_chunks, 1, args)

    def _launch(self, src, out, outer, r_len, inner, chunk, n_chunks, args):
        n_units = outer * n_chunks * inner
        if _columns(chunk, inner):
            n_tiles = -(-inner // _CW)
            self.per_cols[outer * n_chunks * n_tiles, (_CW, _CR)](src.d, out.d, r_len, inner, chunk, n_chunks,
                                                                  n_tiles, *args)
        elif per_thread(chunk, inner, n_units):
            self.per_out[blocks(n_units), TPB](src.d, out.d, n_units, r_len, inner, chunk, n_chunks, *args)
        else:
            self.per_block[n_units, block_size(chunk)](src.d, out.d, r_len, inner, chunk, n_chunks, *args)


def _columns(r_len, inner):
    """A long R over a run of adjacent outputs: tiles of _CW outputs x _CR threads along R, whose loads coalesce
    across the outputs and which still spread R over _CR threads."""
    return r_len > SHORT and inner >= _CW // 2


def _n_chunks(outer, r_len, inner):
    """How many chunks to cut R into: 1 unless the launch would run under _FEW blocks with R >= 2 chunks."""
    if r_len < 2 * _CHUNK:
        return 1
    if _columns(r_len, inner):
        n_blocks = outer * -(-inner // _CW)
    elif per_thread(r_len, inner, outer * inner):
        n_blocks = blocks(outer * inner)
    else:
        n_blocks = outer * inner
    if n_blocks >= _FEW:
        return 1
    return min(-(-r_len // _CHUNK), -(-_FEW * 4 // n_blocks))  # about 4 * _FEW blocks in all


def _same(v, p):
    return v


def _abs(v, p):
    return abs(v)


def _square(v, p):
    return v * v


def _nonzero(v, p):
    return v != 0


def _count(v, p):  # p is 1 in the output dtype: counts stay float32 for float32
    return p if v != 0 else p - p


def _abs_pow(v, p):
    return abs(v) ** p


def _keep(acc, n, p, q):
    return acc


def _mean(acc, n, p, q):
    return acc / n


def _sqrt(acc, n, p, q):
    return math.sqrt(acc)


def _root(acc, n, p, q):
    return acc ** q


_SUM, _PROD, _MEAN = Fold(_same, _add, _keep), Fold(_same, _mul, _keep), Fold(_same, _add, _mean)
_AMAX, _AMIN = Fold(_same, _max, _keep), Fold(_same, _min, _keep)
_ALL, _ANY = Fold(_nonzero, _and, _keep, widen=False), Fold(_nonzero, _or, _keep, widen=False)
_NORM2, _NORM1, _NORMP = Fold(_square, _add, _sqrt), Fold(_abs, _add, _keep), Fold(_abs_pow, _add, _root)
_NORM_MAX, _NORM_MIN, _NORM0 = Fold(_abs, _max, _keep), Fold(_abs, _min, _keep), Fold(_count, _add, _keep)


def _extreme(dtype, top):
    """The identity of max (``top`` False: the lowest value) or min (``top`` True) in ``dtype``."""
    if dtype.kind == "f":
        return math.inf if top else -math.inf
    if dtype.kind == "b":
        return top
    info = np.iinfo(dtype)
    return info.max if top else info.min


def _acc_dtype(name, x, dtype):
    return result_dtype(name, (x.dtype,), {} if dtype is None else {"dtype": dtype})


@kernel("sum", "cuda")
def _sum_k(x, dims=(), keepdim=False, dtype=None):
    return _SUM(x, dims, keepdim, _acc_dtype("sum", x, dtype), 0)


@kernel("mean", "cuda")
def _mean_k(x, dims=(), keepdim=False, dtype=None):
    return _MEAN(x, dims, keepdim, _acc_dtype("mean", x, dtype), 0)


@kernel("prod", "cuda")
def _prod_k(x, dim=None, keepdim=False, dtype=None):
    acc = _acc_dtype("prod", x, dtype)
    if dim is None:
        return _PROD(x, range(x.ndim), keepdim, acc, 1)
    return _PROD(x, (dim,), keepdim, acc, 1)


@kernel("amax", "cuda")
def _amax_k(x, dims=(), keepdim=False):
    return _AMAX(x, dims, keepdim, x.dtype, _extreme(x.dtype, False))


@kernel("amin", "cuda")
def _amin_k(x, dims=(), keepdim=False):
    return _AMIN(x, dims, keepdim, x.dtype, _extreme(x.dtype, True))


_BOOL = np.dtype(np.bool_)
kernel("all", "cuda")(lambda x, dims=(), keepdim=False: _ALL(x, dims, keepdim, _BOOL, True))
kernel("any", "cuda")(lambda x, dims=(), keepdim=False: _ANY(x, dims, keepdim, _BOOL, False))


@kernel("norm", "cuda")
def _norm_k(x, p=2.0, dims=(), keepdim=False):
    dt = result_dtype("norm", (x.dtype,), {"p": p})
    if p == 2.0:
        return _NORM2(x, dims, keepdim, dt, 0)
    if p == 1.0:
        return _NORM1(x, dims, keepdim, dt, 0)
    if p == "inf":
        return _NORM_MAX(x, dims, keepdim, dt, -math.inf)
    if p == "-inf":
        return _NORM_MIN(x, dims, keepdim, dt, math.inf)
    if p == 0.0:
        return _NORM0(x, dims, keepdim, dt, 0, 1.0)
    return _NORMP(x, dims, keepdim, dt, 0, p, 1.0 / p)


# ---- var / std: the mean, then the squared deviations from it ---------------------------------------
@device_fn
def _row_sum(x, base, inner, lo, r_len, step, s):
    for r in range(lo, r_len, step):
        s += x[base + r * inner]
    return s


@device_fn
def _row_sq_dev(x, base, inner, lo, r_len, step, m, s):
    for r in range(lo, r_len, step):
        d = x[base + r * inner] - m
        s += d * d
    return s


class _Var:
    def __init__(self, finish):
        finish = device_fn(finish)

        @jit
        def per_out(x, out, n_out, r_len, inner, zero, n, dof):
            t = cuda.grid(1)
            if t < n_out:
                base = row_base(t, r_len, inner)
                m = _row_sum(x, base, inner, 0, r_len, 1, zero) / n
                out[t] = finish(_row_sq_dev(x, base, inner, 0, r_len, 1, m, zero) / dof)

        @jit
        def per_block(x, out, r_len, inner, zero, n, dof):
            sh = cuda.shared.array(TPB, out.dtype)
            tid = cuda.threadIdx.x
            nt = cuda.blockDim.x
            base = row_base(cuda.blockIdx.x, r_len, inner)
            m = block_sum(sh, _row_sum(x, base, inner, tid, r_len, nt, zero)) / n
            s = block_sum(sh, _row_sq_dev(x, base, inner, tid, r_len, nt, m, zero))
            if tid == 0:
                out[cuda.blockIdx.x] = finish(s / dof)

        self.per_out, self.per_block = per_out, per_block

    def __call__(self, x, dims, keepdim, correction):
        dt = result_dtype("var", (x.dtype,), {"correction": 0})
        x = x if x.dtype == dt else cast(x, dt)
        dims = tuple(int(d) % max(x.ndim, 1) for d in dims)
        src, outer, r_len, inner = layout(x, dims)
        out = empty(out_shape(x.shape, dims, keepdim), dt)
        if outer * inner:
            T = dt.type
            args = (T(0), T(r_len), T(max(r_len - correction, 0)))  # numpy: max(n - ddof, 0)
            launch_rows(self.per_out, self.per_block, outer * inner, r_len, inner, (src.d, out.d), args)
        return out


_VAR, _STD = _Var(lambda v: v), _Var(lambda v: math.sqrt(v))
kernel("var", "cuda")(lambda x, dims=(), keepdim=False, correction=1: _VAR(x, dims, keepdim, correction))
kernel("std", "cuda")(lambda x, dims=(), keepdim=False, correction=1: _STD(x, dims, keepdim, correction))


# ---- prod's gradient: g times the products before and after each element (exact with zeros) ----------
@jit
def _prod_bw_k(g, x, out, n_rows, r_len, inner, one):
    t = cuda.grid(1)
    if t < n_rows:
        base = row_base(t, r_len, inner)
        acc = one
        for r in range(r_len):  # out <- product of the elements before
            k = base + r * inner
            out[k] = acc
            acc = acc * x[k]
        acc = one
        gv = g[t]
        for r in range(r_len - 1, -1, -1):  # times the product of those after, times g
            k = base + r * inner
            out[k] = out[k] * acc * gv
            acc = acc * x[k]


@kernel("prod_backward", "cuda")
def _prod_bw(g, x, dim=None, keepdim=False):
    dt = result_dtype("prod_backward", (g.dtype, x.dtype))
    out = empty(x.shape, dt)
    if dim is None:
        outer, r_len, inner = 1, x.size, 1
    else:
        outer, r_len, inner = dim_layout(x.shape, int(dim) % max(x.ndim, 1))
    n_rows = outer * inner
    if x.size:
        _prod_bw_k[blocks(n_rows), TPB](g.d, x.d, out.d, n_rows, r_len, inner, x.dtype.type(1))
    return out

