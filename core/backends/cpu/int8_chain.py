"""A chain of dynamically quantized linear layers in one kernel call (the runtime's ``dynamic_quantized_mlp``).

Each layer is ``qlinear_dynamic``: its float input quantized to uint8 with the input's own min/max, the int8
GEMM, the dequantizing epilogue (bias, optional ReLU). Run one node at a time, every layer paid its Python
glue, a thread hand-off and a separate min/max pass (~25 us of the int8 mlp's ~60 us per layer at B = 64).
Here one call runs the whole chain on the calling thread and, when it joins in time, one helper thread:

- the caller takes the input's min/max (the first layer's qparams) while the helper wakes up;
- in each layer both threads take blocks of rows from a shared counter (an atomic exchange on ``ctl``), quantize
  them, run the GEMM and its epilogue on them and keep the min/max of the rows they produced;
- between layers they meet at a barrier and combine those ranges into the next layer's qparams (both compute the
  same float32 values), so the outputs are bit-identical to the layers run one by one.

A barrier needs both threads inside the kernel, so the helper *joins* (an atomic exchange on ``ctl[CLAIM]``) and
the caller *closes* the join when it reaches the first barrier: a helper that comes later returns at once and the
caller goes on alone. Non-finite values in a layer's input stop both threads after the barrier; the driver raises.

The kernel is a *native task* (helpers.py, ``jit.run_native``): a numba ``cfunc`` whose one argument is an int64
table of addresses and sizes, built once per set of weights and batch size (``_Plan``), so a call unboxes no
arrays and a spinning helper starts it without Python.
"""
from __future__ import annotations

import numba
import numpy as np

from . import intrinsics as _at
from . import jit
from . import range_ir as _range_ir
from .helpers import ARRIVE, CTL_SIZE, NONE
from .int8_gemm import BLOCK_ROWS, MODE_DEQUANT, PAR_MIN_MACS, PAR_MIN_ROWS, linear_rows
from .int8_kernels import _dequant_parts, _qparams, _quantize_rows, act_qmax, cached_per_arrays, qlinear_dynamic
from .jit import njit
from .native_tools import (NativePlan, NativeTask, align64, array_at as _array, barrier, join as _join, take as _take,
                           thread_of)

MAX_LAYERS = 63  # progress marks are gen * 64 + layer
BLOCK = BLOCK_ROWS  # rows per claimed block: the GEMM's largest row block (8 and 4 rows measured slower)


@njit(fastmath=False)
def _rows_range(out, r0, r1, dst, addr):
    """dst[:3] = (min, max, 1.0 if non-finite else 0.0) of rows r0 .. r1 of out."""
    if addr != 0:
        _at.call(addr, (out[r0:].ctypes.data, (r1 - r0) * out.shape[1], dst.ctypes.data))
        return
    lo, hi, bad = np.float32(np.inf), np.float32(-np.inf), np.float32(0)
    for r in range(r0, r1):
        for v in out[r]:
            if not np.isfinite(v):
                bad = np.float32(1)
            else:
                lo, hi = min(lo, v), max(hi, v)
    dst[0], dst[1], dst[2] = lo, hi, bad


# The task's int64 table: the input and workspace addresses (set per call by jit.run_native), the rows, the first
# layer's K, the number of layers, the min/max IR kernel's address, the byte offsets in the workspace of the
# per-thread ranges (2, L + 1, 16) float32 and of the status (int64), the workspace's size, the largest activation
# code (255, or 127 with reduce_range); then F fields per layer.
X, WS, M, K0, NL, RANGE_FN, RANGES, STATUS, WS_SIZE, QMAX = range(10)
HEAD = 10
# Per layer: the int8 weight rows (N, Kp), their VNNI layout (address, 4 dims), column sums (int32), w_scale and
# bias (float32, 2N), relu, the IR tile's address, its kind (0: none; vnni.kind()), the 16-column AVX2 tile's
# address, Kp, N, and the byte offsets in the workspace of the layer's uint8 activations (M, Kp) and float32 outputs
# (M, N).
W, VNNI, V0, V1, V2, V3, COLS, WSB, RELU, TILE, USE, HALF, KP, N, ACT, OUT = range(16)
F = 16

_inline = numba.njit(inline="always", fastmath=False, error_model="numpy")


@_inline
def _layer(t, li):
    """Layer li's constant fields: (weight rows, IR tile layout, column sums, w_scale + bias, relu, tile, kind, half
    tile, Kp, N)."""
    b = HEAD + F * li
    kp, n = t[b + KP], t[b + N]
    return (_array(t[b + W], (n, kp), np.int8),
            _array(t[b + VNNI], (t[b + V0], t[b + V1], t[b + V2], t[b + V3]), np.int8),
            _array(t[b + COLS], n, np.int32), _array(t[b + WSB], 2 * n, np.float32), t[b + RELU] != 0, t[b + TILE],
            t[b + USE], t[b + HALF], kp, n)


