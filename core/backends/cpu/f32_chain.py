"""A chain of float32 linear layers, each optionally followed by ReLU, in one kernel call (the runtime's
``linear_mlp``, made at load time from runs of ``linear`` / ``linear_act(relu)`` nodes).

Run a layer at a time, an mlp paid per layer its Python glue, a BLAS call on one thread or a hand-off, and
BLAS's packing of both operands. Here one native task (helpers.py) runs the whole chain on the calling thread
and, when it joins in time, one helper: both claim units of each step from a shared counter and meet at a
barrier between steps. The multiply-adds run in the LLVM-IR tiles of conv_tile_ir.py, with the weights packed
once (``_Plan``, held by the runtime's prepared kernel):

- from GEMM_MIN_ROWS rows on, the activations are kept *transposed*, (features, rows padded to the tile's
  positions). Step 0 transposes the input (units of TB features); in each layer a unit is a block of NCO output
  features for all rows: the forward convolution tile with the rows as its positions and the NCO features'
  weights (packed (N / NCO, K, NCO)) broadcast. The epilogue adds the bias, applies ReLU and, in the last
  layer, writes the (rows, features) output.
- below it, row by row: a unit is a block of the one-row tile's columns (128 with AVX-512) of every row, over
  the transposed weights (K, N padded to the block), the input row broadcast.

Every output is a sum over k in order with fused multiply-adds: results agree with other float32 GEMMs (BLAS,
PyTorch) to float32 rounding, not bit for bit. Without the tiles (``EMBER_CONV_TILES=0``, no LLVM code
generator) ``available()`` is False and the op runs its layers one by one.
"""
from __future__ import annotations

import numba
import numpy as np

from . import intrinsics as _at
from . import jit
from .conv_tile_ir import host_tiles, row_tiles
from .helpers import CTL_SIZE, NONE, NativeTask, array_at as _array, barrier, join, take_end, thread_of

MAX_LAYERS = 62  # steps: the transposition, then one per layer (progress marks are gen * 64 + step)
GEMM_MIN_ROWS = 8  # from here on the transposed GEMM path (its tile computes 32 rows at once with AVX-512)
TB = 16  # input features per transposition unit
PAR_MIN_MACS = 1 << 18  # multiply-adds from which a chain is split with the helper (~5 us on one thread)

# The task's int64 table: the input and workspace addresses (set per call by jit.run_native), rows, rows padded
# (GEMM: to the tile's positions), GEMM (1) or row by row (0), layers, first K, the GEMM's offsets table
# (k * padded rows), the workspace byte offsets of the transposed input and of the output, the GEMM tile's
# address, positions and output features per call.
X, WS, M, MP, GEMM, NL, K0, OFFS, XT, Y, TILE, PB, NCO = range(13)
HEAD = 13
# Per layer: K, N, units, weights' address (GEMM: (N / NCO, K, NCO); rows: (K, N padded)), bias (float32,
# padded), relu, the workspace byte offset of its output and the output's row length (GEMM: transposed, rows
# padded; rows: N padded), and for the row path its tile's offsets table (k * N padded), address and columns.
LK, LN, LUNITS, LW, LBIAS, LRELU, LOUT, LLD, LOFFS, LTILE, LPB = range(11)
F = 11

_inline = numba.njit(inline="always", fastmath=False, error_model="numpy")


@_inline
def _act(v, relu):
    return np.float32(0) if relu and v < 0 else v  # (NaN stays NaN, as torch's relu keeps it)


@_inline
def _transpose(x, xt, k0, k1, m, mp):
    """xt[k, :m] = x[:, k] for k0 <= k < k1, zeros past m."""
    for k in range(k0, k1):
        row = xt[k]
        for q in range(m):
            row[q] = x[q, k]
        for q in range(m, mp):
            row[q] = 0


