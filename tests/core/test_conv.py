"""conv2d against PyTorch: forward and gradients over a grid of geometries, gradcheck, error messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops.conv import conv2d
from ember.ops.registry import apply

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(0)


def rnd(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# (N, C, H, W), (Cout, kh, kw), stride, padding, dilation, groups
GRID = [
    ((2, 3, 7, 7), (4, 3, 3), 1, 0, 1, 1),
    ((2, 3, 7, 7), (4, 3, 3), 1, 1, 1, 1),
    ((2, 3, 8, 6), (5, 3, 2), (2, 1), (1, 0), 1, 1),
    ((1, 2, 9, 10), (3, 5, 3), 2, 2, (1, 2), 1),
    ((2, 4, 7, 6), (6, 3, 3), 1, 1, 2, 2),
    ((2, 4, 6, 6), (4, 3, 3), 1, 1, 1, 4),  # depthwise
    ((2, 6, 5, 5), (6, 1, 1), 1, 0, 1, 3),  # grouped 1x1
    ((1, 5, 5, 4), (2, 1, 1), 1, 0, 1, 1),  # 1x1, one image: the no-copy path
    ((3, 2, 5, 5), (3, 1, 1), 2, 1, 1, 1),
    ((2, 1, 6, 7), (3, 2, 4), (1, 3), (0, 2), (3, 1), 1),
    ((2, 3, 4, 4), (2, 4, 4), 1, 3, 1, 1),  # padding larger than the image is allowed for conv
    ((64, 1, 6, 6), (4, 3, 3), 1, 1, 1, 1),  # large batch: the parallel kernels
]


def _ids(case):
    shape, (co, kh, kw), s, p, d, g = case
    return f"x{shape}-k{co}x{kh}x{kw}-s{s}-p{p}-d{d}-g{g}"


@pytest.mark.parametrize("case", GRID, ids=[_ids(c) for c in GRID])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_matches_torch(case, with_bias):
    shape, (co, kh, kw), s, p, d, g = case
    x, w, b = rnd(*shape), rnd(co, shape[1] // g, kh, kw), rnd(co)
    arrays = [x, w, b] if with_bias else [x, w]

    def ember_fn(x, w, b=None):
        return conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)

    def torch_fn(x, w, b=None):
        return F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)

    check_against_torch(ember_fn, torch_fn, arrays)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((2, 4), 1), ((3, 2), 2), ((4, 4), 2), ((1, 5), 1)])
def test_padding_same_and_valid(kernel, dilation):
    x, w, b = rnd(2, 3, 7, 8), rnd(4, 3, *kernel), rnd(4)
    for padding in ("same", "valid"):
        check_against_torch(lambda x, w, b: conv2d(x, w, b, padding=padding, dilation=dilation),
                            lambda x, w, b: F.conv2d(x, w, b, padding=padding, dilation=dilation), [x, w, b])


def test_unbatched_input():
    x, w, b = rnd(3, 6, 5), rnd(2, 3, 3, 3), rnd(2)
    check_against_torch(lambda x, w, b: conv2d(x, w, b, padding=1), lambda x, w, b: F.conv2d(x, w, b, padding=1),
                        [x, w, b])


def test_only_needed_gradients_are_computed():
    x, w, b = rnd(2, 3, 5, 5), rnd(4, 3, 3, 3), rnd(4)
    # weight and bias only (the first layer of a network): input gets no gradient
    check_against_torch(lambda x, w, b: conv2d(x, w, b), lambda x, w, b: F.conv2d(x, w, b), [x, w, b],
                        grad_inputs=[1, 2])
    # input only (a frozen layer)
    check_against_torch(lambda x, w, b: conv2d(x, w, b), lambda x, w, b: F.conv2d(x, w, b), [x, w, b],
                        grad_inputs=[0])
    g = ember.tensor(rnd(2, 4, 3, 3))
    gx, gw, gb = apply("conv2d_backward", g, ember.tensor(x), ember.tensor(w), stride=(1, 1), padding=(0, 0),
                       dilation=(1, 1), groups=1, output_mask=(False, True, False))
    assert gx.shape == (0,) and gb.shape == (0,) and gw.shape == w.shape


def test_non_contiguous_inputs():
    x = rnd(5, 5, 3, 2).transpose(3, 2, 0, 1)  # (2, 3, 5, 5), not C-contiguous
    w = rnd(3, 3, 4, 2).transpose(3, 2, 0, 1)  # (2, 4, 3, 3)
    w = np.ascontiguousarray(w)[:, :3]  # (2, 3, 3, 3), a strided slice
    ex, ew = ember.from_numpy(x), ember.from_numpy(w)
    got = conv2d(ex, ew, padding=1).numpy()
    want = F.conv2d(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(w)), padding=1)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=1e-4)


def test_output_dtype_and_float64():
    x, w, b = rnd(2, 2, 5, 5, dtype=np.float64), rnd(3, 2, 3, 3, dtype=np.float64), rnd(3, dtype=np.float64)
    check_against_torch(lambda x, w, b: conv2d(x, w, b, padding=1), lambda x, w, b: F.conv2d(x, w, b, padding=1),
                        [x, w, b], atol=1e-12, rtol=1e-10, grad_atol=1e-10, grad_rtol=1e-10)


def test_float16_computes_in_float32():
    x, w = rnd(1, 2, 5, 5).astype(np.float16), rnd(3, 2, 3, 3).astype(np.float16)
    out = conv2d(ember.from_numpy(x), ember.from_numpy(w))
    assert out.dtype == ember.float16
    want = F.conv2d(torch.from_numpy(x).float(), torch.from_numpy(w).float()).numpy()
    np.testing.assert_allclose(out.numpy().astype(np.float32), want, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 2), ((1, 2), (2, 1), (2, 1), 1),
                                                            (1, "same", 2, 1)])
def test_gradcheck_float64(stride, padding, dilation, groups):
    x, w, b = rnd(2, 2, 5, 4), rnd(2, 2 // groups, 2, 3), rnd(2)
    gradcheck(lambda x, w, b: conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups),
              [x, w, b])


@settings(deadline=None, max_examples=20)
@given(
    n=st.integers(1, 3), cg=st.integers(1, 3), g=st.integers(1, 2), cog=st.integers(1, 3),
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    dh=st.integers(1, 2), dw=st.integers(1, 2), bias=st.booleans(),
)
def test_conv2d_random_geometry(n, cg, g, cog, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias):
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return  # no output: covered by the error tests
    x, wt, b = rnd(n, cg * g, h, w), rnd(cog * g, cg, kh, kw), rnd(cog * g)
    kw_args = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=g)
    arrays = [x, wt, b] if bias else [x, wt]
    check_against_torch(lambda *a: conv2d(*a, **kw_args), lambda *a: F.conv2d(*a, **kw_args), arrays)


# ---- errors ---------------------------------------------------------------------------------------

def _conv(x_shape, w_shape, **kw):
    return conv2d(ember.zeros(*x_shape), ember.zeros(*w_shape), **kw)


def test_error_wrong_input_dims():
    with pytest.raises(RuntimeError, match=r"conv2d: expected input with 4 dims \(N, C, H, W\) or 3 \(C, H, W\), "
                                           r"got shape \(2, 3, 4, 5, 6\)"):
        _conv((2, 3, 4, 5, 6), (1, 3, 1, 1))


def test_error_channel_mismatch():
    with pytest.raises(RuntimeError, match=r"input has 4 channels.*weight of shape \(8, 3, 3, 3\) with groups=1 "
                                           r"expects in_channels = 3 \* 1 = 3"):
        _conv((1, 4, 5, 5), (8, 3, 3, 3))
    with pytest.raises(RuntimeError, match=r"groups=2 expects in_channels = 3 \* 2 = 6"):
        _conv((1, 4, 5, 5), (8, 3, 3, 3), groups=2)
    with pytest.raises(RuntimeError, match=r"out_channels 3 .* must be divisible by groups=2"):
        _conv((1, 4, 5, 5), (3, 2, 3, 3), groups=2)


def test_error_output_too_small():
    with pytest.raises(RuntimeError, match=r"conv2d: output height would be 0: input height 2 with padding 0, "
                                           r"kernel 3"):
        _conv((1, 1, 2, 5), (1, 1, 3, 3))
    with pytest.raises(RuntimeError, match=r"output width would be -2"):
        _conv((1, 1, 5, 2), (1, 1, 1, 5), dilation=1)


def test_error_bad_arguments():
    with pytest.raises(RuntimeError, match="padding='same' is not supported for strided convolutions"):
        _conv((1, 1, 5, 5), (1, 1, 3, 3), padding="same", stride=2)
    with pytest.raises(ValueError, match="invalid padding string 'full'"):
        _conv((1, 1, 5, 5), (1, 1, 3, 3), padding="full")
    with pytest.raises(RuntimeError, match=r"stride must be >= 1, got \(0, 0\)"):
        _conv((1, 1, 5, 5), (1, 1, 3, 3), stride=0)
    with pytest.raises(RuntimeError, match=r"bias must have shape \(2,\)"):
        conv2d(ember.zeros(1, 1, 5, 5), ember.zeros(2, 1, 3, 3), ember.zeros(3))
    with pytest.raises(RuntimeError, match="input dtype float64, weight dtype float32"):
        conv2d(ember.zeros(1, 1, 5, 5, dtype=ember.float64), ember.zeros(2, 1, 3, 3))
    with pytest.raises(RuntimeError, match="expected a floating point input, got dtype int64"):
        conv2d(ember.zeros(1, 1, 5, 5, dtype=ember.int64), ember.zeros(2, 1, 3, 3))


# ---- kernel-level checks: chunking and the parallel copies of the kernels ------------------------

def test_chunked_batches_match_torch(monkeypatch):
    from ember.backends.cpu import conv_kernels

    monkeypatch.setattr(conv_kernels, "CHUNK_BYTES", 1)  # one image per chunk: 5 GEMM rounds
    x, w, b = rnd(5, 4, 6, 7), rnd(6, 2, 3, 3), rnd(6)
    for kw in (dict(padding=1, groups=2), dict(stride=2, padding=(1, 0), groups=2)):
        check_against_torch(lambda x, w, b: conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b])


def test_parallel_kernels_match_serial():
    from ember.backends.cpu import conv_kernels as ck

    x = rnd(4, 3, 7, 6)
    geo = ck._Geometry(x.shape, (2, 3, 3, 2), (1, 1), (1, 0), (1, 2), (7, 4), 4)
    xp = np.zeros((4, 3, geo.hp * geo.wp), np.float32)
    ck.pad_planes.serial(x, xp, geo.hp, geo.wp, 1, 0)
    xp2 = np.ones_like(xp)
    ck.pad_planes.parallel(x, xp2, geo.hp, geo.wp, 1, 0)
    np.testing.assert_array_equal(xp, xp2)
    cols = np.zeros((geo.k, 4 * geo.le), np.float32)
    cols2 = np.ones_like(cols)
    ck.im2col_ext.serial(xp, cols, 3, 2, 1, 2, geo.wp, geo.le)
    ck.im2col_ext.parallel(xp, cols2, 3, 2, 1, 2, geo.wp, geo.le)
    np.testing.assert_array_equal(cols, cols2)
    dx, dx2 = np.empty_like(x), np.empty_like(x)
    ck.col2im_ext.serial(cols, dx, 3, 2, 1, 2, 1, 0, geo.hp, geo.wp, geo.le)
    ck.col2im_ext.parallel(cols, dx2, 3, 2, 1, 2, 1, 0, geo.hp, geo.wp, geo.le)
    np.testing.assert_allclose(dx, dx2, rtol=1e-6)
    s_cols, p_cols = np.zeros((18, 4 * 12), np.float32), np.ones((18, 4 * 12), np.float32)
    ck.im2col_strided.serial(x, s_cols, 3, 2, 2, 2, 1, 1, 1, 1, 4, 3)
    ck.im2col_strided.parallel(x, p_cols, 3, 2, 2, 2, 1, 1, 1, 1, 4, 3)
    np.testing.assert_array_equal(s_cols, p_cols)
    ck.col2im_strided.serial(s_cols, dx, 3, 2, 2, 2, 1, 1, 1, 1, 4, 3)
    ck.col2im_strided.parallel(s_cols, dx2, 3, 2, 2, 2, 1, 1, 1, 1, 4, 3)
    np.testing.assert_allclose(dx, dx2, rtol=1e-6)
    g = rnd(4, 5, 3, 4)
    rows, rows2 = np.zeros((5, 4 * 14), np.float32), np.ones((5, 4 * 14), np.float32)
    gb, gb2, gb3 = np.zeros(5), np.zeros(5), np.zeros(5)
    ck.nchw_to_rows.serial(g, rows, gb, 5, 14, True)
    ck.nchw_to_rows.parallel(g, rows2, gb2, 5, 14, True)
    ck.bias_grad.parallel(g, gb3)
    np.testing.assert_array_equal(rows, rows2)
    np.testing.assert_allclose(gb, g.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)  # float32 data, float64 sums
    np.testing.assert_allclose(gb2, gb, rtol=1e-12)
    np.testing.assert_allclose(gb3, gb, rtol=1e-12)
    out, out2 = np.empty_like(g), np.empty_like(g)
    bias = rnd(5)
    ck.rows_to_nchw.serial(rows, bias, out, 5, 14)
    ck.rows_to_nchw.parallel(rows, bias, out2, 5, 14)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(out, g + bias[None, :, None, None])


# ---- the direct kernels (stride 1, short K = C/groups*kh*kw): the first layer of a CNN ---------------

# (N, C, H, W), (Cout, kh, kw), padding, dilation, groups: taps not a multiple of 3, groups whose
# channel count is not a multiple of the 4-channel (forward) or 2-channel (weight gradient) blocks
DIRECT = [
    ((3, 1, 9, 8), (16, 3, 3), 1, 1, 1),  # the cnn benchmark's conv1, small
    ((2, 1, 6, 6), (5, 2, 2), 0, 1, 1),  # 4 taps: a last pass of one tap
    ((2, 1, 7, 6), (6, 1, 5), (0, 2), 1, 1),  # 5 taps: a last pass of two
    ((2, 2, 7, 7), (10, 3, 3), (1, 2), (2, 1), 2),  # 5 output channels per group
    ((2, 3, 6, 5), (12, 1, 3), 1, 1, 3),  # 4 output channels per group, one input channel
    ((1, 2, 5, 6), (7, 2, 4), 2, 1, 1),  # 16 taps (the largest direct K), padding > kernel // 2
]


@pytest.mark.parametrize("case", DIRECT, ids=[f"{c[0]}-{c[1]}-p{c[2]}-d{c[3]}-g{c[4]}" for c in DIRECT])
@pytest.mark.parametrize("grad_inputs", [None, [1, 2]])
def test_direct_path_matches_torch(case, grad_inputs):
    from ember.backends.cpu import conv_kernels as ck

    shape, (co, kh, kw), p, d, g = case
    x, w, b = rnd(*shape), rnd(co, shape[1] // g, kh, kw), rnd(co)
    pp, dd = ((p, p) if isinstance(p, int) else p), ((d, d) if isinstance(d, int) else d)
    out_hw = tuple(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=pp, dilation=dd, groups=g).shape[2:])
    assert ck._Geometry(shape, w.shape, (1, 1), pp, dd, out_hw, 4).direct
    check_against_torch(lambda x, w, b: conv2d(x, w, b, padding=p, dilation=d, groups=g),
                        lambda x, w, b: F.conv2d(x, w, b, padding=p, dilation=d, groups=g), [x, w, b],
                        grad_inputs=grad_inputs)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_direct_path_padding_same_even_kernel():
    x, w, b = rnd(2, 1, 7, 8), rnd(4, 1, 2, 4), rnd(4)  # bottom/right padding one more than top/left
    check_against_torch(lambda x, w, b: conv2d(x, w, b, padding="same", dilation=2),
                        lambda x, w, b: F.conv2d(x, w, b, padding="same", dilation=2), [x, w, b])


def test_direct_path_equals_gemm_path(monkeypatch):
    from ember.backends.cpu import conv_kernels as ck

    x, w, b = rnd(4, 1, 10, 9), rnd(6, 1, 3, 3), rnd(6)
    g = rnd(4, 6, 10, 9)
    args = ((1, 1), (1, 1), (1, 1), 1)
    direct = (ck.conv2d_forward(x, w, b, *args, (10, 9)), *ck.conv2d_backward(g, x, w, *args, (True, True, True)))
    monkeypatch.setattr(ck, "DIRECT_MAX_K", 0)
    gemm = (ck.conv2d_forward(x, w, b, *args, (10, 9)), *ck.conv2d_backward(g, x, w, *args, (True, True, True)))
    for a, e in zip(direct, gemm):
        np.testing.assert_allclose(a, e, atol=1e-5, rtol=1e-5)


def test_direct_path_inf_input():
    # the one-tap last pass must not multiply a padding weight of 0 by the inf
    x, w = rnd(1, 1, 5, 5), np.abs(rnd(4, 1, 2, 2))
    x[0, 0, 2, 3] = np.inf
    got = conv2d(ember.from_numpy(x), ember.from_numpy(w)).numpy()
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert np.isinf(got).sum() == np.isinf(want).sum() == 16 and not np.isnan(got).any()


def test_direct_kernels_parallel_match_serial():
    from ember.backends.cpu import conv_kernels as ck

    x, w, b = rnd(5, 3, 7, 6), rnd(6, 1, 3, 2), rnd(6)  # groups=3: two output channels per group
    geo = ck._Geometry(x.shape, w.shape, (1, 1), (1, 0), (1, 2), (7, 4), 4)
    xp = np.ascontiguousarray(geo.padded(x, np.float32))
    out, out2 = np.empty((5, 6, 7, 4), np.float32), np.ones((5, 6, 7, 4), np.float32)
    ck.direct_forward.serial(xp, w, b, out, 1, 2, geo.wp, geo.le, geo.ho, geo.wo, False, False)
    ck.direct_forward.parallel(xp, w, b, out2, 1, 2, geo.wp, geo.le, geo.ho, geo.wo, False, False)
    np.testing.assert_array_equal(out, out2)
    g = rnd(5, 6, 7, 4)
    gw, gw2, gb, gb2 = np.zeros(w.shape), np.zeros(w.shape), np.zeros(6), np.zeros(6)
    ck.direct_weight_grad.serial(xp, g, gw, gb, 1, 2, geo.wp, geo.le, True)
    ck.direct_weight_grad.parallel(xp, g, gw2, gb2, 1, 2, geo.wp, geo.le, True)
    np.testing.assert_allclose(gw2, gw, rtol=1e-12)
    np.testing.assert_allclose(gb2, gb, rtol=1e-12)
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3)), rtol=1e-5)


class _Dim(int):
    """A stand-in for the tracer's symbolic dims: an int subclass the shape rules must only do arithmetic on."""


