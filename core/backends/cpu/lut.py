"""Byte table lookup ``out[i] = table[codes[i]]`` (256-entry table) for the runtime's ``requantize``.

numba's loop does one byte per iteration (~0.35 ns each: 70 us for the cnn's 200k codes at B=64 on Zen 4; ~240
us on Zen 3). With AVX-512 VBMI, ``vpermi2b`` looks up 64 bytes at once in a 128-entry table held in two
registers; two of them (codes below / from 128) and a select on the code's top bit cover 256 entries. With AVX2
only, ``vpshufb`` looks up 32 bytes in each of the table's sixteen 16-entry rows (by the code's low four bits) and
a select on the high four bits keeps the right row's. Written in LLVM IR (compiled once per process by llvmlite,
like the convolution tiles); whole blocks go through it, the rest (and other CPUs) through the numba loop.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .intrinsics import call
from .jit import njit
from .llvm_ir import address, compile_module

_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
_STATE: dict = {}

_IR = """
declare <64 x i8> @llvm.x86.avx512.vpermi2var.qi.512(<64 x i8>, <64 x i8>, <64 x i8>)

define void @lut(i8* %src, i8* %dst, i64 %blocks, i8* %table) {
entry:
  %t0p = bitcast i8* %table to <64 x i8>*
  %t0 = load <64 x i8>, <64 x i8>* %t0p, align 1
  %t1a = getelementptr i8, i8* %table, i64 64
  %t1p = bitcast i8* %t1a to <64 x i8>*
  %t1 = load <64 x i8>, <64 x i8>* %t1p, align 1
  %t2a = getelementptr i8, i8* %table, i64 128
  %t2p = bitcast i8* %t2a to <64 x i8>*
  %t2 = load <64 x i8>, <64 x i8>* %t2p, align 1
  %t3a = getelementptr i8, i8* %table, i64 192
  %t3p = bitcast i8* %t3a to <64 x i8>*
  %t3 = load <64 x i8>, <64 x i8>* %t3p, align 1
  %any = icmp sgt i64 %blocks, 0
  br i1 %any, label %loop, label %done
loop:
  %b = phi i64 [0, %entry], [%b1, %loop]
  %off = mul i64 %b, 64
  %sa = getelementptr i8, i8* %src, i64 %off
  %sp = bitcast i8* %sa to <64 x i8>*
  %idx = load <64 x i8>, <64 x i8>* %sp, align 1
  %lo = call <64 x i8> @llvm.x86.avx512.vpermi2var.qi.512(<64 x i8> %t0, <64 x i8> %idx, <64 x i8> %t1)
  %hi = call <64 x i8> @llvm.x86.avx512.vpermi2var.qi.512(<64 x i8> %t2, <64 x i8> %idx, <64 x i8> %t3)
  %top = icmp slt <64 x i8> %idx, zeroinitializer
  %r = select <64 x i1> %top, <64 x i8> %hi, <64 x i8> %lo
  %da = getelementptr i8, i8* %dst, i64 %off
  %dp = bitcast i8* %da to <64 x i8>*
  store <64 x i8> %r, <64 x i8>* %dp, align 1
  %b1 = add i64 %b, 1
  %more = icmp slt i64 %b1, %blocks
  br i1 %more, label %loop, label %done
done:
  ret void
}
"""


def _avx2_ir() -> str:
    """``lut(src, dst, blocks, table)`` on 32-byte blocks with AVX2's ``vpshufb``."""
    vt = "<32 x i8>"
    lines = ["declare <32 x i8> @llvm.x86.avx2.pshuf.b(<32 x i8>, <32 x i8>)",
             "define void @lut(i8* %src, i8* %dst, i64 %blocks, i8* %table) {", "entry:"]
    for j in range(16):
        lines += [f"  %r{j}a = getelementptr i8, i8* %table, i64 {16 * j}", f"  %r{j}p = bitcast i8* %r{j}a to <16 x i8>*",
                  f"  %r{j}h = load <16 x i8>, <16 x i8>* %r{j}p, align 1",
                  f"  %r{j} = shufflevector <16 x i8> %r{j}h, <16 x i8> undef, <32 x i32> <{', '.join(f'i32 {i % 16}' for i in range(32))}>"]
    lines += ["  %any = icmp sgt i64 %blocks, 0", "  br i1 %any, label %loop, label %done", "loop:",
              "  %b = phi i64 [0, %entry], [%b1, %loop]", "  %off = mul i64 %b, 32",
              "  %sa = getelementptr i8, i8* %src, i64 %off", f"  %sp = bitcast i8* %sa to {vt}*",
              f"  %idx = load {vt}, {vt}* %sp, align 1", f"  %lo = and {vt} %idx, <{', '.join(['i8 15'] * 32)}>",
              f"  %hi = lshr {vt} %idx, <{', '.join(['i8 4'] * 32)}>", "  %s0 = call <32 x i8> @llvm.x86.avx2.pshuf.b("
              f"{vt} %r0, {vt} %lo)"]
    for j in range(1, 16):
        lines += [f"  %v{j} = call {vt} @llvm.x86.avx2.pshuf.b({vt} %r{j}, {vt} %lo)",
                  f"  %m{j} = icmp eq {vt} %hi, <{', '.join([f'i8 {j}'] * 32)}>",
                  f"  %s{j} = select <32 x i1> %m{j}, {vt} %v{j}, {vt} %s{j - 1}"]
    lines += ["  %da = getelementptr i8, i8* %dst, i64 %off", f"  %dp = bitcast i8* %da to {vt}*",
              f"  store {vt} %s15, {vt}* %dp, align 1", "  %b1 = add i64 %b, 1", "  %more = icmp slt i64 %b1, %blocks",
              "  br i1 %more, label %loop, label %done", "done:", "  ret void", "}"]
    return "\n".join(lines)


def _kernel():
    """(the compiled block lookup (ctypes function pointer) or None, its block size in bytes): VBMI's 64, else
    AVX2's 32."""
    if "fn" not in _STATE:
        engine, block = compile_module(_IR, require=("avx512vbmi", "avx512bw")), 64
        if engine is None:
            engine, block = compile_module(_avx2_ir(), require=("avx2",)), 32
        _STATE["engine"], _STATE["block"] = engine, block
        _STATE["fn"] = None if engine is None else _SIG(engine.get_function_address("lut"))
    return _STATE["fn"], _STATE["block"]


@njit
def _lookup(codes, table, out, fn, block):
    start = 0
    if fn != 0 and codes.size >= block:  # whole blocks through the IR kernel, called by address
        blocks = codes.size // block
        call(fn, (codes.ctypes.data, out.ctypes.data, blocks, table.ctypes.data))
        start = blocks * block
    for i in range(start, codes.size):
        out[i] = table[codes[i]]


def lookup(codes: np.ndarray, table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[i] = table[codes[i]] for flat contiguous uint8 codes, a contiguous 256-entry one-byte table and a flat
    contiguous one-byte out (uint8 or int8); one numba call (~1 us at batch 1, where ctypes' call and three
    ``.ctypes`` lookups cost ~4 us)."""
    if "addr" not in _STATE:
        _STATE["addr"] = address(_kernel()[0])
    _lookup(codes, table, out, _STATE["addr"], _STATE["block"])
    return out
