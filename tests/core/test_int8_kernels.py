"""int8 kernels (backends/cpu/int8_kernels.py, int8_conv.py) against numpy references: int64
accumulators, and the kernels' documented float32 epilogue formulas (so outputs match bit for bit);
the dynamic path also against torch's MinMaxObserver and dynamically quantized Linear."""
from __future__ import annotations

import warnings

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.backends.cpu import int8_kernels as K
from ember.backends.cpu.int8_conv import _qconv_kernel as qconv_kernel
from ember.backends.cpu.int8_conv import qconv2d

from .test_conv import GRID as FLOAT_CONV_GRID

RNG = np.random.default_rng(0)
QRANGE = {np.uint8: (0, 255), np.int8: (-128, 127)}


def acts(shape, dtype=np.uint8, rng=RNG):
    lo, hi = QRANGE[dtype]
    return rng.integers(lo, hi + 1, shape).astype(dtype)


def weights(shape, rng=RNG):
    return rng.integers(-128, 128, shape).astype(np.int8)


# ---- numpy references -------------------------------------------------------------------------

def ref_acc(a, a_zp, w):
    """sum_k (a - a_zp) * w in int64."""
    return (a.astype(np.int64) - a_zp) @ w.astype(np.int64).T


def ref_requant(acc, bias, mult, out_zp, relu, dtype):
    """The documented epilogue: float32(acc + bias) * mult (float32), rint, + out_zp, clip."""
    qmin, qmax = QRANGE[dtype]
    v = (acc + (0 if bias is None else bias.astype(np.int64))).astype(np.float32) * mult
    lo = max(qmin, out_zp) if relu else qmin
    return np.clip(np.rint(v) + np.float32(out_zp), lo, qmax).astype(dtype)


def torch_qparams(x, reduce_range=False):
    """torch's uint8 per-tensor qparams for x (MinMaxObserver; codes 0 .. 127 with reduce_range)."""
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                                               quant_max=127 if reduce_range else 255)
    obs(torch.from_numpy(np.ascontiguousarray(x)))
    scale, zp = obs.calculate_qparams()
    return np.float32(scale.item()), int(zp.item())


def ref_dynamic(x, w, w_scale, bias, relu=False, reduce_range=False):
    """quantize x with torch's qparams (float32 division, rint), int64 GEMM, float32 dequantize."""
    scale, zp = torch_qparams(x, reduce_range)
    q = np.clip(np.rint(x / scale) + np.float32(zp), 0, 127 if reduce_range else 255)
    acc = ref_acc(q.astype(np.uint8), zp, w)
    y = acc.astype(np.float32) * (scale * w_scale) + (np.zeros_like(w_scale) if bias is None else bias)
    return np.maximum(y, 0) if relu else y


def ref_conv_acc(x, x_zp, w, stride, padding, dilation, groups):
    """int64 conv accumulators by im2col in NCHW / (c, i, j) order, padding filled with x_zp."""
    n, c, h, w_ = x.shape
    co, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.full((n, c, h + 2 * ph, w_ + 2 * pw), x_zp, np.int64)
    xp[:, :, ph:ph + h, pw:pw + w_] = x
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w_ + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, co, ho, wo), np.int64)
    cog = co // groups
    for g in range(groups):
        cols = np.empty((n, ho, wo, cg, kh, kw), np.int64)
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                           j * dw:j * dw + sw * (wo - 1) + 1:sw]
                cols[..., i, j] = patch.transpose(0, 2, 3, 1)
        wg = w[g * cog:(g + 1) * cog].reshape(cog, -1).astype(np.int64)
        out[:, g * cog:(g + 1) * cog] = np.einsum("nhwk,ok->nohw", cols.reshape(n, ho, wo, -1) - x_zp, wg)
    return out


# ---- packing ----------------------------------------------------------------------------------