def test_shape_rules_return_the_kernel_output_shapes():
    from ember.ops.registry import get_op

    for xs, ws, kw in [((2, 4, 9, 7), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
                       ((1, 3, 5, 5), (4, 3, 2, 2), dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                                                         padding_extra=(1, 1)))]:
        x, w, b = rnd(*xs), rnd(*ws), rnd(ws[0])
        out = apply("conv2d", ember.tensor(x), ember.tensor(w), ember.tensor(b), **kw)
        sym = tuple(_Dim(d) for d in xs)
        assert get_op("conv2d").shape(sym, ws, (ws[0],), **kw) == out.shape
        g = ember.tensor(rnd(*out.shape))
        for mask in [(True, True, True), (False, True, False), (True, False, True)]:
            grads = apply("conv2d_backward", g, ember.tensor(x), ember.tensor(w), output_mask=mask, **kw)
            rule = get_op("conv2d_backward").shape(tuple(_Dim(d) for d in out.shape), sym, ws, output_mask=mask, **kw)
            assert rule == tuple(t.shape for t in grads)
    with pytest.raises(RuntimeError, match="conv2d_backward: grad_output has shape"):
        get_op("conv2d_backward").shape((1, 4, 4, 3), (1, 3, 5, 5), (4, 3, 2, 2), stride=(1, 1), padding=(0, 0),
                                        dilation=(1, 1), groups=1, output_mask=(True, True, True))
