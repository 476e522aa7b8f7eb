"""Shared pieces of the LLVM-IR kernels (conv_tile_ir.py, int8_conv_tiled.py, lut.py): compiling a module for the
host CPU with llvmlite, and the 2x2 max-pool kernel both convolution epilogues use.

Kernels compiled here are called from numba by address (``intrinsics.call``; the address is an ordinary int64
argument), which keeps the numba kernels cacheable on disk (the machine code itself is rebuilt once per process, in
milliseconds).
"""
from __future__ import annotations

import ctypes

POOL_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


def address(fn) -> int:
    """The machine address of a ctypes function pointer (0 for None): what numba kernels take and ``call``."""
    return 0 if fn is None else int(ctypes.cast(fn, ctypes.c_void_p).value or 0)


def compile_module(ir: str, require=()):
    """An llvmlite MCJIT engine holding ``ir`` compiled for the host CPU (keep it alive while its functions
    are used), or None when a feature in ``require`` (e.g. "avx512vnni") is missing or LLVM refuses, and under
    ``NUMBA_DISABLE_JIT=1``: the kernels are called through ``intrinsics.call``, which plain Python cannot run."""
    import numba

    if numba.config.DISABLE_JIT:
        return None
    try:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        features = llvm.get_host_cpu_features()
        if not all(features.get(f, False) for f in require):
            return None
        mod = llvm.parse_assembly(ir)
        mod.verify()
        tm = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=features.flatten(), opt=3)
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.finalize_object()
        return engine
    except Exception:  # an llvmlite without a native code generator: callers keep their numba paths
        return None


def store_accumulators(acc, elem, vt, lanes):
    """IR lines storing a tile's accumulator vectors ``%n{r}_{h}`` (for (r, h) in ``acc``) to ``%out`` (``elem``*):
    row r at r * %ldo elements, vector h at h * ``lanes``."""
    lines = []
    for r, h in acc:
        lines += [f"  %oo{r}_{h} = mul i64 %ldo, {r}", f"  %oh{r}_{h} = add i64 %oo{r}_{h}, {h * lanes}",
                  f"  %op{r}_{h} = getelementptr {elem}, {elem}* %out, i64 %oh{r}_{h}",
                  f"  %oq{r}_{h} = bitcast {elem}* %op{r}_{h} to {vt}*",
                  f"  store {vt} %n{r}_{h}, {vt}* %oq{r}_{h}, align 4"]
    return lines


def _max(out, a, b, n, elem):
    """IR lines: out = the larger of a and b, lane-wise; for floats b also where it is NaN (NaN wins, as in
    max_pool2d)."""
    if elem == "i32":
        return (f"  %{out}g = icmp sgt <{n} x i32> %{b}, %{a}\n"
                f"  %{out} = select <{n} x i1> %{out}g, <{n} x i32> %{b}, <{n} x i32> %{a}")
    return (f"  %{out}g = fcmp ogt <{n} x float> %{b}, %{a}\n  %{out}u = fcmp uno <{n} x float> %{b}, %{b}\n"
            f"  %{out}p = or <{n} x i1> %{out}g, %{out}u\n"
            f"  %{out} = select <{n} x i1> %{out}p, <{n} x float> %{b}, <{n} x float> %{a}")


def _row_loop(latch="col") -> str:
    """IR: the blocks of a loop over output rows y < %ho2 (%toff / %boff: offsets of input rows 2y and 2y+1 at
    stride %wp; %doff = y * %wo2) with an inner column loop %x (``_row_loop_end`` closes both, in the block
    ``latch``: the column loop's last)."""
    return f"""row:
  %y = phi i64 [0, %entry], [%y1, %rowend]
  %y2 = mul i64 %y, 2
  %toff = mul i64 %y2, %wp
  %boff = add i64 %toff, %wp
  %doff = mul i64 %y, %wo2
  br label %col
col:
  %x = phi i64 [0, %row], [%x1, %{latch}]"""


def _row_pair(t, off) -> str:
    """IR: %tv / %bv = 16 ``t`` values of input rows 2y and 2y+1 from column ``off``."""
    return "\n".join(f"""  %{r}a = add i64 %{r}off, {off}
  %{r}p = getelementptr {t}, {t}* %src, i64 %{r}a
  %{r}q = bitcast {t}* %{r}p to <16 x {t}>*
  %{r}v = load <16 x {t}>, <16 x {t}>* %{r}q, align 4""" for r in ("t", "b"))