def test_pack_weight_layout_and_unpack():
    w = weights((5, 21))
    p = K.pack_weight(w)
    assert (p.n, p.k, p.kernel_size) == (5, 21, None)
    assert p.data.shape == (5, 32) and p.data.dtype == np.int8
    assert (p.data[:, :21] == w).all() and (p.data[:, 21:] == 0).all()
    assert p.col_sums.dtype == np.int32 and (p.col_sums == w.astype(np.int64).sum(1)).all()
    assert (p.unpack() == w).all()
    w4 = weights((6, 3, 2, 4))
    p4 = K.pack_weight(w4)
    assert (p4.n, p4.k, p4.kernel_size) == (6, 24, (2, 4))
    # conv rows hold K in (kh, kw, C/groups) order: whole pixels for im2row
    assert (p4.data[:, :24] == w4.transpose(0, 2, 3, 1).reshape(6, 24)).all()
    assert (p4.unpack() == w4).all()


def test_pack_weight_errors():
    with pytest.raises(TypeError, match="pack_weight: weight must be int8"):
        K.pack_weight(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="2-d .* or 4-d"):
        K.pack_weight(np.zeros((2, 3, 4), np.int8))
    with pytest.raises(ValueError, match="K = 65794 exceeds 65793"):
        K.pack_weight(np.zeros((1, K.K_MAX + 1), np.int8))


# ---- qgemm ------------------------------------------------------------------------------------

ZERO_POINTS = {np.uint8: [0, 128, 255, 37], np.int8: [-128, 0, 127, -5]}


@settings(deadline=None, max_examples=25)
@given(m=st.integers(1, 23), n=st.integers(1, 21), k=st.integers(1, 70), zp_i=st.integers(0, 3),
       signed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_qgemm_bit_exact(m, n, k, zp_i, signed, seed):
    # K odd / not a multiple of K_BLOCK, M = 1 and M % 4 != 0 (the 1x8 tiles), N % 4 != 0 (clamped columns)
    rng = np.random.default_rng(seed)
    dt = np.int8 if signed else np.uint8
    a, w, zp = acts((m, k), dt, rng), weights((n, k), rng), ZERO_POINTS[dt][zp_i]
    out = (K.qgemm_s8 if signed else K.qgemm)(a, zp, K.pack_weight(w))
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, ref_acc(a, zp, w))


def test_qgemm_parallel_rows_and_strided_input(monkeypatch):
    monkeypatch.setattr(K, "PAR_MIN_MACS", 0)  # M >= PAR_MIN_ROWS: rows split over the helper threads
    a = acts((41, 2 * 99))[:, ::2]  # non-contiguous
    w = weights((19, 99))
    parts = K._row_parts(41, K.pack_weight(w))
    assert parts[0][0] == 0 and parts[-1][1] == 41 and all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
    if numba.config.NUMBA_NUM_THREADS > 1:
        assert len(parts) > 1
    np.testing.assert_array_equal(K.qgemm(a, 200, K.pack_weight(w)), ref_acc(a, 200, w))
    x = RNG.standard_normal((23, 99)).astype(np.float32)
    w_scale = np.full(19, 0.01, np.float32)
    np.testing.assert_array_equal(K.qlinear_dynamic(x, K.pack_weight(w), w_scale), ref_dynamic(x, w, w_scale, None))


@pytest.mark.parametrize("m", [1, 4])
def test_qgemm_saturation_edges(m):
    # the extreme accumulators at K = K_MAX: -255*128*K and +255*128*K both fit int32
    k = K.K_MAX
    p = K.pack_weight(np.full((3, k), -128, np.int8))
    lo = K.qgemm(np.full((m, k), 255, np.uint8), 0, p)
    hi = K.qgemm(np.zeros((m, k), np.uint8), 255, p)
    assert (lo == -255 * 128 * k).all() and (hi == 255 * 128 * k).all()
    assert lo.min() >= np.iinfo(np.int32).min and hi.max() <= np.iinfo(np.int32).max


