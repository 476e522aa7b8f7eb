"""Stride-1 int8 convolutions on an AVX-512 VNNI tile that reads the zero-point-padded input directly
(no im2row): the int8 sibling of conv_tiled.py.

Layout: an image's uint8 planes, zero-point padded to hp x wp, with the channels interleaved in groups
of four ("quads": byte (c // 4, p, c % 4) for position p = row * wp + col), so one 64-byte load holds 16
positions x 4 channels: exactly the unsigned operand of ``vpdpbusd``, whose signed operand is the four
int8 weights of those channels for one output channel, broadcast. The tile (LLVM IR, like vnni.py)
keeps 8 output channels x 48 positions of int32 sums in registers over all (quad, tap) steps, at
byte offsets off(quad, i, j) = quad*hp*wp*4 + (i*dh*wp + j*dw)*4 from the tile's first position.
Positions past each row's end (the wp - wo extra columns) and past the image are computed and
dropped. Channels past C are zero weights; the padding holds the zero point, so the usual correction
``- a_zp * col_sums`` makes the sums exact, and the epilogue is the int8 GEMM's requantization
(``float32(acc - a_zp*col_sum + bias) * multiplier``, rounded half to even, clamped), optionally
followed by the 2x2 max pool of the codes (quantized_conv2d_pool).

Used for groups == 1, stride 1, at least 4 input channels, when the CPU has AVX-512 VNNI, or AVX2: then the
tile of int8_conv_avx2.py (same call and layouts, ``vpmaddwd`` on int16 pairs) with the weights in its ``pairs``
layout (``tile_weights``). ``EMBER_INT8_VNNI=0`` turns both off with the GEMM tile; otherwise int8_conv.py's im2row
path runs.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from . import int8_conv_avx2 as _avx2
from . import vnni as _vnni
from .int8_kernels import cached_per_array
from .helpers import finish, post
from .intrinsics import call
from .jit import njit, run_parts, slices
from .llvm_ir import compile_module, pool_ir, store_accumulators

NCO, NP, V = 8, 3, 16
PB = NP * V  # positions per tile
SLACK = 4 * PB + 64  # bytes read past an image's last plane at most
PAR_MIN_MACS = 1 << 22

_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int64)
_STATE: dict = {}


def _ir(np_=NP, name="qfwd") -> str:
    """The tile for NCO channels x np_ vectors of 16 positions (np_ < NP: the tail of a row of positions)."""
    vt = "<16 x i32>"
    acc = [(r, h) for r in range(NCO) for h in range(np_)]
    lines = [f"define void @{name}(i8* %x, i64* %offs, i64 %K, i32* %w, i32* %out, i64 %ldo) {{",
             "entry:", "  br label %loop", "loop:", "  %k = phi i64 [0, %entry], [%k1, %loop]"]
    lines += [f"  %a{r}_{h} = phi {vt} [zeroinitializer, %entry], [%n{r}_{h}, %loop]" for r, h in acc]
    lines += ["  %op = getelementptr i64, i64* %offs, i64 %k", "  %off = load i64, i64* %op",
              "  %xb = getelementptr i8, i8* %x, i64 %off"]
    for h in range(np_):
        lines += [f"  %xp{h} = getelementptr i8, i8* %xb, i64 {64 * h}", f"  %xq{h} = bitcast i8* %xp{h} to {vt}*",
                  f"  %xv{h} = load {vt}, {vt}* %xq{h}, align 1"]
    lines.append(f"  %wk = mul i64 %k, {NCO}")
    for r in range(NCO):
        lines += [f"  %wi{r} = add i64 %wk, {r}", f"  %wp{r} = getelementptr i32, i32* %w, i64 %wi{r}",
                  f"  %ws{r} = load i32, i32* %wp{r}", f"  %wv{r}i = insertelement {vt} undef, i32 %ws{r}, i32 0",
                  f"  %wv{r} = shufflevector {vt} %wv{r}i, {vt} undef, <16 x i32> zeroinitializer"]
        lines += [f"  %n{r}_{h} = call {vt} @llvm.x86.avx512.vpdpbusd.512({vt} %a{r}_{h}, {vt} %xv{h}, {vt} %wv{r})"
                  for h in range(np_)]
    lines += ["  %k1 = add i64 %k, 1", "  %more = icmp ult i64 %k1, %K", "  br i1 %more, label %loop, label %done",
              "done:"]
    lines += store_accumulators(acc, "i32", vt, 16)
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def tile():
    """The compiled conv tile (a ctypes function pointer) of the kind the GEMM's tile is (``vnni.kind()``): VNNI, or
    AVX2 (int8_conv_avx2.py); None where neither runs."""
    if "tile" not in _STATE:
        _STATE["tile"], _STATE["kind"] = None, 0
        kind = _vnni.kind()  # the GEMM's choice (CPU features, EMBER_INT8_VNNI, EMBER_INT8_TILE), made once
        if kind:
            if kind == _vnni.VNNI:
                decl = "declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <16 x i32>, <16 x i32>)\n"
                ir = decl + "\n".join([_ir()] + [_ir(n, f"qfwd{n}") for n in range(1, NP)]) + pool_ir("i32")
            else:
                ir = _avx2.DECL + "\n".join([_avx2.tile_ir(NCO, NP, "qfwd")] + [_avx2.tile_ir(NCO, n, f"qfwd{n}")
                                                                            for n in range(1, NP)]) + pool_ir("i32")
            engine = compile_module(ir)
            if engine is not None:
                _STATE["engine"], _STATE["kind"] = engine, kind
                _STATE["tile"] = _SIG(engine.get_function_address("qfwd"))
                _STATE["tile_addr"] = engine.get_function_address("qfwd")
                _STATE["tails"] = [0] + [engine.get_function_address(f"qfwd{n}") for n in range(1, NP)]
                _STATE["pool"] = engine.get_function_address("pool")  # addresses for intrinsics.call
    return _STATE["tile"]


def usable(x, w_shape, stride, groups) -> bool:
    return (tuple(stride) == (1, 1) and groups == 1 and x.ndim == 4 and x.shape[1] >= 4 and w_shape[1] == x.shape[1]
            and tile() is not None)


_QUADS: dict = {}  # id(weight array) -> (weakref to it, packed quads)


def _build_quads(w):
    co, c, kh, kw = w.shape
    c4, ncb = -(-c // 4), -(-co // NCO)
    wp = np.zeros((ncb * NCO, c4 * 4, kh, kw), np.int8)
    wp[:co, :c] = w
    # (block, r, quad, 4, i, j) -> (block, quad, i, j, r, 4)
    q = wp.reshape(ncb, NCO, c4, 4, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    return np.ascontiguousarray(q).view(np.int32).reshape(ncb, c4 * kh * kw, NCO)


_PAIRS: dict = {}


def tile_weights(w: np.ndarray) -> np.ndarray:
    """The weights in the layout of the tile that runs here: ``quads``, or for the AVX2 tile their int16 pairs
    (int8_conv_avx2.pairs); cached per weight array."""
    tile()
    if _STATE["kind"] == _vnni.AVX2:
        return cached_per_array(_PAIRS, w, lambda a: _avx2.pairs(quads(a)))
    return quads(w)


def quads(w: np.ndarray) -> np.ndarray:
    """int8 (Cout, C, kh, kw) -> int32 (ceil(Cout/NCO), ceil(C/4)*kh*kw, NCO): per block of NCO output channels
    and (quad, i, j) step, each output channel's four weights of that quad's channels at tap (i, j), as the
    little-endian bytes of one int32 (zeros past Cout and C). Cached per weight array."""
    return cached_per_array(_QUADS, w, _build_quads)


@functools.lru_cache(maxsize=256)
def _offsets(c4, kh, kw, dh, dw, hp, wp):
    """Byte offsets of the (quad, i, j) steps from a tile's first position (read-only, cached per geometry)."""
    q, i, j = np.meshgrid(np.arange(c4), np.arange(kh), np.arange(kw), indexing="ij")
    offs = ((q * hp * wp + i * dh * wp + j * dw) * 4).reshape(-1).astype(np.int64)
    offs.flags.writeable = False
    return offs


