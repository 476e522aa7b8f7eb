"""A chain of float32 linear layers, each optionally followed by ReLU, in one kernel call (the runtime's
``linear_mlp``, made at load time from runs of ``linear`` / ``linear_act(relu)`` nodes).

Run a layer at a time, an mlp paid per layer its Python glue, a BLAS call on one thread or a hand-off, and
BLAS's packing of both operands. Here one native task (helpers.py) runs the whole chain on the calling thread
and, when it joins in time, one helper: both claim units of each layer from a shared counter, from opposite
ends (so each finds its weights in its own cache call after call), and meet at a barrier between layers. The
multiply-adds run in LLVM-IR tiles (conv_tile_ir.py) on row-major data, with each layer's weights transposed
once (``_Plan``, held by the runtime's prepared kernel), so nothing is packed per call:

- from GEMM_MIN_ROWS rows on, a unit is a block of up to 12 rows x 32 output columns (AVX-512; 16 with AVX2): the
  GEMM tile broadcasts the rows' inputs and loads the weights' columns as vectors from the unit's panel (24
  accumulators in registers; AVX2 runs the 12 rows as two groups of 6, 12 accumulators);
- below it, row by row: a unit is a block of the one-row tile's columns (128 with AVX-512; 16 for narrow
  layers) of every row.

The epilogue adds the bias, applies ReLU and, in the last layer, writes the (rows, features) result.
Every output is a sum over k in order with fused multiply-adds: results agree with other float32 GEMMs (BLAS,
PyTorch) to float32 rounding, not bit for bit. Without the tiles (``EMBER_CONV_TILES=0``, no LLVM code
generator) ``available()`` is False and the op runs its layers one by one.
"""
from __future__ import annotations

import numba
import numpy as np

from . import intrinsics as _at
from . import jit
from .conv_tile_ir import BLOCK_ROWS, block_tiles, row_tiles
from .helpers import CTL_SIZE, NONE
from .native_tools import NativePlan, NativeTask, align64, array_at as _array, barrier, join, take_end, thread_of

MAX_LAYERS = 63  # one step per layer (progress marks are gen * 64 + step)
GEMM_MIN_ROWS = 8  # from here on the GEMM tiles (up to 12 rows at once), below it the one-row tiles
PAR_MIN_MACS = 1 << 18  # multiply-adds from which a chain is split with the helper (~5 us on one thread)

# The task's int64 table: the input and workspace addresses (set per call by jit.run_native), rows, GEMM (1) or
# row by row (0), layers, first K, the workspace byte offset of the output, the GEMM tiles' columns per call,
# then the addresses of the GEMM tiles for 1 .. BLOCK_ROWS rows.
X, WS, M, GEMM, NL, K0, Y, BCOLS, BT = range(9)
HEAD = BT + BLOCK_ROWS
# Per layer: K, N, units, the transposed weights' address ((K, N padded) float32, or its GEMM panels), bias (float32, padded), relu,
# the workspace byte offset of its output ((rows, N padded) float32) and its row length (N padded), and for the
# row path its tile's offsets table (k * N padded), address and columns.
LK, LN, LUNITS, LW, LBIAS, LRELU, LOUT, LLD, LOFFS, LTILE, LPB = range(11)
F = 11

_inline = numba.njit(inline="always", fastmath=False, error_model="numpy")


@_inline
def _act(v, relu):
    return np.float32(0) if relu and v < 0 else v  # (NaN stays NaN, as torch's relu keeps it)


@_inline
def _source(t, li):
    """(address, row length) of layer li's input rows: the chain's input, or the previous layer's output."""
    if li == 0:
        return t[X], t[K0]
    b = HEAD + F * (li - 1)
    return t[WS] + t[b + LOUT], t[b + LLD]


@_inline
def _epilogue(t, li, r0, r1, c0, c1, last):
    """Bias and ReLU on rows r0 .. r1, columns c0 .. c1 of layer li's output; the last layer's go to the result."""
    b = HEAD + F * li
    ws, m, n, ld, relu = t[WS], t[M], t[b + LN], t[b + LLD], t[b + LRELU] != 0
    o = _array(ws + t[b + LOUT], (m, ld), np.float32)
    bias = _array(t[b + LBIAS], ld, np.float32)
    if last:
        y = _array(ws + t[Y], (m, n), np.float32)
        for r in range(r0, r1):
            for c in range(c0, min(n, c1)):
                y[r, c] = _act(o[r, c] + bias[c], relu)
    else:
        for r in range(r0, r1):
            row = o[r]
            for c in range(c0, c1):
                row[c] = _act(row[c] + bias[c], relu)