def test_qgemm_errors():
    p = K.pack_weight(weights((4, 10)))
    with pytest.raises(ValueError, match=r"qgemm: activations must be \(M, 10\).*got shape \(2, 9\)"):
        K.qgemm(acts((2, 9)), 0, p)
    with pytest.raises(ValueError, match=r"zero point 256 is outside the uint8 range"):
        K.qgemm(acts((2, 10)), 256, p)
    with pytest.raises(TypeError, match="activations must be uint8 or int8, got float32"):
        K.qgemm(np.zeros((2, 10), np.float32), 0, p)
    with pytest.raises(TypeError, match="qgemm_s8: activations must be int8"):
        K.qgemm_s8(acts((2, 10)), 0, p)
    with pytest.raises(TypeError, match="expected a PackedWeight"):
        K.qgemm(acts((2, 10)), 0, weights((4, 10)))


# ---- qlinear (requantize epilogue) ------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(m=st.integers(1, 21), n=st.integers(1, 19), k=st.integers(1, 60), a_zp=st.sampled_from([0, 128, 255]),
       out_zp=st.sampled_from([0, 128, 255]), relu=st.booleans(), signed_out=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_qlinear_requantize_exact(m, n, k, a_zp, out_zp, relu, signed_out, seed):
    rng = np.random.default_rng(seed)
    a, w = acts((m, k), rng=rng), weights((n, k), rng)
    bias = rng.integers(-5000, 5000, n).astype(np.int32)
    mult = rng.uniform(1e-4, 2e-2, n).astype(np.float32)
    dt = np.int8 if signed_out else np.uint8
    out_zp = out_zp - 128 if signed_out else out_zp
    out = K.qlinear(a, a_zp, K.pack_weight(w), bias, mult, out_zp, relu, dt.__name__)
    assert out.dtype == dt
    np.testing.assert_array_equal(out, ref_requant(ref_acc(a, a_zp, w), bias, mult, out_zp, relu, dt))


def test_qlinear_leading_dims_scalar_multiplier_and_int8_input():
    a, w = acts((2, 3, 17), np.int8), weights((6, 17))
    out = K.qlinear(a, -3, K.pack_weight(w), None, np.float32(0.004), 7)
    ref = ref_requant(ref_acc(a.reshape(6, 17), -3, w), None, np.float32(0.004), 7, False, np.uint8)
    np.testing.assert_array_equal(out, ref.reshape(2, 3, 6))


def test_requantize_rounds_half_to_even_and_saturates():
    # K = 1, a - a_zp = 1: acc = w; multiplier 0.5 puts v exactly on .5 ties (63.5 -> 64, -64 + 10 clips)
    w = np.array([[1], [2], [3], [5], [-1], [-3], [127], [-128]], np.int8)
    p = K.pack_weight(w)
    out = K.qlinear(np.array([[11]], np.uint8), 10, p, None, np.float32(0.5), 10)
    np.testing.assert_array_equal(out[0], [10, 11, 12, 12, 10, 8, 74, 0])
    big = K.qlinear(np.array([[11]], np.uint8), 10, p, None, np.float32(100.0), 128)
    np.testing.assert_array_equal(big[0], [228, 255, 255, 255, 28, 0, 255, 0])
    s8 = K.qlinear(np.array([[11]], np.uint8), 10, p, None, np.float32(100.0), 0, out_dtype="int8")
    np.testing.assert_array_equal(s8[0], [100, 127, 127, 127, -100, -128, 127, -128])


def test_relu_clamps_at_output_zero_point():
    w = np.array([[-3], [0], [3]], np.int8)
    out = K.qlinear(np.array([[2]], np.uint8), 0, K.pack_weight(w), None, np.float32(1.0), 100, relu=True)
    np.testing.assert_array_equal(out[0], [100, 100, 106])  # -6 -> zero point (real 0), 0 stays, +6
    q = K.qlinear(np.array([[2]], np.uint8), 0, K.pack_weight(w), None, np.float32(1.0), 3, relu=True,
                  quant_min=0, quant_max=5)
    np.testing.assert_array_equal(q[0], [3, 3, 5])


