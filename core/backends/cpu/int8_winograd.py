"""Winograd F(2x2, 3x3) in exact integers for int8 3x3 / stride-1 convolutions followed by a 2x2 max pool on AVX2
CPUs (the runtime's prepared ``quantized_conv2d_pool``): the int8 sibling of winograd.py.

A 2x2 block of conv outputs is one pooling window; F(2x2, 3x3) computes it from the block's 4x4 input patch with
16 multiply-adds per (input, output) channel pair instead of 36 (Lavin & Gray):

    4 Y = A^T [ (G' g G'^T) . (B^T d B) ] A,    G' = 2 G = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]]

with d = code - zero point (0 in the padding, which holds the zero point) and g the int8 weights. Everything is an
integer: |B^T d B| <= 4 * 255 = 1020 and |G' g G'^T| <= 9 * 128 = 1152 fit int16, so each transform's channel sums
are ``vpmaddwd`` GEMMs on int16 pairs (exact, int32: a pair is at most 2.35M), and the output transform adds nine of
their sums, still below 2**31 for C <= MAX_CHANNELS. The pool's max is taken of the four 4Y (the requantizing
epilogue is non-decreasing in the sum when every multiplier is >= 0, which ``usable`` asks for), shifted right by two
(exact: a multiple of 4) and requantized with the int8 kernels' epilogue, so the codes are bit-identical to the direct
tile's (int8_conv_tiled.py). The direct AVX2 tile computes 36 multiply-adds per output and channel pair, and 16 of
every 14 columns; this computes 4 per output and none wasted but the transforms.

Layout: per image the codes minus the zero point, zero-padded, channels last (int16, ``cp`` = C rounded up to a
multiple of 16: the input transform's vectors); per chunk of images V (16, blocks, cp) int16 (blocks of all the chunk's images, image after image, row
by row); the GEMM (LLVM IR, ``_gemm_ir``) M[xi] (blocks, co_pad) = V[xi] (blocks, cp) x U[xi] (cp, co_pad) with
U stored as (cp / 2, co_pad) int16 pairs, output channels as vector lanes and each block's channel pair broadcast;
then the output transform, pool and epilogue per block, vectorised over the output channels, into a stage that is
transposed into the NCHW codes. The three kernels are LLVM IR (``kernels``), driven by the numba ``_slice``.

Measured on Zen 3 (one thread, the cnn's conv2, per image): layout 1.7 us, input transform 0.7, GEMMs 6.0 (~67 G
multiply-adds/s), output transform + epilogue 1.6, to NCHW 1.2: ~11 us against ~20 for the direct tile.
"""
from __future__ import annotations

import copy
import os

import numpy as np

from . import vnni as _vnni
from .helpers import finish, no_sync, post
from .intrinsics import call
from .jit import njit, run_parts, slices
from .llvm_ir import compile_module

RG, PV = 4, 2  # rows (blocks) x vectors of 8 output channels per pass of the GEMM: 8 accumulators
MAX_CHANNELS = 200  # input channels: |M| <= C * 1020 * 1152 and a Y is 9 of them, below 2**31
CHUNK_BYTES = 1 << 18  # V + M of a chunk of images (kept in L2)
PAR_MIN_MACS = 1 << 22

_STATE: dict = {}
_VT, _WT = "<8 x i32>", "<16 x i16>"


