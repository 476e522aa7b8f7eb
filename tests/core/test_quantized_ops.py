"""Quantization ops (ember.ops.quantized) against PyTorch and the ONNX formula, bit for bit.

ember computes ONNX's ``clamp(rint(x / scale) + zero_point)`` with a float32 division. torch multiplies by
``1 / scale`` (and ``torch.quantize_per_*`` round ``x / scale + zero_point`` as a whole), so on values
within an ulp of a .5 tie torch may land one step away: comparisons with torch allow exactly that and
nothing else, and the cases built on power-of-two scales (where every formula is exact) must match
torch everywhere, ties included.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.backends.cpu import quant_kernels as K
from ember.ops import quantized as Q
from ember.ops.registry import apply
from ember.serialize import load, save, trace

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's deprecation notice of quantized dtypes
TORCH_Q = {"uint8": torch.quint8, "int8": torch.qint8}
QR = {"uint8": (0, 255), "int8": (-128, 127)}
SETTINGS = settings(deadline=None, max_examples=20)


def _onnx_codes(x, scale, zp, qmin, qmax):
    """The ONNX QuantizeLinear formula (float32 division, ties to even, NaN -> qmin), in int64."""
    r = np.rint(x.astype(np.float32) / scale.astype(np.float32)).astype(np.float64) + zp
    return np.clip(np.where(np.isnan(r), qmin, r), qmin, qmax).astype(np.int64)


def _near_tie(x, scale):
    t = x.astype(np.float64) / scale.astype(np.float64)
    return np.abs(np.abs(t - np.floor(t)) - 0.5) <= 1e-6 * np.maximum(np.abs(t), 1.0)


def _agree_but_near_ties(ours, theirs, x, scale, what, rtol=0.0):
    """Equal (to ``rtol``), except one step apart where x / scale is within float32 rounding of a .5 tie."""
    steps = ours.astype(np.float64) - theirs.astype(np.float64)
    if ours.dtype.kind == "f":  # outputs are rounded (code * scale): count steps in codes
        steps = np.rint(ours / scale.astype(np.float64)) - np.rint(theirs / scale.astype(np.float64))
        same = steps == 0
        np.testing.assert_allclose(ours[same], theirs[same], rtol=rtol, atol=0, err_msg=what)
    off = steps != 0
    assert not (off & ~_near_tie(x, scale)).any(), f"{what}: differs off the ties at {np.argwhere(off)[:5]}"
    assert np.all(np.abs(steps[off]) == 1), f"{what}: more than one step apart"


def _bc(p, axis, ndim):
    return p if axis is None else p.reshape(p.shape + (1,) * (ndim - axis - 1))


@st.composite
def _case(draw, per_channel, ranges):
    """(x, scale, zero_point, axis, qmin, qmax): x spans the range and beyond, with ties mixed in."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1 if per_channel else 0, max_size=4)))
    axis = draw(st.integers(0, len(shape) - 1)) if per_channel else None
    qmin, qmax = draw(st.sampled_from(ranges))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    c = shape[axis] if per_channel else 1
    pow2 = draw(st.booleans())
    scale = (2.0 ** rng.integers(-8, 2, c) if pow2 else rng.uniform(1e-3, 2.0, c)).astype(np.float32)
    zp = rng.integers(qmin, qmax + 1, c)
    s, z = _bc(scale if per_channel else scale.reshape(()), axis, len(shape)), _bc(
        zp if per_channel else zp.reshape(()), axis, len(shape))
    codes = rng.normal(0, 0.6 * (qmax - qmin), shape) + (qmin + qmax) / 2 - z
    ties = rng.random(shape) < 0.3
    codes = np.where(ties, np.floor(codes) + 0.5, codes)
    x = (codes * s).astype(np.float32)
    return x, scale if per_channel else scale.reshape(()), zp if per_channel else zp.reshape(()), axis, qmin, qmax


# ---- quantize / dequantize ------------------------------------------------------------------------

@SETTINGS
@given(_case(False, [QR["uint8"], QR["int8"]]))
def test_quantize_per_tensor_matches_onnx_formula_and_torch(case):
    x, scale, zp, _, qmin, qmax = case
    dt = "uint8" if qmin == 0 else "int8"
    q = Q.quantize_per_tensor(ember.tensor(x), float(scale), int(zp), dt).numpy()
    assert q.dtype == np.dtype(dt)
    np.testing.assert_array_equal(q, _onnx_codes(x, scale, zp, qmin, qmax))
    t = torch.quantize_per_tensor(torch.tensor(x), float(scale), int(zp), TORCH_Q[dt]).int_repr().numpy()
    _agree_but_near_ties(q, t, x, scale, "quantize_per_tensor")


