"""The quantization ops on CUDA: quantize / dequantize / fake_quantize (+ backward) / requantize /
quantized_max_pool2d bit-identical to the CPU backend; the int8 GEMM's int32 accumulators and the
requantize formula of docs/quantize-design.md against numpy references; quantized_linear,
dynamic_quantized_linear, quantized_conv2d and quantized_conv2d_pool bit-identical to the CPU; and
quantized models moved to CUDA as a user moves them."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.quantize as Q
from ember.ops.registry import apply

from .conftest import same

RNG = np.random.default_rng(7)


def T(a):
    return ember.from_numpy(np.asarray(a))


def exact(cpu, gpu):
    """``same`` plus bit-identical values (NaN where the CPU has NaN) for float results too."""
    same(cpu, gpu)
    np.testing.assert_array_equal(gpu.detach().cpu().numpy(), cpu.detach().numpy())


def both(op, *arrays, host=(), **attrs):
    """(CPU result, CUDA result) of registry op ``op`` on numpy ``arrays``; indices in ``host`` stay CPU tensors
    on the CUDA side too (0-d qparams, as python-number scalars arrive)."""
    cpu = [None if a is None else T(np.asarray(a)) for a in arrays]
    gpu = [t if t is None or i in host else t.cuda() for i, t in enumerate(cpu)]
    return apply(op, *cpu, **attrs), apply(op, *gpu, **attrs)


def qp(scale, zp, dtype="uint8"):
    return np.array(scale, np.float32), np.array(zp, dtype)


def floats(shape, scale, dtype=np.float32, spread=300):
    """Values on exact .5 ties of ``scale`` (a power of two), random values, NaN, +-inf and saturating ones."""
    n = int(np.prod(shape))
    x = (RNG.integers(-spread, spread, n) + 0.5) * scale
    x[: n // 2] = RNG.uniform(-spread, spread, n // 2) * scale
    x[:5] = [np.nan, np.inf, -np.inf, 1e30, -1e30]
    return RNG.permutation(x).reshape(shape).astype(dtype)


# ---- quantize / dequantize / fake_quantize / requantize -------------------------------------------------
@pytest.mark.parametrize("xdt", [np.float32, np.float64])
@pytest.mark.parametrize("dtype,zp", [("uint8", 3), ("int8", -5)])
def test_quantize_per_tensor(xdt, dtype, zp):
    x = floats((6, 20), 0.25, xdt)
    exact(Q.quantize_per_tensor(T(x), 0.25, zp, dtype), Q.quantize_per_tensor(T(x).cuda(), 0.25, zp, dtype))
    exact(*both("quantize_per_tensor", x, *qp(0.037, zp, dtype), dtype=dtype))  # qparams on the device


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_per_channel(axis, dtype):
    x = floats((3, 4, 5), 0.125)
    c = x.shape[axis]
    scale = np.array([0.125, 0.25, 0.037, 0.5, 0.0625][:c], np.float32)
    zp = RNG.integers(0, 20, c).astype(dtype)
    exact(*both("quantize_per_channel", x, scale, zp, axis=axis, dtype=dtype))


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_dequantize(dtype):
    info = np.iinfo(dtype)
    q = np.arange(info.min, info.max + 1).astype(dtype).reshape(4, 8, 8)
    zp = 9 if dtype == "uint8" else -7
    exact(Q.dequantize(T(q), 0.037, zp), Q.dequantize(T(q).cuda(), 0.037, zp))
    scale = np.array([0.1, 0.037, 0.25, 3.0], np.float32)
    exact(*both("dequantize", q, scale, np.array([0, 5, 9, 2], dtype), axis=0))
    exact(*both("dequantize", q[:, :3], scale[:3], np.array([1, 2, 3], dtype), axis=1))


def test_quantize_ops_keep_the_cpu_dtype_checks():
    x = T(np.zeros(4, np.float32)).cuda()
    with pytest.raises(RuntimeError, match="scale must be positive and finite"):
        apply("quantize_per_tensor", x, T(np.float32(0)), T(np.uint8(0)), dtype="uint8")
    with pytest.raises(RuntimeError, match="zero_point must have dtype uint8 here, got int8"):
        apply("quantize_per_tensor", x, T(np.float32(1)).cuda(), T(np.int8(0)).cuda(), dtype="uint8")
    with pytest.raises(RuntimeError, match="dequantize: input must be a uint8 or int8 tensor, got float32"):
        apply("dequantize", x, T(np.float32(1)), T(np.uint8(0)))
    with pytest.raises(RuntimeError, match="quantize_per_tensor: input must be a floating point tensor"):
        apply("quantize_per_tensor", x.to(ember.int32), T(np.float32(1)), T(np.uint8(0)), dtype="uint8")


@pytest.mark.parametrize("xdt", [np.float32, np.float64])
def test_fake_quantize_per_tensor_forward_and_straight_through_gradient(xdt):
    s, z, lo, hi = 0.25, 3, 0, 15
    x = floats((4, 30), 0.25, xdt, spread=20)
    x[0, :4] = [(lo - z - 0.5) * s, (hi - z + 0.5) * s, (hi - z + 0.75) * s, (lo - z - 0.75) * s]  # the mask's edges
    x = np.nan_to_num(x, posinf=1e3, neginf=-1e3)
    cpu, gpu = T(x).requires_grad_(), T(x).cuda().requires_grad_()
    out_c = Q.fake_quantize_per_tensor_affine(cpu, s, z, lo, hi)
    out_g = Q.fake_quantize_per_tensor_affine(gpu, s, z, lo, hi)
    exact(out_c, out_g)
    seed = RNG.standard_normal(x.shape).astype(xdt)
    out_c.backward(T(seed))
    out_g.backward(T(seed).cuda())
    exact(cpu.grad, gpu.grad)
    assert (gpu.grad.cpu().numpy()[0, :4] == [seed[0, 0], seed[0, 1], 0, 0]).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_fake_quantize_per_channel_and_its_backward_op(axis):
    x = floats((5, 6), 0.125, spread=12)
    c = x.shape[axis]
    scale = (RNG.integers(1, 5, c) * 0.0625).astype(np.float32)
    zp = RNG.integers(-3, 4, c).astype(np.int32)
    attrs = dict(quant_min=-8, quant_max=7, axis=axis)
    exact(*both("fake_quantize", x, scale, zp, **attrs))
    g = RNG.standard_normal(x.shape).astype(np.float32)
    exact(*both("fake_quantize_backward", g, x, scale, zp, **attrs))
    exact(*both("fake_quantize_backward", g.astype(np.float64), x.astype(np.float64), scale, zp, **attrs))


@pytest.mark.parametrize("in_dtype,out_dtype", [("uint8", "uint8"), ("int8", "uint8"), ("uint8", "int8"),
                                                ("int8", "int8")])
def test_requantize_every_code(in_dtype, out_dtype):
    q = np.arange(256, dtype=np.uint8).view(in_dtype).reshape(16, 16)
    for (s1, z1), (s2, z2), host in [((0.037, 3), (0.05, 7), ()), ((0.2, 1), (0.0013, 2), (1, 2, 3, 4))]:
        exact(*both("requantize", q, *qp(s1, z1, in_dtype), *qp(s2, z2, out_dtype), host=host, dtype=out_dtype))


POOLS = [dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False),
         dict(kernel_size=(3, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 1), ceil_mode=True),
         dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=False),
         dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=True)]


@pytest.mark.parametrize("attrs", POOLS)
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantized_max_pool2d(attrs, dtype):
    info = np.iinfo(dtype)
    q = RNG.integers(info.min, info.max, (1, 2, 7, 9), endpoint=True).astype(dtype)
    exact(*both("quantized_max_pool2d", q, **attrs))


# ---- the int8 GEMM and the linear ops ---------------------------------------------------------------------
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 5, 19), (17, 9, 40)])  # tile edges in m, n and k
@pytest.mark.parametrize("adt,zp", [("uint8", 0), ("uint8", 131), ("int8", -3)])
def test_int8_gemm_int32_accumulators_are_exact(m, n, k, adt, zp):
    from ember.backends.cuda import from_host
    from ember.backends.cuda.int8_kernels import qgemm

    info = np.iinfo(adt)
    a = RNG.integers(info.min, info.max, (m, k), endpoint=True).astype(adt)
    w = RNG.integers(-128, 127, (n, k), endpoint=True).astype(np.int8)
    a[0], w[0] = (info.max if zp <= 0 else info.min), -128  # the largest products
    got = qgemm(from_host(a), zp, from_host(w))
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got.get(), (a.astype(np.int64) - zp) @ w.astype(np.int64).T)


def _linear_params(n, k, per_channel, with_bias):
    w = RNG.integers(-128, 127, (n, k), endpoint=True).astype(np.int8)
    ws = (RNG.random(n) * 0.01 + 0.002).astype(np.float32) if per_channel else np.float32(0.006)
    b = (RNG.standard_normal(n) * 2).astype(np.float32) if with_bias else None
    return w, ws, b


def _requant_reference(acc, xs, ws, ys, yz, b, relu):
    """docs/quantize-design.md's epilogue in numpy: bias to int32 with x_scale * w_scale, the multiplier
    x_scale * w_scale / y_scale, v = float32(acc + bias_i32) * mult, clip(rint(v) + y_zp, lo, 255)."""
    acc_scale = np.float32(xs) * np.broadcast_to(np.float32(ws), acc.shape[-1:])
    mult = acc_scale / np.float32(ys)
    bias = 0 if b is None else np.clip(np.rint(b / acc_scale).astype(np.float64), -2 ** 31, 2 ** 31 - 1)
    v = (acc + np.asarray(bias).astype(np.int64)).astype(np.float32) * mult
    return np.clip(np.rint(v) + np.float32(yz), yz if relu else 0, 255).astype(np.uint8)


@pytest.mark.parametrize("per_channel,with_bias,relu", [(False, True, False), (True, True, True),
                                                         (True, False, False), (False, False, True)])
def test_quantized_linear(per_channel, with_bias, relu):
    w, ws, b = _linear_params(6, 13, per_channel, with_bias)
    x = RNG.integers(0, 256, (2, 3, 13)).astype(np.uint8)
    xs, xz, ys, yz = 0.04, 117, 0.09, 96
    args = (x, *qp(xs, xz), w, ws, *qp(ys, yz)) + ((b,) if with_bias else ())
    cpu, gpu = both("quantized_linear", *args, relu=relu)
    exact(cpu, gpu)
    acc = (x.astype(np.int64) - xz) @ w.astype(np.int64).T
    np.testing.assert_array_equal(gpu.cpu().numpy(), _requant_reference(acc, xs, ws, ys, yz, b, relu))
    exact(*both("quantized_linear", *args, host=(1, 2, 5, 6), relu=relu))  # CPU scalar qparams


def test_quantized_linear_refuses_wrong_dtypes():
    w, ws, b = _linear_params(4, 5, False, True)
    args = [T(a).cuda() for a in (np.zeros((2, 5), np.int8), *qp(0.1, 3), w, ws, *qp(0.1, 3), b)]
    with pytest.raises(TypeError, match="activations and their zero points must be uint8, got x int8"):
        apply("quantized_linear", *args)
    args[0], args[3] = T(np.zeros((2, 5), np.uint8)).cuda(), T(w.astype(np.int16)).cuda()
    with pytest.raises(TypeError, match="weight must be int8"):
        apply("quantized_linear", *args)


@pytest.mark.parametrize("per_channel,with_bias,relu,reduce_range", [(True, True, False, True),
                                                                      (False, True, True, False),
                                                                      (True, False, True, True)])
def test_dynamic_quantized_linear_is_bit_identical(per_channel, with_bias, relu, reduce_range):
    w, ws, b = _linear_params(7, 11, per_channel, with_bias)
    for x in (RNG.standard_normal((3, 2, 11)) * 3, RNG.random((5, 11)) + 0.5, np.zeros((2, 11))):
        args = (x.astype(np.float32), w, ws) + ((b,) if with_bias else ())
        exact(*both("dynamic_quantized_linear", *args, relu=relu, reduce_range=reduce_range))


def test_dynamic_quantized_linear_gives_nan_for_non_finite_input():
    # the CPU raises ValueError; on CUDA the check would have to read the device (documented in int8_kernels)
    w, ws, b = _linear_params(3, 4, True, True)
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.inf
    out = apply("dynamic_quantized_linear", *(T(a).cuda() for a in (x, w, ws, b)))
    assert out.shape == (2, 3) and np.isnan(out.cpu().numpy()).all()


# ---- convolutions --------------------------------------------------------------------------------------
CONVS = [  # (x shape, weight shape, stride, padding, dilation, groups)
    ((2, 1, 6, 5), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # a first layer: K = 9 (the CPU's float path)
    ((1, 3, 7, 6), (4, 3, 3, 3), (2, 1), (1, 0), (1, 1), 1),
    ((1, 4, 6, 6), (6, 2, 2, 3), (1, 2), (0, 1), (2, 1), 2),
    ((2, 4, 5, 5), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4),  # depthwise
]


def _conv_args(xs_shape, w_shape, per_channel, with_bias):
    x = RNG.integers(0, 256, xs_shape).astype(np.uint8)
    w = RNG.integers(-128, 127, w_shape, endpoint=True).astype(np.int8)
    co = w_shape[0]
    ws = (RNG.random(co) * 0.01 + 0.002).astype(np.float32) if per_channel else np.float32(0.004)
    b = (RNG.standard_normal(co) * 3).astype(np.float32)
    return (x, *qp(0.03, 100), w, ws, *qp(0.07, 90)) + ((b,) if with_bias else ())


@pytest.mark.parametrize("geom", CONVS)
@pytest.mark.parametrize("per_channel,with_bias,relu", [(True, True, True), (False, False, False)])
def test_quantized_conv2d(geom, per_channel, with_bias, relu):
    xs_shape, w_shape, stride, padding, dilation, groups = geom
    args = _conv_args(xs_shape, w_shape, per_channel, with_bias)
    attrs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, relu=relu)
    cpu, gpu = both("quantized_conv2d", *args, **attrs)
    exact(cpu, gpu)
    if groups == 1:  # the numpy reference: im2col of the zero-point-padded input, int64 matmul, requantize
        x, w = args[0].astype(np.int64) - 100, args[3].astype(np.int64)
        (ph, pw), (kh, kw), (ho, wo) = padding, w_shape[2:], gpu.shape[2:]
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        taps = [xp[:, :, i * dilation[0]: i * dilation[0] + stride[0] * (ho - 1) + 1: stride[0],
                   j * dilation[1]: j * dilation[1] + stride[1] * (wo - 1) + 1: stride[1]]
                for i in range(kh) for j in range(kw)]  # (N, C, Ho, Wo) each
        cols = np.stack(taps, axis=2).reshape(x.shape[0], -1, ho * wo)  # K in (C, kh, kw) order
        acc = np.einsum("nkp,ok->npo", cols, w.reshape(w.shape[0], -1))
        want = _requant_reference(acc, 0.03, args[4], 0.07, 90, args[7] if with_bias else None, relu)
        np.testing.assert_array_equal(gpu.cpu().numpy(), want.transpose(0, 2, 1).reshape(gpu.shape))


@pytest.mark.parametrize("c_in,relu", [(1, True), (3, False)])  # the CPU's float path and its GEMM path
def test_quantized_conv2d_pool(c_in, relu):
    args = _conv_args((2, c_in, 7, 6), (4, c_in, 3, 3), True, True)
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, relu=relu)
    cpu, gpu = both("quantized_conv2d_pool", *args, **attrs)
    assert gpu.shape == (2, 4, 3, 3)
    exact(cpu, gpu)


# ---- quantized models moved to CUDA ---------------------------------------------------------------------
def test_dynamic_int8_model_on_cuda():
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    q = Q.quantize_dynamic(model)
    x = ember.randn(4, 12)
    want = q(x)
    q.to("cuda")
    assert q[0].weight.is_cuda and q[0].weight.dtype == ember.int8
    exact(want, q(x.cuda()))


def test_static_int8_cnn_on_cuda():
    ember.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten(),
                          nn.Linear(6 * 2 * 2, 5)).eval()
    model = Q.fuse_modules(model, [["0", "1"]])
    model.qconfig = Q.get_default_qconfig("x86")
    q = Q.quantize_static(model, [ember.randn(4, 1, 6, 6) for _ in range(2)], progress=False)
    x = ember.randn(2, 1, 6, 6)
    want = q(x)
    q.to("cuda")
    assert q[0].weight.is_cuda and q[0].x_scale.is_cuda
    assert q[0].x_zero_point.is_cuda
    exact(want, q(x.cuda()))
