"""Pooling against PyTorch: max (values, indices, ties, NaN), average, adaptive; gradients; errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(0)


def rnd(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# kernel_size, stride, padding, dilation, ceil_mode
MAX_GRID = [
    (2, None, 0, 1, False),
    (2, None, 0, 1, True),
    (3, 1, 1, 1, False),
    (3, 2, 1, 1, True),
    ((2, 3), (1, 2), (1, 0), 1, False),
    ((3, 2), 2, (1, 1), (2, 1), True),
    (2, 3, 0, 2, False),
    (3, (2, 3), 0, 1, True),
    (1, 2, 0, 1, False),
]


@pytest.mark.parametrize("k,s,p,d,ceil", MAX_GRID)
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (1, 2, 6, 6)])
def test_max_pool2d_matches_torch(k, s, p, d, ceil, shape):
    x = rnd(*shape)

    def run(f, x):
        return f(x, k, s, p, d, ceil_mode=ceil, return_indices=True)

    check_against_torch(lambda x: run(max_pool2d, x), lambda x: run(F.max_pool2d, x), [x])
    e_idx = run(max_pool2d, ember.tensor(x))[1].numpy()
    t_idx = run(F.max_pool2d, torch.tensor(x))[1].numpy()
    np.testing.assert_array_equal(e_idx, t_idx)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (2, 1), (3, 2)])
def test_max_pool2d_ties_are_exact(k, s):
    # few distinct values: most windows hold ties; overlapping windows (stride < k) pick the same max
    x = RNG.integers(0, 3, (2, 3, 7, 7)).astype(np.float32)
    x[0, 0] = 1.0  # a constant plane
    e_out, e_idx = max_pool2d(ember.tensor(x, requires_grad=True), k, s, return_indices=True)
    tx = torch.tensor(x, requires_grad=True)
    t_out, t_idx = F.max_pool2d(tx, k, s, return_indices=True)
    np.testing.assert_array_equal(e_idx.numpy(), t_idx.numpy())
    ex = ember.tensor(x, requires_grad=True)
    g = rnd(*t_out.shape)
    max_pool2d(ex, k, s).backward(ember.tensor(g))
    t_out.backward(torch.tensor(g))
    np.testing.assert_array_equal(ex.grad.numpy(), tx.grad.numpy())


def test_max_pool2d_nan_and_inf_follow_torch():
    x = rnd(1, 2, 6, 6)
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 4, 4] = x[0, 0, 4, 5] = np.nan
    x[0, 1, :3, :3] = -np.inf
    for k, s, p in [(2, 2, 0), (3, 1, 1), (3, 3, 0)]:
        e_out, e_idx = max_pool2d(ember.tensor(x), k, s, p, return_indices=True)
        t_out, t_idx = F.max_pool2d(torch.tensor(x), k, s, p, return_indices=True)
        np.testing.assert_array_equal(e_out.numpy(), t_out.numpy())
        np.testing.assert_array_equal(e_idx.numpy(), t_idx.numpy())


def test_max_pool2d_2x2_every_window_pattern():
    # all 4**4 windows over {-inf, 0, 1, nan}: ties, NaNs and -inf in every position of a 2x2 window
    vals = np.array([-np.inf, 0.0, 1.0, np.nan], np.float32)
    combos = np.stack(np.meshgrid(*[np.arange(4)] * 4, indexing="ij"), -1).reshape(-1, 4)
    x = vals[combos].reshape(16, 16, 2, 2).transpose(0, 2, 1, 3).reshape(1, 1, 32, 32)
    x = np.concatenate([x, x[:, :, ::-1]], 1)
    for dt in (np.float32, np.float64):
        xe = np.ascontiguousarray(x, dtype=dt)
        e_out, e_idx = max_pool2d(ember.tensor(xe), 2, return_indices=True)
        t_out, t_idx = F.max_pool2d(torch.tensor(xe), 2, return_indices=True)
        np.testing.assert_array_equal(e_out.numpy(), t_out.numpy())
        np.testing.assert_array_equal(e_idx.numpy(), t_idx.numpy())


def test_max_pool2d_unbatched_and_integer_input():
    x = rnd(3, 6, 5)
    check_against_torch(lambda x: max_pool2d(x, 2, return_indices=True),
                        lambda x: F.max_pool2d(x, 2, return_indices=True), [x])
    xi = RNG.integers(-50, 50, (2, 2, 5, 5))
    got = max_pool2d(ember.tensor(xi), 2, 1)
    assert got.dtype == ember.int64
    np.testing.assert_array_equal(got.numpy(), F.max_pool2d(torch.tensor(xi), 2, 1).numpy())


def test_max_pool2d_large_batch():
    x = rnd(64, 8, 16, 16)  # above the kernels' parallel threshold
    check_against_torch(lambda x: max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), [x])
    check_against_torch(lambda x: max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), [x])


def test_parallel_kernels_match_serial():
    from ember.backends.cpu import pool_kernels as pk

    x = rnd(3, 4, 9, 8)
    x[0, 0, :2, :2] = 1.0  # ties
    g = rnd(3, 4, 4, 4)
    res = []
    for mode in ("serial", "parallel"):
        out, idx = np.empty((3, 4, 4, 4), np.float32), np.empty((3, 4, 4, 4), np.int64)
        getattr(pk.max_pool2d_fwd, mode)(x, out, idx, 2, 2, 2, 2, 0, 0, 1, 1)
        res.append((out, idx))
    # the three passes of the 2x2 / stride-2 path
    x8 = np.ascontiguousarray(x[:, :, :8, :8]).reshape(-1)
    for mode in ("serial", "parallel"):
        hm, ht = np.empty(x8.size // 2, np.float32), np.empty(x8.size // 2, np.int32)
        m = x8.size // 4
        out, off, idx = np.empty(m, np.float32), np.empty(m, np.int32), np.empty(m, np.int64)
        getattr(pk.pool_pairs, mode)(x8, hm, ht)
        getattr(pk.pool_row_pairs, mode)(hm, ht, out, off, 4, 8)
        getattr(pk.pool_window_index, mode)(off, idx, 4, 4, 8)
        res.append((out.reshape(3, 4, 4, 4), idx.reshape(3, 4, 4, 4)))
    for r in res[1:]:
        np.testing.assert_array_equal(res[0][0], r[0])
        np.testing.assert_array_equal(res[0][1], r[1])
    idx = res[0][1].reshape(3, 4, -1)
    a, b = np.empty((3, 4, 72), np.float32), np.empty((3, 4, 72), np.float32)
    pk.max_pool2d_bwd.serial(g.reshape(3, 4, -1), idx, a)
    pk.max_pool2d_bwd.parallel(g.reshape(3, 4, -1), idx, b)
    np.testing.assert_array_equal(a, b)
    pairs = [
        ("avg_pool2d_fwd", (x, np.empty((3, 4, 5, 4), np.float32), 3, 2, 2, 2, 1, 0, False, 0)),
        ("avg_pool2d_bwd", (rnd(3, 4, 5, 4), np.empty_like(x), 3, 2, 2, 2, 1, 0, True, 0)),
        ("adaptive_avg_pool2d_fwd", (x, np.empty((3, 4, 4, 3), np.float32))),
        ("adaptive_avg_pool2d_bwd", (rnd(3, 4, 4, 3), np.empty_like(x))),
        ("adaptive_max_pool2d_fwd", (x, np.empty((3, 4, 4, 3), np.float32), np.empty((3, 4, 4, 3), np.int64))),
    ]
    for fn, args in pairs:
        outs = []
        for mode in ("serial", "parallel"):
            copies = [a.copy() for a in args if isinstance(a, np.ndarray)]
            it = iter(copies)
            call = [next(it) if isinstance(a, np.ndarray) else a for a in args]
            getattr(getattr(pk, fn), mode)(*call)
            outs.append(copies)
        for s_arr, p_arr in zip(*outs):
            np.testing.assert_allclose(s_arr, p_arr, rtol=1e-6)


# kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
AVG_GRID = [
    (2, None, 0, False, True, None),
    (3, 1, 1, False, True, None),
    (3, 1, 1, False, False, None),
    (3, 2, 1, True, True, None),
    (3, 2, 1, True, False, None),
    ((2, 3), (2, 1), (1, 1), True, False, None),
    (2, 2, 1, False, True, 3),
    ((3, 2), 2, (1, 0), True, True, None),
]


@pytest.mark.parametrize("k,s,p,ceil,cip,div", AVG_GRID)
def test_avg_pool2d_matches_torch(k, s, p, ceil, cip, div):
    x = rnd(2, 3, 7, 6)

    def run(f, x):
        return f(x, k, s, p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)

    check_against_torch(lambda x: run(avg_pool2d, x), lambda x: run(F.avg_pool2d, x), [x])


def test_avg_pool2d_unbatched_and_float64():
    check_against_torch(lambda x: avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1), [rnd(3, 7, 7)])
    x = rnd(2, 2, 5, 5, dtype=np.float64)
    check_against_torch(lambda x: avg_pool2d(x, 2, 1), lambda x: F.avg_pool2d(x, 2, 1), [x], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("size", [1, 3, (5, None), (2, 4), (None, 1), (7, 6)])
def test_adaptive_pools_match_torch(size):
    x = rnd(2, 3, 7, 6)
    check_against_torch(lambda x: adaptive_avg_pool2d(x, size), lambda x: F.adaptive_avg_pool2d(x, size), [x])
    check_against_torch(lambda x: adaptive_max_pool2d(x, size, return_indices=True),
                        lambda x: F.adaptive_max_pool2d(x, size, return_indices=True), [x])
    np.testing.assert_array_equal(adaptive_max_pool2d(ember.tensor(x), size, True)[1].numpy(),
                                  F.adaptive_max_pool2d(torch.tensor(x), size, True)[1].numpy())


def test_adaptive_pools_unbatched_and_larger_output():
    x = rnd(3, 4, 5)
    check_against_torch(lambda x: adaptive_avg_pool2d(x, (6, 7)), lambda x: F.adaptive_avg_pool2d(x, (6, 7)), [x])
    check_against_torch(lambda x: adaptive_max_pool2d(x, (6, 3)), lambda x: F.adaptive_max_pool2d(x, (6, 3)), [x])


def test_gradcheck_float64():
    x = rnd(1, 2, 5, 4)
    # distinct values far apart: central differences never cross a max tie
    x = (np.argsort(RNG.random(x.size)).reshape(x.shape) * 0.1).astype(np.float64)
    gradcheck(lambda x: max_pool2d(x, 3, 2, 1, ceil_mode=True), [x])
    gradcheck(lambda x: adaptive_max_pool2d(x, (2, 3)), [x])
    gradcheck(lambda x: avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [x])
    gradcheck(lambda x: adaptive_avg_pool2d(x, (3, 3)), [x])


@settings(deadline=None, max_examples=20)
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    dh=st.integers(1, 2), ceil=st.booleans(), cip=st.booleans(),
)
def test_pools_random_geometry(h, w, kh, kw, sh, sw, ph, pw, dh, ceil, cip):
    x = rnd(2, 2, h, w)
    kmax = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, 1), ceil_mode=ceil)
    try:
        F.max_pool2d(torch.tensor(x), **kmax)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            max_pool2d(ember.tensor(x), **kmax)
    else:
        # a window lying entirely in the padding gives -inf and an index past the plane; torch's
        # backward then writes into the neighbouring plane, ember's drops it: compare forward only
        degenerate = bool(np.isinf(F.max_pool2d(torch.tensor(x), **kmax).numpy()).any())
        check_against_torch(lambda x: max_pool2d(x, **kmax, return_indices=True),
                            lambda x: F.max_pool2d(x, **kmax, return_indices=True), [x], grad=not degenerate)
    kavg = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), ceil_mode=ceil, count_include_pad=cip)
    try:
        F.avg_pool2d(torch.tensor(x), **kavg)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            avg_pool2d(ember.tensor(x), **kavg)
    else:
        check_against_torch(lambda x: avg_pool2d(x, **kavg), lambda x: F.avg_pool2d(x, **kavg), [x])


# ---- errors ---------------------------------------------------------------------------------------

def test_errors():
    x = ember.zeros(1, 1, 5, 5)
    with pytest.raises(RuntimeError, match=r"max_pool2d: pad should be at most half of effective kernel size, but "
                                           r"got pad=2, kernel_size=3 and dilation=1"):
        max_pool2d(x, 3, padding=2)
    with pytest.raises(RuntimeError, match=r"avg_pool2d: pad should be at most half of effective kernel size"):
        avg_pool2d(x, 3, padding=2)
    with pytest.raises(RuntimeError, match=r"max_pool2d: pad should be smaller than or equal to half of kernel size, "
                                           r"but got padW = 1, padH = 2, kW = 2, kH = 3"):
        max_pool2d(x, (3, 2), 1, (2, 1), dilation=2)
    with pytest.raises(RuntimeError, match=r"max_pool2d: given input size \(1x5x5\), the calculated output size "
                                           r"\(1x0x0\) is too small"):
        max_pool2d(x, 7)
    with pytest.raises(RuntimeError, match=r"max_pool2d: expected a non-empty input with 4 dims \(N, C, H, W\) or 3 "
                                           r"\(C, H, W\), got shape \(5, 5\)"):
        max_pool2d(ember.zeros(5, 5), 2)
    with pytest.raises(RuntimeError, match=r"max_pool2d: kernel_size must be >= 1, got \(0, 0\)"):
        max_pool2d(x, 0)
    with pytest.raises(RuntimeError, match="avg_pool2d: expected a floating point input, got dtype int64"):
        avg_pool2d(ember.zeros(1, 1, 4, 4, dtype=ember.int64), 2)
    with pytest.raises(RuntimeError, match="divisor_override must be non-zero"):
        avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(RuntimeError, match=r"adaptive_avg_pool2d: expected input .* got shape \(1, 1, 0, 3\)"):
        adaptive_avg_pool2d(ember.zeros(1, 1, 0, 3), 2)
    with pytest.raises(RuntimeError, match=r"adaptive_max_pool2d: output_size must be an int or a pair"):
        adaptive_max_pool2d(x, (1, 2, 3))


def test_window_entirely_in_padding():
    # 1x1 image, kernel 2 with dilation 2 and padding 1: the only window holds two padding taps
    x = ember.tensor(rnd(1, 2, 1, 1), requires_grad=True)
    out, idx = max_pool2d(x, (2, 1), 1, (1, 0), dilation=(2, 1), return_indices=True)
    t_out, t_idx = F.max_pool2d(torch.tensor(x.detach().numpy()), (2, 1), 1, (1, 0), dilation=(2, 1),
                                return_indices=True)
    np.testing.assert_array_equal(out.detach().numpy(), t_out.numpy())  # -inf, as torch
    np.testing.assert_array_equal(idx.numpy(), t_idx.numpy())
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((1, 2, 1, 1), np.float32))


def test_shape_rules_return_the_kernel_output_shapes():
    from ember.ops.registry import apply, get_op

    class Dim(int):  # the tracer's symbolic dims are int subclasses: the rules may only do arithmetic on them
        pass

    x = ember.tensor(rnd(2, 3, 7, 6))
    sym = tuple(Dim(d) for d in x.shape)
    cases = [("max_pool2d", dict(kernel_size=(3, 2), stride=(2, 2), padding=(1, 0), dilation=(1, 1), ceil_mode=True)),
             ("avg_pool2d", dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), ceil_mode=False,
                                 count_include_pad=False, divisor_override=None)),
             ("adaptive_avg_pool2d", dict(output_size=(3, 4))),
             ("adaptive_max_pool2d", dict(output_size=(2, 5)))]
    for name, kw in cases:
        outs = apply(name, x, **kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        rule = get_op(name).shape(sym, **kw)
        assert (rule if isinstance(rule[0], tuple) else (rule,)) == tuple(o.shape for o in outs)
        g = ember.tensor(rnd(*outs[0].shape))
        bw = {"max_pool2d": "max_pool2d_backward", "adaptive_max_pool2d": "max_pool2d_backward",
              "avg_pool2d": "avg_pool2d_backward", "adaptive_avg_pool2d": "adaptive_avg_pool2d_backward"}[name]
        extra = (outs[1],) if len(outs) == 2 else ()
        battrs = {} if bw != "avg_pool2d_backward" else kw
        gx = apply(bw, g, *extra, input_hw=(7, 6), **battrs)
        shapes = [tuple(Dim(d) for d in g.shape)] + [e.shape for e in extra]
        assert get_op(bw).shape(*shapes, input_hw=(7, 6), **battrs) == gx.shape == x.shape
