"""float32 convolution micro-kernels written in LLVM IR: register-blocked tiles that keep their
accumulators in vector registers for the whole reduction (numba's loops do not: LLVM keeps them in
memory and the stores bound the FMAs), compiled once per process by llvmlite for the host CPU and
called from numba kernels through ctypes function pointers passed as arguments (so those kernels stay
cacheable), as vnni.py does for int8.

Two tiles over the "extended" layout of stride-1 convolutions (conv_kernels.py): an image's planes
zero-padded to hp x wp and flattened, where output position p of every output row reads input
position p + off for the tap (channel c, row i, column j) at off = c*hp*wp + i*dh*wp + j*dw.

- ``fwd<i>(x, offs, K, w, out, ldo)``: out[r*ldo + q] = sum_k w[k*NCO + r] * x[offs[k] + q] for r < NCO
  output channels and q < NP*V consecutive positions (an "indirect" GEMM tile: offs is the tap table).
- ``wgrad(g, ldg, x, offs, nimg, gstride, xstride, nsteps, dw, ldw)``: dw[r*ldw + t] += sum over nimg
  images and p < nsteps*V of g[r*ldg + p] * x[offs[t] + p] for r < WCO output channels, t < WK taps
  (images gstride / xstride floats apart).

Vector width V and tile shape follow the host: 16-float vectors with 24 accumulators when AVX-512 is
there, else 8-float vectors with 12 (the 16 ymm registers of AVX2), each in two forward shapes. The IR
is generic (llvm.fma), so any LLVM target compiles it; ``EMBER_CONV_TILES=0`` turns the tiles off (the
im2col + BLAS path runs). Measured single-threaded on the Zen 4 reference machine: conv2 of the cnn
benchmark (B=64, 16 -> 32 channels, 14x14) in ~1.3 ms, about one 16-wide FMA per cycle.
"""
from __future__ import annotations

import ctypes
import os

from .llvm_ir import (MASKED_DECLS, POOL_CODES_SIG, POOL_SIG, UNPOOL_SIG, address, compile_module, pool_codes_ir, pool_ir,
                      store_accumulators, unpool_ir)

_FWD_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_int64)
_BLOCK_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int64)
_WG_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                           ctypes.c_int64)


class Shape:
    """A tile geometry: V floats per vector; a forward tile of NCO channels x NP vectors (PB = NP*V
    positions) and the weight-gradient tile of WCO channels x WK taps."""

    def __init__(self, v, np_, nco, wco, wk):
        self.v, self.np, self.nco, self.wco, self.wk = v, np_, nco, wco, wk
        self.pb = v * np_  # positions per forward tile

    def __repr__(self):
        return f"Shape(v={self.v}, fwd={self.nco}x{self.pb}, wgrad={self.wco}x{self.wk})"


# Per host, forward-tile variants with the same accumulator count (the driver picks the one that
# wastes least on a layer's channel count and row length); the first one's wgrad tile is used.
AVX512 = (Shape(16, 2, 12, 4, 6), Shape(16, 3, 8, 4, 6))
# AVX2's weight-gradient tile: 4 channels x 3 taps, 12 accumulators + 3 input vectors + 1 gradient vector = the 16
# ymm registers (3 x 4 needed 17 and spilled: on Zen 3 ~19 against ~40 G FMA/s a thread; the cnn step ~17% faster).
AVX2 = (Shape(8, 3, 4, 4, 3), Shape(8, 2, 6, 4, 3))


def _vec(v):
    return f"<{v} x float>"


def _splat(name, src, v):
    vt = _vec(v)
    return (f"  %{name}i = insertelement {vt} undef, float {src}, i32 0\n"
            f"  %{name} = shufflevector {vt} %{name}i, {vt} undef, <{v} x i32> zeroinitializer")


def _load(name, base, off, v):
    vt = _vec(v)
    return (f"  %{name}p = getelementptr float, float* {base}, i64 {off}\n"
            f"  %{name}q = bitcast float* %{name}p to {vt}*\n"
            f"  %{name} = load {vt}, {vt}* %{name}q, align 4")


