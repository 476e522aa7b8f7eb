"""float32 ``x @ w.T + b`` for layers with few outputs (a classifier's last layer: the cnn benchmark's
Linear(1568, 10)): dot products along the reduction, in an LLVM-IR kernel.

BLAS kernels vectorise over the outputs; with 10 of them a 16-float vector is mostly padding and the GEMM runs
at a fraction of its speed (OpenBLAS: ~30-50 us for 64 x 1568 x 10 on this machine). Here each row of x meets
every weight row in a dot product vectorised over k: ``dot<R>_<N>`` keeps R rows x N outputs of 16-float partial
sums in registers (R = 2: 2 + N loads per 2N fused multiply-adds), reads the reduction's last partial vector with
masked loads (nothing read past a row), adds the lanes up and the bias. Rows are split over the threads only for
large batches.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .helpers import finish, no_sync, post
from .intrinsics import call
from .jit import njit, run_parts, slices
from .llvm_ir import _lanes, _splat_i64, address, compile_module

MAX_OUTPUTS = 12  # outputs at most (R x N partial sums + R + 1 vectors within the 32 registers)
PAR_MIN_MACS = 1 << 22  # multiply-adds from which rows are split over the threads (64 x 1568 x 10: 24 us on one
# thread, 32-45 on two: the hand-off costs more than half the work saves)
_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def dot_ir(rows, n, name) -> str:
    """``name(x, ldx, w, ldw, K, bias, out, ldo)``: out[r*ldo + o] = bias[o] + sum_k x[r*ldx + k] * w[o*ldw + k]
    for r < rows, o < n: 16 values of k a step, the last step's loads masked."""
    vt = "<16 x float>"
    acc = [(r, o) for r in range(rows) for o in range(n)]
    lines = [f"define void @{name}(float* %x, i64 %ldx, float* %w, i64 %ldw, i64 %K, float* %bias, float* %out, "
             "i64 %ldo) {", "entry:", "  br label %loop", "loop:", "  %k = phi i64 [0, %entry], [%k1, %loop]"]
    lines += [f"  %a{r}_{o} = phi {vt} [zeroinitializer, %entry], [%n{r}_{o}, %loop]" for r, o in acc]
    lines += ["  %left = sub i64 %K, %k", _splat_i64("ls", "%left", 16), f"  %mask = icmp slt <16 x i64> {_lanes(16)}, %ls"]
    for r in range(rows):
        lines += [f"  %xo{r} = mul i64 %ldx, {r}", f"  %xk{r} = add i64 %xo{r}, %k",
                  f"  %xp{r} = getelementptr float, float* %x, i64 %xk{r}",
                  f"  %xv{r} = call {vt} @llvm.masked.load.v16f32.p0(ptr %xp{r}, i32 4, <16 x i1> %mask, {vt} zeroinitializer)"]
    for o in range(n):
        lines += [f"  %wo{o} = mul i64 %ldw, {o}", f"  %wk{o} = add i64 %wo{o}, %k",
                  f"  %wp{o} = getelementptr float, float* %w, i64 %wk{o}",
                  f"  %wv{o} = call {vt} @llvm.masked.load.v16f32.p0(ptr %wp{o}, i32 4, <16 x i1> %mask, {vt} zeroinitializer)"]
        lines += [f"  %n{r}_{o} = call {vt} @llvm.fma.v16f32({vt} %xv{r}, {vt} %wv{o}, {vt} %a{r}_{o})" for r in range(rows)]
    lines += ["  %k1 = add i64 %k, 16", "  %more = icmp slt i64 %k1, %K", "  br i1 %more, label %loop, label %done", "done:"]
    for o in range(n):
        lines += [f"  %bp{o} = getelementptr float, float* %bias, i64 {o}", f"  %b{o} = load float, float* %bp{o}"]
    for r, o in acc:
        lines += [f"  %s{r}_{o} = call reassoc float @llvm.vector.reduce.fadd.v16f32(float -0.0, {vt} %n{r}_{o})",
                  f"  %t{r}_{o} = fadd float %s{r}_{o}, %b{o}", f"  %oo{r}_{o} = mul i64 %ldo, {r}",
                  f"  %oa{r}_{o} = add i64 %oo{r}_{o}, {o}", f"  %op{r}_{o} = getelementptr float, float* %out, i64 %oa{r}_{o}",
                  f"  store float %t{r}_{o}, float* %op{r}_{o}"]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


_KERNELS: dict = {}


def kernels(n):
    """int64 array [address of dot1_<n>, of dot2_<n>] for 1 <= n <= MAX_OUTPUTS, compiled once per process and n
    (~10 ms); None where LLVM cannot or the CPU has no AVX-512 (16 ymm registers would not hold the partial sums:
    BLAS runs those layers)."""
    if n not in _KERNELS:
        vt = "<16 x float>"
        decls = [f"declare {vt} @llvm.fma.v16f32({vt}, {vt}, {vt})", "declare float @llvm.vector.reduce.fadd.v16f32(float, "
                 f"{vt})", f"declare {vt} @llvm.masked.load.v16f32.p0(ptr, i32, <16 x i1>, {vt})"]
        engine = compile_module("\n".join(decls + [dot_ir(r, n, f"dot{r}") for r in (1, 2)]), require=("avx512f",))
        if engine is None:
            _KERNELS[n] = None
        else:
            fns = [_SIG(engine.get_function_address(f"dot{r}")) for r in (1, 2)]
            _KERNELS[n] = (np.array([address(f) for f in fns], np.int64), engine, fns)  # (keep the code alive)
    return None if _KERNELS[n] is None else _KERNELS[n][0]


@njit
def _rows(x, w, bias, out, table, sync):
    """out = x @ w.T + bias for the rows of x (2-d float32, C-contiguous; w has at most MAX_OUTPUTS rows)."""
    post(sync)
    m, k = x.shape
    n = w.shape[0]
    for r in range(0, m - 1, 2):
        call(table[1], (x.ctypes.data + 4 * r * k, k, w.ctypes.data, k, k, bias.ctypes.data,
                        out.ctypes.data + 4 * r * n, n))
    if m % 2:
        call(table[0], (x.ctypes.data + 4 * (m - 1) * k, k, w.ctypes.data, k, k, bias.ctypes.data,
                        out.ctypes.data + 4 * (m - 1) * n, n))
    finish(sync)


class PreparedNarrow:
    """``x @ w.T + b`` of one float32 weight of at most MAX_OUTPUTS rows (``kernels(rows)`` not None) for 2-d float32
    x: ``__call__(x)``."""

    def __init__(self, w, b):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.b = np.zeros(w.shape[0], np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32)
        self.table = kernels(self.w.shape[0])

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.w.shape[0]), np.float32)
        parts = slices(x.shape[0], x.size * self.w.shape[0], PAR_MIN_MACS)
        if len(parts) == 1:
            _rows(x, self.w, self.b, out, self.table, no_sync())
        else:
            run_parts(_rows, [(x[lo:hi], self.w, self.b, out[lo:hi], self.table) for lo, hi in parts])
        return out