def _row_loop_end(step, limit) -> str:
    """IR: the column loop's step and test (%x += step while < ``limit``), the row loop's, and the return."""
    return f"""  %x1 = add i64 %x, {step}
  %more = icmp slt i64 %x1, {limit}
  br i1 %more, label %col, label %rowend
rowend:
  %y1 = add i64 %y, 1
  %morey = icmp slt i64 %y1, %ho2
  br i1 %morey, label %row, label %done
done:
  ret void
}}"""


def pool_ir(elem: str) -> str:
    """``pool(src, wp, ho2, wo, dst)`` for ``elem`` "float" or "i32": dst[y*(wo//2) + x] = the max of the 2x2
    block at (2y, 2x) of the rows src (row stride wp), 16 columns per step (vertical max, then even / odd
    lanes). It reads up to 16 values past a row's wo and writes up to 8 past a row's wo//2: the next row's
    store, or the caller's slack, takes them."""
    t = elem
    return f"""
define void @pool({t}* %src, i64 %wp, i64 %ho2, i64 %wo, {t}* %dst) {{
entry:
  %wo2 = sdiv i64 %wo, 2
  %rows = icmp sgt i64 %ho2, 0
  %cols = icmp sgt i64 %wo, 1
  %go = and i1 %rows, %cols
  br i1 %go, label %row, label %done
{_row_loop()}
{_row_pair(t, '%x')}
{_max("v", "tv", "bv", 16, t)}
  %ev = shufflevector <16 x {t}> %v, <16 x {t}> undef,
                      <8 x i32> <i32 0, i32 2, i32 4, i32 6, i32 8, i32 10, i32 12, i32 14>
  %od = shufflevector <16 x {t}> %v, <16 x {t}> undef,
                      <8 x i32> <i32 1, i32 3, i32 5, i32 7, i32 9, i32 11, i32 13, i32 15>
{_max("m", "ev", "od", 8, t)}
  %xh = sdiv i64 %x, 2
  %da = add i64 %doff, %xh
  %dp = getelementptr {t}, {t}* %dst, i64 %da
  %dq = bitcast {t}* %dp to <8 x {t}>*
  store <8 x {t}> %m, <8 x {t}>* %dq, align 4
{_row_loop_end(16, '%wo')}
"""


def _lanes(n, ty="i64"):
    return "<" + ", ".join(f"{ty} {i}" for i in range(n)) + ">"


def _splat_i64(name, src, n):
    return (f"  %{name}i = insertelement <{n} x i64> undef, i64 {src}, i32 0\n"
            f"  %{name} = shufflevector <{n} x i64> %{name}i, <{n} x i64> undef, <{n} x i32> zeroinitializer")


def _i8s(v):
    return "<" + ", ".join(f"i8 {v}" for _ in range(8)) + ">"


POOL_CODES_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                  ctypes.c_void_p, ctypes.c_void_p)
UNPOOL_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
MASKED_DECLS = """declare void @llvm.masked.store.v8f32.p0(<8 x float>, ptr, i32, <8 x i1>)
declare void @llvm.masked.store.v8i8.p0(<8 x i8>, ptr, i32, <8 x i1>)
declare void @llvm.masked.store.v16f32.p0(<16 x float>, ptr, i32, <16 x i1>)
declare <8 x float> @llvm.masked.load.v8f32.p0(ptr, i32, <8 x i1>, <8 x float>)
declare <8 x i8> @llvm.masked.load.v8i8.p0(ptr, i32, <8 x i1>, <8 x i8>)"""


def _later(out, v, m, k_prev, code):
    """IR lines: where v beats the running max m (v > m, or v is NaN: max_pool2d's scan), take v and ``code``."""
    return (f"  %{out}g = fcmp ogt <8 x float> %{v}, %{m}\n  %{out}u = fcmp uno <8 x float> %{v}, %{v}\n"
            f"  %{out}t = or <8 x i1> %{out}g, %{out}u\n"
            f"  %{out} = select <8 x i1> %{out}t, <8 x float> %{v}, <8 x float> %{m}\n"
            f"  %{out}k = select <8 x i1> %{out}t, <8 x i8> {_i8s(code)}, <8 x i8> {k_prev}")