def fwd_ir(s: Shape, name="fwd") -> str:
    v, vt = s.v, _vec(s.v)
    acc = [(r, h) for r in range(s.nco) for h in range(s.np)]
    lines = [f"define void @{name}(float* %x, i64* %offs, i64 %K, float* %w, float* %out, i64 %ldo) {{",
             "entry:", "  br label %loop", "loop:", "  %k = phi i64 [0, %entry], [%k1, %loop]"]
    lines += [f"  %a{r}_{h} = phi {vt} [zeroinitializer, %entry], [%n{r}_{h}, %loop]" for r, h in acc]
    lines += ["  %offp = getelementptr i64, i64* %offs, i64 %k", "  %off = load i64, i64* %offp",
              "  %xb = getelementptr float, float* %x, i64 %off"]
    lines += [_load(f"xv{h}", "%xb", h * v, v) for h in range(s.np)]
    lines.append(f"  %wk = mul i64 %k, {s.nco}")
    for r in range(s.nco):
        lines += [f"  %wi{r} = add i64 %wk, {r}", f"  %wp{r} = getelementptr float, float* %w, i64 %wi{r}",
                  f"  %ws{r} = load float, float* %wp{r}", _splat(f"wv{r}", f"%ws{r}", v)]
        lines += [f"  %n{r}_{h} = call {vt} @llvm.fma.v{v}f32({vt} %xv{h}, {vt} %wv{r}, {vt} %a{r}_{h})"
                  for h in range(s.np)]
    lines += ["  %k1 = add i64 %k, 1", "  %more = icmp ult i64 %k1, %K",
              "  br i1 %more, label %loop, label %done", "done:"]
    lines += store_accumulators(acc, "float", vt, v)
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def wgrad_ir(s: Shape, name="wgrad") -> str:
    v, vt = s.v, _vec(s.v)
    acc = [(r, t) for r in range(s.wco) for t in range(s.wk)]
    lines = [f"define void @{name}(float* %g, i64 %ldg, float* %x, i64* %offs, i64 %nimg, i64 %gstride, "
             f"i64 %xstride, i64 %nsteps, float* %dw, i64 %ldw) {{", "entry:"]
    for t in range(s.wk):
        lines += [f"  %ofp{t} = getelementptr i64, i64* %offs, i64 {t}", f"  %of{t} = load i64, i64* %ofp{t}"]
    lines += [f"  %pend = mul i64 %nsteps, {v}", "  %total = mul i64 %nimg, %nsteps", "  br label %loop", "loop:",
              "  %it = phi i64 [0, %entry], [%it1, %loop]",
              "  %p = phi i64 [0, %entry], [%p2, %loop]",
              "  %gb = phi float* [%g, %entry], [%gb2, %loop]",
              "  %xb = phi float* [%x, %entry], [%xb2, %loop]"]
    lines += [f"  %a{r}_{t} = phi {vt} [zeroinitializer, %entry], [%n{r}_{t}, %loop]" for r, t in acc]
    for r in range(s.wco):
        lines += [f"  %go{r} = mul i64 %ldg, {r}", f"  %gi{r} = add i64 %go{r}, %p",
                  _load(f"gv{r}", "%gb", f"%gi{r}", v)]
    for t in range(s.wk):
        lines += [f"  %xi{t} = add i64 %of{t}, %p", _load(f"xv{t}", "%xb", f"%xi{t}", v)]
    lines += [f"  %n{r}_{t} = call {vt} @llvm.fma.v{v}f32({vt} %gv{r}, {vt} %xv{t}, {vt} %a{r}_{t})"
              for r, t in acc]
    lines += [f"  %p1 = add i64 %p, {v}", "  %wrap = icmp eq i64 %p1, %pend",
              "  %p2 = select i1 %wrap, i64 0, i64 %p1",
              "  %gbn = getelementptr float, float* %gb, i64 %gstride",
              "  %gb2 = select i1 %wrap, float* %gbn, float* %gb",
              "  %xbn = getelementptr float, float* %xb, i64 %xstride",
              "  %xb2 = select i1 %wrap, float* %xbn, float* %xb",
              "  %it1 = add i64 %it, 1", "  %more = icmp ult i64 %it1, %total",
              "  br i1 %more, label %loop, label %done", "done:"]
    for r, t in acc:
        lines += [f"  %s{r}_{t} = call reassoc float @llvm.vector.reduce.fadd.v{v}f32(float 0.0, {vt} %n{r}_{t})",
                  f"  %do{r}_{t} = mul i64 %ldw, {r}", f"  %di{r}_{t} = add i64 %do{r}_{t}, {t}",
                  f"  %dp{r}_{t} = getelementptr float, float* %dw, i64 %di{r}_{t}",
                  f"  %dl{r}_{t} = load float, float* %dp{r}_{t}",
                  f"  %ds{r}_{t} = fadd float %dl{r}_{t}, %s{r}_{t}",
                  f"  store float %ds{r}_{t}, float* %dp{r}_{t}"]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def module_ir(shapes) -> str:
    v, vt = shapes[0].v, _vec(shapes[0].v)
    return "\n".join([f"declare {vt} @llvm.fma.v{v}f32({vt}, {vt}, {vt})",
                      f"declare float @llvm.vector.reduce.fadd.v{v}f32(float, {vt})", MASKED_DECLS,
                      wgrad_ir(shapes[0]), pool_ir("float"), pool_codes_ir(), unpool_ir()] + [fwd_ir(s, f"fwd{i}") for i, s in enumerate(shapes)]
                     + [fwd_ir(t, f"fwd{i}_{t.np}") for i, s in enumerate(shapes) for t in tail_shapes(s)])


