"""int8 GEMM kernels for quantized inference: weight prepacking, an exact int32 GEMM and its fused
requantize / dequantize epilogues (``qlinear``, ``qlinear_dynamic``); ``qconv2d`` is in int8_conv.py.

Accumulator: ``acc[m, n] = sum_k (a[m, k] - a_zp) * w[n, k]``, uint8 activations, symmetric int8
weights (zero point 0, -128 allowed), exact in int32 for K <= K_MAX (|a*w| <= 255 * 128); the tiles
sum raw products and the epilogue subtracts ``a_zp * col_sums[n]``. int8 activations work too
(``qgemm_s8``; qgemm, qlinear and qconv2d take either): ``a ^ 0x80 = a + 128`` maps them to uint8
with zero point ``a_zp + 128``.

Epilogues run on each block of rows as it leaves the GEMM (no int32 (M, N) array), in float32 with
one rounding per operation (no fastmath: no FMA contraction, no reciprocal), so a numpy reference
reproduces them bit for bit:
- requantize: ``v = float32(acc + bias_i32[n]) * multiplier[n]`` (the sum exact in int64, rounded
  once), ``q = clip(rint(v) + out_zp, lo, qmax)``, rint = round half to even, lo = qmin, or
  ``max(qmin, out_zp)`` with ReLU; qmin/qmax: the output dtype's range unless given.
- dequantize: ``y = float32(acc) * (a_scale * w_scale[n]) + bias_f32[n]`` (float32 product first),
  ``max(y, 0)`` with ReLU.

The GEMM tiles and the epilogue loops are in int8_gemm.py.
"""
from __future__ import annotations

import math
import threading
import weakref
from typing import NamedTuple

import numpy as np

from . import jit
from . import range_ir as _range_ir
from . import vnni as _vnni
from .int8_gemm import (  # noqa: F401 (gemm_rows, new_scratch, _inline, exact_kernel: for int8_conv and tests)
    BLOCK_ROWS, MODE_DEQUANT, MODE_INT32, MODE_REQUANT, PAR_MIN_MACS, PAR_MIN_ROWS, _inline, _linear_rows, _tile4x4,
    linear_rows,
    exact_kernel, gemm_rows, new_scratch,
)
from .helpers import finish, post
from .jit import njit

# Largest K with an exact int32 accumulator: 255 * 128 * K <= 2**31 - 1 (and >= -2**31).
K_MAX = 65793
# K is padded to a multiple of this (zeros in both operands): the vector loop then has no remainder.
K_BLOCK = 16
_QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
_EPS32 = np.finfo(np.float32).eps


_CACHE_LOCK = threading.Lock()


def cached_per_array(cache: dict, w: np.ndarray, build):
    """``build(w)``, computed once per array object (weights of a loaded program are read-only constants that
    live as long as it): ``cache`` maps id(w) to (weakref to w, result), and an entry goes with its array.
    Arrays that cannot be weakly referenced are built per call."""
    key = id(w)
    hit = cache.get(key)
    if hit is not None and hit[0]() is w:
        return hit[1]
    result = build(w)
    with _CACHE_LOCK:
        try:
            cache[key] = (weakref.ref(w, lambda _r, k=key: cache.pop(k, None)), result)
        except TypeError:
            pass  # not weak-referenceable: nothing to key the cache on safely
    return result


def _none():  # the "weak reference" of an absent array
    return None


def cached_per_arrays(cache: dict, arrays: tuple, extra, build, limit: int = 4096):
    """``build()``, computed once per tuple of array objects (None allowed) and hashable ``extra``: ``cache`` maps
    their ids and ``extra`` to (weakrefs to them, result), a hit only while every one of them is still the same
    object. A tuple holding something that cannot be weakly referenced (a Python scalar) is built per call; the
    cache is emptied when it reaches ``limit`` entries."""
    key = tuple(map(id, arrays)) + (extra,)
    hit = cache.get(key)
    if hit is not None:
        for r, a in zip(hit[0], arrays):
            if r() is not a:
                break
        else:
            return hit[1]
    result = build()
    try:
        refs = tuple(_none if a is None else weakref.ref(a) for a in arrays)
    except TypeError:
        return result
    with _CACHE_LOCK:
        if len(cache) >= limit:
            cache.clear()
        cache[key] = (refs, result)
    return result


