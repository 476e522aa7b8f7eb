"""Launch helpers shared by the CUDA kernels: grid sizes, broadcast strides, result dtypes, and the
generic elementwise engine (unary / binary with numpy broadcasting / ternary) that most registry ops
reuse with a small ``@cuda.jit(device=True)`` function.

Conventions (every kernel file follows them): kernels take flat device buffers (``CudaArray.d``)
and sizes; launchers take ``CudaArray``s (and, for binary ops, 0-d host arrays standing for python
scalars) and return new ``CudaArray``s; the result dtype of an op is whatever its CPU kernel
returns for those input dtypes (``result_dtype``), so both devices agree by construction.
"""
from __future__ import annotations

import math
import os

import numpy as np
from numba import config, cuda

from .array import CudaArray, empty
from .kernel import jit  # noqa: F401  (kernels: ``@jit``; device functions: ``device_fn``)

SIM = bool(config.ENABLE_CUDASIM)
# numba-cuda warns on every launch of fewer than 128 blocks (building the message and going through
# warnings.warn each time); ember launches small grids on purpose for small tensors. The environment
# variable keeps the setting when numba reloads its config; a user's own setting wins.
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")
config.CUDA_LOW_OCCUPANCY_WARNINGS = int(os.environ["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"])
TPB = 64 if SIM else 256  # threads per block; the simulator runs one Python thread per CUDA thread
MAXD = 6  # broadcasting kernels index up to this many dims


