"""The int8 GEMM's LLVM-IR micro-kernels: 4 rows x 32 columns of raw int32 sums of uint8 activations times int8
weights, one per x86 CPU kind (``kind()``):

- VNNI (AVX-512 VNNI): ``vpdpbusd`` (64 uint8 x int8 products summed in groups of four into 16 int32 lanes per
  instruction). Measured on AMD Zen 4, one thread: ~225 G multiply-adds/s against ~48 for the numba tiles.
- AVX2: ``vpmaddwd`` on int16 pairs (16 exact products summed in pairs into 8 int32 lanes per instruction, then
  ``vpaddd``). The driver (int8_gemm.gemm_rows) widens each block of activation rows to int16 once, so the tile
  broadcasts a pair of them with one load; the 32 columns run as two passes of 16 (8 accumulators each: the
  16 ymm registers). Not ``vpmaddubsw`` for these: its int16 pair sums saturate for uint8 x int8 (255 * 127 * 2 >
  32767).
- U8S8 (AVX2 hosts, weights of 7 bits, |w| <= 64: ``per_channel_7bit_dynamic_qconfig``, ONNX Runtime's
  ``reduce_range``; or activations of 7 bits, 0..127, with any int8 weights: the dynamic linear layer's
  ``reduce_range``, torch's x86 default): ``vpmaddubsw`` then ``vpmaddwd`` by ones, exact as 255 * 64 * 2 <= 32767
  and 127 * 128 * 2 <= 32768 (pair sums of -32512 .. 32258), on the VNNI layout
  and uint8 rows (no widening): ~96 G multiply-adds/s on one thread of Zen 3 against ~63 for the AVX2 tile. The
  layout, and so the tile, is chosen per weight when it is packed (``layout_kind``).

LLVM does not derive either from numba's loops (they compile to ``vpmaddwd`` with one product per int32 lane: a
quarter of VNNI's work per instruction, half of the AVX2 tile's), so the tiles are written in LLVM IR, compiled
once per process by llvmlite for the host CPU, and called from the numba kernels through an address passed as an
argument (which keeps those kernels cacheable). ``EMBER_INT8_VNNI=0`` turns both off (the numba tiles run);
``EMBER_INT8_TILE=avx2`` picks the AVX2 tile on a VNNI machine (to test it there).

Weight layout (``pack``), per block of 32 output columns: VNNI and U8S8, for each group of 4 k, 32 x 4 bytes
(column-major within the group): (N/32, Kp/4, 32, 4) int8; AVX2, for each pair of k, 32 x 2 int16: the same bytes
viewed as (N/32, Kp/2, 32, 4) int8. Zero-padded past N.
"""
from __future__ import annotations

import ctypes
import os

import numba
import numpy as np

from .llvm_ir import address

TILE_N = 32  # output columns per tile call
_SIG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                        ctypes.c_int64)

_ACC = "\n".join(f"  %c{r}{h} = phi <16 x i32> [zeroinitializer, %entry], [%n{r}{h}, %loop]"
                 for r in range(4) for h in range(2))
_ROWS = "\n".join(f"""  %ap{r} = getelementptr i8, i8* %a{r}, i64 %k
  %ap{r}i = bitcast i8* %ap{r} to i32*
  %av{r} = load i32, i32* %ap{r}i, align 1
  %b{r}i = insertelement <16 x i32> undef, i32 %av{r}, i32 0
  %b{r} = shufflevector <16 x i32> %b{r}i, <16 x i32> undef, <16 x i32> zeroinitializer""" for r in range(4))
_DOTS = "\n".join(f"  %n{r}{h} = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %c{r}{h}, "
                  f"<16 x i32> %b{r}, <16 x i32> %wv{h})" for r in range(4) for h in range(2))
_STORES = "\n".join(f"""  %o{r} = getelementptr i32, i32* %out, i64 %oo{r}
  %o{r}a = bitcast i32* %o{r} to <16 x i32>*
  store <16 x i32> %n{r}0, <16 x i32>* %o{r}a, align 1
  %o{r}h = getelementptr i32, i32* %o{r}, i64 16
  %o{r}b = bitcast i32* %o{r}h to <16 x i32>*
  store <16 x i32> %n{r}1, <16 x i32>* %o{r}b, align 1""" for r in range(4))