@_inline
def _views(t, ws, li, m):
    """Layer li's uint8 activation rows (m, Kp) and float32 outputs (m, N) inside the workspace bytes ws."""
    b = HEAD + F * li
    kp, n, a, o = t[b + KP], t[b + N], t[b + ACT], t[b + OUT]
    return ws[a:a + m * kp].reshape((m, kp)), ws[o:o + 4 * m * n].view(np.float32).reshape((m, n))


@_inline
def _chain(t, ctl, gen, role, part):
    """Part ``part`` of the chain in table ``t`` (see the module docstring)."""
    me = thread_of(ctl, gen, role, part)
    if me < 0:
        return
    m, nl, addr, qmax = t[M], t[NL], t[RANGE_FN], np.float32(t[QMAX])
    x = _array(t[X], (m, t[K0]), np.float32)
    ws = _array(t[WS], t[WS_SIZE], np.uint8)
    ranges = ws[t[RANGES]:t[RANGES] + 128 * (nl + 1)].view(np.float32).reshape((2, nl + 1, 16))
    mine = ranges[me]
    for li in range(nl + 1):  # each thread its own row; read by the other only after a barrier
        mine[li, 0], mine[li, 1], mine[li, 2] = np.inf, -np.inf, 0
    nblk = (m + BLOCK - 1) // BLOCK
    alone = role == NONE
    joined = False
    if me == 0:  # the first layer's qparams, while the helper wakes up
        ws[t[STATUS]:t[STATUS] + 8].view(np.int64)[0] = 0
        _rows_range(x, 0, m, ranges[0, 0], addr)
        if not alone:
            _at.store_release(ctl, ARRIVE, gen * 64)
    else:
        while _at.load_acquire(ctl, ARRIVE) < gen * 64:
            _at.cpu_relax()
        joined = True
    no_i32, no_u8 = np.zeros((1, 1, 1), np.int32), np.zeros((1, 1, 1), np.uint8)  # the outputs not written
    no_bias, no_mult, f0 = np.zeros(1, np.int32), np.zeros(1, np.float32), np.float32(0)  # requantizing fields
    part_range = np.empty(3, np.float32)
    for li in range(nl):
        if li == 1 and me == 0 and not alone:
            joined = not _join(ctl, gen, 0)  # close the join: from here on the helper is in or never comes
        if li > 0 and joined:  # meet the other thread: its range of the rows it produced
            barrier(ctl, gen, me, li)
        r = ranges[0, 0] if li == 0 else ranges[me, li]
        lo, hi, bad = r[0], r[1], r[2]
        if li > 0 and joined:
            o = ranges[1 - me, li]
            lo, hi, bad = min(lo, o[0]), max(hi, o[1]), max(bad, o[2])
        if bad != 0:
            ws[t[STATUS]:t[STATUS] + 8].view(np.int64)[0] = li + 1  # layer li's input holds NaN or Inf
            break
        scale, zpf = _qparams(lo, hi, qmax)
        w, vnni, col_sums, wsb, relu, tile, use, half, kp, n = _layer(t, li)
        au, out = _views(t, ws, li, m)
        src = x if li == 0 else _views(t, ws, li - 1, m)[1]
        ep = (MODE_DEQUANT, int(zpf), col_sums, no_bias, no_mult, f0, f0, f0, scale, wsb[:n], wsb[n:], relu, vnni,
              tile, use, half)
        outs = (no_i32, no_u8, out.reshape((m, n, 1)))
        acc = mine[li + 1]
        b = 0
        while True:
            if not alone:
                b = _take(ctl, gen * 64 + li, nblk)
            if b < 0 or b >= nblk:
                break
            r0, r1 = b * BLOCK, min(m, b * BLOCK + BLOCK)
            _quantize_rows(src, scale, zpf, au, r0, r1, qmax)
            linear_rows(au, w, ep, outs, r0, r1)
            if li + 1 < nl:
                _rows_range(out, r0, r1, part_range, addr)
                acc[0], acc[1] = min(acc[0], part_range[0]), max(acc[1], part_range[1])
                acc[2] = max(acc[2], part_range[2])
            if alone:
                b += 1


def _task(arg, ctl_addr, gen, role, part):
    """The native task: ``_chain`` on the table at address ``arg``."""
    t = _array(arg, HEAD, np.int64)
    t = _array(arg, HEAD + F * t[NL], np.int64)
    _chain(t, _array(ctl_addr, CTL_SIZE, np.int64), gen, role, part)


_TASK = NativeTask(_task)


def task_address() -> int:
    """The address of the compiled ``_task`` (compiled, or loaded from numba's cache, on first use)."""
    return _TASK.address()