def _gemm_ir(nv: int) -> str:
    """``wgemm(u, K, v, ldv, groups, m, ldm)``: for rows r < 4 * groups and lanes p < 8 * nv,
    m[r*ldm + p] = sum over k < K of the int16 pair products of u[k*8*nv + p] and v[r*ldv + k] (int32 each)."""
    lines = ["define void @wgemm(i32* %u, i64 %K, i32* %v, i64 %ldv, i64 %groups, i32* %m, i64 %ldm) {", "entry:",
             "  %any = icmp sgt i64 %groups, 0", "  br i1 %any, label %grp, label %fin", "grp:",
             f"  %g = phi i64 [0, %entry], [%g1, %done{nv // PV - 1}]", f"  %r0 = mul i64 %g, {RG}",
             "  %vrow = mul i64 %r0, %ldv", "  %vb = getelementptr i32, i32* %v, i64 %vrow",
             "  %mrow = mul i64 %r0, %ldm", "  %mb = getelementptr i32, i32* %m, i64 %mrow", "  br label %loop0"]
    for i in range(nv // PV):
        hs = range(PV * i, PV * i + PV)
        acc = [(r, h) for r in range(RG) for h in hs]
        start = "grp" if i == 0 else f"done{i - 1}"
        lines += [f"loop{i}:", f"  %k{i} = phi i64 [0, %{start}], [%k{i}n, %loop{i}]"]
        lines += [f"  %a{r}_{h} = phi {_VT} [zeroinitializer, %{start}], [%n{r}_{h}, %loop{i}]" for r, h in acc]
        lines.append(f"  %uk{i} = mul i64 %k{i}, {8 * nv}")
        for h in hs:
            lines += [f"  %uo{h} = add i64 %uk{i}, {8 * h}", f"  %up{h} = getelementptr i32, i32* %u, i64 %uo{h}",
                      f"  %uq{h} = bitcast i32* %up{h} to {_VT}*", f"  %ul{h} = load {_VT}, {_VT}* %uq{h}, align 4",
                      f"  %x{h} = bitcast {_VT} %ul{h} to {_WT}"]
        for r in range(RG):
            s = f"{i}_{r}"
            lines += [f"  %vo{s}a = mul i64 %ldv, {r}", f"  %vo{s} = add i64 %vo{s}a, %k{i}",
                      f"  %vp{s} = getelementptr i32, i32* %vb, i64 %vo{s}", f"  %vs{s} = load i32, i32* %vp{s}",
                      f"  %vi{s} = insertelement {_VT} undef, i32 %vs{s}, i32 0",
                      f"  %vv{s} = shufflevector {_VT} %vi{s}, {_VT} undef, <8 x i32> zeroinitializer",
                      f"  %w{s} = bitcast {_VT} %vv{s} to {_WT}"]
            for h in hs:
                lines += [f"  %p{r}_{h} = call {_VT} @llvm.x86.avx2.pmadd.wd({_WT} %x{h}, {_WT} %w{s})",
                          f"  %n{r}_{h} = add {_VT} %a{r}_{h}, %p{r}_{h}"]
        lines += [f"  %k{i}n = add i64 %k{i}, 1", f"  %more{i} = icmp ult i64 %k{i}n, %K",
                  f"  br i1 %more{i}, label %loop{i}, label %done{i}", f"done{i}:"]
        for r, h in acc:
            lines += [f"  %so{r}_{h}a = mul i64 %ldm, {r}", f"  %so{r}_{h} = add i64 %so{r}_{h}a, {8 * h}",
                      f"  %sp{r}_{h} = getelementptr i32, i32* %mb, i64 %so{r}_{h}",
                      f"  %sq{r}_{h} = bitcast i32* %sp{r}_{h} to {_VT}*", f"  store {_VT} %n{r}_{h}, {_VT}* %sq{r}_{h}, align 4"]
        if i + 1 < nv // PV:
            lines.append(f"  br label %loop{i + 1}")
    lines += ["  %g1 = add i64 %g, 1", "  %moreg = icmp slt i64 %g1, %groups", "  br i1 %moreg, label %grp, label %fin",
              "fin:", "  ret void", "}"]
    return "\n".join(lines)


def _in_ir() -> str:
    """``win(xp, rs, cs, nvec, nblk, nx, v, ldxi)``: for blocks t < nblk (ty, tx = divmod(t, nx)) and channel vectors
    cv < nvec, the 4x4 patch of int16 vectors at xp + 2ty*rs + 2tx*cs + 16cv (rows rs, columns cs elements apart)
    -> v[xi*ldxi + t*cs + 16cv] = (B^T d B)[xi] (int16: exact, |d| <= 255 makes each at most 1020)."""
    vt = "<16 x i16>"
    lines = ["define void @win(i16* %xp, i64 %rs, i64 %cs, i64 %nvec, i64 %nblk, i64 %nx, i16* %v, i64 %ldxi) {",
             "entry:", "  %any = icmp sgt i64 %nblk, 0", "  br i1 %any, label %blk, label %fin", "blk:",
             "  %t = phi i64 [0, %entry], [%t1, %vend]", "  %ty = udiv i64 %t, %nx", "  %tx = urem i64 %t, %nx",
             "  %y2 = mul i64 %ty, 2", "  %x2 = mul i64 %tx, 2", "  %ro = mul i64 %y2, %rs", "  %co = mul i64 %x2, %cs",
             "  %base = add i64 %ro, %co", "  %vbase = mul i64 %t, %cs", "  br label %vec", "vec:",
             "  %cv = phi i64 [0, %blk], [%cv1, %vec]", "  %c16 = mul i64 %cv, 16", "  %b0 = add i64 %base, %c16",
             "  %vb0 = add i64 %vbase, %c16"]
    for i in range(4):
        for j in range(4):
            lines += [f"  %o{i}{j}r = mul i64 %rs, {i}", f"  %o{i}{j}c = mul i64 %cs, {j}", f"  %o{i}{j}a = add i64 %o{i}{j}r, %o{i}{j}c",
                      f"  %o{i}{j} = add i64 %b0, %o{i}{j}a", f"  %p{i}{j} = getelementptr i16, i16* %xp, i64 %o{i}{j}",
                      f"  %q{i}{j} = bitcast i16* %p{i}{j} to {vt}*", f"  %d{i}_{j} = load {vt}, {vt}* %q{i}{j}, align 2"]

    def bt(src, name):
        return [f"  %{name(0)} = sub {vt} %{src[0]}, %{src[2]}", f"  %{name(1)} = add {vt} %{src[1]}, %{src[2]}",
                f"  %{name(2)} = sub {vt} %{src[2]}, %{src[1]}", f"  %{name(3)} = sub {vt} %{src[1]}, %{src[3]}"]
    for i in range(4):  # d B along each row
        lines += bt([f"d{i}_{j}" for j in range(4)], lambda j, i=i: f"h{i}_{j}")
    for j in range(4):  # B^T down each column
        lines += bt([f"h{i}_{j}" for i in range(4)], lambda i, j=j: f"r{i}_{j}")
    for i in range(4):
        for j in range(4):
            xi = 4 * i + j
            lines += [f"  %s{xi}x = mul i64 %ldxi, {xi}", f"  %s{xi} = add i64 %s{xi}x, %vb0",
                      f"  %sp{xi} = getelementptr i16, i16* %v, i64 %s{xi}", f"  %sq{xi} = bitcast i16* %sp{xi} to {vt}*",
                      f"  store {vt} %r{i}_{j}, {vt}* %sq{xi}, align 2"]
    lines += ["  %cv1 = add i64 %cv, 1", "  %morev = icmp slt i64 %cv1, %nvec", "  br i1 %morev, label %vec, label %vend",
              "vend:", "  %t1 = add i64 %t, 1", "  %moret = icmp slt i64 %t1, %nblk", "  br i1 %moret, label %blk, label %fin",
              "fin:", "  ret void", "}"]
    return "\n".join(lines)


def _out_ir() -> str:
    """``wout(m, ldxi, nblk, nvec, bias, mult, zp, lo, hi, dst)``: for blocks t < nblk and vectors cv < nvec of 8
    output channels (ld = 8 * nvec elements a block), Y = A^T M A of M[xi] = m[xi*ldxi + t*ld + 8cv + lane] (int32:
    exact for C <= MAX_CHANNELS), the max of its 2x2, then the int8 kernels' epilogue on that (4 times the) sum:
    dst[t*ld + 8cv + lane] = min(max(rint(float(double(max) * 0.25 + bias) * mult) + zp, lo), hi) as int32."""
    vt, dv, fv = "<8 x i32>", "<8 x double>", "<8 x float>"
    lines = ["define void @wout(i32* %m, i64 %ldxi, i64 %nblk, i64 %nvec, double* %bias, float* %mult, float %zp, "
             "float %lo, float %hi, i32* %dst) {", "entry:", "  %ld = mul i64 %nvec, 8", "  %any = icmp sgt i64 %nblk, 0"]
    for name in ("zp", "lo", "hi"):
        lines += [f"  %{name}i = insertelement {fv} undef, float %{name}, i32 0",
                  f"  %{name}v = shufflevector {fv} %{name}i, {fv} undef, <8 x i32> zeroinitializer"]
    lines += ["  br i1 %any, label %blk, label %fin", "blk:", "  %t = phi i64 [0, %entry], [%t1, %vend]",
              "  %tb = mul i64 %t, %ld", "  br label %vec", "vec:", "  %cv = phi i64 [0, %blk], [%cv1, %vec]",
              "  %c8 = mul i64 %cv, 8", "  %b0 = add i64 %tb, %c8"]
    for xi in range(16):
        lines += [f"  %o{xi}x = mul i64 %ldxi, {xi}", f"  %o{xi} = add i64 %o{xi}x, %b0",
                  f"  %p{xi} = getelementptr i32, i32* %m, i64 %o{xi}", f"  %q{xi} = bitcast i32* %p{xi} to {vt}*",
                  f"  %m{xi} = load {vt}, {vt}* %q{xi}, align 4"]
    for j in range(4):  # A^T M: rows 0 + 1 + 2 and 1 - 2 - 3, per column j
        lines += [f"  %s{j}a = add {vt} %m{j}, %m{4 + j}", f"  %r0_{j} = add {vt} %s{j}a, %m{8 + j}",
                  f"  %s{j}b = sub {vt} %m{4 + j}, %m{8 + j}", f"  %r1_{j} = sub {vt} %s{j}b, %m{12 + j}"]
    for i in range(2):  # (A^T M) A: the columns the same way
        lines += [f"  %u{i}a = add {vt} %r{i}_0, %r{i}_1", f"  %y{i}0 = add {vt} %u{i}a, %r{i}_2",
                  f"  %u{i}b = sub {vt} %r{i}_1, %r{i}_2", f"  %y{i}1 = sub {vt} %u{i}b, %r{i}_3"]
    for out, a, b in (("ma", "y00", "y01"), ("mb", "y10", "y11"), ("mx", "ma", "mb")):
        lines += [f"  %{out}g = icmp sgt {vt} %{b}, %{a}", f"  %{out} = select <8 x i1> %{out}g, {vt} %{b}, {vt} %{a}"]
    lines += [f"  %md = sitofp {vt} %mx to {dv}", f"  %mq = fmul {dv} %md, <{', '.join(['double 0.25'] * 8)}>",
              "  %bp = getelementptr double, double* %bias, i64 %c8", f"  %bq = bitcast double* %bp to {dv}*",
              f"  %bv = load {dv}, {dv}* %bq, align 8", f"  %sum = fadd {dv} %mq, %bv", f"  %sf = fptrunc {dv} %sum to {fv}",
              "  %mp = getelementptr float, float* %mult, i64 %c8", f"  %mvq = bitcast float* %mp to {fv}*",
              f"  %mv = load {fv}, {fv}* %mvq, align 4", f"  %sc = fmul {fv} %sf, %mv",
              f"  %rd = call {fv} @llvm.rint.v8f32({fv} %sc)", f"  %rz = fadd {fv} %rd, %zpv",
              f"  %blo = fcmp olt {fv} %rz, %lov", f"  %c1 = select <8 x i1> %blo, {fv} %lov, {fv} %rz",
              f"  %bhi = fcmp ogt {fv} %c1, %hiv", f"  %c2 = select <8 x i1> %bhi, {fv} %hiv, {fv} %c1",
              f"  %ci = fptosi {fv} %c2 to {vt}", "  %dp = getelementptr i32, i32* %dst, i64 %b0",
              f"  %dq = bitcast i32* %dp to {vt}*", f"  store {vt} %ci, {vt}* %dq, align 4",
              "  %cv1 = add i64 %cv, 1", "  %morev = icmp slt i64 %cv1, %nvec", "  br i1 %morev, label %vec, label %vend",
              "vend:", "  %t1 = add i64 %t, 1", "  %moret = icmp slt i64 %t1, %nblk", "  br i1 %moret, label %blk, label %fin",
              "fin:", "  ret void", "}"]
    return "\n".join(lines)


def kernels(nv: int):
    """(addresses of wgemm for nv vectors of 8 output channels, win, wout), compiled once per process; None where
    they cannot run (no AVX2, LLVM refuses)."""
    if nv not in _STATE:
        decls = ("declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)\n"
                 "declare <8 x float> @llvm.rint.v8f32(<8 x float>)\n")
        engine = compile_module(decls + "\n".join([_gemm_ir(nv), _in_ir(), _out_ir()]), require=("avx2",))
        _STATE[nv] = None if engine is None else (tuple(engine.get_function_address(f) for f in ("wgemm", "win", "wout")),
                                                  engine)
    return None if _STATE[nv] is None else _STATE[nv][0]


_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)