# tile(a, lda, w, kp, out, ldo): out[r, 0:32] = sum_k a[r*lda + k] * w[k/4, n, k%4] for r < 4 (uint8 x int8,
# raw int32 sums; kp a multiple of 4; lda = 0 repeats one row)
_IR = f"""
declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <16 x i32>, <16 x i32>)

define void @tile(i8* %a0, i64 %lda, i8* %w, i64 %kp, i32* %out, i64 %ldo) {{
entry:
  %a1 = getelementptr i8, i8* %a0, i64 %lda
  %a2 = getelementptr i8, i8* %a1, i64 %lda
  %a3 = getelementptr i8, i8* %a2, i64 %lda
  br label %loop
loop:
  %k = phi i64 [0, %entry], [%k4, %loop]
{_ACC}
  %woff = mul i64 %k, 32
  %wp0 = getelementptr i8, i8* %w, i64 %woff
  %wv0p = bitcast i8* %wp0 to <16 x i32>*
  %wv0 = load <16 x i32>, <16 x i32>* %wv0p, align 1
  %wp1 = getelementptr i8, i8* %wp0, i64 64
  %wv1p = bitcast i8* %wp1 to <16 x i32>*
  %wv1 = load <16 x i32>, <16 x i32>* %wv1p, align 1
{_ROWS}
{_DOTS}
  %k4 = add i64 %k, 4
  %more = icmp ult i64 %k4, %kp
  br i1 %more, label %loop, label %done
done:
  %oo0 = mul i64 %ldo, 0
  %oo1 = mul i64 %ldo, 1
  %oo2 = mul i64 %ldo, 2
  %oo3 = mul i64 %ldo, 3
{_STORES}
  ret void
}}

"""