class _Plan(NativePlan):
    """The task's table for one set of layers: the constant fields (per layer, see F) and, per batch size, the
    workspace layout; holds the arrays the table points at."""

    def __init__(self, layers, reduce_range=False):
        self.layers, self.reduce_range, self.qmax = tuple(layers), bool(reduce_range), int(act_qmax(reduce_range))
        self.keep, fields, self.dims = [], [], []
        for p, s, b, relu in layers:
            head, tail = _dequant_parts(p, s, b, bool(relu))
            ws, bf, _, vnni, tile, use, half = tail
            cols, wsb = np.ascontiguousarray(head[0], np.int32), np.concatenate([ws, bf]).astype(np.float32)
            self.keep += [p.data, vnni, cols, wsb]
            kp, n = p.data.shape[1], p.n
            fields.append([p.data.ctypes.data, vnni.ctypes.data, *vnni.shape, cols.ctypes.data, wsb.ctypes.data,
                           int(relu), int(tile), int(use), int(half), kp, n, 0, 0])
            self.dims.append((kp, n))
        self.fields = np.array(fields, np.int64)
        self.k0 = layers[0][0].k

    def _table(self, m):
        """(the table for m rows, the workspace's size in bytes)."""
        fields, size = self.fields.copy(), 0
        for li, (kp, n) in enumerate(self.dims):  # each layer's activations, then its outputs, 64-byte aligned
            fields[li, ACT] = size
            fields[li, OUT] = size = size + align64(m * kp)
            size += align64(4 * m * n)
        ranges, status = size, size + 128 * (len(self.dims) + 1)
        size = status + 64
        head = [0, 0, m, self.k0, len(self.dims), _range_ir.address(), ranges, status, size, self.qmax]
        return np.concatenate([np.array(head, np.int64), fields.ravel()]), size


_PLANS: dict = {}  # ids of the layers' arrays and relus -> (weakrefs to the arrays, plan)


def plan(layers, reduce_range=False) -> _Plan:
    """The chain's plan for ``layers`` = [(PackedWeight, w_scale, bias or None, relu), ...], each layer's input
    quantized to codes 0 .. 255 (0 .. 127 with ``reduce_range``), made once per set of arrays (a ValueError when
    the layers do not chain)."""
    if not layers or len(layers) > MAX_LAYERS:
        raise ValueError(f"dynamic_chain: needs 1 to {MAX_LAYERS} layers, got {len(layers)}")
    qmax = int(act_qmax(reduce_range))
    for i, (p, *_) in enumerate(layers):
        if p.act_max < qmax:
            raise ValueError(f"dynamic_chain: layer {i}'s weight was packed for activation codes up to {p.act_max}, "
                             f"the chain's codes reach {qmax} (pack it with act_max={qmax})")
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if b[0].k != a[0].n:
            raise ValueError(f"dynamic_chain: layer {i} has {a[0].n} outputs, layer {i + 1} expects {b[0].k} inputs")
    arrays = tuple(a for p, s, b, _ in layers for a in (p.data, s, b))
    extra = (tuple(bool(r) for *_, r in layers), qmax)
    return cached_per_arrays(_PLANS, arrays, extra, lambda: _Plan(layers, reduce_range), limit=1024)


def run(x, plan_) -> np.ndarray:
    """The chain of ``plan_`` on float32 x (..., K): what ``qlinear_dynamic`` one layer after the other returns."""
    k0 = plan_.k0
    if x.ndim < 1 or x.shape[-1] != k0:
        raise ValueError(f"dynamic_chain: input has {x.shape[-1] if x.ndim else 0} features, the first layer "
                         f"expects {k0} (input shape {x.shape})")
    if numba.config.DISABLE_JIT:  # the task is machine code; as Python the layers run one by one (the same values)
        for p, s, b, relu in plan_.layers:
            x = qlinear_dynamic(x, p, s, b, relu=relu, reduce_range=plan_.reduce_range)
        return x
    lead = x.shape[:-1]
    x2 = jit.f32c(x.reshape(-1, k0))
    m = x2.shape[0]
    n_last = plan_.dims[-1][1]
    if m == 0:
        return np.empty(lead + (n_last,), np.float32)
    table, size = plan_.table(m)
    ws = np.empty(size, np.uint8)
    kp0, n0 = plan_.dims[0]
    split = m >= PAR_MIN_ROWS and m * kp0 * n0 >= PAR_MIN_MACS and jit.threads() > 1
    jit.run_native(task_address(), 2 if split else 1, table, x2, ws)
    status = int(ws[table[STATUS]:table[STATUS] + 8].view(np.int64)[0])
    if status:
        raise ValueError(f"dynamic_quantized_linear: the input of layer {status - 1} of the chain holds NaN or Inf"
                         + (" (the model's input)" if status == 1 else ""))
    out = table[HEAD + F * (len(plan_.dims) - 1) + OUT]
    return ws[out:out + 4 * m * n_last].view(np.float32).reshape(lead + (n_last,))


def dynamic_chain(x, layers, reduce_range=False) -> np.ndarray:
    """The dynamically quantized linear layers ``layers`` = [(PackedWeight, w_scale, bias or None, relu), ...]
    applied in turn to float32 x (..., K): what ``qlinear_dynamic`` one layer after the other returns."""
    return run(np.asarray(x), plan(layers, reduce_range))