@SETTINGS
@given(_case(True, [QR["uint8"], QR["int8"]]))
def test_quantize_per_channel_matches_onnx_formula_and_torch(case):
    x, scale, zp, axis, qmin, qmax = case
    dt = "uint8" if qmin == 0 else "int8"
    q = Q.quantize_per_channel(ember.tensor(x), ember.tensor(scale), ember.tensor(zp), axis, dt).numpy()
    s, z = _bc(scale, axis, x.ndim), _bc(zp, axis, x.ndim)
    np.testing.assert_array_equal(q, _onnx_codes(x, s, z, qmin, qmax))
    t = torch.quantize_per_channel(torch.tensor(x), torch.tensor(scale, dtype=torch.float64), torch.tensor(zp),
                                   axis, TORCH_Q[dt]).int_repr().numpy()
    _agree_but_near_ties(q, t, x, s, "quantize_per_channel")


@pytest.mark.parametrize("dt", ["uint8", "int8"])
def test_dequantize_matches_torch(dt):
    rng = np.random.default_rng(1)
    q = rng.integers(*QR[dt], (3, 4, 5), endpoint=True).astype(dt)
    got = Q.dequantize(ember.tensor(q), 0.0371, 7).numpy()
    want = torch._make_per_tensor_quantized_tensor(torch.tensor(q), float(np.float32(0.0371)), 7).dequantize()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.numpy())
    scale, zp = rng.uniform(0.01, 1, 4).astype(np.float32), rng.integers(0, 20, 4)
    got = Q.dequantize(ember.tensor(q), ember.tensor(scale), ember.tensor(zp), axis=-2).numpy()
    want = torch._make_per_channel_quantized_tensor(torch.tensor(q), torch.tensor(scale, dtype=torch.float64),
                                                    torch.tensor(zp), 1).dequantize()
    np.testing.assert_array_equal(got, want.numpy())


def test_ties_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5], np.float32)
    q = Q.quantize_per_tensor(ember.tensor(x), 1.0, 0, ember.int8).numpy()
    np.testing.assert_array_equal(q, [0, 2, 2, 0, -2, -2, 126, 127, -128])
    # torch.quantize_per_tensor rounds x / scale + zero_point as one number, so an odd zero point moves its
    # ties; ONNX (and ember) round x / scale first, as torch's fake_quantize does
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32)
    q = Q.quantize_per_tensor(ember.tensor(x), 1.0, 1, ember.uint8).numpy()
    np.testing.assert_array_equal(q, [1, 3, 3, 1, 0])
    t = torch.quantize_per_tensor(torch.tensor(x), 1.0, 1, torch.quint8).int_repr().numpy()
    np.testing.assert_array_equal(t, [2, 2, 4, 0, 0])
    f = torch.fake_quantize_per_tensor_affine(torch.tensor(x), 1.0, 1, 0, 255).numpy()
    np.testing.assert_array_equal(Q.dequantize(ember.tensor(q), 1.0, 1).numpy(), f)


def test_nan_and_inf_saturate():
    x = ember.tensor([np.nan, np.inf, -np.inf, 1e30, -1e30])
    np.testing.assert_array_equal(Q.quantize_per_tensor(x, 0.1, 3, "uint8").numpy(), [0, 255, 0, 255, 0])
    np.testing.assert_array_equal(Q.quantize_per_tensor(x, 0.1, 3, "int8").numpy(), [-128, 127, -128, 127, -128])
    xt = torch.tensor(x.numpy(), requires_grad=True)
    xe = x.clone().requires_grad_(True)
    ye = Q.fake_quantize_per_tensor_affine(xe, 0.1, 3, 0, 255)
    yt = torch.fake_quantize_per_tensor_affine(xt, 0.1, 3, 0, 255)
    np.testing.assert_array_equal(ye.detach().numpy(), yt.detach().numpy())
    ye.sum().backward(), yt.sum().backward()
    np.testing.assert_array_equal(xe.grad.numpy(), xt.grad.numpy())


# ---- fake_quantize --------------------------------------------------------------------------------

RANGES = [(0, 255), (-128, 127), (0, 127), (-64, 63), (0, 15), (-512, 511)]


