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
"""
from __future__ import annotations

import numpy as np

from . import intrinsics as _at
from . import jit
from . import range_ir as _range_ir
from .helpers import ARRIVE, CALLER, CLAIM, COUNTER, HELPER, NONE, finish, post
from .int8_gemm import BLOCK_ROWS, MODE_DEQUANT, PAR_MIN_MACS, PAR_MIN_ROWS, linear_rows
from .int8_kernels import _dequant_parts, _qparams, _quantize_rows, cached_per_arrays
from .jit import njit

MAX_LAYERS = 63  # progress marks are gen * 64 + layer
BLOCK = BLOCK_ROWS  # rows per claimed block: the GEMM's largest row block (8 and 4 rows measured slower)


@njit(fastmath=False)
def _join(ctl, gen, owner):
    """Set ctl[CLAIM] to 2 * gen + owner unless task ``gen`` already has one (helper: join; caller: close)."""
    while True:
        old = _at.load_acquire(ctl, CLAIM)
        if old >= 2 * gen:
            return False
        if _at.compare_exchange(ctl, CLAIM, old, 2 * gen + owner) == old:
            return True


@njit(fastmath=False)
def _take(ctl, key, n):
    """The next of n blocks of the step ``key`` (ctl[COUNTER] = key << 16 | blocks taken), or -1 when none is left."""
    while True:
        old = _at.load_acquire(ctl, COUNTER)
        taken = old & 0xFFFF if old >> 16 == key else 0
        if taken >= n:
            return -1
        if _at.compare_exchange(ctl, COUNTER, old, (key << 16) | (taken + 1)) == old:
            return taken


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


@njit(fastmath=False)
def _layer_views(ws, offs, li, m, kp, n):
    """Layer li's uint8 activation rows (m, kp) and float32 outputs (m, n) inside the workspace bytes ws."""
    au = ws[offs[2 * li]:offs[2 * li] + m * kp].reshape((m, kp))
    out = ws[offs[2 * li + 1]:offs[2 * li + 1] + 4 * m * n].view(np.float32).reshape((m, n))
    return au, out


@njit(fastmath=False)
def _chain(x, layers, ws, offs, ranges, addr, status, part, sync):
    """Part ``part`` of the chain (see the module docstring). ``layers[l]`` = (int8 weight rows, their VNNI
    layout, column sums, w_scale and bias (float32, 2N), relu, VNNI tile address, whether it runs, Kp, N); the
    layers' activations and outputs live in the workspace bytes ``ws`` at ``offs`` (few arguments: numba unboxes
    each array of every call, ~0.2 us apiece, on both threads); ranges (2, L + 1, 16) float32: per thread the
    (min, max, non-finite) of its rows of each layer's input, preset to (inf, -inf, 0); 64 bytes apart."""
    ctl, gen, role = sync[0], sync[1], sync[2]
    if role == HELPER:
        if part != 1 or not _join(ctl, gen, 1):
            finish(sync)
            return
        me = 1
    elif part != 0:  # run outside the helpers: part 0 does everything
        return
    else:
        me = 0
    m = x.shape[0]
    nblk = (m + BLOCK - 1) // BLOCK
    alone = role == NONE
    joined = False
    if me == 0:  # the first layer's qparams, while the helper wakes up
        if role == CALLER:
            post(sync)
        _rows_range(x, 0, m, ranges[0, 0], addr)
        if not alone:
            _at.store_release(ctl, ARRIVE, gen * 64)
    else:
        while _at.load_acquire(ctl, ARRIVE) < gen * 64:
            _at.cpu_relax()
        joined = True
    no_i32, no_u8 = np.zeros((1, 1, 1), np.int32), np.zeros((1, 1, 1), np.uint8)  # the outputs not written
    no_bias, no_mult, f0 = np.zeros(1, np.int32), np.zeros(1, np.float32), np.float32(0)  # requantizing fields
    for li in range(len(layers)):
        if li == 1 and me == 0 and not alone:
            joined = not _join(ctl, gen, 0)  # close the join: from here on the helper is in or never comes
        if li > 0 and joined:  # meet the other thread: its range of the rows it produced
            mark = gen * 64 + li
            _at.store_release(ctl, ARRIVE + 8 * me, mark)
            while _at.load_acquire(ctl, ARRIVE + 8 * (1 - me)) < mark:
                _at.cpu_relax()
        lo = min(ranges[0, li, 0], ranges[1, li, 0])
        hi = max(ranges[0, li, 1], ranges[1, li, 1])
        if max(ranges[0, li, 2], ranges[1, li, 2]) != 0:
            status[0] = li + 1  # layer li's input holds NaN or Inf
            break
        scale, zpf = _qparams(lo, hi)
        w, vnni, col_sums, wsb, relu, tile, use, kp, n = layers[li]
        au, out = _layer_views(ws, offs, li, m, kp, n)
        src = x if li == 0 else _layer_views(ws, offs, li - 1, m, layers[li - 1][7], layers[li - 1][8])[1]
        ep = (MODE_DEQUANT, int(zpf), col_sums, no_bias, no_mult, f0, f0, f0, scale, wsb[:n], wsb[n:], relu, vnni,
              tile, use)
        outs = (no_i32, no_u8, out.reshape((m, n, 1)))
        mine = ranges[me, li + 1]
        part_range = np.empty(3, np.float32)
        b = 0
        while True:
            if not alone:
                b = _take(ctl, gen * 64 + li, nblk)
            if b < 0 or b >= nblk:
                break
            r0, r1 = b * BLOCK, min(m, b * BLOCK + BLOCK)
            _quantize_rows(src, scale, zpf, au, r0, r1)
            linear_rows(au, w, ep, outs, r0, r1)
            if li + 1 < len(layers):
                _rows_range(out, r0, r1, part_range, addr)
                mine[0], mine[1] = min(mine[0], part_range[0]), max(mine[1], part_range[1])
                mine[2] = max(mine[2], part_range[2])
            if alone:
                b += 1
    if role == HELPER:
        finish(sync)


