"""CUDA kernels of the matrix products: ``matmul`` (torch's 1-D and batch-broadcast rules), ``linear``,
``linear_act`` and ``linear_weight_grad``, all on one shared-memory tiled GEMM that conv_kernels.py
reuses for the convolutions.

The GEMM: ``C[z] = act(A[z] @ B[z] + bias)`` (or ``C[z] +=`` it, ``accumulate``) for a batch index z of up
to ``BD`` broadcast dims. A and B are read through (row, col) element strides, so a transposed operand
(linear's ``x @ W.T``, the weight gradient's ``g.T @ x``, conv's ``W.T @ g``) needs no copy; C is dense
row-major. Each block computes a BM x BN tile of C, marching over K in BK-deep slabs staged in shared
memory; each thread keeps a TM x TN register tile, its rows/columns strided by the thread grid so the
shared reads are conflict-free and the stores to C coalesce. The batch runs on the grid's y axis (a
loop past 65535). Kernels are compiled once per dtype (shared arrays need a compile-time dtype).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, from_dtype

from ...ops.registry import kernel
from .array import CudaArray, empty, from_host
from .kernel import jit
from .launch import SIM, TPB, blocks, cast, device_fn

# Tile geometry: 64x64 tiles of 16x16 threads x 4x4 outputs on a GPU; 16x16 tiles of 8x8 threads x 2x2
# outputs on the simulator (one Python thread per CUDA thread).
BM = BN = 16 if SIM else 64
BK = 8 if SIM else 16
TM = TN = 2 if SIM else 4
THR_M, THR_N = BM // TM, BN // TN
NT = THR_M * THR_N  # threads per block
# shared rows padded by one element so column-wise tile stores hit distinct banks (named constants: a
# shared array's shape must be literal ints, and numba does not fold ``BM + 1`` inside a kernel)
BMP, BNP = BM + 1, BN + 1
BD = 4  # batch dims of the GEMM (MAXD minus the two matrix dims)
MAX_GRID_Y = 65535

ACTS = {None: 0, "none": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}

_SQRT1_2 = 0.7071067811865476
_K_TANH = 0.7978845608028654  # sqrt(2/pi)
_C_TANH = 0.044715


def _make_gemm(np_dtype):
    nbt = from_dtype(np_dtype)
    # constants in the compute dtype, so float32 epilogues stay in float32
    half, one, k_tanh, c_tanh, sqrt1_2 = (np_dtype.type(v) for v in (0.5, 1.0, _K_TANH, _C_TANH, _SQRT1_2))
    zero = np_dtype.type(0)

    @device_fn
    def stage(S, src, off, r0, nr, rs, k0, k, ks, k_fast, width, tid):
        """The slab ``S[kk, rr] = src[off + (r0 + rr) * rs + (k0 + kk) * ks]`` (``width`` rows x BK, zero past
        ``nr`` / ``k``); consecutive threads walk the operand's contiguous axis (coalesced loads): k when
        ``k_fast``, else the rows."""
        for e in range(tid, width * BK, NT):
            if k_fast:
                rr = e // BK
                kk = e % BK
            else:
                kk = e // width
                rr = e % width
            g = r0 + rr
            gk = k0 + kk
            if g < nr and gk < k:
                S[kk, rr] = src[off + g * rs + gk * ks]
            else:
                S[kk, rr] = zero

    @device_fn
    def activate(v, act):
        if act == 1:
            if v <= zero:  # NaN stays NaN, as in the CPU relu
                v = zero
        elif act == 2:
            v = half * v * (one + math.erf(v * sqrt1_2))
        elif act == 3:
            v = half * v * (one + math.tanh(k_tanh * (v + c_tanh * v * v * v)))
        return v

    @jit
    def gemm(a, b, c, bias, m, n, k, ars, acs, brs, bcs, bias_m, bias_n, has_bias, act, accumulate, nz, tiles_n,
             bshape, sa, sb, sc, sbias, kchunk, ws):
        As = cuda.shared.array((BK, BMP), nbt)
        Bs = cuda.shared.array((BK, BNP), nbt)
        acc = cuda.local.array((TM, TN), nbt)
        ra = cuda.local.array(TM, nbt)
        rb = cuda.local.array(TN, nbt)
        tid = cuda.threadIdx.x
        tx = tid % THR_N
        ty = tid // THR_N
        m0 = (cuda.blockIdx.x // tiles_n) * BM
        n0 = (cuda.blockIdx.x % tiles_n) * BN
        for z in range(cuda.blockIdx.y, nz, cuda.gridDim.y):
            r = z
            oa = 0
            ob = 0
            oc = 0
            obias = 0
            for d in range(BD - 1, -1, -1):
                s = bshape[d]
                j = r % s
                r //= s
                oa += j * sa[d]
                ob += j * sb[d]
                oc += j * sc[d]
                obias += j * sbias[d]
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = zero
            # split-K (grid z > 1): this block sums k in [kbeg, kend) and leaves the sum in ws[z-th split]
            kbeg = cuda.blockIdx.z * kchunk
            kend = min(k, kbeg + kchunk)
            for k0 in range(kbeg, kend, BK):
                stage(As, a, oa, m0, m, ars, k0, kend, acs, acs == 1, BM, tid)
                stage(Bs, b, ob, n0, n, bcs, k0, kend, brs, bcs != 1, BN, tid)
                cuda.syncthreads()
                for kk in range(BK):
                    for i in range(TM):
                        ra[i] = As[kk, ty + i * THR_M]
                    for j in range(TN):
                        rb[j] = Bs[kk, tx + j * THR_N]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i, j] += ra[i] * rb[j]
                cuda.syncthreads()
            for i in range(TM):
                gm = m0 + ty + i * THR_M
                if gm >= m:
                    continue
                for j in range(TN):
                    gn = n0 + tx + j * THR_N
                    if gn >= n:
                        continue
                    v = acc[i, j]
                    if cuda.gridDim.z > 1:  # split-K: the partial sum; splitk_finish adds them up
                        ws[cuda.blockIdx.z * m * n + gm * n + gn] = v
                        continue
                    idx = oc + gm * n + gn
                    if accumulate:
                        v += c[idx]
                    if has_bias:
                        v += bias[obias + gm * bias_m + gn * bias_n]
                    c[idx] = activate(v, act)

    @jit
    def splitk_finish(ws, c, bias, m, n, splits, bias_m, bias_n, has_bias, act, accumulate):
        """``c = act(sum of the split partial products (+ c) + bias)`` for an unbatched split-K GEMM."""
        i = cuda.grid(1)
        mn = m * n
        if i < mn:
            v = zero
            for s in range(splits):
                v += ws[s * mn + i]
            if accumulate:
                v += c[i]
            if has_bias:
                v += bias[(i // n) * bias_m + (i % n) * bias_n]
            c[i] = activate(v, act)

    return gemm, splitk_finish


_GEMMS: dict = {}


def _gemm_kernel(dtype):
    fn = _GEMMS.get(dtype)
    if fn is None:
        fn = _GEMMS[dtype] = _make_gemm(np.dtype(dtype))
    return fn


def _pad_batch(t, fill):
    t = tuple(int(v) for v in t)
    if len(t) > BD:
        raise NotImplementedError(f"CUDA matmul supports at most {BD} batch dims, got {len(t)}")
    return (fill,) * (BD - len(t)) + t


def gemm(a, b, c, m, n, k, ars, acs, brs, bcs, batch=(), sa=(), sb=(), sc=(), bias=None, bias_m=0, bias_n=0,
         sbias=(), act=0, accumulate=False):
    """Launch ``c[z] (=|+=) act(a[z] @ b[z] + bias)`` on flat device buffers of one dtype: ``a[z][i, p] =
    a[oa + i*ars + p*acs]`` (likewise b), ``c[z]`` dense (m, n) at ``oc``; the offsets of z come from the
    batch shape ``batch`` and per-operand element strides ``sa, sb, sc, sbias`` (0 on broadcast dims); the
    bias of ``c[z][i, j]`` is ``bias[ob + i*bias_m + j*bias_n]``."""
    if m == 0 or n == 0:
        return
    nz = 1
    for s in batch:
        nz *= int(s)
    if nz == 0:
        return
    tiles_n = (n + BN - 1) // BN
    tiles = ((m + BM - 1) // BM) * tiles_n
    splits, kchunk = _split_k(tiles, nz, k)
    fn, finish = _gemm_kernel(c.dtype)
    ws = empty((splits * m * n,), c.dtype).d if splits > 1 else c
    bias_ = c if bias is None else bias
    fn[(tiles, min(nz, MAX_GRID_Y), splits), NT](
        a, b, c, bias_, m, n, k, ars, acs, brs, bcs, bias_m, bias_n, bias is not None, act,
        bool(accumulate), nz, tiles_n, _pad_batch(batch, 1), _pad_batch(sa, 0), _pad_batch(sb, 0),
        _pad_batch(sc, 0), _pad_batch(sbias, 0), kchunk, ws)
    if splits > 1:
        finish[blocks(m * n), TPB](ws, c, bias_, m, n, splits, bias_m, bias_n, bias is not None, act,
                                   bool(accumulate))


# split-K: a GEMM with few output tiles and a long K (a convolution's weight gradient sums over every
# pixel of the batch) would run on a handful of SMs, each walking K alone; it is cut into K ranges run
# side by side (partial sums in a workspace, added up by a second kernel). Unbatched GEMMs only.
SPLIT_MIN_STEPS = 8 if SIM else 64  # K steps (of BK) a block must have before splitting pays off
SPLIT_TARGET_BLOCKS = 8 if SIM else 264  # about two blocks per SM of an H100


def _split_k(tiles, nz, k):
    """(number of K ranges, K per range) for a GEMM of ``tiles`` output tiles x ``nz`` batches."""
    steps = (k + BK - 1) // BK
    if nz != 1 or steps < SPLIT_MIN_STEPS or tiles * 2 > SPLIT_TARGET_BLOCKS:
        return 1, k
    splits = max(1, min(SPLIT_TARGET_BLOCKS // tiles, steps // (SPLIT_MIN_STEPS // 2)))
    kchunk = (steps + splits - 1) // splits * BK
    return (k + kchunk - 1) // kchunk, kchunk


# ---- matmul ----------------------------------------------------------------------------------
def _batch_strides(bshape, mat, out_batch):
    """Element strides of the batch dims ``bshape`` of a contiguous stack of ``mat``-element matrices,
    read as ``out_batch`` (0 on broadcast dims; right-aligned)."""
    st = [0] * len(out_batch)
    acc = mat
    for i in range(len(bshape) - 1, -1, -1):
        if bshape[i] != 1:
            st[len(out_batch) - len(bshape) + i] = acc
        acc *= bshape[i]
    return tuple(st)


def _as_dtype(x: CudaArray, dt):
    return x if x.dtype == dt else cast(x, dt)


@kernel("matmul", "cuda")
def _matmul(a, b):
    dt = np.result_type(a.dtype, b.dtype)
    if dt.kind == "b":  # logical matmul: count the true products in int32, then test for nonzero
        return cast(_matmul(cast(a, np.int32), cast(b, np.int32)), dt)
    a, b = _as_dtype(a, dt), _as_dtype(b, dt)
    sa = a.shape if a.ndim > 1 else (1,) + a.shape
    sb = b.shape if b.ndim > 1 else b.shape + (1,)
    (m, k), n = sa[-2:], sb[-1]
    batch = tuple(np.broadcast_shapes(sa[:-2], sb[:-2]))
    out = empty(batch + ((m,) if a.ndim > 1 else ()) + ((n,) if b.ndim > 1 else ()), dt)
    if len(sb) == 2:  # a plain (or stacked) matrix times one matrix: the stack is one taller GEMM
        gemm(a.d, b.d, out.d, math.prod(sa[:-1]), n, k, k, 1, n, 1)
        return out
    gemm(a.d, b.d, out.d, m, n, k, k, 1, n, 1, batch, _batch_strides(sa[:-2], m * k, batch),
         _batch_strides(sb[:-2], k * n, batch), _batch_strides(batch, m * n, batch))
    return out


# ---- linear ----------------------------------------------------------------------------------
def _bias_array(b, dt):
    if b is None:
        return None
    if not isinstance(b, CudaArray):  # a 0-d CPU tensor joining CUDA ones
        b = from_host(np.asarray(b, dt))
    return _as_dtype(b, dt)


def _linear(x, w, b, act):
    dt = np.result_type(x.dtype, w.dtype)
    if act and dt.kind != "f":
        raise NotImplementedError(f"linear_act on CUDA supports float32 and float64, got {dt}")
    x, w, b = _as_dtype(x, dt), _as_dtype(w, dt), _bias_array(b, dt)
    k, n = w.shape[1], w.shape[0]
    m = math.prod(x.shape[:-1])
    out = empty(x.shape[:-1] + (n,), dt)
    # B = W^T read in place: B[p, j] = w[j*k + p]
    gemm(x.d, w.d, out.d, m, n, k, k, 1, 1, k, bias=None if b is None else b.d,
         bias_n=1 if b is not None and b.ndim == 1 else 0, act=ACTS[act])
    return out


@kernel("linear", "cuda")
def _linear_k(x, w, b=None):
    return _linear(x, w, b, None)


@kernel("linear_act", "cuda")
def _linear_act_k(x, w, b=None, *, act="relu"):
    return _linear(x, w, b, act)


@kernel("linear_weight_grad", "cuda")
def _linear_weight_grad(g, x):
    dt = np.result_type(g.dtype, x.dtype)
    g, x = _as_dtype(g, dt), _as_dtype(x, dt)
    o, i = g.shape[-1], x.shape[-1]
    rows = math.prod(g.shape[:-1])
    out = empty((o, i), dt)
    # A = g2^T read in place: A[p, r] = g[r*o + p]
    gemm(g.d, x.d, out.d, o, i, rows, 1, o, i, 1)
    return out