def test_qlinear_errors():
    p = K.pack_weight(weights((4, 8)))
    with pytest.raises(ValueError, match=r"multiplier must be a scalar or have shape \(4,\)"):
        K.qlinear(acts((1, 8)), 0, p, None, np.ones(3, np.float32), 0)
    with pytest.raises(ValueError, match="out_zp"):
        K.qlinear(acts((1, 8)), 0, p, None, np.float32(1), 200, out_dtype="int8")
    with pytest.raises(ValueError, match="out_dtype must be uint8 or int8"):
        K.qlinear(acts((1, 8)), 0, p, None, np.float32(1), 0, out_dtype="int16")


def test_requant_params():
    w_scale = np.array([0.01, 0.02], np.float32)
    bias_q, mult = K.requant_params(0.05, w_scale, 0.1, bias=np.array([0.3, -0.71], np.float32))
    acc_scale = np.float32(0.05) * w_scale
    np.testing.assert_array_equal(mult, acc_scale / np.float32(0.1))
    np.testing.assert_array_equal(bias_q, np.rint(np.array([0.3, -0.71], np.float32) / acc_scale).astype(np.int32))
    assert bias_q.dtype == np.int32 and mult.dtype == np.float32
    assert K.requant_params(0.05, 0.01, 0.1)[0] is None


# ---- dynamic quantization ---------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(lo=st.floats(-50, 50), span=st.floats(0, 80), n=st.integers(1, 60), seed=st.integers(0, 2 ** 16),
       reduce_range=st.booleans())
def test_dynamic_qparams_match_torch_minmax_observer(lo, span, n, seed, reduce_range):
    x = np.random.default_rng(seed).uniform(lo, lo + span, n).astype(np.float32)
    scale, zp = K.dynamic_qparams(x, reduce_range)
    assert scale.dtype == np.float32
    assert (scale, zp) == torch_qparams(x, reduce_range)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 50, 64 * 784])
def test_range_kernel_matches_numpy_and_flags_nan_and_inf(n):
    from ember.backends.cpu import range_ir

    addr = range_ir.address()
    if not addr:
        pytest.skip("llvmlite cannot compile for this host")
    x = (RNG.standard_normal(n) * 7).astype(np.float32)
    assert range_ir.minmax(x, addr) == (x.min(), x.max(), True)
    for pos in {0, n // 2, n - 1}:  # in the vector part and in the tail
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[pos] = bad
            assert range_ir.minmax(y, addr)[2] is False
    with pytest.raises(ValueError, match=r"dynamic_qparams: input holds NaN or Inf"):
        K.dynamic_qparams(np.where(np.arange(n) == n - 1, np.inf, x).astype(np.float32))


def test_dynamic_qparams_edges():
    assert K.dynamic_qparams(np.zeros(5, np.float32)) == (np.finfo(np.float32).eps, 0)
    assert K.dynamic_qparams(np.full(3, -2.0, np.float32))[1] == 255  # range [-2, 0]
    assert K.dynamic_qparams(np.full(3, 2.0, np.float32))[1] == 0
    with pytest.raises(ValueError, match="NaN or Inf"):
        K.qlinear_dynamic(np.array([[1.0, np.nan]], np.float32), K.pack_weight(weights((2, 2))), 0.1)


@pytest.mark.parametrize("m,k,n,relu,with_bias", [(1, 784, 10, False, True), (5, 33, 7, True, True),
                                                  (23, 64, 20, False, False), (64, 48, 9, True, False)])
def test_qlinear_dynamic_exact(m, k, n, relu, with_bias):
    x = (RNG.standard_normal((m, k)) * 3 + 0.5).astype(np.float32)
    w = weights((n, k))
    w_scale = RNG.uniform(1e-3, 2e-2, n).astype(np.float32)
    bias = RNG.standard_normal(n).astype(np.float32) if with_bias else None
    out = K.qlinear_dynamic(x, K.pack_weight(w), w_scale, bias, relu=relu)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref_dynamic(x, w, w_scale, bias, relu))


def test_qlinear_dynamic_leading_dims():
    x = RNG.standard_normal((2, 3, 12)).astype(np.float32)
    w, w_scale = weights((5, 12)), np.float32(0.01)
    out = K.qlinear_dynamic(x, K.pack_weight(w), w_scale)
    ref = ref_dynamic(x.reshape(6, 12), w, np.full(5, w_scale), None)
    np.testing.assert_array_equal(out, ref.reshape(2, 3, 5))