def _avx2_ir(halves=2, name="tile2", u8s8=False) -> str:
    """tile2(a, lda, w, kp, out, ldo): as ``tile`` with int16 activation rows (lda in bytes) and the AVX2 layout;
    with ``halves`` = 1 only the block's first 16 columns (a layer's last block when no more are real). lda = 0
    (one row, repeated) takes a one-row loop over all the columns at once (4 accumulators), not four equal rows.

    With ``u8s8`` the U8S8 tile (tile7): uint8 rows and the VNNI layout, for weights of 7 bits (|w| <= 64) or
    activation codes of 7 bits (<= 127): ``vpmaddubsw`` (32 uint8 x int8 products summed in pairs into int16: exact,
    within 2 * 255 * 64 = 32640 or 2 * 127 * 128 = 32512) then
    ``vpmaddwd`` by ones (the pairs of pairs into int32) and ``vpaddd``: a column's four products in 3 instructions,
    where the int16 tile needs 4 for two columns' worth (measured on Zen 3, one thread, 32 x 784 -> 512: ~96 G
    multiply-adds/s against ~63)."""
    vt, wt = "<8 x i32>", ("<32 x i8>" if u8s8 else "<16 x i16>")
    # a step: 4 k of uint8 (a 32-byte weight row of 8 columns x 4) or 2 k of int16 (a 128-byte row of 32 x 2 int16)
    bound, k_step, w_step, a_shift = ("%kp", 4, 32, 0) if u8s8 else ("%pairs", 1, 128, 2)
    ones = "<" + ", ".join(["i16 1"] * 16) + ">"

    def product(tag, a, w, acc_in, acc_out):
        if not u8s8:
            return [f"  %p{tag} = call {vt} @llvm.x86.avx2.pmadd.wd({wt} {a}, {wt} {w})",
                    f"  {acc_out} = add {vt} {acc_in}, %p{tag}"]
        return [f"  %s{tag} = call <16 x i16> @llvm.x86.avx2.pmadd.ub.sw({wt} {a}, {wt} {w})",
                f"  %p{tag} = call {vt} @llvm.x86.avx2.pmadd.wd(<16 x i16> %s{tag}, <16 x i16> {ones})",
                f"  {acc_out} = add {vt} {acc_in}, %p{tag}"]

    def bcast(tag, row, k):
        off = [f"  %ao{tag} = shl i64 {k}, {a_shift}"] if a_shift else [f"  %ao{tag} = add i64 {k}, 0"]
        return off + [f"  %ap{tag} = getelementptr i8, i8* {row}, i64 %ao{tag}",
                      f"  %aq{tag} = bitcast i8* %ap{tag} to i32*", f"  %as{tag} = load i32, i32* %aq{tag}, align 1",
                      f"  %ai{tag} = insertelement {vt} undef, i32 %as{tag}, i32 0",
                      f"  %ab{tag} = shufflevector {vt} %ai{tag}, {vt} undef, <8 x i32> zeroinitializer",
                      f"  %av{tag} = bitcast {vt} %ab{tag} to {wt}"]

    def wload(tag, base, off):
        return [f"  %wp{tag} = getelementptr i8, i8* {base}, i64 {off}", f"  %wq{tag} = bitcast i8* %wp{tag} to {wt}*",
                f"  %wv{tag} = load {wt}, {wt}* %wq{tag}, align 1"]

    lines = [f"define void @{name}(i8* %a0, i64 %lda, i8* %w, i64 %kp, i32* %out, i64 %ldo) {{", "entry:",
             "  %pairs = lshr i64 %kp, 1"]
    for r in range(1, 4):
        lines.append(f"  %a{r} = getelementptr i8, i8* %a{r - 1}, i64 %lda")
    lines += ["  %one = icmp eq i64 %lda, 0", "  br i1 %one, label %row, label %loop0"]
    nv = 2 * halves  # the one-row loop: every column's vector in one pass
    lines += ["row:", "  %rk = phi i64 [0, %entry], [%rkn, %row]"]
    lines += [f"  %rc{h} = phi {vt} [zeroinitializer, %entry], [%rn{h}, %row]" for h in range(nv)]
    lines += [f"  %rwo = mul i64 %rk, {w_step}", "  %rwb = getelementptr i8, i8* %w, i64 %rwo"]
    lines += bcast("r", "%a0", "%rk")
    for h in range(nv):
        lines += wload(f"r{h}", "%rwb", 32 * h) + product(f"r{h}", "%avr", f"%wvr{h}", f"%rc{h}", f"%rn{h}")
    lines += [f"  %rkn = add i64 %rk, {k_step}", f"  %rmore = icmp ult i64 %rkn, {bound}",
              "  br i1 %rmore, label %row, label %rowdone", "rowdone:"]
    for h in range(nv):
        lines += [f"  %ro{h} = getelementptr i32, i32* %out, i64 {8 * h}", f"  %rq{h} = bitcast i32* %ro{h} to {vt}*",
                  f"  store {vt} %rn{h}, {vt}* %rq{h}, align 4"]
    lines.append("  br label %fin")
    for half in range(halves):
        start = "entry" if half == 0 else "done0"
        acc = [(r, h) for r in range(4) for h in range(2)]
        lines += [f"loop{half}:", f"  %k{half} = phi i64 [0, %{start}], [%k{half}n, %loop{half}]"]
        lines += [f"  %c{half}{r}{h} = phi {vt} [zeroinitializer, %{start}], [%n{half}{r}{h}, %loop{half}]"
                  for r, h in acc]
        lines += [f"  %wo{half} = mul i64 %k{half}, {w_step}", f"  %wb{half} = getelementptr i8, i8* %w, i64 %wo{half}"]
        for h in range(2):
            lines += wload(f"{half}{h}", f"%wb{half}", 64 * half + 32 * h)
        for r in range(4):
            lines += bcast(f"{half}{r}", f"%a{r}", f"%k{half}")
            for h in range(2):
                lines += product(f"{half}{r}{h}", f"%av{half}{r}", f"%wv{half}{h}", f"%c{half}{r}{h}",
                                 f"%n{half}{r}{h}")
        lines += [f"  %k{half}n = add i64 %k{half}, {k_step}", f"  %more{half} = icmp ult i64 %k{half}n, {bound}",
                  f"  br i1 %more{half}, label %loop{half}, label %done{half}", f"done{half}:"]
        for r, h in acc:
            lines += [f"  %oo{half}{r}{h} = mul i64 %ldo, {r}", f"  %oh{half}{r}{h} = add i64 %oo{half}{r}{h}, "
                      f"{16 * half + 8 * h}", f"  %op{half}{r}{h} = getelementptr i32, i32* %out, i64 %oh{half}{r}{h}",
                      f"  %oq{half}{r}{h} = bitcast i32* %op{half}{r}{h} to {vt}*",
                      f"  store {vt} %n{half}{r}{h}, {vt}* %oq{half}{r}{h}, align 4"]
        lines.append(f"  br label %{'loop1' if half + 1 < halves else 'fin'}")
    lines += ["fin:", "  ret void", "}"]
    return "\n".join(lines)


_NOOP_IR = """
define void @noop(i8* %a0, i64 %lda, i8* %w, i64 %kp, i32* %out, i64 %ldo) {
  ret void
}
"""

_STATE = {}