def blocks(n: int, tpb: int = TPB) -> int:
    return max(1, (n + tpb - 1) // tpb)


def device_fn(fn):
    return cuda.jit(device=True, inline=True)(fn) if not SIM else cuda.jit(device=True)(fn)


# ---- dtypes ----------------------------------------------------------------------------------
_DT_CACHE: dict = {}


def result_dtype(op_name: str, dtypes, attrs=None) -> np.dtype:
    """The dtype the op's CPU kernel gives for inputs of ``dtypes`` (probed once on 1-element arrays)."""
    key = (op_name, tuple(dtypes), repr(sorted((attrs or {}).items())))
    dt = _DT_CACHE.get(key)
    if dt is None:
        from ...ops.registry import get_op

        probe = [np.ones((1,), d) for d in dtypes]
        with np.errstate(all="ignore"):
            out = get_op(op_name).kernels["cpu"](*probe, **(attrs or {}))
        if isinstance(out, tuple):
            out = out[0]
        dt = _DT_CACHE[key] = np.asarray(out).dtype
    return dt


def scalar_of(a: np.ndarray):
    """A 0-d host array (a python scalar operand) as a typed numpy scalar for a kernel argument."""
    v = a.reshape(()).item() if isinstance(a, np.ndarray) else a
    return a.dtype.type(v) if isinstance(a, np.ndarray) else v


# ---- broadcasting ----------------------------------------------------------------------------
def broadcast_shape(*shapes):
    return tuple(np.broadcast_shapes(*shapes))


def bstrides(shape, out_shape):
    """Element strides of a contiguous ``shape`` read as ``out_shape`` (0 on broadcast dims), left-padded
    to MAXD."""
    nd = len(out_shape)
    if nd > MAXD:
        raise NotImplementedError(f"CUDA broadcasting supports at most {MAXD} dims, got shape {out_shape}")
    st = [0] * MAXD
    acc = 1
    k = len(shape)
    for i in range(k - 1, -1, -1):
        if shape[i] != 1:
            st[MAXD - k + i] = acc
        acc *= shape[i]
    return tuple(st)


def pad_shape(shape):
    return (1,) * (MAXD - len(shape)) + tuple(shape)


# ---- the elementwise engine ------------------------------------------------------------------
class Unary:
    """``out[i] = fn(x[i], p0, p1)`` for a device function of one value and two float parameters."""

    def __init__(self, fn):
        @jit
        def k(x, out, n, p0, p1):
            i = cuda.grid(1)
            if i < n:
                out[i] = fn(x[i], p0, p1)

        self.k = k

    def __call__(self, x: CudaArray, out_dtype, p0=0.0, p1=0.0) -> CudaArray:
        out = empty(x.shape, out_dtype)
        n = x.size
        if n:
            self.k[blocks(n), TPB](x.d, out.d, n, p0, p1)
        return out


class Binary:
    """``out = fn(a, b, p0, p1)`` with numpy broadcasting; either operand may be a 0-d host array (a scalar);
    ``p0``/``p1`` are float parameters (clamp bounds, a slope)."""

    def __init__(self, fn):
        @jit
        def same(a, b, out, n, p0, p1):
            i = cuda.grid(1)
            if i < n:
                out[i] = fn(a[i], b[i], p0, p1)

        @jit
        def right(a, s, out, n, p0, p1):
            i = cuda.grid(1)
            if i < n:
                out[i] = fn(a[i], s, p0, p1)

        @jit
        def left(s, b, out, n, p0, p1):
            i = cuda.grid(1)
            if i < n:
                out[i] = fn(s, b[i], p0, p1)

        @jit
        def bcast(a, b, out, n, shape, sa, sb, p0, p1):
            i = cuda.grid(1)
            if i < n:
                r = i
                ia = 0
                ib = 0
                for d in range(MAXD - 1, -1, -1):
                    s = shape[d]
                    j = r % s
                    r //= s
                    ia += j * sa[d]
                    ib += j * sb[d]
                out[i] = fn(a[ia], b[ib], p0, p1)

        self.same, self.right, self.left, self.bcast = same, right, left, bcast

    def __call__(self, a, b, out_dtype, p0=0.0, p1=0.0) -> CudaArray:
        ca, cb = isinstance(a, CudaArray), isinstance(b, CudaArray)
        if ca and cb:
            if a.shape == b.shape:
                out = empty(a.shape, out_dtype)
                n = out.size
                if n:
                    self.same[blocks(n), TPB](a.d, b.d, out.d, n, p0, p1)
                return out
            shape = broadcast_shape(a.shape, b.shape)
            out = empty(shape, out_dtype)
            n = out.size
            if n:
                self.bcast[blocks(n), TPB](a.d, b.d, out.d, n, pad_shape(shape), bstrides(a.shape, shape),
                                           bstrides(b.shape, shape), p0, p1)
            return out
        if ca:
            shape = broadcast_shape(a.shape, np.shape(b))
            if shape != a.shape:
                return self(a, from_host_small(b), out_dtype, p0, p1)
            out = empty(shape, out_dtype)
            if out.size:
                self.right[blocks(out.size), TPB](a.d, scalar_of(b), out.d, out.size, p0, p1)
            return out
        if cb:
            shape = broadcast_shape(np.shape(a), b.shape)
            if shape != b.shape:
                return self(from_host_small(a), b, out_dtype, p0, p1)
            out = empty(shape, out_dtype)
            if out.size:
                self.left[blocks(out.size), TPB](scalar_of(a), b.d, out.d, out.size, p0, p1)
            return out
        raise TypeError("a CUDA elementwise op needs at least one CUDA operand")


def from_host_small(a):
    from .array import from_host

    return from_host(a)


class Ternary:
    """``out = fn(a, b, c)`` with numpy broadcasting of three CUDA arrays (``where``, masked ops)."""

    def __init__(self, fn):
        @jit
        def bcast(a, b, c, out, n, shape, sa, sb, sc):
            i = cuda.grid(1)
            if i < n:
                r = i
                ia = 0
                ib = 0
                ic = 0
                for d in range(MAXD - 1, -1, -1):
                    s = shape[d]
                    j = r % s
                    r //= s
                    ia += j * sa[d]
                    ib += j * sb[d]
                    ic += j * sc[d]
                out[i] = fn(a[ia], b[ib], c[ic])

        self.bcast = bcast

    def __call__(self, a, b, c, out_dtype) -> CudaArray:
        a, b, c = (x if isinstance(x, CudaArray) else from_host_small(x) for x in (a, b, c))
        shape = broadcast_shape(a.shape, b.shape, c.shape)
        out = empty(shape, out_dtype)
        n = out.size
        if n:
            self.bcast[blocks(n), TPB](a.d, b.d, c.d, out.d, n, pad_shape(shape), bstrides(a.shape, shape),
                                       bstrides(b.shape, shape), bstrides(c.shape, shape))
        return out


# ---- basics used by array.py and the core ----------------------------------------------------
@device_fn
def _ident(x, p0, p1):
    return x


@device_fn
def _nonzero(x, p0, p1):
    return x != 0


_copy = Unary(_ident)
_to_bool = Unary(_nonzero)


@jit
def _fill_k(out, n, v):
    i = cuda.grid(1)
    if i < n:
        out[i] = v


@device_fn
def strided_offset(i, shape, st, base):
    """``base + sum(idx[d] * st[d])`` over the multi-index ``idx`` of flat index ``i`` in the MAXD-padded
    ``shape`` (``st`` padded alike: element strides, 0 on broadcast dims)."""
    r = i
    p = base
    for d in range(MAXD - 1, -1, -1):
        s = shape[d]
        p += (r % s) * st[d]
        r //= s
    return p


@jit
def _gather_k(x, out, n, shape, sx):
    i = cuda.grid(1)
    if i < n:
        out[i] = x[strided_offset(i, shape, sx, 0)]


def fill(a: CudaArray, value) -> None:
    if a.size:
        _fill_k[blocks(a.size), TPB](a.d, a.size, a.dtype.type(value))


def full(shape, value, dtype) -> CudaArray:
    out = empty(shape, dtype)
    fill(out, value)
    return out


def cast(a: CudaArray, dtype) -> CudaArray:
    dtype = np.dtype(dtype)
    if dtype == a.dtype:
        return a.copy()
    if dtype.kind == "b":
        return _to_bool(a, dtype)
    if a.dtype.kind == "f" and dtype.kind in "iu" and dtype.itemsize < 8:
        # numpy (on x86) wraps out-of-range floats like an int64 conversion then truncation; a GPU's direct
        # float -> uint8 conversion saturates instead: go through int64 to get numpy's values
        return _copy(_copy(a, np.dtype(np.int64)), dtype)
    return _copy(a, dtype)


def broadcast_to(a: CudaArray, shape) -> CudaArray:
    """A contiguous copy of ``a`` broadcast to ``shape``."""
    shape = tuple(shape)
    if a.shape == shape:
        return a.copy()
    np.broadcast_shapes(a.shape, shape)  # raises numpy's message on a mismatch
    out = empty(shape, a.dtype)
    if out.size:
        _gather_k[blocks(out.size), TPB](a.d, out.d, out.size, pad_shape(shape), bstrides(a.shape, shape))
    return out


def strided_copy(a: CudaArray, shape, strides, offset=0) -> CudaArray:
    """A contiguous array of ``shape`` reading ``a``'s flat buffer at ``offset + sum(idx * strides)`` (element
    strides): the one kernel behind permute, slicing with steps, flip and expand."""
    shape = tuple(shape)
    if len(shape) > MAXD:
        raise NotImplementedError(f"CUDA strided copies support at most {MAXD} dims, got shape {shape}")
    st = (0,) * (MAXD - len(shape)) + tuple(int(s) for s in strides)
    out = empty(shape, a.dtype)
    if out.size:
        src = a.d[offset:] if offset else a.d
        _gather_k[blocks(out.size), TPB](src, out.d, out.size, pad_shape(shape), st)
    return out


def ceil_div(a, b):
    return -(-a // b)


__all__ = ["SIM", "TPB", "MAXD", "blocks", "jit", "device_fn", "result_dtype", "scalar_of", "Unary", "Binary",
           "Ternary", "fill", "full", "cast", "broadcast_to", "strided_copy", "bstrides", "pad_shape", "math"]
