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
from .launch import TPB, blocks, device_fn
from .reduce_launch import block_size, layout, out_shape, per_thread


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

        @cuda.jit
        def per_out(x, vals, idx, n_out, r_len, inner):
            t = cuda.grid(1)
            if t < n_out:
                o = t // inner
                base = o * r_len * inner + (t - o * inner)
                bv = x[base]
                bi = 0
                for r in range(1, r_len):
                    v = x[base + r * inner]
                    if take(bv, bi, v, r):
                        bv = v
                        bi = r
                vals[t] = bv
                idx[t] = bi

        @cuda.jit
        def per_block(x, vals, idx, r_len, inner):
            shv = cuda.shared.array(TPB, vals.dtype)
            shi = cuda.shared.array(TPB, idx.dtype)
            t = cuda.blockIdx.x
            tid = cuda.threadIdx.x
            nt = cuda.blockDim.x
            o = t // inner
            base = o * r_len * inner + (t - o * inner)
            bv = x[base]
            bi = -1
            for r in range(tid, r_len, nt):
                v = x[base + r * inner]
                if take(bv, bi, v, r):
                    bv = v
                    bi = r
            shv[tid] = bv
            shi[tid] = bi
            cuda.syncthreads()
            s = nt // 2
            while s > 0:
                if tid < s and take(shv[tid], shi[tid], shv[tid + s], shi[tid + s]):
                    shv[tid] = shv[tid + s]
                    shi[tid] = shi[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                vals[t] = shv[0]
                idx[t] = shi[0]

        self.per_out, self.per_block = per_out, per_block

    def __call__(self, x, dims, keepdim):
        """(values, int64 indices along the reduced run) of ``x`` reduced over ``dims``."""
        src, outer, r_len, inner = layout(x, dims)
        shape = out_shape(x.shape, dims, keepdim)
        vals, idx = empty(shape, x.dtype), empty(shape, np.int64)
        n_out = outer * inner
        if n_out:
            if per_thread(r_len, inner, n_out):
                self.per_out[blocks(n_out), TPB](src.d, vals.d, idx.d, n_out, r_len, inner)
            else:
                self.per_block[n_out, block_size(r_len)](src.d, vals.d, idx.d, r_len, inner)
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