def transform_weights(w: np.ndarray, cp: int, co_pad: int) -> np.ndarray:
    """int8 (Cout, C, 3, 3) -> U = G' g G'^T as (16, cp / 2, co_pad) int32, each the int16 pair of input channels
    (2k, 2k + 1) of one output channel (zeros past C and Cout); xi = 4i + j."""
    co, c = w.shape[:2]
    u = np.einsum("ai,ocij,bj->aboc", _G2, w.astype(np.int64), _G2).reshape(16, co, c)
    full = np.zeros((16, co_pad, cp), np.int16)
    full[:, :co, :c] = u  # |u| <= 9 * 128: exact in int16
    return np.ascontiguousarray(full.transpose(0, 2, 1)).reshape(16, cp // 2, 2, co_pad).transpose(
        0, 1, 3, 2).copy().view(np.int32).reshape(16, cp // 2, co_pad)


def usable(w, stride, padding, dilation, groups, mult) -> bool:
    """Whether quantized_conv2d_pool of this weight and geometry runs here (the input then needs ``fits``): 3x3 int8
    weights, stride 1, dilation 1, one group, padding within the window, 2 to MAX_CHANNELS input channels (a first
    layer takes the float path), every multiplier >= 0 (the pool then commutes with the epilogue), on a CPU whose
    int8 tile is the AVX2 one (with VNNI the direct tile runs: not measured against it); ``EMBER_WINOGRAD=0`` in the
    environment turns it off."""
    if os.environ.get("EMBER_WINOGRAD", "1") == "0" or _vnni.kind() != _vnni.AVX2:
        return False
    if w.dtype != np.int8 or w.ndim != 4 or tuple(w.shape[2:]) != (3, 3) or not 2 <= w.shape[1] <= MAX_CHANNELS:
        return False
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1 or not all(0 <= p <= 2 for p in padding):
        return False
    return bool((np.asarray(mult) >= 0).all()) and kernels(-(-w.shape[0] // 16) * 2) is not None


def fits(x, w, padding) -> bool:
    """Whether ``PreparedPool`` of weight w takes x: uint8 NCHW with w's input channels, and a conv output of at
    least one pooling window."""
    return (x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] == w.shape[1] and x.shape[2] + 2 * padding[0] >= 4
            and x.shape[3] + 2 * padding[1] >= 4)


@njit
def _slice(x, dtab, out, u, ph, pw, chunk, fns, bias, mult, out_zp, lo, hi, sync):
    """out (n, Co, ny, nx) uint8 = the requantized 2x2-max-pooled 3x3 convolution of the uint8 images x, each code c
    read as dtab[c] (int16: c minus the zero point, or a requantize table's code minus it) with U =
    ``transform_weights`` (bias: float64 int32 sums, mult float32, both padded to U's output channels), chunk images
    at a time."""
    post(sync)
    gemm_fn, in_fn, out_fn = fns
    n, c, h, w_ = x.shape
    co, ny, nx = out.shape[1], out.shape[2], out.shape[3]
    k2, co_pad = u.shape[1], u.shape[2]
    cp = 2 * k2
    per = ny * nx
    rows = -(-(chunk * per) // 4) * 4
    hp, wp = max(2 * ny + 2, h + ph), max(2 * nx + 2, w_ + pw)  # (what the blocks read; what the image fills)
    xp = np.zeros((hp, wp, cp), np.int16)
    v = np.zeros((16, rows, cp), np.int16)
    m = np.empty((16, rows, co_pad), np.int32)
    stage = np.empty((rows, co_pad), np.int32)
    for i0 in range(0, n, chunk):
        cnt = min(chunk, n - i0)
        for i in range(cnt):
            for r in range(h):  # codes - zp, channels last (the padding and channels past c stay 0)
                for col in range(w_):
                    dst = xp[ph + r, pw + col]
                    for ch in range(c):
                        dst[ch] = dtab[x[i0 + i, ch, r, col]]
            call(in_fn, (xp.ctypes.data, wp * cp, cp, cp // 16, per, nx, v[:, i * per].ctypes.data, rows * cp))
        groups = -(-(cnt * per) // 4)
        for xi in range(16):
            call(gemm_fn, (u[xi].ctypes.data, k2, v[xi].ctypes.data, k2, groups, m[xi].ctypes.data, co_pad))
        call(out_fn, (m.ctypes.data, rows * co_pad, cnt * per, co_pad // 8, bias.ctypes.data, mult.ctypes.data,
                      out_zp, lo, hi, stage.ctypes.data))
        for i in range(cnt):
            for oc in range(co):
                dst = out[i0 + i, oc].reshape(per)
                for b in range(per):
                    dst[b] = stage[i * per + b, oc]
    finish(sync)


class PreparedPool:
    """quantized_conv2d_pool of one int8 3x3 weight (``usable`` says where) with fixed requantization fields:
    U transformed once, the plan once per input shape. ``__call__(x)``: uint8 (N, C, H, W) -> uint8
    (N, Cout, Ho // 2, Wo // 2). ``with_table(t)``: the same layer after the 256-entry uint8 table t (a folded
    ``requantize``), looked up while the input is laid out."""

    def __init__(self, w, zp, bias_i32, mult, out_zp, lo, hi, padding):
        co, c = w.shape[:2]
        self.co, self.zp, self.padding = co, int(zp), tuple(int(p) for p in padding)
        self.dtab = (np.arange(256) - self.zp).astype(np.int16)
        self.co_pad = cop = -(-co // 16) * 16
        self.u = transform_weights(w, -(-c // 16) * 16, cop)
        self.fns = kernels(cop // 8)
        self.bias, self.mult = np.zeros(cop, np.float64), np.zeros(cop, np.float32)
        if bias_i32 is not None:
            self.bias[:co] = np.asarray(bias_i32, np.float64).reshape(co)
        self.mult[:co] = np.broadcast_to(np.asarray(mult, np.float32).reshape(-1), (co,))
        self.epi = (np.float32(out_zp), np.float32(lo), np.float32(hi))
        self.per_shape: dict = {}

    def with_table(self, table):
        other = copy.copy(self)
        other.dtab = (np.asarray(table, np.uint8).astype(np.int64) - self.zp).astype(np.int16)
        return other

    def _plan(self, shape):
        n, c, h, w_ = shape
        ny, nx = (h + 2 * self.padding[0] - 2) // 2, (w_ + 2 * self.padding[1] - 2) // 2
        per = ny * nx
        chunk = max(1, min(n, CHUNK_BYTES // (16 * per * (2 * self.u.shape[1] * 2 + 4 * self.co_pad))))
        return (n, self.co, ny, nx), chunk, slices(n, n * 16 * per * self.co * c, PAR_MIN_MACS)

    def __call__(self, x):
        hit = self.per_shape.get(x.shape)
        if hit is None:
            if len(self.per_shape) >= 16:
                self.per_shape.clear()
            hit = self.per_shape[x.shape] = self._plan(x.shape)
        shape, chunk, parts = hit
        x = np.ascontiguousarray(x)
        out = np.empty(shape, np.uint8)
        fields = (self.u, self.padding[0], self.padding[1], chunk, self.fns, self.bias, self.mult) + self.epi
        if len(parts) == 1:
            _slice(x, self.dtab, out, *fields, no_sync())
        else:
            run_parts(_slice, [(x[a:b], self.dtab, out[a:b]) + fields for a, b in parts])
        return out