def _fake_pair(x, scale, zp, axis, qmin, qmax, dtype=np.float32):
    """ember's and torch's fake-quantized output and input gradient for loss = sum(y * w)."""
    w = np.random.default_rng(3).standard_normal(x.shape).astype(dtype)
    xe = ember.tensor(x.astype(dtype)).requires_grad_(True)
    xt = torch.tensor(x.astype(dtype), requires_grad=True)
    if axis is None:
        ye = Q.fake_quantize_per_tensor_affine(xe, ember.tensor(scale), ember.tensor(zp.astype(np.int32)), qmin, qmax)
        yt = torch.fake_quantize_per_tensor_affine(xt, torch.tensor(scale), torch.tensor(zp.astype(np.int32)),
                                                   qmin, qmax)
    else:
        ye = Q.fake_quantize_per_channel_affine(xe, ember.tensor(scale), ember.tensor(zp), axis, qmin, qmax)
        yt = torch.fake_quantize_per_channel_affine(xt, torch.tensor(scale), torch.tensor(zp.astype(np.int32)), axis,
                                                    qmin, qmax)
    (ye * ember.tensor(w)).sum().backward()
    (yt * torch.tensor(w)).sum().backward()
    assert ye.dtype.name == np.dtype(dtype).name
    return ye.detach().numpy(), yt.detach().numpy(), xe.grad.numpy(), xt.grad.numpy(), w


def _check_fake(case, dtype=np.float32):
    x, scale, zp, axis, qmin, qmax = case
    s, z = _bc(scale, axis, x.ndim), _bc(zp, axis, x.ndim)
    ye, yt, ge, gt, w = _fake_pair(x, scale, zp, axis, qmin, qmax, dtype)
    if dtype == np.float32:
        want = (_onnx_codes(x, s, z, qmin, qmax) - z).astype(np.float32) * s
        np.testing.assert_array_equal(ye, want)
        v = x / s + z  # ties half a step past either end keep their gradient (fake_quantize_mask_np)
        inside = (v >= qmin - 0.5) & (v <= qmax + 0.5)
        np.testing.assert_array_equal(ge, np.where(inside, w, 0))
    # float64: torch's per-tensor kernel rounds the output through float32; ember keeps float64's precision
    _agree_but_near_ties(ye, yt, x, s, "fake_quantize forward", rtol=1e-7 if dtype == np.float64 else 0.0)
    off = ge != gt  # the straight-through mask can only differ where a near-tie code sits on a range edge
    assert not (off & ~_near_tie(x, s)).any(), f"gradient differs off the ties at {np.argwhere(off)[:5]}"
    if np.all(np.log2(scale) == np.round(np.log2(scale))):  # power-of-two scales: all formulas are exact
        np.testing.assert_array_equal(ye, yt)
        edge = (x / s + z == qmin - 0.5) | (x / s + z == qmax + 0.5)  # exact ties just outside: ember keeps them
        np.testing.assert_array_equal(ge[~edge], gt[~edge])


@SETTINGS
@given(_case(False, RANGES))
def test_fake_quantize_per_tensor_matches_torch(case):
    _check_fake(case)


@SETTINGS
@given(_case(True, RANGES))
def test_fake_quantize_per_channel_matches_torch(case):
    _check_fake(case)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_other_float_dtypes(dtype, per_channel):
    rng = np.random.default_rng(5)
    x = rng.normal(0, 3, (4, 3, 5))
    scale = np.array([0.0625, 0.03, 0.11], np.float32) if per_channel else np.array(0.047, np.float32)
    zp = np.array([10, 0, 200]) if per_channel else np.array(100)
    x = x.astype(dtype).astype(np.float32)  # values the narrower dtype holds
    _check_fake((x, scale, zp, 1 if per_channel else None, 0, 255), dtype)


# ---- the numba kernels against the numpy path, bit for bit ----------------------------------------