@_inline
def _gemm_unit(t, li, u, last):
    """Unit u of layer li: output features j * NCO ... for the rows (positions) p * PB ... (transposed
    activations)."""
    b = HEAD + F * li
    ws, m, mp, nco, pb = t[WS], t[M], t[MP], t[NCO], t[PB]
    k, n, relu = t[b + LK], t[b + LN], t[b + LRELU] != 0
    j, p0 = u // (mp // pb), (u % (mp // pb)) * pb
    src = ws + (t[XT] if li == 0 else t[b - F + LOUT])
    out = ws + t[b + LOUT] + 4 * j * nco * mp
    _at.call(t[TILE], (src + 4 * p0, t[OFFS], k, t[b + LW] + 4 * j * k * nco, out + 4 * p0, mp))
    o = _array(out, (nco, mp), np.float32)
    bias = _array(t[b + LBIAS], (j + 1) * nco, np.float32)
    if last:
        y = _array(ws + t[Y], (m, n), np.float32)
        for r in range(min(nco, n - j * nco)):
            c = j * nco + r
            for q in range(p0, min(m, p0 + pb)):
                y[q, c] = _act(o[r, q] + bias[c], relu)
    else:
        for r in range(nco):
            row, bv = o[r], bias[j * nco + r]
            for q in range(p0, p0 + pb):
                row[q] = _act(row[q] + bv, relu)


@_inline
def _row_unit(t, li, j, last):
    """Output features j * PB ... of layer li, row by row."""
    b = HEAD + F * li
    ws, m, pb = t[WS], t[M], t[b + LPB]
    k, n, ld, relu = t[b + LK], t[b + LN], t[b + LLD], t[b + LRELU] != 0
    if li == 0:
        src, sld = t[X], t[K0]
    else:
        src, sld = ws + t[b - F + LOUT], t[b - F + LLD]
    out = ws + t[b + LOUT]
    w = t[b + LW] + 4 * j * pb
    for r in range(m):
        _at.call(t[b + LTILE], (w, t[b + LOFFS], k, src + 4 * r * sld, out + 4 * (r * ld + j * pb), 0))
    o = _array(out, (m, ld), np.float32)
    bias = _array(t[b + LBIAS], ld, np.float32)
    c0 = j * pb
    if last:
        y = _array(ws + t[Y], (m, n), np.float32)
        for r in range(m):
            for c in range(c0, min(n, c0 + pb)):
                y[r, c] = _act(o[r, c] + bias[c], relu)
    else:
        for r in range(m):
            row = o[r]
            for c in range(c0, c0 + pb):
                row[c] = _act(row[c] + bias[c], relu)


@_inline
def _units(t, ctl, gen, me, step, n, alone, li, last, gemm):
    """Claim and run units of ``step`` until none is left (li < 0: the transposition)."""
    u = 0
    while True:
        if not alone:
            u = take_end(ctl, gen * 64 + step, n, me)
        if u < 0 or u >= n:
            return
        if li < 0:
            k0, mp = t[K0], t[MP]
            _transpose(_array(t[X], (t[M], k0), np.float32), _array(t[WS] + t[XT], (k0, mp), np.float32),
                       u * TB, min(k0, u * TB + TB), t[M], mp)
        elif gemm:
            _gemm_unit(t, li, u, last)
        else:
            _row_unit(t, li, u, last)
        if alone:
            u += 1


