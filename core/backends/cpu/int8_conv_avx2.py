"""The AVX2 form of int8_conv_tiled.py's convolution tile, for x86 CPUs without AVX-512 VNNI.

Same call, same input layout (each position's four channel codes as one little-endian uint32, "quads") and the same
output block (NCO channels x NP*16 positions of int32 sums), so the driver is int8_conv_tiled.py's. The products
are ``vpmaddwd`` on int16 pairs, exact (``vpmaddubsw`` would saturate uint8 x int8 pair sums): a 32-byte load holds
8 positions x 4 channels; masking and shifting its 16-bit words gives channels (0, 2) and (1, 3) of each position as
int16 pairs, and each output channel's weights come pre-split the same way (``pairs``: (w0, w2) and (w1, w3) as two
int16 pairs per step), so two ``vpmaddwd`` and two ``vpaddd`` add a step's four channels into 8 positions' sums.
The block runs as passes of 4 channels x up to 16 positions (8 accumulators, 4 activation and 2 weight registers of
the 16 ymm), each over all steps (the input stays in L1 between passes). Passes of 24 positions (12 accumulators)
spilled accumulators to the stack every step (~30 extra moves a step): one thread, conv2 of the cnn, 63-67 against
70-71 G multiply-adds/s.
"""
from __future__ import annotations

import numpy as np

from .llvm_ir import store_accumulators

DECL = "declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)\n"
_VT, _WT = "<8 x i32>", "<16 x i16>"


def _groups(total, size):
    """0 .. total in consecutive runs of at most ``size``, as even as possible."""
    n = -(-total // size)
    bounds = [total * i // n for i in range(n + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def tile_ir(nco: int, np_: int, name: str) -> str:
    """``name(x, offs, K, w, out, ldo)``: out[r*ldo + p] = sum over steps k of the four channels' products at position
    p (bytes x + offs[k] + 4p) for r < nco, p < 16*np_; w = ``pairs`` of one block of nco channels."""
    lines = [f"define void @{name}(i8* %x, i64* %offs, i64 %K, i32* %w, i32* %out, i64 %ldo) {{", "entry:",
             "  br label %loop0"]
    passes = [(cg, pg) for cg in _groups(nco, 4) for pg in _groups(2 * np_, 2)]
    for i, (cg, pg) in enumerate(passes):
        acc = [(r, h) for r in cg for h in pg]
        start = "entry" if i == 0 else f"done{i - 1}"
        lines += [f"loop{i}:", f"  %k{i} = phi i64 [0, %{start}], [%k{i}n, %loop{i}]"]
        lines += [f"  %a{r}_{h} = phi {_VT} [zeroinitializer, %{start}], [%n{r}_{h}, %loop{i}]" for r, h in acc]
        lines += [f"  %op{i} = getelementptr i64, i64* %offs, i64 %k{i}", f"  %of{i} = load i64, i64* %op{i}",
                  f"  %xb{i} = getelementptr i8, i8* %x, i64 %of{i}", f"  %wk{i} = mul i64 %k{i}, {2 * nco}"]
        for h in pg:
            lines += [f"  %xp{i}_{h} = getelementptr i8, i8* %xb{i}, i64 {32 * h}",
                      f"  %xq{i}_{h} = bitcast i8* %xp{i}_{h} to {_WT}*",
                      f"  %xv{i}_{h} = load {_WT}, {_WT}* %xq{i}_{h}, align 1",
                      f"  %lo{i}_{h} = and {_WT} %xv{i}_{h}, <{', '.join(['i16 255'] * 16)}>",
                      f"  %hi{i}_{h} = lshr {_WT} %xv{i}_{h}, <{', '.join(['i16 8'] * 16)}>"]
        for r in cg:
            for half, src in ((0, "lo"), (1, "hi")):
                v = f"{i}_{r}_{half}"
                lines += [f"  %wi{v} = add i64 %wk{i}, {2 * r + half}", f"  %wp{v} = getelementptr i32, i32* %w, i64 %wi{v}",
                          f"  %ws{v} = load i32, i32* %wp{v}", f"  %wv{v}i = insertelement {_VT} undef, i32 %ws{v}, i32 0",
                          f"  %wv{v}s = shufflevector {_VT} %wv{v}i, {_VT} undef, <8 x i32> zeroinitializer",
                          f"  %wv{v} = bitcast {_VT} %wv{v}s to {_WT}"]
            for h in pg:
                lines += [f"  %p{r}_{h}a = call {_VT} @llvm.x86.avx2.pmadd.wd({_WT} %lo{i}_{h}, {_WT} %wv{i}_{r}_0)",
                          f"  %p{r}_{h}b = call {_VT} @llvm.x86.avx2.pmadd.wd({_WT} %hi{i}_{h}, {_WT} %wv{i}_{r}_1)",
                          f"  %p{r}_{h} = add {_VT} %p{r}_{h}a, %p{r}_{h}b", f"  %n{r}_{h} = add {_VT} %a{r}_{h}, %p{r}_{h}"]
        lines += [f"  %k{i}n = add i64 %k{i}, 1", f"  %more{i} = icmp ult i64 %k{i}n, %K",
                  f"  br i1 %more{i}, label %loop{i}, label %done{i}", f"done{i}:"]
        lines += store_accumulators(acc, "i32", _VT, 8)
        lines.append(f"  br label %{'loop' + str(i + 1) if i + 1 < len(passes) else 'fin'}")
    lines += ["fin:", "  ret void", "}"]
    return "\n".join(lines)


def pairs(quads: np.ndarray) -> np.ndarray:
    """int8_conv_tiled.quads' layout (blocks, steps, NCO) int32 of four int8 weights -> (blocks, steps, 2 * NCO)
    int32: per channel the int16 pairs (w0, w2) and (w1, w3), as ``tile_ir`` reads them."""
    b = quads.view(np.int8).reshape(quads.shape + (4,)).astype(np.int16)
    split = np.stack([b[..., [0, 2]], b[..., [1, 3]]], axis=-2)  # (blocks, steps, NCO, 2, 2) int16
    return np.ascontiguousarray(split).view(np.int32).reshape(quads.shape[0], quads.shape[1], 2 * quads.shape[2])