def _hard_values(rng, shape, scale):
    x = rng.normal(0, 200, shape) * scale
    pick = rng.integers(0, 4, shape)
    ties = (np.floor(rng.normal(0, 150, shape)) + 0.5) * scale
    x = np.where(pick == 0, ties, x).astype(np.float32)
    flat = x.reshape(-1)
    flat[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    return x


@pytest.mark.parametrize("axis", [None, 0, 1, 2])
@pytest.mark.parametrize("parallel", [False, True])
def test_numba_and_numpy_paths_agree_bitwise(axis, parallel, monkeypatch):
    rng = np.random.default_rng(11)
    shape = (7, 37, 157)  # more than one parallel chunk; channel runs cross chunk boundaries
    c = 1 if axis is None else shape[axis]
    scale = rng.uniform(1e-3, 0.5, c).astype(np.float32)
    zp8 = rng.integers(-128, 128, c).astype(np.int8)
    if axis is None:
        scale, zp8 = scale.reshape(()), zp8.reshape(())
    s = _bc(scale, axis, 3)
    x = _hard_values(rng, shape, s)
    for k in (K._quantize_k, K._fake_quantize_k, K._fake_quantize_bw_k, K._dequantize_k, K._quantize_flat_k,
              K._dequantize_flat_k):
        monkeypatch.setattr(k, "threshold", 0 if parallel else 1 << 62)
    q = Q._quantize(x, scale, zp8, axis, "int8")
    np.testing.assert_array_equal(q, Q.quantize_np(x, scale, zp8, axis, "int8"))
    np.testing.assert_array_equal(Q._dequantize(q, scale, zp8, axis), Q.dequantize_np(q, scale, zp8, axis))
    zp = zp8.astype(np.int32) + 60
    for xs in (x, x[:, ::-1]):  # also a non-contiguous input
        np.testing.assert_array_equal(Q._fake_quantize(xs, scale, zp, axis, -64, 191),
                                      Q.fake_quantize_np(xs, scale, zp, axis, -64, 191))
        g = rng.standard_normal(shape).astype(np.float32)
        mask = Q.fake_quantize_mask_np(xs, scale, zp, axis, -64, 191)
        np.testing.assert_array_equal(Q._fake_quantize_bw(g, xs, scale, zp, axis, -64, 191), np.where(mask, g, 0))


# ---- arguments, errors ----------------------------------------------------------------------------

def test_numbers_tensors_and_torch_dtype_names_give_the_same_codes():
    x = ember.tensor(np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4))
    a = Q.quantize_per_tensor(x, 0.03, 5, ember.int8)
    b = Q.quantize_per_tensor(x, ember.tensor(0.03, dtype=ember.float64), ember.tensor([5]), "qint8")
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    c = Q.quantize_per_channel(x, [0.03, 0.03, 0.03], ember.tensor([5, 5, 5], dtype=ember.int32), -2, "int8")
    np.testing.assert_array_equal(a.numpy(), c.numpy())


def test_empty_and_0d_inputs():
    e = ember.zeros(0, 3)
    assert Q.quantize_per_tensor(e, 0.1, 3, "uint8").shape == (0, 3)
    q = Q.quantize_per_channel(e, [0.1, 0.2, 0.3], ember.tensor([1, 2, 3]), 1, "int8")
    assert q.shape == (0, 3) and Q.dequantize(q, [0.1, 0.2, 0.3], ember.tensor([1, 2, 3]), axis=1).shape == (0, 3)
    x = np.array(0.26, np.float32)
    y = Q.fake_quantize_per_tensor_affine(ember.tensor(x), 0.1, 3, 0, 255)
    assert y.shape == () and y.numpy() == torch.fake_quantize_per_tensor_affine(torch.tensor(x), 0.1, 3, 0, 255).numpy()
    assert Q.quantize_per_tensor(ember.tensor(x), 0.1, 3, "uint8").item() == 6


def _x(*shape):
    return ember.tensor(np.ones(shape, np.float32))


def _f32(*v):
    return ember.tensor(np.array(v, np.float32).reshape(-1 if len(v) > 1 else ()))