def pool_codes_ir() -> str:
    """``pool_codes(src, wp, ho2, wo2, bias, dst, codes)``: dst[y*wo2 + x] = the max of the 2x2 block at (2y, 2x) of
    the rows src (row stride wp) plus ``bias``, codes[y*wo2 + x] = its place in the block (dy*2 + dx), the block
    scanned as max_pool2d does (bias added first; the first max on ties, the last NaN); 8 blocks a step. It reads up
    to 16 floats past a row's 2*wo2 (the caller's layout has them) and writes nothing past the plane's ho2*wo2: a
    step that ends inside the plane stores all 8 (past its row: the next rows' places, written again when their turn
    comes), the plane's last step(s) masked stores (which cost more: AVX2 scalarises the byte one)."""
    ev = "<8 x i32> <i32 0, i32 2, i32 4, i32 6, i32 8, i32 10, i32 12, i32 14>"
    od = "<8 x i32> <i32 1, i32 3, i32 5, i32 7, i32 9, i32 11, i32 13, i32 15>"
    return f"""
define void @pool_codes(float* %src, i64 %wp, i64 %ho2, i64 %wo2, float %bias, float* %dst, i8* %codes) {{
entry:
  %rows = icmp sgt i64 %ho2, 0
  %cols = icmp sgt i64 %wo2, 0
  %go = and i1 %rows, %cols
  %total = mul i64 %ho2, %wo2
  %bi = insertelement <8 x float> undef, float %bias, i32 0
  %bs = shufflevector <8 x float> %bi, <8 x float> undef, <8 x i32> zeroinitializer
  br i1 %go, label %row, label %done
{_row_loop("next")}
  %x2 = mul i64 %x, 2
{_row_pair('float', '%x2')}
  %a0 = shufflevector <16 x float> %tv, <16 x float> undef, {ev}
  %b0 = shufflevector <16 x float> %tv, <16 x float> undef, {od}
  %c0 = shufflevector <16 x float> %bv, <16 x float> undef, {ev}
  %d0 = shufflevector <16 x float> %bv, <16 x float> undef, {od}
  %a = fadd <8 x float> %a0, %bs
  %b = fadd <8 x float> %b0, %bs
  %c = fadd <8 x float> %c0, %bs
  %d = fadd <8 x float> %d0, %bs
{_later("m1", "b", "a", "zeroinitializer", 1)}
{_later("m2", "c", "m1", "%m1k", 2)}
{_later("m3", "d", "m2", "%m2k", 3)}
  %da = add i64 %doff, %x
  %dp = getelementptr float, float* %dst, i64 %da
  %cp = getelementptr i8, i8* %codes, i64 %da
  %dend = add i64 %da, 8
  %inside = icmp sle i64 %dend, %total
  br i1 %inside, label %plain, label %masked
plain:
  %dq = bitcast float* %dp to <8 x float>*
  store <8 x float> %m3, <8 x float>* %dq, align 4
  %cq = bitcast i8* %cp to <8 x i8>*
  store <8 x i8> %m3k, <8 x i8>* %cq, align 1
  br label %next
masked:
  %rem = sub i64 %wo2, %x
{_splat_i64("rs", "%rem", 8)}
  %mask = icmp slt <8 x i64> {_lanes(8)}, %rs
  call void @llvm.masked.store.v8f32.p0(<8 x float> %m3, ptr %dp, i32 4, <8 x i1> %mask)
  call void @llvm.masked.store.v8i8.p0(<8 x i8> %m3k, ptr %cp, i32 1, <8 x i1> %mask)
  br label %next
next:
{_row_loop_end(8, '%wo2')}
"""


