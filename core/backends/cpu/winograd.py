"""Winograd F(2x2, 3x3) for float32 3x3 / stride-1 convolutions followed by a 2x2 max pool (inference: the
runtime's prepared ``conv2d_pool``).

A 2x2 block of conv outputs is exactly one 2x2 pooling window, and F(2x2, 3x3) computes such a block from a
4x4 input patch with 16 multiplications per (input, output) channel pair instead of 36:

    Y = A^T [ (G g G^T) . (B^T d B) ] A        (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks")

per image and block: the input transform V = B^T d B (16 values per input channel, ``wino_in``: additions only),
then M_xi = sum over input channels of U_xi V_xi (U = G g G^T, transformed once when the weights are prepared),
then the output transform Y = A^T M A fused with the bias, the pool's max and the ReLU, which writes the pooled
plane. Two ways to the sums:

- many input channels: 16 independent GEMMs on conv_tile_ir's forward tile, the blocks as its positions, into M
  (``wino_out`` then transforms): the cnn benchmark's conv2 (16 -> 32 channels, 14x14) needs 2.25x fewer
  multiply-adds than the direct tiles (which also compute 224 of every 196 positions);
- at most SMALL_CHANNELS (a first layer): ``wino_small`` sums the few channels and transforms in one pass, no
  M (the cnn's conv1, 1 -> 16 channels: 108 vs 149 us at B=64).

Numerics: the transforms add and subtract (and halve, in G) values, so results differ from the direct
convolution by float32 roundings (relative ~1e-6 of the sums' magnitude); NaN inputs give NaN in the same
pooled outputs (each block's 4x4 patch is its window's receptive field); an infinite input can give NaN where
the direct sum would be infinite.

Blocks are laid out image after image (block t = ty*nx + tx of image i at i*ny*nx), a chunk of images at a time so
V (16 x Cin x blocks) and M (16 x Cout x blocks) stay in L2.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from .conv_tile_ir import host_tiles
from .conv_tiled import PAR_MIN_MACS, _SLACK, _pad_into, _packed, _requant_fields, requant_row
from .helpers import finish, no_sync, post
from .intrinsics import call
from .jit import njit, run_parts, slices
from .llvm_ir import MASKED_DECLS, _lanes, _splat_i64, address, compile_module

CHUNK_BYTES = 1 << 19  # V + M floats of a chunk of images (kept in L2)
_SKEW = 80  # floats between the 16 transforms' planes beyond their size: 16 streams 4 KiB apart share L1 sets
SMALL_CHANNELS = 4  # input channels up to which the channel sums run in the output pass (wino_small), not GEMMs
# (16 output channels, B=64: 4 inputs 285 vs 302 us, 6 inputs 421 vs 404)

_IN_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                           ctypes.c_int64)
_SMALL_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                              ctypes.c_int64)
_OUT_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int64,
                            ctypes.c_void_p)

_EVEN = "<8 x i32> <" + ", ".join(f"i32 {2 * i}" for i in range(8)) + ">"
_ODD = "<8 x i32> <" + ", ".join(f"i32 {2 * i + 1}" for i in range(8)) + ">"


def _combos(src, op):
    """IR lines: the F(2x2, 3x3) input-transform rows B^T applied to the four 8-lane vectors src[0..3]:
    out0 = s0 - s2, out1 = s1 + s2, out2 = s2 - s1, out3 = s1 - s3 (``op`` names them)."""
    s = src
    return [f"  %{op(0)} = fsub <8 x float> %{s[0]}, %{s[2]}", f"  %{op(1)} = fadd <8 x float> %{s[1]}, %{s[2]}",
            f"  %{op(2)} = fsub <8 x float> %{s[2]}, %{s[1]}", f"  %{op(3)} = fsub <8 x float> %{s[1]}, %{s[3]}"]


def in_ir() -> str:
    """``wino_in(x, wp, ny, nx, dst, ld)``: the input transform of one padded plane (row stride wp): for block
    (ty, tx) < (ny, nx), whose 4x4 patch starts at row 2ty, column 2tx, dst[xi*ld + ty*nx + tx] = (B^T d B)[xi]
    for xi = 4i + j < 16. Eight blocks a step (two 16-float loads per patch row, even / odd lanes); masked stores
    (nothing written past a row's nx blocks); reads up to 18 floats past a row's last block's patch."""
    lines = ["define void @wino_in(float* %x, i64 %wp, i64 %ny, i64 %nx, float* %dst, i64 %ld) {", "entry:",
             "  %gy = icmp sgt i64 %ny, 0", "  %gx = icmp sgt i64 %nx, 0", "  %go = and i1 %gy, %gx",
             "  br i1 %go, label %row, label %done", "row:",
             "  %ty = phi i64 [0, %entry], [%ty1, %rowend]", "  %r2 = mul i64 %ty, 2", "  %roff = mul i64 %r2, %wp",
             "  %doff = mul i64 %ty, %nx", "  br label %col", "col:", "  %tx = phi i64 [0, %row], [%tx1, %col]",
             "  %c2 = mul i64 %tx, 2", "  %base = add i64 %roff, %c2"]
    for i in range(4):
        lines += [f"  %ro{i} = mul i64 %wp, {i}", f"  %o{i} = add i64 %base, %ro{i}"]
        for k, extra in (("a", 0), ("b", 2)):
            lines += [f"  %o{i}{k} = add i64 %o{i}, {extra}", f"  %p{i}{k} = getelementptr float, float* %x, i64 %o{i}{k}",
                      f"  %q{i}{k} = bitcast float* %p{i}{k} to <16 x float>*",
                      f"  %l{i}{k} = load <16 x float>, <16 x float>* %q{i}{k}, align 4"]
        lines += [f"  %d{i}_0 = shufflevector <16 x float> %l{i}a, <16 x float> undef, {_EVEN}",
                  f"  %d{i}_1 = shufflevector <16 x float> %l{i}a, <16 x float> undef, {_ODD}",
                  f"  %d{i}_2 = shufflevector <16 x float> %l{i}b, <16 x float> undef, {_EVEN}",
                  f"  %d{i}_3 = shufflevector <16 x float> %l{i}b, <16 x float> undef, {_ODD}"]
        lines += _combos([f"d{i}_{c}" for c in range(4)], lambda j, i=i: f"h{i}_{j}")  # d B: along the row
    for j in range(4):
        lines += _combos([f"h{i}_{j}" for i in range(4)], lambda i, j=j: f"v{i}_{j}")  # B^T (d B): down
    lines += ["  %left = sub i64 %nx, %tx", _splat_i64("ls", "%left", 8), f"  %mask = icmp slt <8 x i64> {_lanes(8)}, %ls",
              "  %so = add i64 %doff, %tx"]
    for i in range(4):
        for j in range(4):
            xi = 4 * i + j
            lines += [f"  %sx{xi} = mul i64 %ld, {xi}", f"  %sa{xi} = add i64 %sx{xi}, %so",
                      f"  %sp{xi} = getelementptr float, float* %dst, i64 %sa{xi}",
                      f"  call void @llvm.masked.store.v8f32.p0(<8 x float> %v{i}_{j}, ptr %sp{xi}, i32 4, <8 x i1> %mask)"]
    lines += ["  %tx1 = add i64 %tx, 8", "  %more = icmp slt i64 %tx1, %nx", "  br i1 %more, label %col, label %rowend",
              "rowend:", "  %ty1 = add i64 %ty, 1", "  %morey = icmp slt i64 %ty1, %ny",
              "  br i1 %morey, label %row, label %done", "done:", "  ret void", "}"]
    return "\n".join(lines)


def _out_transform(src) -> list:
    """IR lines: %res = relu?(%bv + the max of the 2x2 block A^T M A) (%dorelu: whether to ReLU) from the 16 vectors
    %{src}0 .. %{src}15 of M; NaN wins the max, as in max_pool2d."""
    vt, m = "<16 x float>", [f"%{src}{xi}" for xi in range(16)]
    lines = []
    for j in range(4):  # A^T M: rows 0 + 1 + 2 and 1 - 2 - 3, per column j
        lines += [f"  %s{j}a = fadd {vt} {m[j]}, {m[4 + j]}", f"  %r0_{j} = fadd {vt} %s{j}a, {m[8 + j]}",
                  f"  %s{j}b = fsub {vt} {m[4 + j]}, {m[8 + j]}", f"  %r1_{j} = fsub {vt} %s{j}b, {m[12 + j]}"]
    for i in range(2):  # (A^T M) A: columns the same way
        lines += [f"  %u{i}a = fadd {vt} %r{i}_0, %r{i}_1", f"  %y{i}0 = fadd {vt} %u{i}a, %r{i}_2",
                  f"  %u{i}b = fsub {vt} %r{i}_1, %r{i}_2", f"  %y{i}1 = fsub {vt} %u{i}b, %r{i}_3"]
    return lines + [_max16("ma", "y00", "y01"), _max16("mb", "y10", "y11"), _max16("mx", "ma", "mb"),
                    f"  %mb_ = fadd {vt} %mx, %bv", f"  %pos = fcmp ogt {vt} %mb_, zeroinitializer",
                    f"  %nan = fcmp uno {vt} %mb_, %mb_", "  %keep = or <16 x i1> %pos, %nan",
                    f"  %rl = select <16 x i1> %keep, {vt} %mb_, {vt} zeroinitializer",
                    f"  %res = select i1 %dorelu, {vt} %rl, {vt} %mb_"]


def _mask16(name, n, t) -> list:
    """IR lines: <16 x i1> %{name}: lanes t + l < n."""
    return [f"  %{name}r = sub i64 {n}, {t}", _splat_i64(f"{name}s", f"%{name}r", 16),
            f"  %{name} = icmp slt <16 x i64> {_lanes(16)}, %{name}s"]


def out_ir() -> str:
    """``wino_out(m, ld, n, bias, relu, dst)``: for blocks t < n, dst[t] = relu?(bias + the max of the 2x2 block
    Y = A^T M A), M[xi] = m[xi*ld + t]; NaN wins the max, as in max_pool2d. 16 blocks a step; reads up to 15
    floats past m[xi*ld + n - 1], masked stores (nothing written past dst[n - 1])."""
    vt = "<16 x float>"
    lines = ["define void @wino_out(float* %m, i64 %ld, i64 %n, float %bias, i64 %relu, float* %dst) {", "entry:",
             "  %go = icmp sgt i64 %n, 0", f"  %bi = insertelement {vt} undef, float %bias, i32 0",
             f"  %bv = shufflevector {vt} %bi, {vt} undef, <16 x i32> zeroinitializer", "  %dorelu = icmp ne i64 %relu, 0",
             "  br i1 %go, label %col, label %done", "col:", "  %t = phi i64 [0, %entry], [%t1, %col]"]
    for xi in range(16):
        lines += [f"  %mo{xi} = mul i64 %ld, {xi}", f"  %ma{xi} = add i64 %mo{xi}, %t",
                  f"  %mp{xi} = getelementptr float, float* %m, i64 %ma{xi}",
                  f"  %mq{xi} = bitcast float* %mp{xi} to {vt}*", f"  %m{xi} = load {vt}, {vt}* %mq{xi}, align 4"]
    lines += _out_transform("m") + _mask16("mask", "%n", "%t")
    lines += ["  %dp = getelementptr float, float* %dst, i64 %t",
              f"  call void @llvm.masked.store.v16f32.p0({vt} %res, ptr %dp, i32 4, <16 x i1> %mask)",
              "  %t1 = add i64 %t, 16", "  %more = icmp slt i64 %t1, %n", "  br i1 %more, label %col, label %done",
              "done:", "  ret void", "}"]
    return "\n".join(lines)


def small_ir() -> str:
    """``wino_small(v, ldxi, ldc, cin, n, u, cout, bias, relu, dst, ldd)``: the whole layer after the input transform
    for few input channels, without a GEMM: for blocks t < n (16 a step) and output channels o < cout,
    M[xi] = sum over c < cin of u[(o*cin + c)*16 + xi] * v[xi*ldxi + c*ldc + t], then ``wino_out``'s transform,
    bias[o], max and ReLU into dst[o*ldd + t] (masked stores; reads up to 15 floats past v's blocks)."""
    vt = "<16 x float>"
    lines = ["define void @wino_small(float* %v, i64 %ldxi, i64 %ldc, i64 %cin, i64 %n, float* %u, i64 %cout, "
             "float* %bias, i64 %relu, float* %dst, i64 %ldd) {", "entry:", "  %dorelu = icmp ne i64 %relu, 0",
             "  %gn = icmp sgt i64 %n, 0", "  %gc = icmp sgt i64 %cout, 0", "  %gi = icmp sgt i64 %cin, 0",
             "  %g1 = and i1 %gn, %gc", "  %go = and i1 %g1, %gi", "  br i1 %go, label %blk, label %done",
             "blk:", "  %t = phi i64 [0, %entry], [%t1, %oend]"] + _mask16("mask", "%n", "%t") + [
             "  br label %och", "och:", "  %o = phi i64 [0, %blk], [%o1, %cend]", "  %oc = mul i64 %o, %cin",
             "  %bp = getelementptr float, float* %bias, i64 %o", "  %b = load float, float* %bp",
             f"  %bi = insertelement {vt} undef, float %b, i32 0",
             f"  %bv = shufflevector {vt} %bi, {vt} undef, <16 x i32> zeroinitializer", "  br label %ch", "ch:",
             "  %c = phi i64 [0, %och], [%c1, %ch]"]
    lines += [f"  %a{xi} = phi {vt} [zeroinitializer, %och], [%n{xi}, %ch]" for xi in range(16)]
    lines += ["  %uc = add i64 %oc, %c", "  %ub = mul i64 %uc, 16", "  %vc = mul i64 %c, %ldc", "  %vt = add i64 %vc, %t"]
    for xi in range(16):
        lines += [f"  %vo{xi} = mul i64 %ldxi, {xi}", f"  %va{xi} = add i64 %vo{xi}, %vt",
                  f"  %vp{xi} = getelementptr float, float* %v, i64 %va{xi}", f"  %vq{xi} = bitcast float* %vp{xi} to {vt}*",
                  f"  %vv{xi} = load {vt}, {vt}* %vq{xi}, align 4", f"  %ua{xi} = add i64 %ub, {xi}",
                  f"  %up{xi} = getelementptr float, float* %u, i64 %ua{xi}", f"  %us{xi} = load float, float* %up{xi}",
                  f"  %ui{xi} = insertelement {vt} undef, float %us{xi}, i32 0",
                  f"  %uv{xi} = shufflevector {vt} %ui{xi}, {vt} undef, <16 x i32> zeroinitializer",
                  f"  %n{xi} = call {vt} @llvm.fma.v16f32({vt} %uv{xi}, {vt} %vv{xi}, {vt} %a{xi})"]
    lines += ["  %c1 = add i64 %c, 1", "  %morec = icmp slt i64 %c1, %cin", "  br i1 %morec, label %ch, label %cend", "cend:"]
    lines += _out_transform("n")
    lines += ["  %dro = mul i64 %o, %ldd", "  %dt = add i64 %dro, %t", "  %dp = getelementptr float, float* %dst, i64 %dt",
              f"  call void @llvm.masked.store.v16f32.p0({vt} %res, ptr %dp, i32 4, <16 x i1> %mask)",
              "  %o1 = add i64 %o, 1", "  %moreo = icmp slt i64 %o1, %cout", "  br i1 %moreo, label %och, label %oend",
              "oend:", "  %t1 = add i64 %t, 16", "  %more = icmp slt i64 %t1, %n", "  br i1 %more, label %blk, label %done",
              "done:", "  ret void", "}"]
    return "\n".join(lines)


def _max16(out, a, b):
    """IR lines: out = max(a, b) lane-wise, NaN in either wins."""
    vt = "<16 x float>"
    return (f"  %{out}g = fcmp ogt {vt} %{b}, %{a}\n  %{out}u = fcmp uno {vt} %{b}, %{b}\n"
            f"  %{out}p = or <16 x i1> %{out}g, %{out}u\n  %{out} = select <16 x i1> %{out}p, {vt} %{b}, {vt} %{a}")


_KERNELS: list = []


def kernels():
    """(address of wino_in, of wino_out, of wino_small), compiled once per process; None where LLVM cannot."""
    if not _KERNELS:
        vt = "<16 x float>"
        engine = compile_module("\n".join([MASKED_DECLS, f"declare {vt} @llvm.fma.v16f32({vt}, {vt}, {vt})", in_ir(),
                                           out_ir(), small_ir()]))
        if engine is None:
            _KERNELS.append(None)
        else:
            fns = (_IN_SIG(engine.get_function_address("wino_in")), _OUT_SIG(engine.get_function_address("wino_out")),
                   _SMALL_SIG(engine.get_function_address("wino_small")))
            _KERNELS.append((tuple(address(f) for f in fns), engine, fns))  # (keep the code alive)
    return None if _KERNELS[0] is None else _KERNELS[0][0]


_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def transform_weights(w) -> np.ndarray:
    """U = G g G^T of float32 weights (Cout, Cin, 3, 3), computed in float64: (16, Cout, Cin) float32, xi = 4i + j."""
    u = np.einsum("ai,ocij,bj->aboc", _G, np.asarray(w, np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]), dtype=np.float32)