class PackedWeight(NamedTuple):
    """A weight in the GEMM's layout: ``data`` (N, Kp) int8, each row zero-padded to Kp (a multiple
    of K_BLOCK); conv weights have K in (kh, kw, C/groups) order (im2row copies whole pixels).
    ``col_sums[n] = sum_k w[n, k]`` (int32) corrects for the activation zero point."""
    data: np.ndarray
    n: int
    k: int
    col_sums: np.ndarray
    kernel_size: tuple | None = None  # (kh, kw) when packed from a 4-d conv weight
    vnni: np.ndarray = np.zeros((1, 1, _vnni.TILE_N, 4), np.int8)  # vnni.pack(data) where an IR tile runs
    tile_kind: int = 0  # the tile ``vnni`` is laid out for (vnni.layout_kind), 0: none
    act_max: int = 255  # the largest uint8 activation code its tile is exact for (127: ``pack_weight(act_max=127)``)

    def unpack(self) -> np.ndarray:
        """The int8 weight as it was given to ``pack_weight`` ((N, K), or (Cout, C/groups, kh, kw))."""
        w = self.data[:, :self.k]
        if self.kernel_size is None:
            return w.copy()
        kh, kw = self.kernel_size
        return np.ascontiguousarray(w.reshape(self.n, kh, kw, self.k // (kh * kw)).transpose(0, 3, 1, 2))


def pack_weight(w, act_max=255) -> PackedWeight:
    """Prepack a symmetric int8 weight once (at convert/load time): (N, K) for linear layers or
    (Cout, C/groups, kh, kw) for convolutions. ``act_max`` = 127 packs a weight that will only meet activation
    codes of 7 bits (``qlinear_dynamic(reduce_range=True)``): on AVX2 hosts the faster U8S8 tile, exact for
    those whatever the weights (vnni.layout_kind), and refused by the kernels for full-range activations."""
    if act_max not in (127, 255):
        raise ValueError(f"pack_weight: act_max must be 255 (uint8 activations) or 127 (7-bit activations), "
                         f"got {act_max!r}")
    w = np.asarray(w)
    if w.dtype != np.int8:
        raise TypeError(f"pack_weight: weight must be int8 (symmetric, zero point 0), got {w.dtype} "
                        f"(shape {w.shape})")
    if w.ndim == 2:
        rows, ks = w, None
    elif w.ndim == 4:
        rows, ks = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1), (int(w.shape[2]), int(w.shape[3]))
    else:
        raise ValueError(f"pack_weight: weight must be 2-d (N, K) or 4-d (Cout, C/groups, kh, kw), got shape {w.shape}")
    n, k = rows.shape
    if n == 0 or k == 0:
        raise ValueError(f"pack_weight: weight has no elements (shape {w.shape})")
    if k > K_MAX:
        raise ValueError(f"pack_weight: K = {k} exceeds {K_MAX}, the largest K whose int32 accumulator "
                         f"cannot overflow (weight shape {w.shape})")
    kp = -(-k // K_BLOCK) * K_BLOCK
    data = np.zeros((n, kp), np.int8)
    data[:, :k] = rows
    col_sums = rows.sum(axis=1, dtype=np.int64).astype(np.int32)
    if _vnni.tile() is not None:
        layout = _vnni.layout_kind(data, act_max)  # (once: the layout, and the tile it selects)
        return PackedWeight(data, n, k, col_sums, ks, _vnni.pack(data, layout), layout, act_max)
    return PackedWeight(data, n, k, col_sums, ks, act_max=act_max)


@njit(fastmath=False)
def _qparams(lo, hi, qmax):
    """``dynamic_qparams`` from float32 lo = min(x), hi = max(x) for codes 0 .. qmax (float32 255 or 127), as
    float32 (scale, zero point) (in numba: numpy's scalar float32 operations cost more than a batch-1 GEMM)."""
    lo = min(lo, np.float32(0))
    hi = max(hi, np.float32(0))
    scale = max((hi - lo) / qmax, np.float32(_EPS32))
    return scale, min(max(-np.rint(lo / scale), np.float32(0)), qmax)


@_inline
def _quantize_rows(x, scale, zpf, out, r0, r1, qmax):
    """out[m] = clip(rint(x[m] / scale) + zp, 0, qmax) (float32 division) for rows r0 .. r1, zero-padded past K."""
    k_ = x.shape[1]
    for m in range(r0, r1):
        row = out[m]
        src = x[m]
        for k in range(k_):
            # (via int32: AVX2 has no vector float -> int64 conversion, and int() made this loop scalar, ~4x slower)
            row[k] = np.int32(min(max(np.rint(src[k] / scale) + zpf, np.float32(0)), qmax))
        for k in range(k_, out.shape[1]):
            row[k] = 0


@njit(fastmath=False)
def _dynamic_rows(x, scale, zpf, qmax, au, w, ep, outs, r0, r1, sync):
    """Rows r0 .. r1 of the dynamic linear layer: quantize them into au, then the GEMM and its dequantizing
    epilogue (a ``jit.run_parts`` kernel: each part quantizes its own rows)."""
    post(sync)
    _quantize_rows(x, scale, zpf, au, r0, r1, qmax)
    linear_rows(au, w, ep, outs, r0, r1)
    finish(sync)


# Stand-ins for the outputs and epilogue operands a call does not use.
_NO_I32 = np.zeros((1, 1, 1), np.int32)
_NO_U8 = np.zeros((1, 1, 1), np.uint8)
_NO_F32 = np.zeros((1, 1, 1), np.float32)
_NO_VEC_F32 = np.zeros(1, np.float32)
_F0 = np.float32(0)


def epilogue(mode, packed, a_zp, bias_i32=None, mult=_NO_VEC_F32, out_zp=_F0, lo=_F0, hi=_F0, a_scale=_F0,
             w_scale=_NO_VEC_F32, bias_f=_NO_VEC_F32, relu=False):
    """The epilogue tuple ``ep`` of the kernels (every field typed the same in every call, so each
    kernel compiles once per output dtype); a_zp is in the kernels' uint8 space."""
    bias = np.zeros(packed.n, np.int32) if bias_i32 is None else bias_i32
    layout = packed.tile_kind
    tile = _vnni.tile_address(layout) if layout else 0
    use = tile != 0 and packed.vnni.shape[0] * _vnni.TILE_N >= packed.n
    return (mode, a_zp, packed.col_sums, bias, mult, out_zp, lo, hi, a_scale, w_scale, bias_f, bool(relu),
            packed.vnni, tile if use else 0, layout if use else 0, _vnni.half_tile_address(layout) if use else 0)


def zero_point_u8(dtype, a_zp, shape, op):
    """(the zero point in the uint8 space the kernels run in, the xor that maps the activations
    there): int8 activations become ``a ^ 0x80 = a + 128`` with zero point ``a_zp + 128``."""
    if dtype == np.uint8:
        lo, hi, flip = 0, 255, 0
    elif dtype == np.int8:
        lo, hi, flip = -128, 127, 0x80
    else:
        raise TypeError(f"{op}: activations must be uint8 or int8, got {dtype} (shape {shape})")
    zp = int(a_zp)
    if not lo <= zp <= hi:
        raise ValueError(f"{op}: zero point {zp} is outside the {np.dtype(dtype).name} range [{lo}, {hi}]")
    return zp + (128 if flip else 0), flip


def activation_u8(a, a_zp, k, kp, op):
    """(a as a C-contiguous uint8 (M, kp) array, zero-padded past k, and its zero point)."""
    zp, flip = zero_point_u8(a.dtype, a_zp, a.shape, op)
    if a.ndim != 2 or a.shape[1] != k:
        raise ValueError(f"{op}: activations must be (M, {k}) to match the packed weight's K = {k}, "
                         f"got shape {a.shape}")
    if not flip and kp == k and a.flags.c_contiguous:
        return a, zp
    buf = np.zeros((a.shape[0], kp), np.uint8)
    np.bitwise_xor(a.view(np.uint8), np.uint8(flip), out=buf[:, :k])
    return buf, zp


def per_channel(v, n, dtype, what, op):
    """v as a C-contiguous (n,) array of ``dtype`` (a scalar is broadcast)."""
    if type(v) is np.ndarray and v.dtype == dtype and v.shape == (n,) and v.flags.c_contiguous:
        return v  # the per-call fast path (batch-1 inference spends microseconds here)
    arr = np.asarray(v)
    if arr.ndim == 0:
        return np.full(n, arr, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{op}: {what} must be a scalar or have shape ({n},), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def requant_epilogue(packed, a_zp, bias_i32, multiplier, out_zp, relu, out_dtype, quant_min, quant_max, op):
    """The epilogue tuple for requantization (a_zp: the activations' zero point in the kernels' uint8
    space), after checking its operands."""
    name = out_dtype if isinstance(out_dtype, str) else np.dtype(out_dtype).name
    if name not in _QRANGE:
        raise ValueError(f"{op}: out_dtype must be uint8 or int8, got {out_dtype!r}")
    qmin, qmax = _QRANGE[name]
    qmin = qmin if quant_min is None else int(quant_min)
    qmax = qmax if quant_max is None else int(quant_max)
    if not _QRANGE[name][0] <= qmin <= qmax <= _QRANGE[name][1] or not qmin <= int(out_zp) <= qmax:
        raise ValueError(f"{op}: need {_QRANGE[name][0]} <= quant_min ({qmin}) <= out_zp ({int(out_zp)}) <= "
                         f"quant_max ({qmax}) <= {_QRANGE[name][1]} for {name} outputs")
    n = packed.n
    bias = None if bias_i32 is None else per_channel(bias_i32, n, np.int32, "bias_i32", op)
    mult = per_channel(multiplier, n, np.float32, "multiplier", op)
    lo = max(qmin, int(out_zp)) if relu else qmin
    ep = epilogue(MODE_REQUANT, packed, a_zp, bias, mult, np.float32(int(out_zp)), np.float32(lo), np.float32(qmax),
                  relu=relu)
    return ep, np.dtype(name)


def _row_parts(m, packed):
    """[(lo, hi), ...]: the rows of an M-row product split over the helper threads (whole row blocks) from
    PAR_MIN_ROWS rows and PAR_MIN_MACS multiply-adds on, else one part."""
    work = m * packed.n * packed.data.shape[1] if m >= PAR_MIN_ROWS else 0
    step = BLOCK_ROWS if m >= 2 * BLOCK_ROWS else 4
    bounds = [(lo * step, min(m, hi * step)) for lo, hi in jit.slices(-(-m // step), work, PAR_MIN_MACS)]
    return [(lo, hi) for lo, hi in bounds if lo < hi]


def _run_linear(a, packed, ep, outs):
    """``_linear_rows`` on uint8 rows a, split over the helper threads (``_row_parts``)."""
    jit.run_parts(_linear_rows, [(a, packed.data, ep, outs, lo, hi) for lo, hi in _row_parts(a.shape[0], packed)])


def _check_packed(packed, op, act_max=255):
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"{op}: expected a PackedWeight from pack_weight, got {type(packed).__name__}")
    if packed.act_max < act_max:
        raise ValueError(f"{op}: the weight was packed for activation codes up to {packed.act_max} "
                         f"(pack_weight(act_max={packed.act_max})), this call's codes reach {act_max}; pack it with "
                         f"act_max={act_max}")


def qgemm(a, a_zero_point, packed) -> np.ndarray:
    """int32 (M, N) accumulators ``sum_k (a[m, k] - a_zp) * w[n, k]`` of uint8 (or int8) activations
    a (M, K) and a packed int8 weight (N, K); exact."""
    _check_packed(packed, "qgemm")
    a = np.asarray(a)
    au, zp = activation_u8(a, a_zero_point, packed.k, packed.data.shape[1], "qgemm")
    m = au.shape[0]
    out = np.empty((m, packed.n), np.int32)
    _run_linear(au, packed, epilogue(MODE_INT32, packed, zp), (out.reshape(m, packed.n, 1), _NO_U8, _NO_F32))
    return out


def qgemm_s8(a, a_zero_point, packed) -> np.ndarray:
    """``qgemm`` for int8 activations (zero point in [-128, 127])."""
    a = np.asarray(a)
    if a.dtype != np.int8:
        raise TypeError(f"qgemm_s8: activations must be int8, got {a.dtype} (shape {a.shape}); use qgemm for uint8")
    return qgemm(a, a_zero_point, packed)


def qlinear(a, a_zero_point, packed, bias_i32, multiplier, out_zero_point, relu=False, out_dtype="uint8",
            quant_min=None, quant_max=None) -> np.ndarray:
    """Quantized linear layer: the requantized (..., N) uint8/int8 output of uint8 (or int8)
    activations a (..., K); multiplier[n] = a_scale * w_scale[n] / out_scale (float32, per channel
    or scalar), bias_i32[n] = round(bias / (a_scale * w_scale[n])) or None."""
    _check_packed(packed, "qlinear")
    a = np.asarray(a)
    zp, _ = zero_point_u8(a.dtype, a_zero_point, a.shape, "qlinear")
    ep, dt = requant_epilogue(packed, zp, bias_i32, multiplier, out_zero_point, relu, out_dtype, quant_min,
                              quant_max, "qlinear")
    return _requant_rows(a, a_zero_point, packed, ep, dt)


def _requant_rows(a, a_zero_point, packed, ep, dt):
    """``qlinear``'s product and epilogue ``ep`` (out dtype ``dt``) on activations a (..., K)."""
    lead = a.shape[:-1]
    au, _ = activation_u8(a.reshape(-1, a.shape[-1]) if a.ndim >= 1 else a, a_zero_point, packed.k,
                          packed.data.shape[1], "qlinear")
    m = au.shape[0]
    out = np.empty((m, packed.n), dt)
    _run_linear(au, packed, ep, (_NO_I32, out.reshape(m, packed.n, 1), _NO_F32))
    return out.reshape(lead + (packed.n,))


def qlinear_fixed(a_zero_point, packed, bias_i32, multiplier, out_zero_point, relu=False):
    """``qlinear`` of uint8 activations with everything but them fixed: the epilogue is checked and built once
    (~2.4 us of a batch-1 call), then each call is ``fn(a)``."""
    _check_packed(packed, "qlinear")
    zp, _ = zero_point_u8(np.dtype(np.uint8), a_zero_point, (1, packed.k), "qlinear")
    ep, dt = requant_epilogue(packed, zp, bias_i32, multiplier, out_zero_point, relu, "uint8", None, None, "qlinear")
    return lambda a: _requant_rows(a, a_zero_point, packed, ep, dt)


def act_qmax(reduce_range) -> np.float32:
    """The largest activation code of a dynamic layer: 255, or 127 with ``reduce_range``."""
    return np.float32(127 if reduce_range else 255)


def dynamic_qparams(x, reduce_range=False) -> tuple[np.float32, int]:
    """uint8 (scale, zero_point) of x from its min/max, as torch's MinMaxObserver computes them
    (quint8, per tensor): the range is widened to include 0, ``scale = max((max - min) / qmax, eps)`` and
    ``zero_point = clip(-rint(min / scale), 0, qmax)``, all in float32; qmax = 255, or 127 with
    ``reduce_range``."""
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    scale, zp = _dynamic_qparams(x2, "dynamic_qparams", act_qmax(reduce_range))
    return scale, int(zp)


@njit(fastmath=False)
def _range_qparams(x, addr, qmax):
    """(scale, zero point, min, max, all finite) of float32 x through the IR min/max kernel at ``addr``."""
    lo, hi, finite = _range_ir.minmax(x, addr)
    scale, zpf = _qparams(lo, hi, qmax)
    return scale, zpf, lo, hi, finite


def _dynamic_qparams(x2, op, qmax):
    """float32 (scale, zero point) of ``dynamic_qparams`` for the C-contiguous float32 x2 and codes 0 .. qmax, in
    one pass where the IR kernel compiles."""
    addr = _range_ir.address()
    if not addr:
        scale, zpf = _qparams(*_finite_range(x2, op), qmax)
        return np.float32(scale), np.float32(zpf)
    scale, zpf, lo, hi, finite = _range_qparams(x2, addr, qmax)
    if not finite:
        raise ValueError(f"{op}: input holds NaN or Inf (finite values from {lo} to {hi}, shape {x2.shape})")
    return np.float32(scale), np.float32(zpf)  # (numba returns Python floats: keep the float32 math)


def _finite_range(x, op):
    lo, hi = x.min(), x.max()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{op}: input holds NaN or Inf (min {lo}, max {hi}, shape {x.shape})")
    return lo, hi


def qlinear_dynamic(x, packed, w_scale, bias=None, relu=False, reduce_range=False) -> np.ndarray:
    """Dynamically quantized linear layer: float32 x (..., K) is quantized to uint8 with its own
    per-tensor qparams (``dynamic_qparams``; codes 0 .. 127 with ``reduce_range``, as torch's x86 backend),
    multiplied by the packed int8 weight and dequantized (``acc * float32(a_scale * w_scale[n]) + bias[n]``) in
    one call; float32 (..., N)."""
    qmax = act_qmax(reduce_range)
    _check_packed(packed, "qlinear_dynamic", int(qmax))
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != packed.k:
        raise ValueError(f"qlinear_dynamic: input has {x.shape[-1] if x.ndim else 0} features, weight expects "
                         f"{packed.k} (input shape {x.shape})")
    lead = x.shape[:-1]
    x2 = jit.f32c(x.reshape(-1, packed.k))
    m, n = x2.shape[0], packed.n
    head, tail = _dequant_parts(packed, w_scale, bias, bool(relu))
    out = np.empty((m, n), np.float32)
    if m == 0:
        return out.reshape(lead + (n,))
    a_scale, zpf = _dynamic_qparams(x2, "qlinear_dynamic", qmax)
    ep = (MODE_DEQUANT, int(zpf)) + head + (a_scale,) + tail
    au = np.empty((m, packed.data.shape[1]), np.uint8)
    outs = (_NO_I32, _NO_U8, out.reshape(m, n, 1))
    jit.run_parts(_dynamic_rows, [(x2, a_scale, zpf, qmax, au, packed.data, ep, outs, lo, hi)
                                  for lo, hi in _row_parts(m, packed)])
    return out.reshape(lead + (n,))


_DQ_PARTS: dict = {}  # ids of (weight data, w_scale, bias), relu -> (weakrefs to the arrays, epilogue parts)


def _dequant_parts(packed, w_scale, bias, relu):
    """The fields of a dequantizing epilogue that do not change from call to call (all but the activations' zero
    point and scale), around those two: computed once per (weight, w_scale, bias, relu)."""
    def build():
        n = packed.n
        # (copies: always writable, so every layer's tuple has one numba type whatever the arrays came from)
        ws = np.array(per_channel(w_scale, n, np.float32, "w_scale", "qlinear_dynamic"))
        bf = np.zeros(n, np.float32) if bias is None else np.array(per_channel(bias, n, np.float32, "bias",
                                                                                "qlinear_dynamic"))
        ep = epilogue(MODE_DEQUANT, packed, 0, w_scale=ws, bias_f=bf, relu=relu)
        return ep[2:8], ep[9:]
    return cached_per_arrays(_DQ_PARTS, (packed.data, w_scale, bias), relu, build)


def requant_params(a_scale, w_scale, out_scale, bias=None):
    """(bias_i32, multiplier) for ``qlinear``/``qconv2d`` from float scales, in float32:
    ``multiplier = a_scale * w_scale / out_scale`` and ``bias_i32 = rint(bias / (a_scale * w_scale))``
    (None without a bias)."""
    w_scale = np.atleast_1d(np.asarray(w_scale, np.float32))
    acc_scale = np.float32(a_scale) * w_scale
    mult = acc_scale / np.float32(out_scale)
    if bias is None:
        return None, mult
    bq = np.rint(np.asarray(bias, np.float32) / acc_scale).astype(np.float64)
    return np.clip(bq, -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int32), mult