def _torch_dynamic_linear(w, w_scale, bias):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's deprecation notice for quantized tensors
        qw = torch.quantize_per_channel(torch.from_numpy(w.astype(np.float32) * w_scale[:, None]),
                                        torch.from_numpy(w_scale.astype(np.float64)),
                                        torch.zeros(len(w_scale), dtype=torch.long), 0, torch.qint8)
        lin = torch.ao.nn.quantized.dynamic.Linear(w.shape[1], w.shape[0], dtype=torch.qint8)
        lin.set_weight_bias(qw, torch.from_numpy(bias))
    assert (qw.int_repr().numpy() == w).all()
    return lin


def _host_has_vnni():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    return bool(llvm.get_host_cpu_features().get("avx512vnni", False))


# torch's fbgemm multiplies uint8 activations by int8 weights with vpdpbusd on AVX-512 VNNI CPUs (exact), but with
# vpmaddubsw on AVX2 ones, whose int16 pair sums saturate for activations above 127: why its modules quantize
# activations with reduce_range. Its full-range op is a reference only where it is exact.
_FBGEMM_EXACT_U8 = _host_has_vnni()


@pytest.mark.parametrize("m,k,n", [(1, 784, 16), (16, 100, 24), (64, 256, 10)])
def test_qlinear_dynamic_vs_torch(m, k, n):
    """Each output is within half an activation step times the row's L1 norm of the dequantized
    weight of the exact product (the activation range covers min..max, so nothing clips beyond half
    a step); torch's module quantizes to 0..127 (reduce_range=True), ember to 0..255. Against
    torch's op with reduce_range=False (the same qparams) the only difference is fbgemm multiplying
    by 1/scale: an activation may land one level apart, so almost all outputs agree to float
    rounding and all are within one step times the L1 norm. (With one row, a single activation of the
    784 landing apart moves every output: the agreement count is only meaningful over many rows.)"""
    x = (RNG.standard_normal((m, k)) * 2 - 0.3).astype(np.float32)
    w, w_scale = weights((n, k)), RNG.uniform(1e-3, 1e-2, n).astype(np.float32)
    w[w == -128] = -127  # torch's qint8 weights are symmetric
    bias = RNG.standard_normal(n).astype(np.float32)
    lin = _torch_dynamic_linear(w, w_scale, bias)
    ours = K.qlinear_dynamic(x, K.pack_weight(w), w_scale, bias)
    with torch.no_grad():
        theirs = lin(torch.from_numpy(x)).numpy()
        theirs_full = torch.ops.quantized.linear_dynamic(torch.from_numpy(x), lin._packed_params._packed_params,
                                                         False).numpy()
    wdeq = w.astype(np.float64) * w_scale[:, None]
    exact = x.astype(np.float64) @ wdeq.T + bias
    l1 = np.abs(wdeq).sum(1)
    span = max(x.max(), 0) - min(x.min(), 0)
    s_ours, s_torch = span / 255, span / 127
    fp = 1e-5 * (1 + np.abs(exact))
    assert (np.abs(ours - exact) <= s_ours / 2 * l1 + fp).all()
    assert (np.abs(theirs - exact) <= s_torch / 2 * l1 + fp).all()
    assert (np.abs(ours - theirs) <= (s_ours + s_torch) / 2 * l1 + fp).all()
    if not _FBGEMM_EXACT_U8:  # fbgemm's u8s8 kernel saturates int16 pair sums above 127 (see _FBGEMM_EXACT_U8)
        return
    diff = np.abs(ours - theirs_full)
    assert (diff <= s_ours * l1 + fp).all()
    if m >= 16:
        assert np.mean(diff <= fp) >= 0.95


# ---- qconv2d ----------------------------------------------------------------------------------