@_inline
def _gemm_unit(t, li, u, last):
    """Unit u of layer li: rows rb * BLOCK_ROWS ... (up to BLOCK_ROWS) x output columns cb * BCOLS ... (the row-major
    GEMM tile: the input rows broadcast, the weights' panel of columns as vectors)."""
    b = HEAD + F * li
    m, bc, ld = t[M], t[BCOLS], t[b + LLD]
    nrb = (m + BLOCK_ROWS - 1) // BLOCK_ROWS
    r0, c0 = (u % nrb) * BLOCK_ROWS, (u // nrb) * bc
    rows = min(BLOCK_ROWS, m - r0)
    src, sld = _source(t, li)
    _at.call(t[BT + rows - 1], (src + 4 * r0 * sld, sld, t[b + LW] + 4 * c0 * t[b + LK], bc, t[b + LK],
                                t[WS] + t[b + LOUT] + 4 * (r0 * ld + c0), ld))
    _epilogue(t, li, r0, r0 + rows, c0, c0 + bc, last)


@_inline
def _row_unit(t, li, j, last):
    """Output columns j * PB ... of layer li, row by row (the one-row tile)."""
    b = HEAD + F * li
    ld, pb = t[b + LLD], t[b + LPB]
    src, sld = _source(t, li)
    out = t[WS] + t[b + LOUT]
    for r in range(t[M]):
        _at.call(t[b + LTILE], (t[b + LW] + 4 * j * pb, t[b + LOFFS], t[b + LK], src + 4 * r * sld,
                                out + 4 * (r * ld + j * pb), 0))
    _epilogue(t, li, 0, t[M], j * pb, j * pb + pb, last)


@_inline
def _units(t, ctl, gen, me, step, n, alone, li, last, gemm):
    """Claim and run units of ``step`` (layer li) until none is left."""
    u = 0
    while True:
        if not alone:
            u = take_end(ctl, gen * 64 + step, n, me)
        if u < 0 or u >= n:
            return
        if gemm:
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
    for li in range(nl):
        step = li
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
    return row_tiles() is not None and block_tiles() is not None


class _Plan(NativePlan):
    """The weights of a chain transposed and padded once per layout its calls need, and per batch size the task's
    table and workspace size. The row path reads each layer's weights as (K, N padded) rows (whole vectors of the
    one-row tile's columns); the GEMM tiles read them in panels of their columns ((N padded / BCOLS, K, BCOLS): one
    unit streams its panel from consecutive memory; measured on AVX2, ember's mlp at B=64 went from ~850 to ~500-660
    us with them). Each layout is made on the first call that needs it (a server at batch 1 never holds panels)."""

    def __init__(self, layers):
        rows, (self.bcols, blocks) = row_tiles(), block_tiles()
        self.blocks, self.layers, self.dims, self._layouts = list(blocks), [], [], {}
        for w, b, relu in layers:
            n, k = w.shape
            rpb, rtile = rows[0] if n >= rows[0][0] else rows[-1]  # narrow layers: the narrow row tile
            step = max(rpb, self.bcols)
            np_ = -(-n // step) * step
            bias = np.zeros(np_, np.float32)
            if b is not None:
                bias[:n] = b
            self.layers.append((w, bias))
            self.dims.append((k, n, np_, bias.ctypes.data, int(bool(relu)), rtile, rpb))
        self.k0 = layers[0][0].shape[1]
        self.macs = sum(k * n for k, n, *_ in self.dims)

    def _layout(self, gemm):
        """Per layer (weights address, offsets table address) of the GEMM panels or the row path's rows."""
        if gemm not in self._layouts:
            keep, addrs = [], []
            for (w, _), (k, n, np_, *_) in zip(self.layers, self.dims):
                wt = np.zeros((k, np_), np.float32)
                wt[:, :n] = w.T
                if gemm:
                    wt = np.ascontiguousarray(wt.reshape(k, np_ // self.bcols, self.bcols).transpose(1, 0, 2))
                offs = np.arange(k, dtype=np.int64) * np_
                keep += [wt, offs]
                addrs.append((wt.ctypes.data, offs.ctypes.data))
            # (setdefault: when two threads build it at once, both use the first one stored, whose arrays it keeps)
            return self._layouts.setdefault(gemm, (addrs, keep))[0]
        return self._layouts[gemm][0]

    def _table(self, m):
        """(the table for m rows, the workspace's size in bytes, the output's byte offset in it)."""
        gemm = m >= GEMM_MIN_ROWS
        size, fields = 0, []
        nrb = -(-m // BLOCK_ROWS)
        for (k, n, np_, bias, relu, rtile, rpb), (wt, offs) in zip(self.dims, self._layout(gemm)):
            units = (np_ // self.bcols) * nrb if gemm else np_ // rpb
            fields.append([k, n, units, wt, bias, relu, size, np_, offs, rtile, rpb])
            size += align64(4 * m * np_)
        y = size
        size += align64(4 * m * self.dims[-1][1])
        head = [0, 0, m, int(gemm), len(self.dims), self.k0, y, self.bcols] + self.blocks
        table = np.concatenate([np.array(head, np.int64), np.array(fields, np.int64).ravel()])
        return table, size, y


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
