"""numba intrinsics: calls to machine code by address (``call``), and for the helper threads' hand-offs
(helpers.py) atomic loads and stores on an int64 array, the CPU's spin-wait hint and its cycle counter, plus
loops built from them that release the GIL.

Kernels take the LLVM-IR kernels of llvm_ir.py & co. as plain int64 addresses and call them with ``call``: numba
unboxes a ctypes function object passed as an argument for ~1.3 us per call, an int in ~0.01 us."""
from __future__ import annotations

import platform

from llvmlite import ir
import numba
from numba.core import cgutils, types
from numba.extending import intrinsic

X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _element_pointer(context, builder, aryty, ary, idx, idxty):
    arr = context.make_array(aryty)(context, builder, ary)
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.gep(arr.data, [i])


def _int64_vector(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1 and arr.layout == "C"


def _ll_arg(context, builder, value, ty):
    """(LLVM value, LLVM type) of an argument as the C ABI passes it: integers and addresses as i64."""
    if isinstance(ty, types.Float):
        return value, context.get_value_type(ty)
    if isinstance(ty, (types.Integer, types.Boolean)):
        return context.cast(builder, value, ty, types.int64), ir.IntType(64)
    raise TypeError(f"call: unsupported argument type {ty}")


@intrinsic
def call(typingctx, addr, args):
    """Call the C function at address ``addr`` (int64) with the tuple ``args`` of integers/addresses and floats;
    returns nothing (the kernels write through pointers)."""
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    if not all(isinstance(t, (types.Integer, types.Boolean, types.Float)) for t in args.types):
        return None

    def codegen(context, builder, sig, llargs):
        addr_v, tup = llargs
        vals, lltys = [], []
        for i, ty in enumerate(sig.args[1].types):
            v, t = _ll_arg(context, builder, builder.extract_value(tup, i), ty)
            vals.append(v)
            lltys.append(t)
        fnty = ir.FunctionType(ir.VoidType(), lltys)
        fptr = builder.inttoptr(context.cast(builder, addr_v, sig.args[0], types.int64), fnty.as_pointer())
        builder.call(fptr, vals)
        return context.get_dummy_value()
    return types.void(addr, args), codegen


@intrinsic
def voidptr(typingctx, addr):
    """The int64 address ``addr`` as a ``void*`` (for ``numba.carray(voidptr(addr), shape, dtype)``)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.int64), cgutils.voidptr_t)
    return types.voidptr(addr), codegen


@intrinsic
def load_acquire(typingctx, arr, idx):
    """arr[idx] as an atomic acquire load (arr: C-contiguous 1-d int64)."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, value):
    """arr[idx] = value as an atomic release store."""
    if not (_int64_vector(arr) and isinstance(idx, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(v, ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return types.void(arr, idx, value), codegen


@intrinsic
def compare_exchange(typingctx, arr, idx, expected, value):
    """Atomically: if arr[idx] == expected, arr[idx] = value; returns the value arr[idx] held (== expected when
    the exchange happened)."""
    if not (_int64_vector(arr) and all(isinstance(t, types.Integer) for t in (idx, expected, value))):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        old = context.cast(builder, args[2], sig.args[2], types.int64)
        new = context.cast(builder, args[3], sig.args[3], types.int64)
        res = builder.cmpxchg(ptr, old, new, "acq_rel", "acquire")
        return builder.extract_value(res, 0)
    return types.int64(arr, idx, expected, value), codegen


@intrinsic
def cpu_relax(typingctx):
    """The spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (``rdtsc`` on x86)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@numba.njit(inline="always", nogil=True, cache=True)
def spin_above(ctl, i, seen, ticks):
    """Wait until ctl[i] > seen or ``ticks`` cycles passed (ticks < 0: no limit); returns ctl[i]."""
    t0 = cycles()
    while True:
        v = load_acquire(ctl, i)
        if v > seen:
            return v
        cpu_relax()
        if ticks >= 0 and cycles() - t0 > ticks:
            return v


@numba.njit(inline="always", nogil=True, cache=True)
def wait_all(ctl, i0, n, value, ticks):
    """Wait until ctl[i0 + j] >= value for every j < n, or ``ticks`` cycles passed (ticks < 0: no limit)."""
    t0 = cycles()
    for j in range(n):
        while load_acquire(ctl, i0 + j) < value:
            cpu_relax()
            if ticks >= 0 and cycles() - t0 > ticks:
                return


@numba.njit(nogil=True, cache=True)
def spin_above_nogil(ctl, i, seen, ticks):
    """``spin_above`` called from Python, without the GIL."""
    return spin_above(ctl, i, seen, ticks)


@numba.njit(nogil=True, cache=True)
def wait_all_nogil(ctl, i0, n, value, ticks):
    """``wait_all`` called from Python, without the GIL."""
    wait_all(ctl, i0, n, value, ticks)


@numba.njit(nogil=True, cache=True)
def read_cycles():
    return cycles()
