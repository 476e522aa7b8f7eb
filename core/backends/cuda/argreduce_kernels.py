"""CUDA kernels of the arg-reductions: argmax / argmin and max_dim / min_dim (values and indices).

The input is read as (outer, R, inner) by ``reduce_kernels.layout``; each output keeps a (value, index) pair,
one thread per output for a short R, else one block per output with a shared-memory tree over pairs. The pair
rule is the CPU's (numpy's): the first NaN wins, then the larger (smaller) value, ties to the first index, so
the tree's order of combining gives the same answer as a left-to-right scan.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...ops.registry import kernel
from .array import empty
from .kernel import jit
from .launch import TPB, device_fn
from .reduce_launch import launch_rows, layout, out_shape, row_base


class _Arg:
    def __init__(self, better):
        better = device_fn(better)

        def take(va, ia, vb, ib):
            """Whether (vb, ib) replaces (va, ia); an index < 0 marks a thread that saw no element."""
            if ib < 0:
                return False
            if ia < 0:
                return True
            if va != va:
                return vb != vb and ib < ia
            if vb != vb or better(vb, va):
                return True
            return vb == va and ib < ia

        take = device_fn(take)

        @device_fn
        def scan(x, base, inner, lo, r_len, step, bv, bi):
            for r in range(lo, r_len, step):
                v = x[base + r * inner]
                if take(bv, bi, v, r):
                    bv = v
                    bi = r
            return bv, bi

        @jit
        def per_out(x, vals, idx, n_out, r_len, inner):
            t = cuda.grid(1)
            if t < n_out:
                base = row_base(t, r_len, inner)
                vals[t], idx[t] = scan(x, base, inner, 1, r_len, 1, x[base], 0)

        @jit
        def per_block(x, vals, idx, r_len, inner):
            shv = cuda.shared.array(TPB, vals.dtype)
            shi = cuda.shared.array(TPB, idx.dtype)
            tid = cuda.threadIdx.x
            base = row_base(cuda.blockIdx.x, r_len, inner)
            shv[tid], shi[tid] = scan(x, base, inner, tid, r_len, cuda.blockDim.x, x[base], -1)
            cuda.syncthreads()
            s = cuda.blockDim.x // 2
            while s > 0:
                if tid < s and take(shv[tid], shi[tid], shv[tid + s], shi[tid + s]):
                    shv[tid] = shv[tid + s]
                    shi[tid] = shi[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                vals[cuda.blockIdx.x] = shv[0]
                idx[cuda.blockIdx.x] = shi[0]

        self.per_out, self.per_block = per_out, per_block

    def __call__(self, x, dims, keepdim):
        """(values, int64 indices along the reduced run) of ``x`` reduced over ``dims``."""
        src, outer, r_len, inner = layout(x, dims)
        shape = out_shape(x.shape, dims, keepdim)
        vals, idx = empty(shape, x.dtype), empty(shape, np.int64)
        if outer * inner:
            launch_rows(self.per_out, self.per_block, outer * inner, r_len, inner, (src.d, vals.d, idx.d))
        return vals, idx


_ARGMAX, _ARGMIN = _Arg(lambda a, b: a > b), _Arg(lambda a, b: a < b)


def _one_dim(dim, x):
    return (int(dim) % max(x.ndim, 1),)


kernel("max_dim", "cuda")(lambda x, dim=0, keepdim=False: _ARGMAX(x, _one_dim(dim, x), keepdim))
kernel("min_dim", "cuda")(lambda x, dim=0, keepdim=False: _ARGMIN(x, _one_dim(dim, x), keepdim))


def _arg(fam, x, dim, keepdim):
    dims = tuple(range(x.ndim)) if dim is None else _one_dim(dim, x)
    return fam(x, dims, keepdim)[1]


kernel("argmax", "cuda")(lambda x, dim=None, keepdim=False: _arg(_ARGMAX, x, dim, keepdim))
kernel("argmin", "cuda")(lambda x, dim=None, keepdim=False: _arg(_ARGMIN, x, dim, keepdim))