def _task(arg, ctl_addr, gen, role, part):
    """The native task: part ``part`` of the chain in the table at ``arg`` (see the module docstring; the join
    protocol is int8_chain.py's)."""
    ctl = _array(ctl_addr, CTL_SIZE, np.int64)
    me = thread_of(ctl, gen, role, part)
    if me < 0:
        return
    t = _array(arg, HEAD, np.int64)
    t = _array(arg, HEAD + F * t[NL], np.int64)
    alone = role == NONE
    joined, closed = me == 1, alone or me == 1
    gemm, nl = t[GEMM] != 0, t[NL]
    first = 1 if gemm else 0
    if gemm:
        _units(t, ctl, gen, me, 0, (t[K0] + TB - 1) // TB, alone, -1, False, gemm)
    for li in range(nl):
        step = first + li
        if step > 0:
            if not closed:  # close the join: from here on the helper is in or never comes
                joined, closed = not join(ctl, gen, 0), True
            if joined:
                barrier(ctl, gen, me, step)
        _units(t, ctl, gen, me, step, t[HEAD + F * li + LUNITS], alone, li, li == nl - 1, gemm)


_TASK = NativeTask(_task)


def task_address() -> int:
    """The address of the compiled ``_task`` (compiled, or loaded from numba's cache, on first use)."""
    return _TASK.address()


def available() -> bool:
    """Whether the tiles the chain runs on exist on this host (else run the layers one by one)."""
    return host_tiles() is not None and row_tiles() is not None


def _align(nbytes):
    return -(-nbytes // 64) * 64


class _Plan:
    """The weights of a chain packed for both paths, and per batch size the task's table and workspace size."""

    def __init__(self, layers):
        tiles, rows = host_tiles(), row_tiles()
        shape, self.gemm_tile = tiles.fwd[0]
        self.nco, self.pb = shape.nco, shape.pb
        self.keep, self.dims = [], []
        for w, b, relu in layers:
            n, k = w.shape
            rpb, rtile = rows[0] if n >= rows[0][0] else rows[-1]  # narrow layers: the narrow row tile
            nb, np_ = -(-n // self.nco), -(-n // rpb) * rpb
            wpad = np.zeros((nb * self.nco, k), np.float32)
            wpad[:n] = w
            blocked = np.ascontiguousarray(wpad.reshape(nb, self.nco, k).transpose(0, 2, 1))
            wt = np.zeros((k, np_), np.float32)
            wt[:, :n] = w.T
            bias = np.zeros(max(nb * self.nco, np_), np.float32)
            if b is not None:
                bias[:n] = b
            offs = np.arange(k, dtype=np.int64) * np_
            self.keep += [blocked, wt, bias, offs]
            self.dims.append((k, n, nb, np_, blocked.ctypes.data, wt.ctypes.data, bias.ctypes.data,
                              int(bool(relu)), offs.ctypes.data, rtile, rpb))
        self.k0 = layers[0][0].shape[1]
        self.macs = sum(k * n for k, n, *_ in self.dims)
        self.per_rows: dict = {}

    def table(self, m):
        """(a fresh table for m rows, the workspace's size in bytes, the output's byte offset in it)."""
        hit = self.per_rows.get(m)
        if hit is None:
            hit = self._table(m)
            if len(self.per_rows) >= 64:
                self.per_rows.clear()
            self.per_rows[m] = hit
        return hit[0].copy(), hit[1], hit[2]

    def _table(self, m):
        gemm = m >= GEMM_MIN_ROWS
        mp = -(-m // self.pb) * self.pb if gemm else m
        size, fields = (_align(4 * self.k0 * mp) if gemm else 0), []
        for k, n, nb, np_, blocked, wt, bias, relu, offs, rtile, rpb in self.dims:
            if gemm:
                fields.append([k, n, nb * (mp // self.pb), blocked, bias, relu, size, mp, 0, 0, 0])
                size += _align(4 * nb * self.nco * mp)
            else:
                fields.append([k, n, np_ // rpb, wt, bias, relu, size, np_, offs, rtile, rpb])
                size += _align(4 * m * np_)
        y = size
        size += _align(4 * m * self.dims[-1][1])
        offs = np.arange(max(k for k, *_ in self.dims), dtype=np.int64) * mp
        head = [0, 0, m, mp, int(gemm), len(self.dims), self.k0, offs.ctypes.data, 0, y, self.gemm_tile, self.pb,
                self.nco]
        table = np.concatenate([np.array(head, np.int64), np.array(fields, np.int64).ravel()])
        return table, size, y, offs  # (offs: kept alive with the table)


def plan(layers) -> _Plan:
    """The packed chain of ``layers`` = [(weight (N, K) float32, bias (N,) or None, relu), ...] (a ValueError when
    they do not chain). Needs ``available()``."""
    if not layers or len(layers) > MAX_LAYERS:
        raise ValueError(f"linear_mlp: needs 1 to {MAX_LAYERS} layers, got {len(layers)}")
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if b[0].shape[1] != a[0].shape[0]:
            raise ValueError(f"linear_mlp: layer {i} has {a[0].shape[0]} outputs, layer {i + 1} expects "
                             f"{b[0].shape[1]} inputs")
    return _Plan(layers)


def run(x, plan_) -> np.ndarray:
    """The chain of ``plan_`` on float32 x (..., K)."""
    k0 = plan_.k0
    if x.ndim < 1 or x.shape[-1] != k0:
        raise ValueError(f"linear_mlp: input has {x.shape[-1] if x.ndim else 0} features, the first layer "
                         f"expects {k0} (input shape {x.shape})")
    lead, n = x.shape[:-1], plan_.dims[-1][1]
    x2 = jit.f32c(x.reshape(-1, k0))
    m = x2.shape[0]
    if m == 0:
        return np.empty(lead + (n,), np.float32)
    table, size, y = plan_.table(m)
    ws = np.empty(size, np.uint8)
    split = m * plan_.macs >= PAR_MIN_MACS and jit.threads() > 1
    jit.run_native(task_address(), 2 if split else 1, table, x2, ws)
    return ws[y:y + 4 * m * n].view(np.float32).reshape(lead + (n,))
