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

_FWD_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_int64)
_POOL_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
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
AVX2 = (Shape(8, 3, 4, 3, 4), Shape(8, 2, 6, 3, 4))


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
    for r, h in acc:
        lines += [f"  %oo{r}_{h} = mul i64 %ldo, {r}", f"  %oh{r}_{h} = add i64 %oo{r}_{h}, {h * v}",
                  f"  %op{r}_{h} = getelementptr float, float* %out, i64 %oh{r}_{h}",
                  f"  %oq{r}_{h} = bitcast float* %op{r}_{h} to {vt}*",
                  f"  store {vt} %n{r}_{h}, {vt}* %oq{r}_{h}, align 4"]
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


def _nanmax(out, a, b, n):
    """IR lines: out = b where b > a or b is NaN, else a (NaN wins, as max_pool2d), on <n x float>."""
    return (f"  %{out}g = fcmp ogt <{n} x float> %{b}, %{a}\n  %{out}u = fcmp uno <{n} x float> %{b}, %{b}\n"
            f"  %{out}p = or <{n} x i1> %{out}g, %{out}u\n"
            f"  %{out} = select <{n} x i1> %{out}p, <{n} x float> %{b}, <{n} x float> %{a}")


# pool(src, wp, ho2, wo, dst): dst[y*(wo//2) + x] = the 2x2 max (NaN wins) at (2y, 2x) of the float rows src (row
# stride wp), 16 columns per step: vertical max, then even/odd lanes. Reads up to 16 floats past a row's wo and
# writes up to 8 past a row's wo//2 (the next row's store or the caller's slack takes them).
POOL_IR = f"""
define void @pool(float* %src, i64 %wp, i64 %ho2, i64 %wo, float* %dst) {{
entry:
  %wo2 = sdiv i64 %wo, 2
  %rows = icmp sgt i64 %ho2, 0
  %cols = icmp sgt i64 %wo, 1
  %go = and i1 %rows, %cols
  br i1 %go, label %row, label %done
row:
  %y = phi i64 [0, %entry], [%y1, %rowend]
  %y2 = mul i64 %y, 2
  %toff = mul i64 %y2, %wp
  %boff = add i64 %toff, %wp
  %doff = mul i64 %y, %wo2
  br label %col
col:
  %x = phi i64 [0, %row], [%x1, %col]
  %ta = add i64 %toff, %x
  %tp = getelementptr float, float* %src, i64 %ta
  %tq = bitcast float* %tp to <16 x float>*
  %t = load <16 x float>, <16 x float>* %tq, align 4
  %ba = add i64 %boff, %x
  %bp = getelementptr float, float* %src, i64 %ba
  %bq = bitcast float* %bp to <16 x float>*
  %b = load <16 x float>, <16 x float>* %bq, align 4
{_nanmax("v", "t", "b", 16)}
  %ev = shufflevector <16 x float> %v, <16 x float> undef,
                      <8 x i32> <i32 0, i32 2, i32 4, i32 6, i32 8, i32 10, i32 12, i32 14>
  %od = shufflevector <16 x float> %v, <16 x float> undef,
                      <8 x i32> <i32 1, i32 3, i32 5, i32 7, i32 9, i32 11, i32 13, i32 15>
{_nanmax("m", "ev", "od", 8)}
  %xh = sdiv i64 %x, 2
  %da = add i64 %doff, %xh
  %dp = getelementptr float, float* %dst, i64 %da
  %dq = bitcast float* %dp to <8 x float>*
  store <8 x float> %m, <8 x float>* %dq, align 4
  %x1 = add i64 %x, 16
  %more = icmp slt i64 %x1, %wo
  br i1 %more, label %col, label %rowend
rowend:
  %y1 = add i64 %y, 1
  %morey = icmp slt i64 %y1, %ho2
  br i1 %morey, label %row, label %done
done:
  ret void
}}
"""


def module_ir(shapes) -> str:
    v, vt = shapes[0].v, _vec(shapes[0].v)
    return "\n".join([f"declare {vt} @llvm.fma.v{v}f32({vt}, {vt}, {vt})",
                      f"declare float @llvm.vector.reduce.fadd.v{v}f32(float, {vt})",
                      wgrad_ir(shapes[0]), POOL_IR] + [fwd_ir(s, f"fwd{i}") for i, s in enumerate(shapes)])


class Tiles:
    """Compiled tiles: ``fwd`` a list of (Shape, ctypes pointer) variants, ``wgrad`` the pointer of the
    weight-gradient tile of ``shape`` (the first variant's)."""

    def __init__(self, shapes, engine, fwd, wgrad, pool):
        self.shape, self._engine, self.fwd, self.wgrad = shapes[0], engine, list(zip(shapes, fwd)), wgrad
        self.v = shapes[0].v
        self.pool = pool  # POOL_IR's function

    def pick(self, channels, length):
        """The forward variant (Shape, pointer) that pads ``channels`` output rows and ``length``
        positions least."""
        def cost(item):
            s = item[0]
            return (-(-channels // s.nco) * s.nco) * (-(-length // s.pb) * s.pb)
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
        try:
            import llvmlite.binding as llvm

            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            mod = llvm.parse_assembly(module_ir(shapes))
            mod.verify()
            tm = llvm.Target.from_default_triple().create_target_machine(
                cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
            engine = llvm.create_mcjit_compiler(mod, tm)
            engine.finalize_object()
            fwd = [_FWD_SIG(engine.get_function_address(f"fwd{i}")) for i in range(len(shapes))]
            _CACHE[key] = Tiles(shapes, engine, fwd, _WG_SIG(engine.get_function_address("wgrad")),
                                _POOL_SIG(engine.get_function_address("pool")))
        except Exception:  # an LLVM without a native code generator: the BLAS path remains
            _CACHE[key] = None
    return _CACHE[key]


_HOST: list = []


def host_tiles() -> Tiles | None:
    """The host's compiled tiles (decided once per process), or None."""
    if not _HOST:
        shapes = host_shapes()
        _HOST.append(None if shapes is None else compile_tiles(shapes))
    return _HOST[0]