_PLANS: dict = {}  # ids of the layers' arrays and relus -> (weakrefs to the arrays, plan)


def _plan(layers):
    """Per layer the kernel's constant fields (see ``_chain``), computed once per set of arrays."""
    def build():
        plan = []
        for p, s, b, relu in layers:
            head, tail = _dequant_parts(p, s, b, bool(relu))
            ws, bf, _, vnni, tile, use = tail
            plan.append((p.data, vnni, head[0], np.concatenate([ws, bf]), bool(relu), tile, use, p.data.shape[1],
                         p.n))
        return tuple(plan)
    arrays = tuple(a for p, s, b, _ in layers for a in (p.data, s, b))
    return cached_per_arrays(_PLANS, arrays, tuple(bool(r) for *_, r in layers), build, limit=1024)


_RANGES: dict = {}


def _empty_ranges(n_layers):
    """A fresh (2, n_layers + 1, 16) float32 array of empty ranges (min inf, max -inf, finite)."""
    t = _RANGES.get(n_layers)
    if t is None:
        t = np.zeros((2, n_layers + 1, 16), np.float32)
        t[..., 0], t[..., 1] = np.inf, -np.inf
        _RANGES[n_layers] = t
    return t.copy()


def dynamic_chain(x, layers) -> np.ndarray:
    """The dynamically quantized linear layers ``layers`` = [(PackedWeight, w_scale, bias or None, relu), ...]
    applied in turn to float32 x (..., K): what ``qlinear_dynamic`` one layer after the other returns."""
    if not layers or len(layers) > MAX_LAYERS:
        raise ValueError(f"dynamic_chain: needs 1 to {MAX_LAYERS} layers, got {len(layers)}")
    x = np.asarray(x)
    k0 = layers[0][0].k
    if x.ndim < 1 or x.shape[-1] != k0:
        raise ValueError(f"dynamic_chain: input has {x.shape[-1] if x.ndim else 0} features, the first layer "
                         f"expects {k0} (input shape {x.shape})")
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        if b[0].k != a[0].n:
            raise ValueError(f"dynamic_chain: layer {i} has {a[0].n} outputs, layer {i + 1} expects {b[0].k} inputs")
    lead = x.shape[:-1]
    x2 = jit.f32c(x.reshape(-1, k0))
    m = x2.shape[0]
    if m == 0:
        return np.empty(lead + (layers[-1][0].n,), np.float32)
    plan = _plan(layers)
    offs, size = [], 0
    for *_, kp, n in plan:  # each layer's activations, then its outputs, 64-byte aligned
        offs += (size, size + (-(-m * kp // 64) * 64))
        size = offs[-1] + -(-4 * m * n // 64) * 64
    ws = np.empty(size, np.uint8)
    offs = np.array(offs, np.int64)
    ranges = _empty_ranges(len(layers))
    status = np.zeros(1, np.int64)
    split = m >= PAR_MIN_ROWS and m * plan[0][0].size >= PAR_MIN_MACS and jit.threads() > 1
    args = (x2, plan, ws, offs, ranges, _range_ir.address(), status)
    jit.run_parts(_chain, [args + (0,), args + (1,)] if split else [args + (0,)])
    if status[0]:
        layer = int(status[0]) - 1
        raise ValueError(f"dynamic_quantized_linear: the input of layer {layer} of the chain holds NaN or Inf"
                         + (" (the model's input)" if layer == 0 else ""))
    n_last = layers[-1][0].n
    return ws[offs[-1]:offs[-1] + 4 * m * n_last].view(np.float32).reshape(lead + (n_last,))