def unpool_ir() -> str:
    """``unpool(g, codes, n, dy2, dst)``: dst[2j + dx] = g[j] where codes[j] == dy2 + dx, else 0, for j < n and dx in
    (0, 1): one output row (dy2 = 0 the top, 2 the bottom) of a 2x2 max pool's gradient; 8 blocks a step with plain
    loads and stores, a row's last n % 8 blocks by one more step ending at n (rewriting some: the same values) or,
    in rows of fewer than 8, one at a time with integer masks; no branch on the data, nothing read or written past
    n / 2n. (The masked vector loads and stores used before took ~4.5x as long on Zen 3 for rows of 14, 500 vs 111 us
    for a thread's 32 images x 16 channels: AVX2 has no byte mask load, so LLVM scalarises it; a scalar tail that
    branched on the codes, which are data, cost nearly as much in mispredictions.)"""
    il = "<16 x i32> <" + ", ".join(f"i32 {i // 2 + 8 * (i % 2)}" for i in range(16)) + ">"

    def block(t, x):  # the 8 blocks from x
        return f"""  %{t}gp = getelementptr float, float* %g, i64 {x}
  %{t}gq = bitcast float* %{t}gp to <8 x float>*
  %{t}gv = load <8 x float>, <8 x float>* %{t}gq, align 4
  %{t}cp = getelementptr i8, i8* %codes, i64 {x}
  %{t}cq = bitcast i8* %{t}cp to <8 x i8>*
  %{t}cv = load <8 x i8>, <8 x i8>* %{t}cq, align 1
  %{t}cd = sub <8 x i8> %{t}cv, %ds
  %{t}ie = icmp eq <8 x i8> %{t}cd, {_i8s(0)}
  %{t}io = icmp eq <8 x i8> %{t}cd, {_i8s(1)}
  %{t}e = select <8 x i1> %{t}ie, <8 x float> %{t}gv, <8 x float> zeroinitializer
  %{t}o = select <8 x i1> %{t}io, <8 x float> %{t}gv, <8 x float> zeroinitializer
  %{t}v = shufflevector <8 x float> %{t}e, <8 x float> %{t}o, {il}
  %{t}x2 = mul i64 {x}, 2
  %{t}dp = getelementptr float, float* %dst, i64 %{t}x2
  %{t}dq = bitcast float* %{t}dp to <16 x float>*
  store <16 x float> %{t}v, <16 x float>* %{t}dq, align 4"""
    return f"""
define void @unpool(float* %g, i8* %codes, i64 %n, i64 %dy2, float* %dst) {{
entry:
  %d8 = trunc i64 %dy2 to i8
  %di = insertelement <8 x i8> undef, i8 %d8, i32 0
  %ds = shufflevector <8 x i8> %di, <8 x i8> undef, <8 x i32> zeroinitializer
  %full = and i64 %n, -8
  %go = icmp sgt i64 %full, 0
  br i1 %go, label %col, label %tailcheck
col:
  %x = phi i64 [0, %entry], [%x1, %col]
{block("", "%x")}
  %x1 = add i64 %x, 8
  %more = icmp slt i64 %x1, %full
  br i1 %more, label %col, label %last
last:
  %rest = icmp slt i64 %full, %n
  br i1 %rest, label %lastblock, label %done
lastblock:
  %xl = sub i64 %n, 8
{block("l", "%xl")}
  br label %done
tailcheck:
  %t0 = icmp sgt i64 %n, 0
  br i1 %t0, label %tail, label %done
tail:
  %y = phi i64 [0, %tailcheck], [%y1, %tail]
  %tgp = getelementptr float, float* %g, i64 %y
  %tg = load float, float* %tgp, align 4
  %tcp = getelementptr i8, i8* %codes, i64 %y
  %tc = load i8, i8* %tcp, align 1
  %tcd = sub i8 %tc, %d8
  %tie = icmp eq i8 %tcd, 0
  %tio = icmp eq i8 %tcd, 1
  %tgi = bitcast float %tg to i32
  %tme = sext i1 %tie to i32
  %tmo = sext i1 %tio to i32
  %te = and i32 %tgi, %tme
  %to = and i32 %tgi, %tmo
  %y2 = mul i64 %y, 2
  %tdf = getelementptr float, float* %dst, i64 %y2
  %tdp = bitcast float* %tdf to i32*
  store i32 %te, i32* %tdp, align 4
  %tdp1 = getelementptr i32, i32* %tdp, i64 1
  store i32 %to, i32* %tdp1, align 4
  %y1 = add i64 %y, 1
  %tmore = icmp slt i64 %y1, %n
  br i1 %tmore, label %tail, label %done
done:
  ret void
}}
"""