@pytest.mark.parametrize("call,err,msg", [
    (lambda: apply("quantize_per_tensor", _x(2), ember.tensor(0.1, dtype=ember.float64),
                   ember.tensor(3, dtype=ember.uint8), dtype="uint8"),
     RuntimeError, "quantize_per_tensor: scale must be a float32 tensor, got float64"),
    (lambda: Q.quantize_per_tensor(_x(2), 0.0, 3, ember.uint8), RuntimeError, r"scales are never 0\), got \[0.0\]"),
    (lambda: Q.fake_quantize_per_channel_affine(_x(2, 2), _f32(0.1, -1), ember.tensor([0, 0]), 1, 0, 255),
     RuntimeError, r"scale must be positive and finite .* got \[-1.0\]"),
    (lambda: Q.quantize_per_tensor(_x(2), 0.1, 300, ember.uint8), RuntimeError,
     r"quantize_per_tensor: zero_point must lie in \[0, 255\], got \[300\]"),
    (lambda: Q.quantize_per_tensor(_x(2), 0.1, 1.5, ember.uint8), RuntimeError, "zero_point must be an int"),
    (lambda: apply("quantize_per_tensor", _x(2), _f32(0.1), ember.tensor(3, dtype=ember.int32), dtype="int8"),
     RuntimeError, "zero_point must have dtype int8 here, got int32"),
    (lambda: apply("fake_quantize", _x(2), _f32(0.1), ember.tensor(300, dtype=ember.int32), quant_min=0,
                   quant_max=255), RuntimeError,
     r"fake_quantize: zero_point must lie in the quantized range \[0, 255\], got \[300\]"),
    (lambda: Q.fake_quantize_per_tensor_affine(_x(2), 0.1, 3, 0, 2), RuntimeError, r"must lie in \[0, 2\], got \[3\]"),
    (lambda: Q.fake_quantize_per_tensor_affine(_x(2), 0.1, 0, 5, 5), RuntimeError,
     r"quant_min \(5\) must be less than quant_max \(5\)"),
    (lambda: Q.fake_quantize_per_tensor_affine(_x(2), 0.1, 0, 0, 2.5), TypeError, "quant_max must be an int"),
    (lambda: Q.quantize_per_channel(_x(2, 3), _f32(0.1, 0.2), ember.tensor([1, 2]), 1, "uint8"), RuntimeError,
     r"must be 1-d with x.shape\[1\] = 3 elements, got shapes \(2,\) and \(2,\) \(input shape \(2, 3\)\)"),
    (lambda: Q.quantize_per_channel(_x(2, 3), _f32(0.1, 0.2), ember.tensor([1, 2]), 2, "uint8"), IndexError,
     r"quantize_per_channel: dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"),
    (lambda: apply("quantize_per_channel", _x(2, 3), _f32(0.1, 0.2), ember.tensor([1, 2], dtype=ember.uint8),
                   axis=5, dtype="uint8"), IndexError, "axis 5 is out of range"),
    (lambda: apply("dequantize", ember.tensor([1, 2], dtype=ember.uint8), _f32(0.1, 0.2),
                   ember.tensor([1, 2], dtype=ember.uint8)), RuntimeError,
     r"per-tensor scale and zero_point must be 0-d tensors, got shapes \(2,\) and \(2,\)"),
    (lambda: Q.quantize_per_tensor(ember.tensor([1, 2]), 0.1, 0, "uint8"), RuntimeError,
     "input must be a floating point tensor, got int64"),
    (lambda: Q.fake_quantize_per_tensor_affine(ember.tensor([1, 2]), 0.1, 0, 0, 255), RuntimeError,
     "fake_quantize: input must be a floating point tensor"),
    (lambda: Q.dequantize(_x(2), 0.1, 0), RuntimeError,
     "dequantize: input must be a uint8 or int8 tensor, got float32"),
    (lambda: Q.quantize_per_tensor(_x(2), 0.1, 0, ember.int16), RuntimeError,
     "dtype must be ember.uint8 or ember.int8"),
    (lambda: apply("quantize_per_tensor", _x(2), _f32(0.1), ember.tensor(0, dtype=ember.int32), dtype="int32"),
     RuntimeError, "quantize_per_tensor: dtype must be 'uint8' or 'int8', got 'int32'"),
])
def test_errors_name_the_op_and_what_is_valid(call, err, msg):
    with pytest.raises(err, match=msg):
        call()


# ---- tracing and .ember files ---------------------------------------------------------------------

def test_ops_trace_and_round_trip_through_an_ember_file(tmp_path):
    scale, zp = ember.tensor(np.array([0.02, 0.05, 0.1], np.float32)), ember.tensor(np.array([-3, 0, 7], np.int8))

    def f(x):
        q = Q.quantize_per_channel(x, scale, zp, 1, ember.int8)
        fq = Q.fake_quantize_per_channel_affine(x, scale, zp.to(ember.int32), 1, -64, 63)
        u = Q.quantize_per_tensor(x, 0.03, 128, ember.uint8)
        return Q.dequantize(q, scale, zp, axis=1), fq, Q.fake_quantize_per_tensor_affine(x, 0.04, 2, 0, 127), \
            Q.dequantize(u, 0.03, 128)

    x = np.random.default_rng(2).normal(0, 2, (2, 3, 4)).astype(np.float32)
    prog = trace(f, ember.tensor(x))
    ops = {n.op for n in prog.graph.nodes}
    assert {"quantize_per_channel", "quantize_per_tensor", "dequantize", "fake_quantize"} <= ops
    path = tmp_path / "q.ember"
    save(prog, str(path))
    loaded = load(str(path))
    for n in (1, 2, 5):
        xs = ember.tensor(np.resize(x, (n, 3, 4)))
        with ember.no_grad():
            want = f(xs)
        for p in (prog, loaded):
            for got, w in zip(p(xs), want):
                assert got.dtype == w.dtype
                np.testing.assert_array_equal(got.numpy(), w.numpy())