def usable(w, stride, padding, dilation, groups, out_hw=(2, 2)) -> bool:
    """Whether conv2d (+ relu) + 2x2 max pool of this geometry runs here: float32 3x3 weights, stride 1, dilation 1,
    one group, the padding within the 3x3 window, a conv output of at least one pooling window, the LLVM kernels compiled and the convolution tiles' AVX-512 shapes
    (on AVX2 hosts the direct tiles are faster: measured on Zen 3, the cnn's conv1 + pool at B=64 ~670-970 us with
    Winograd against ~290-340 direct, conv2 ~1180-1320 against ~1120-1240);
    ``EMBER_WINOGRAD=0`` in the environment turns it off (the direct tiles run)."""
    if os.environ.get("EMBER_WINOGRAD", "1") == "0":
        return False
    if w.dtype != np.float32 or w.ndim != 4 or tuple(w.shape[2:]) != (3, 3):
        return False
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or groups != 1:
        return False
    if not all(0 <= p <= 2 for p in padding) or out_hw[0] < 2 or out_hw[1] < 2:
        return False
    tiles = host_tiles()
    return tiles is not None and tiles.v == 16 and kernels() is not None


@njit
def _slice(x, out, bias, upk, hp, wp, ph, pw, chunk, lpad, tile, tails, pb, vw, relu, fns, sync):
    """out (n, Co, ny, nx) = relu?(max_pool2d(conv2d(x) + bias, 2)) of the images x (n, Cin, H, W), chunk images at
    a time: pad, input transform into v (16, Cin, lpad), the 16 GEMMs into m (16, Co rows, lpad) on the forward tile
    (``tile`` per pb blocks, ``tails[r // vw]`` for a remainder r), output transform into out."""
    post(sync)
    in_fn, out_fn, _ = fns
    n, c = x.shape[0], x.shape[1]
    co, ny, nx = out.shape[1], out.shape[2], out.shape[3]
    _, ncb, k, nco = upk.shape
    rows = ncb * nco
    per = ny * nx
    xp = np.zeros(c * hp * wp + _SLACK, np.float32)
    vld, mld = c * lpad + _SKEW, rows * lpad + _SKEW
    v = np.zeros(16 * vld + 32, np.float32)
    m = np.zeros(16 * mld + 32, np.float32)
    offs = np.arange(c) * lpad
    for i0 in range(0, n, chunk):
        cnt = min(chunk, n - i0)
        used = -(-(cnt * per) // vw) * vw
        for i in range(cnt):
            _pad_into(x, i0 + i, xp, hp, wp, ph, pw)
            for ci in range(c):
                call(in_fn, (xp.ctypes.data + 4 * ci * hp * wp, wp, ny, nx, v.ctypes.data + 4 * (ci * lpad + i * per), vld))
        for xi in range(16):
            xb = v.ctypes.data + 4 * xi * vld
            for blk in range(ncb):
                wptr = upk[xi, blk].ctypes.data
                ob = m.ctypes.data + 4 * (xi * mld + blk * nco * lpad)
                for q in range(used // pb):
                    call(tile, (xb + 4 * q * pb, offs.ctypes.data, k, wptr, ob + 4 * q * pb, lpad))
                if used % pb:
                    q = used - used % pb
                    call(tails[(used % pb) // vw], (xb + 4 * q, offs.ctypes.data, k, wptr, ob + 4 * q, lpad))
        for i in range(cnt):
            for ch in range(co):
                call(out_fn, (m.ctypes.data + 4 * (ch * lpad + i * per), mld, per, bias[ch], relu,
                              out[i0 + i, ch].ctypes.data))
    finish(sync)


@njit(fastmath=False)  # (requant_row's rounding must be exact)
def _small_slice(x, out, bias, u, hp, wp, ph, pw, lpad, relu, fns, qep, shift, sync):
    """``_slice`` for few input channels, image by image: pad (``shift`` subtracted: a uint8 input's zero point),
    input transform into v (16, Cin, lpad), then ``wino_small`` (the channel sums, output transform, bias, pool and
    ReLU in one pass) into out; u (Co, Cin, 16). With ``qep`` (conv_tiled's requantizing epilogue fields) the pooled
    sums go to a float stage, are scaled by 1/4 (u is 4 G g G^T then: exact integers, see PreparedPool) and
    requantized to out's uint8 codes."""
    post(sync)
    in_fn, _, small_fn = fns
    n, c = x.shape[0], x.shape[1]
    co, ny, nx = out.shape[1], out.shape[2], out.shape[3]
    xp = np.zeros(c * hp * wp + _SLACK, np.float32)
    vld = c * lpad + _SKEW
    v = np.zeros(16 * vld + 32, np.float32)
    stage = np.empty((co, ny * nx), np.float32)
    for i in range(n):
        _pad_into(x, i, xp, hp, wp, ph, pw, shift)
        for ci in range(c):
            call(in_fn, (xp.ctypes.data + 4 * ci * hp * wp, wp, ny, nx, v.ctypes.data + 4 * ci * lpad, vld))
        dst = out[i].ctypes.data if qep is None else stage.ctypes.data
        call(small_fn, (v.ctypes.data, vld, lpad, c, ny * nx, u.ctypes.data, co, bias.ctypes.data, relu, dst, ny * nx))
        if qep is not None:
            bias_i, mult, zp, lo, hi = qep
            for ch in range(co):
                row = stage[ch]
                for j in range(row.size):
                    row[j] *= np.float32(0.25)
                requant_row(row, row.size, bias_i[ch], mult[ch], zp, lo, hi, out[i, ch].reshape(row.size))
    finish(sync)


class PreparedPool:
    """conv2d (+ relu) + 2x2 max pool of one float32 3x3 weight by F(2x2, 3x3) (``usable`` says where): weights
    transformed and packed once, the plan once per input shape. ``forward(x, out_hw)`` -> (N, Co, ho//2, wo//2).

    With ``qep`` (bias_i, multipliers, zero point, lo, hi, as conv_tiled.forward_requant takes them) it is the
    static int8 first layer of ONE input channel: uint8 codes in (``shift``, their zero point, subtracted while
    padding), uint8 codes out, and bit-identical to the int8 kernels. The sums are exact: with |code - zp| <= 255 an
    input transform value is a sum of 4 such (<= 1020); 4 G g G^T of int8 weights is an integer of at most
    4 * 9 * 128 / 4 = 1152; so every product (<= 1.18M) and every partial sum of the output transform's 9 terms
    (<= 10.6M) is an integer below 2**24, exact in float32, and the pooled result times 1/4 is the int32 sum's value.
    With two channels the bound would pass 2**24."""

    def __init__(self, w, bias, padding, relu, qep=None, shift=0):
        w = np.ascontiguousarray(w, dtype=np.float32)
        self.co, self.cin = w.shape[0], w.shape[1]
        self.bias = np.zeros(self.co, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.padding, self.relu = tuple(padding), bool(relu)
        self.u = transform_weights(w)
        self.qep, self.dtype, self.shift = None, np.float32, np.float32(shift)
        if qep is not None:
            if self.cin != 1 or relu or bias is not None:
                raise ValueError("winograd.PreparedPool: the requantizing form takes one input channel and no float "
                                 f"bias or ReLU (the epilogue's bias_i and lo do those); got {self.cin} channels")
            self.u *= np.float32(4)  # (exact: multiples of 1/4)
            self.qep, self.dtype = _requant_fields(*qep), np.uint8
        self.per_shape: dict = {}

    def _plan(self, x_shape, out_hw):
        n, (ho, wo) = x_shape[0], out_hw
        ny, nx = ho // 2, wo // 2
        per = ny * nx
        geometry = (ho + 2, wo + 2, self.padding[0], self.padding[1])
        relu = 1 if self.relu else 0
        if self.cin <= SMALL_CHANNELS:  # no GEMM: the channel sums in the output pass (wino_small)
            u = np.ascontiguousarray(self.u.transpose(1, 2, 0))  # (Co, Cin, 16)
            fields = (u,) + geometry + (-(-per // 16) * 16, relu, kernels(), self.qep, self.shift)
            return (n, self.co, ny, nx), _small_slice, fields, slices(n, n * 16 * self.co * self.cin * per, PAR_MIN_MACS)
        cap = max(1, min(n, CHUNK_BYTES // (4 * 16 * per * (self.cin + self.co))))
        chunk = min(range(1, cap + 1), key=lambda k: (-(-(k * per) // 16) * 16 / (k * per), -k))  # least padding
        t = host_tiles()
        s, _, tails = t.pick(self.co, chunk * per)
        tile, _, pb, upk, _ = _packed(self.u, t, chunk * per)  # the 16 transforms as "groups": (16, blocks, Cin, NCO)
        lpad = -(-(chunk * per) // 16) * 16
        fields = (upk,) + geometry + (chunk, lpad, tile, np.array(tails, np.int64), pb, s.v, relu, kernels())
        work = n * 16 * upk.shape[1] * upk.shape[3] * self.cin * per
        return (n, self.co, ny, nx), _slice, fields, slices(n, work, PAR_MIN_MACS)

    def __call__(self, x, out_hw):
        key = (x.shape, out_hw)
        hit = self.per_shape.get(key)
        if hit is None:
            if len(self.per_shape) >= 16:
                self.per_shape.clear()
            hit = self.per_shape[key] = self._plan(x.shape, out_hw)
        shape, fn, fields, parts = hit
        if not x.flags.c_contiguous or (x.dtype != np.float32 and not (self.qep is not None and x.dtype == np.uint8)):
            x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(shape, self.dtype)
        if len(parts) == 1:
            fn(x, out, self.bias, *fields, no_sync())
        else:
            run_parts(fn, [(x[lo:hi], out[lo:hi], self.bias) + fields for lo, hi in parts])
        return out
