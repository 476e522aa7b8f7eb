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
    are used), or None when a feature in ``require`` (e.g. "avx512vnni") is missing or LLVM refuses."""
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
  %tp = getelementptr {t}, {t}* %src, i64 %ta
  %tq = bitcast {t}* %tp to <16 x {t}>*
  %tv = load <16 x {t}>, <16 x {t}>* %tq, align 4
  %ba = add i64 %boff, %x
  %bp = getelementptr {t}, {t}* %src, i64 %ba
  %bq = bitcast {t}* %bp to <16 x {t}>*
  %bv = load <16 x {t}>, <16 x {t}>* %bq, align 4
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