@njit(fastmath=False)
def _qfwd_slice(x, fill, flip, hp, wp, ph, pw, offs, wq, tile, tail, lpad, a_zp, col_sums, bias_i, mult, out_zp, lo, hi,
                out, pool, monotonic, pool_fn, sync):
    """out (n, Cout, ...) = the requantized (and with ``pool`` 2x2 max-pooled) convolution of uint8 images x;
    ``monotonic`` (all multipliers >= 0) lets the pool run on the int32 sums before one requantization."""
    post(sync)
    n, c, h, w_ = x.shape
    ncb, k4, nco = wq.shape[0], wq.shape[1], NCO  # (the AVX2 pairs hold two int32 per channel and step)
    co = out.shape[1]
    ho = out.shape[2] * 2 if pool else out.shape[2]
    wo = out.shape[3] * 2 if pool else out.shape[3]
    plane = hp * wp * 4
    c4 = (c + 3) // 4
    xq = np.empty(c4 * plane + SLACK, np.uint8)
    xq[:] = fill
    per = out.shape[2] * out.shape[3]  # outputs per channel
    stage = np.empty(co * per + 16, np.int32)  # + the pool's overhang
    corr_e = np.empty(max(1, co * per), np.float64)  # per output element: -a_zp * col_sum + bias (exact), multiplier
    mult_e = np.empty(max(1, co * per), np.float32)
    for oc in range(co):
        corr_e[oc * per:(oc + 1) * per] = np.float64(-a_zp * np.int64(col_sums[oc]) + bias_i[oc])
        mult_e[oc * per:(oc + 1) * per] = mult[oc]
    buf = np.empty(ncb * nco * lpad + 16, np.int32)[:ncb * nco * lpad].reshape(ncb * nco, lpad)  # + overhang
    xq32 = xq.view(np.uint32)
    qplane = hp * wp
    for i in range(n):
        for q4 in range(c4):  # four channels' codes -> one little-endian uint32 per position
            for r in range(h):
                o = q4 * qplane + (ph + r) * wp + pw
                if 4 * q4 + 3 < c:  # four rows in, one out: a loop LLVM vectorises
                    r0, r1, r2, r3 = x[i, 4 * q4, r], x[i, 4 * q4 + 1, r], x[i, 4 * q4 + 2, r], x[i, 4 * q4 + 3, r]
                    dst = xq32[o:o + w_]
                    for col in range(w_):
                        dst[col] = (np.uint32(r0[col] ^ flip) | (np.uint32(r1[col] ^ flip) << np.uint32(8))
                                    | (np.uint32(r2[col] ^ flip) << np.uint32(16))
                                    | (np.uint32(r3[col] ^ flip) << np.uint32(24)))
                    continue
                for col in range(w_):
                    v = np.uint32(0)
                    for t in range(4):
                        ch = 4 * q4 + t
                        b = np.uint32(x[i, ch, r, col] ^ flip) if ch < c else np.uint32(fill)
                        v |= b << np.uint32(8 * t)
                    xq32[o + col] = v
        for cb in range(ncb):
            wptr = wq[cb].ctypes.data
            for q in range(lpad // PB):
                call(tile, (xq.ctypes.data + q * PB * 4, offs.ctypes.data, k4, wptr,
                            buf[cb * nco].ctypes.data + q * PB * 4, lpad))
            if lpad % PB:  # the row's last positions: the tile of fewer vectors
                q = lpad - lpad % PB
                call(tail, (xq.ctypes.data + q * 4, offs.ctypes.data, k4, wptr, buf[cb * nco].ctypes.data + q * 4, lpad))
        if pool and not monotonic:  # a negative multiplier: requantize every sum, then pool the codes
            for oc in range(co):
                row = buf[oc]
                corr = -a_zp * np.int64(col_sums[oc]) + bias_i[oc]
                m = mult[oc]
                for y in range(ho // 2):
                    for xx in range(wo // 2):
                        p = 2 * y * wp + 2 * xx
                        best = np.float32(-np.inf)
                        for d_ in (p, p + 1, p + wp, p + wp + 1):
                            v = np.float32(np.int64(row[d_]) + corr) * m
                            best = max(best, min(max(np.rint(v) + out_zp, lo), hi))
                        out[i, oc, y, xx] = int(best)
            continue
        for oc in range(co):  # the sums to keep (2x2-pooled: the epilogue is non-decreasing in them), dense
            row = buf[oc]
            st = stage[oc * per:(oc + 1) * per]
            if pool:
                call(pool_fn, (row.ctypes.data, wp, ho // 2, wo, st.ctypes.data))
            else:
                for y in range(ho):
                    st[y * wo:(y + 1) * wo] = row[y * wp:y * wp + wo]
        flat = out[i].reshape(co * per)
        for j in range(co * per):  # one vectorised requantization pass over the image's channels (float64 sums of
            v = np.float32(np.float64(stage[j]) + corr_e[j]) * mult_e[j]  # int32 values: exact; AVX2 has no int64
            flat[j] = np.int32(min(max(np.rint(v) + out_zp, lo), hi))  # vector conversions)
    finish(sync)


def qconv2d(xu, fill, flip, w, padding, dilation, ep, out, pool=False):
    """Runs the tile over uint8 images xu (N, C, H, W) (flip: XOR applied to each code; fill: the padding
    code) with int8 weight w (Cout, C, kh, kw), the requantization epilogue tuple ``ep`` of int8_kernels,
    writing out (N, Cout, Ho, Wo) or, with ``pool``, (N, Cout, Ho//2, Wo//2)."""
    wq = tile_weights(w)
    geo, _, parts = _plan(xu.shape, w.shape, wq, padding, dilation, pool)
    epi, monotonic = _epilogue_fields(ep)
    _launch(xu, out, _head(fill, flip, geo, wq) + epi, (pool, monotonic, _STATE["pool"]), parts)
    return out


def _plan(shape, w_shape, wq, padding, dilation, pool):
    """((hp, wp, ph, pw, tap table, lpad), the output's shape, the slices of the images) of a tiled int8 conv of
    images ``shape`` (N, C, H, W)."""
    n, c, h, w_ = shape
    co, _, kh, kw = w_shape
    (ph, pw), (dh, dw) = padding, dilation
    hp, wp = h + 2 * ph, w_ + 2 * pw
    ho, wo = hp - dh * (kh - 1), wp - dw * (kw - 1)
    lpad = -(-((ho - 1) * wp + wo) // V) * V
    offs = _offsets(-(-c // 4), kh, kw, dh, dw, hp, wp)
    work = n * wq.shape[0] * NCO * lpad * wq.shape[1] * 4
    out = (n, co, ho // 2, wo // 2) if pool else (n, co, ho, wo)
    return (hp, wp, ph, pw, offs, lpad), out, slices(n, work, PAR_MIN_MACS)


def _epilogue_fields(ep):
    """(the epilogue fields ``_qfwd_slice`` takes, whether every multiplier is >= 0) of int8_kernels' ``ep``."""
    _, a_zp, col_sums, bias_i, mult, out_zp, lo, hi = ep[:8]
    return (np.int64(a_zp), col_sums, bias_i, mult, out_zp, lo, hi), bool((mult >= 0).all())


def _head(fill, flip, geo, wq):
    """``_qfwd_slice``'s arguments from ``fill`` to ``lpad`` (geo: ``_plan``'s first item)."""
    hp, wp, ph, pw, offs, lpad = geo
    return (fill, flip, hp, wp, ph, pw, offs, wq, _STATE["tile_addr"], _tail(lpad), lpad)


def _launch(xu, out, head, tail, parts):
    run_parts(_qfwd_slice, [(xu[a:b],) + head + (out[a:b],) + tail for a, b in parts])


def _tail(lpad):
    """The address of the tile for the last lpad % PB positions of a row (0: none)."""
    return _STATE["tails"][(lpad % PB) // V]


class PreparedQConv:
    """``qconv2d`` of one int8 weight and fixed epilogue (``ep`` of int8_kernels.requant_epilogue, built once) for
    uint8 activations with zero point ``zp``: the quads packed, the multipliers' sign checked and each input shape's
    geometry worked out once (a batch-1 call was mostly this Python). Needs ``usable`` for its inputs."""

    def __init__(self, w, zp, ep, padding, dilation, pool):
        self.w, self.zp, self.pool = w, np.uint8(zp), bool(pool)
        self.wq = tile_weights(w)
        self.epi, self.monotonic = _epilogue_fields(ep)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.per_shape: dict = {}

    def __call__(self, xu, dtype):
        hit = self.per_shape.get(xu.shape)
        if hit is None:
            geo, shape, parts = _plan(xu.shape, self.w.shape, self.wq, self.padding, self.dilation, self.pool)
            head = _head(self.zp, np.uint8(0), geo, self.wq) + self.epi
            if len(self.per_shape) >= 16:
                self.per_shape.clear()
            hit = self.per_shape[xu.shape] = (shape, head, (self.pool, self.monotonic, _STATE["pool"]), parts)
        shape, head, tail, parts = hit
        out = np.empty(shape, dtype)
        _launch(xu if xu.flags.c_contiguous else np.ascontiguousarray(xu), out, head, tail, parts)
        return out