# (N, C, H, W), (Cout, kh, kw), stride, padding, dilation, groups: the float conv tests' geometries, and
# the cases of the int8 kernel's own paths
CONV_GRID = FLOAT_CONV_GRID[:7] + FLOAT_CONV_GRID[9:11] + [
    ((2, 16, 6, 5), (8, 3, 3), 1, 1, 1, 1),  # 16 channels: im2row copies uint64 words
    ((2, 16, 6, 6), (6, 3, 3), 2, 1, 2, 2),  # 8 channels per group, strided, dilated
    ((9, 16, 10, 10), (32, 3, 3), 1, 1, 1, 1),  # run by the parallel kernel
]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("xs,wk,stride,padding,dilation,groups", CONV_GRID)
@pytest.mark.parametrize("variant", ["u8", "s8_in_relu", "s8_out"])
def test_qconv2d_vs_numpy_im2col(xs, wk, stride, padding, dilation, groups, variant, monkeypatch):
    if xs[0] > 4:
        monkeypatch.setattr(qconv_kernel, "threshold", 0)  # the parallel copy, a chunk of images per thread
    cout, kh, kw = wk
    x_dt = np.int8 if variant == "s8_in_relu" else np.uint8
    out_dt = np.int8 if variant == "s8_out" else np.uint8
    x = acts(xs, x_dt)
    w = weights((cout, xs[1] // groups, kh, kw))
    x_zp = {np.uint8: 131, np.int8: -9}[x_dt]
    out_zp = {np.uint8: 120, np.int8: -4}[out_dt]
    bias = RNG.integers(-3000, 3000, cout).astype(np.int32)
    mult = RNG.uniform(2e-4, 4e-3, cout).astype(np.float32)
    relu = variant == "s8_in_relu"
    out = qconv2d(x, x_zp, K.pack_weight(w), stride, padding, dilation, groups, bias, mult, out_zp, relu,
                  out_dtype=out_dt.__name__)
    acc = ref_conv_acc(x, x_zp, w, _pair(stride), _pair(padding), _pair(dilation), groups)
    ref = ref_requant(acc.transpose(0, 2, 3, 1), bias, mult, out_zp, relu, out_dt).transpose(0, 3, 1, 2)
    assert out.dtype == out_dt and out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


def test_qconv2d_errors():
    x = acts((1, 4, 5, 5))
    with pytest.raises(TypeError, match="packed from a 2-d"):
        qconv2d(x, 0, K.pack_weight(weights((2, 36))), 1, 0, 1, 1, None, 0.1, 0)
    p = K.pack_weight(weights((6, 3, 3, 3)))
    with pytest.raises(ValueError, match="input has 4 channels, weight .* expects 3"):
        qconv2d(x, 0, p, 1, 0, 1, 1, None, 0.1, 0)
    with pytest.raises(ValueError, match="does not fit"):
        qconv2d(acts((1, 3, 2, 2)), 0, p, 1, 0, 1, 1, None, 0.1, 0)


# ---- code generation --------------------------------------------------------------------------

def _host_features():
    import llvmlite.binding as llvm

    return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="inspects compiled code")
def test_tile_compiles_to_multiply_add_pairs():
    """The 4x4 tile's products must reach vpmaddwd (VNNI: vpdpwssd), not vpmulld: a change such as
    numba's int64-widening ``*`` instead of ``np.multiply`` on int32 silently halves the speed."""
    feats = _host_features()
    if "avx2" not in feats:
        pytest.skip("vpmaddwd needs AVX2")
    def tile(a, w, acc):
        K._tile4x4(a, 0, w, 0, 3, a.shape[1], acc, 0)

    fn = numba.njit(tile, cache=False, fastmath=False)
    a, w, acc = acts((4, 32)), weights((4, 32)), np.empty((4, 8), np.int32)
    fn(a, w, acc)
    np.testing.assert_array_equal(acc[:, :4], ref_acc(a, 0, w))
    asm = "\n".join(fn.inspect_asm().values())
    madd = asm.count("vpdpwssd") + asm.count("vpmaddwd")
    assert madd >= 16 and asm.count("vpmulld") == 0
    if "avx512vnni" in feats:
        assert asm.count("vpdpwssd") >= 16