def tail_shapes(s: Shape):
    """The forward tiles of s's channel count for 1 .. NP-1 vectors: the end of a row of positions that is not a
    whole number of PB (so a row is computed to a multiple of V, not of PB)."""
    return [Shape(s.v, n, s.nco, s.wco, s.wk) for n in range(1, s.np)]


class Tiles:
    """Compiled tiles: ``fwd`` a list of (Shape, address, [address of the tail tile of n vectors, n = 0 .. NP-1 (0:
    none)]) variants, ``wgrad`` the address of the weight-gradient tile of ``shape`` (the first variant's), ``pool``
    the float pool kernel's, ``pool_codes`` / ``unpool`` the training pool's and its gradient's (llvm_ir.py; addresses
    for ``intrinsics.call``)."""

    def __init__(self, shapes, engine, fwd, tails, wgrad, pool, pool_codes, unpool):
        self.shape, self._engine, self.wgrad = shapes[0], engine, address(wgrad)
        self.fwd = [(s, address(f), [0] + [address(t) for t in ts]) for s, f, ts in zip(shapes, fwd, tails)]
        self.v = shapes[0].v
        self.pool = address(pool)  # llvm_ir.pool_ir("float")
        self.pool_codes, self.unpool = address(pool_codes), address(unpool)

    def pick(self, channels, length):
        """The forward variant (Shape, pointer, tail pointers) that pads ``channels`` output rows and ``length``
        positions (to a multiple of V, with a tail tile) least."""
        def cost(item):
            s = item[0]
            return (-(-channels // s.nco) * s.nco) * (-(-length // s.v) * s.v)
        return min(self.fwd, key=cost)


_CACHE: dict = {}


def host_shapes():
    """The tile shapes for this CPU, or None when the tiles are switched off or cannot be compiled."""
    if os.environ.get("EMBER_CONV_TILES", "1") == "0":
        return None
    try:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        features = llvm.get_host_cpu_features()
    except Exception:  # no native target in this llvmlite
        return None
    return AVX512 if features.get("avx512f", False) else AVX2


def compile_tiles(shapes) -> Tiles | None:
    """The tiles of ``shapes`` compiled for the host CPU (once per process), or None if LLVM refuses."""
    key = tuple((s.v, s.np, s.nco, s.wco, s.wk) for s in shapes)
    if key not in _CACHE:
        engine = compile_module(module_ir(shapes))
        if engine is None:  # an LLVM without a native code generator: the BLAS path remains
            _CACHE[key] = None
        else:
            fwd = [_FWD_SIG(engine.get_function_address(f"fwd{i}")) for i in range(len(shapes))]
            tails = [[_FWD_SIG(engine.get_function_address(f"fwd{i}_{t.np}")) for t in tail_shapes(s)]
                     for i, s in enumerate(shapes)]
            _CACHE[key] = Tiles(shapes, engine, fwd, tails, _WG_SIG(engine.get_function_address("wgrad")),
                                POOL_SIG(engine.get_function_address("pool")),
                                POOL_CODES_SIG(engine.get_function_address("pool_codes")),
                                UNPOOL_SIG(engine.get_function_address("unpool")))
    return _CACHE[key]


_HOST: list = []
_ROW: list = []
ROW_VECTORS = (8, 1)  # vectors per call of the one-row tiles: wide layers, narrow ones (e.g. 10 classes)
BLOCK_ROWS, BLOCK_VECTORS = 12, 2  # the row-major GEMM tiles: up to 12 rows x 2 vectors (24 accumulators)


def rows_ir(rows, nvec, v, name) -> str:
    """``name(a, lda, w, ldw, K, out, ldo)``: out[r*ldo + q] = sum_k a[r*lda + k] * w[k*ldw + q] for r < rows and
    q < nvec*v: a GEMM block with row-major A (its elements broadcast, one row pointer each) and row-major B
    (whole vectors), neither packed (f32_chain.py's layers). Sums in k order with fused multiply-adds, as the
    forward tile's. The rows run in groups whose accumulators fit the vector registers (24 of AVX-512's 32; 12 of
    AVX2's 16: 6 rows x 2 vectors, one pass over k per group)."""
    vt = _vec(v)
    cap = max(1, (24 if v >= 16 else 12) // nvec)
    groups = -(-rows // cap)
    bounds = [rows * g // groups for g in range(groups + 1)]
    lines = [f"define void @{name}(float* %a, i64 %lda, float* %w, i64 %ldw, i64 %K, float* %out, i64 %ldo) {{",
             "entry:"]
    for r in range(rows):
        lines += [f"  %ro{r} = mul i64 %lda, {r}", f"  %ar{r} = getelementptr float, float* %a, i64 %ro{r}"]
    lines.append("  br label %loop0")
    for g in range(groups):
        rs = range(bounds[g], bounds[g + 1])
        acc = [(r, h) for r in rs for h in range(nvec)]
        start = "entry" if g == 0 else f"done{g - 1}"
        lines += [f"loop{g}:", f"  %k{g} = phi i64 [0, %{start}], [%k{g}n, %loop{g}]"]
        lines += [f"  %a{r}_{h} = phi {vt} [zeroinitializer, %{start}], [%n{r}_{h}, %loop{g}]" for r, h in acc]
        lines += [f"  %wo{g} = mul i64 %k{g}, %ldw", f"  %wb{g} = getelementptr float, float* %w, i64 %wo{g}"]
        lines += [_load(f"wv{g}_{h}", f"%wb{g}", h * v, v) for h in range(nvec)]
        for r in rs:
            lines += [f"  %xp{r} = getelementptr float, float* %ar{r}, i64 %k{g}",
                      f"  %xs{r} = load float, float* %xp{r}", _splat(f"xv{r}", f"%xs{r}", v)]
            lines += [f"  %n{r}_{h} = call {vt} @llvm.fma.v{v}f32({vt} %wv{g}_{h}, {vt} %xv{r}, {vt} %a{r}_{h})"
                      for h in range(nvec)]
        nxt = f"loop{g + 1}" if g + 1 < groups else "fin"
        lines += [f"  %k{g}n = add i64 %k{g}, 1", f"  %more{g} = icmp ult i64 %k{g}n, %K",
                  f"  br i1 %more{g}, label %loop{g}, label %done{g}", f"done{g}:"]
        lines += store_accumulators(acc, "float", vt, v)
        lines.append(f"  br label %{nxt}")
    lines += ["fin:", "  ret void", "}"]
    return "\n".join(lines)


def row_tiles():
    """[(columns per call, address)] of the one-row forward tiles (NCO = 1: ``out[q] = sum_k w[k] * x[offs[k] + q]``
    for q < ROW_VECTORS vectors: a GEMV's block of columns, f32_chain.py), compiled once per process; None where
    the tiles are off or cannot be compiled."""
    _compile_rows()
    return None if _ROW[0] is None else _ROW[0][0]


def block_tiles():
    """(columns per call, [address of the rows_ir tile for r rows, r = 1 .. BLOCK_ROWS]), compiled with the row
    tiles; None where the tiles are off or cannot be compiled."""
    _compile_rows()
    return None if _ROW[0] is None else _ROW[0][1]


def _compile_rows():
    if not _ROW:
        shapes, res = host_shapes(), None
        if shapes is not None:
            v, vt = shapes[0].v, _vec(shapes[0].v)
            rows = [Shape(v, n, 1, 0, 0) for n in ROW_VECTORS]
            engine = compile_module("\n".join([f"declare {vt} @llvm.fma.v{v}f32({vt}, {vt}, {vt})"]
                                              + [fwd_ir(s, f"row{i}") for i, s in enumerate(rows)]
                                              + [rows_ir(r, BLOCK_VECTORS, v, f"block{r}")
                                                 for r in range(1, BLOCK_ROWS + 1)]))
            if engine is not None:
                fns = [_FWD_SIG(engine.get_function_address(f"row{i}")) for i in range(len(rows))]
                blocks = [_BLOCK_SIG(engine.get_function_address(f"block{r}")) for r in range(1, BLOCK_ROWS + 1)]
                res = ([(s.pb, address(f)) for s, f in zip(rows, fns)],
                       (BLOCK_VECTORS * v, [address(f) for f in blocks]), engine, fns, blocks)  # (keep the code)
        _ROW.append(res)


def host_tiles() -> Tiles | None:
    """The host's compiled tiles (decided once per process), or None."""
    if not _HOST:
        shapes = host_shapes()
        _HOST.append(None if shapes is None else compile_tiles(shapes))
    return _HOST[0]
