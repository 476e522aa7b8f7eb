"""Scatter-add kernels behind the gradients of indexing, gather and index_select.

numpy's ``np.add.at`` is the generic path; float32 C-contiguous data takes these numba loops.
Callers check every index first: the loops do no bounds checking.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .jit import njit, prange_kernel


@prange_kernel()
def _index_add_3d(out, idx, src):
    # out (O, N, I) += src (O, J, I) scattered along axis 1 by idx (J,); rows of one o never collide
    # across o, so the outer loop is the parallel one.
    for o in prange(out.shape[0]):
        for j in range(idx.shape[0]):
            r = idx[j]
            for i in range(out.shape[2]):
                out[o, r, i] += src[o, j, i]


@njit
def _scatter_add_flat(out, lin, src):
    for k in range(lin.shape[0]):
        out[lin[k]] += src[k]


def index_add(out: np.ndarray, dim: int, idx: np.ndarray, src: np.ndarray) -> None:
    """In place: ``out[..., idx[j], ...] += src[..., j, ...]`` along ``dim`` (out is C-contiguous)."""
    if out.size == 0 or idx.size == 0:
        return
    if out.dtype != np.float32 or src.dtype != np.float32:
        np.add.at(out, (slice(None),) * dim + (idx,), src)
        return
    o = int(np.prod(out.shape[:dim], dtype=np.int64))
    out3 = out.reshape(o, out.shape[dim], -1)
    src3 = np.ascontiguousarray(src).reshape(o, idx.size, out3.shape[2])
    work = out3.shape[0] * idx.size * out3.shape[2] if o > 1 else 0
    _index_add_3d(work, out3, np.ascontiguousarray(idx, dtype=np.int64), src3)


def scatter_add_flat(out: np.ndarray, lin: np.ndarray, src: np.ndarray) -> None:
    """In place: ``out.flat[lin[k]] += src.flat[k]`` (out is C-contiguous; lin and src have one shape)."""
    flat = out.reshape(-1)
    if out.dtype != np.float32:
        np.add.at(flat, lin.reshape(-1), src.reshape(-1))
        return
    _scatter_add_flat(flat, np.ascontiguousarray(lin, dtype=np.int64).reshape(-1),
                      np.ascontiguousarray(src, dtype=np.float32).reshape(-1))