VNNI, AVX2, U8S8 = 1, 2, 3  # kind(): which tile runs (0: none); U8S8: AVX2 hosts' tile for 7-bit weights or codes
W7 = 64  # |w| <= W7: a weight the U8S8 tile takes exactly


def _compile():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features()
    on = os.environ.get("EMBER_INT8_VNNI", "1") != "0" and not numba.config.DISABLE_JIT  # (tiles need ``call``)
    kind = 0
    if on and all(features.get(f, False) for f in ("avx512vnni", "avx512f", "avx512bw")) and \
            os.environ.get("EMBER_INT8_TILE", "") != "avx2":
        kind = VNNI
    elif on and features.get("avx2", False):
        kind = AVX2
    avx2 = ("declare <8 x i32> @llvm.x86.avx2.pmadd.wd(<16 x i16>, <16 x i16>)\n"
            "declare <16 x i16> @llvm.x86.avx2.pmadd.ub.sw(<32 x i8>, <32 x i8>)\n"
            + "\n".join([_avx2_ir(), _avx2_ir(1, "tile2h"), _avx2_ir(2, "tile7", True), _avx2_ir(1, "tile7h", True)]))
    mod = llvm.parse_assembly({VNNI: _IR, AVX2: avx2}.get(kind, "") + _NOOP_IR)
    mod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine(cpu=llvm.get_host_cpu_name(),
                                                                  features=features.flatten(), opt=3)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    _STATE["engine"] = engine  # keeps the machine code alive
    _STATE["noop"] = _SIG(engine.get_function_address("noop"))
    _STATE["kind"] = kind
    _STATE["tile"] = _SIG(engine.get_function_address("tile" if kind == VNNI else "tile2")) if kind else None
    _STATE["half"] = engine.get_function_address("tile2h") if kind == AVX2 else 0
    if kind == AVX2:
        _STATE[U8S8] = (engine.get_function_address("tile7"), engine.get_function_address("tile7h"))


def tile():
    """The tile function of this CPU's kind, or None when none runs (no AVX2, or EMBER_INT8_VNNI=0)."""
    if "noop" not in _STATE:
        try:
            _compile()
        except Exception:  # no llvmlite codegen for this target: the numba tiles remain
            _STATE.update(noop=None, tile=None, kind=0, half=0)
    return _STATE["tile"]


def kind() -> int:
    """VNNI, AVX2, or 0 when no IR tile runs."""
    tile()
    return _STATE["kind"]


def half_tile_address(layout=0) -> int:
    """The AVX2 tile of 16 columns' machine address for weights packed for ``layout`` (0: this host's kind; 0
    where it does not run)."""
    tile()
    return _STATE[U8S8][1] if layout == U8S8 else _STATE.get("half", 0)


def tile_address(layout=0) -> int:
    """The tile's machine address (for ``intrinsics.call``) for weights packed for ``layout`` (0: this host's kind),
    or 0 where none runs."""
    if layout == U8S8:
        tile()
        return _STATE[U8S8][0]
    addr = _STATE.get("addr")
    if addr is None:
        addr = _STATE["addr"] = address(tile())
    return addr


def layout_kind(data: np.ndarray, act_max: int = 255) -> int:
    """The tile kind ``pack`` lays (N, Kp) int8 weight rows out for: this host's kind, or U8S8 on AVX2 hosts for
    weights of 7 bits (|w| <= W7: e.g. quantized with ``reduce_range``) or, whatever the weights, when they only
    ever meet activations of 7 bits (``act_max`` = 127: 2 * 127 * 128 <= 32768, the dynamic linear layer's
    ``reduce_range``, as torch's x86 backend quantizes them)."""
    k = kind()
    if k == AVX2 and (act_max <= 127 or (data.size and int(np.abs(data.astype(np.int16)).max()) <= W7)):
        return U8S8
    return k


def pack(data: np.ndarray, layout: int | None = None) -> np.ndarray:
    """(N, Kp) int8 rows (Kp a multiple of 4) -> the layout of the tile ``layout`` (default ``layout_kind(data)``;
    see the module docstring)."""
    n, kp = data.shape
    nb = -(-n // TILE_N)
    padded = np.zeros((nb * TILE_N, kp), np.int8)
    padded[:n] = data
    if (layout_kind(data) if layout is None else layout) == AVX2:
        pairs = padded.astype(np.int16).reshape(nb, TILE_N, kp // 2, 2).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(pairs).view(np.int8)
    return np.ascontiguousarray(padded.reshape(nb, TILE_N, kp // 4, 4).transpose(0, 2, 1, 3))
