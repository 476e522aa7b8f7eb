"""The float32 convolution tiles (backends/cpu/conv_tiled.py) against PyTorch in float64, for every
tile shape (the AVX-512 and the AVX2 variants compile on any x86 host: the IR is generic), plus the
size-dependent BLAS thread count and the helper-thread runner they rely on."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember.backends.cpu import blas, conv_tile_ir, conv_tiled, jit

RNG = np.random.default_rng(7)

# (N, C, H, W), (Cout, kh, kw), padding, dilation, groups, extra bottom/right padding
GEOMETRIES = [
    ((3, 16, 14, 14), (32, 3, 3), (1, 1), (1, 1), 1, (0, 0)),
    ((2, 1, 28, 28), (16, 3, 3), (1, 1), (1, 1), 1, (0, 0)),
    ((3, 6, 9, 11), (10, 3, 3), (1, 2), (1, 1), 2, (0, 0)),      # groups, channels not a tile multiple
    ((2, 4, 10, 9), (5, 3, 5), (2, 2), (2, 1), 1, (0, 0)),        # dilation, wide kernel
    ((2, 3, 7, 7), (4, 1, 1), (0, 0), (1, 1), 1, (0, 0)),         # 1x1
    ((5, 8, 6, 6), (8, 3, 3), (1, 1), (1, 1), 8, (0, 0)),         # depthwise
    ((2, 3, 8, 8), (7, 3, 3), (0, 1), (1, 1), 1, (1, 0)),         # asymmetric (ceil-style) padding
    ((17, 5, 5, 5), (13, 2, 2), (1, 0), (1, 1), 1, (0, 1)),       # odd batch split over threads
]

@pytest.fixture(params=[conv_tile_ir.AVX512, conv_tile_ir.AVX2], ids=["avx512-tiles", "avx2-tiles"])
def tiles(request, monkeypatch):
    t = conv_tile_ir.compile_tiles(request.param)
    if t is None:
        pytest.skip("llvmlite has no native code generator here")
    monkeypatch.setattr(conv_tiled, "host_tiles", lambda: t)
    return t


def _torch_case(xs, ws, padding, dilation, groups, extra):
    n, c, h, w_ = xs
    co, kh, kw = ws
    x = torch.tensor(RNG.standard_normal(xs).astype(np.float32), dtype=torch.float64, requires_grad=True)
    w = torch.tensor(RNG.standard_normal((co, c // groups, kh, kw)).astype(np.float32), dtype=torch.float64,
                     requires_grad=True)
    b = torch.tensor(RNG.standard_normal(co).astype(np.float32), dtype=torch.float64, requires_grad=True)
    xpad = F.pad(x, (0, extra[1], 0, extra[0]))  # the extra bottom/right padding, as out_hw implies
    y = F.conv2d(xpad, w, b, padding=padding, dilation=dilation, groups=groups)
    g = torch.tensor(RNG.standard_normal(tuple(y.shape)).astype(np.float32), dtype=torch.float64)
    y.backward(g)
    return x, w, b, y, g


def _close(got, want, tol=2e-5):
    want = want.detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=tol * max(1.0, np.abs(want).max()), rtol=1e-4)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: f"{g[0]}-{g[1]}-p{g[2]}-d{g[3]}-g{g[4]}-e{g[5]}")
def test_forward_and_gradients_match_torch(tiles, geom):
    xs, ws, padding, dilation, groups, extra = geom
    x, w, b, y, g = _torch_case(xs, ws, padding, dilation, groups, extra)
    x32, w32, b32, g32 = (t.detach().numpy().astype(np.float32) for t in (x, w, b, g))
    out = conv_tiled.forward(x32, w32, b32, padding, dilation, groups, tuple(y.shape[2:]))
    _close(out, y)
    gw, gb = conv_tiled.weight_grad(g32, x32, w32.shape, padding, dilation, groups, True)
    _close(gw, w.grad)
    _close(gb, b.grad)
    if conv_tiled.usable(x32, w32, (1, 1), True, padding, dilation):
        _close(conv_tiled.input_grad(g32, w32, padding, dilation, groups, xs[2:]), x.grad)


def test_fused_relu_and_pool_match_torch(tiles):
    x, w, b, y, _ = _torch_case((3, 4, 9, 10), (6, 3, 3), (1, 1), (1, 1), 1, (0, 0))
    want = F.max_pool2d(F.relu(y), 2)
    got = conv_tiled.forward(*(t.detach().numpy().astype(np.float32) for t in (x, w, b)), (1, 1), (1, 1), 1,
                             tuple(y.shape[2:]), pool=True, relu=True)
    _close(got, want)


def test_weight_grad_without_bias_returns_none(tiles):
    x, w, b, y, g = _torch_case((2, 3, 6, 6), (4, 3, 3), (1, 1), (1, 1), 1, (0, 0))
    gw, gb = conv_tiled.weight_grad(g.numpy().astype(np.float32), x.detach().numpy().astype(np.float32),
                                    tuple(w.shape), (1, 1), (1, 1), 1, False)
    assert gb is None
    _close(gw, w.grad)


def test_usable_says_when_the_tiles_run(tiles):
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    assert conv_tiled.usable(x, w, (1, 1))
    assert not conv_tiled.usable(x, w, (2, 1))                            # strided: im2col + BLAS
    assert not conv_tiled.usable(x.astype(np.float64), w, (1, 1))         # float64: im2col + BLAS
    assert not conv_tiled.usable(x, w, (1, 1), True, (3, 1), (1, 1))      # padding > d*(k-1): no flipped form
    assert conv_tiled.usable(x, w, (1, 1), True, (2, 2), (1, 1))


def test_tiles_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("EMBER_CONV_TILES", "0")
    assert conv_tile_ir.host_shapes() is None


def test_pick_chooses_the_least_padding():
    t = conv_tile_ir.compile_tiles(conv_tile_ir.AVX512)
    if t is None:
        pytest.skip("llvmlite has no native code generator here")
    s, _, tails = t.pick(16, 222)
    assert s.nco == 8                     # 16 channels: 2 blocks of 8, not 2 of 12
    assert len(tails) == s.np and tails[0] == 0 and all(tails[1:])  # 222 -> 224 = 4 x 48 + a 2-vector tail
    assert t.pick(24, 64)[0].nco == 12    # 24 channels and 64 positions: 2 blocks of 12 x 2 of 32


# ---- blas.matmul and jit.run_parts -----------------------------------------------------------------

@pytest.mark.parametrize("shape", [((1, 20), (20, 3)), ((64, 100), (100, 10)), ((300, 200), (200, 100)),
                                   ((2, 5, 7), (2, 7, 3)), ((4, 6), (6,))])
def test_blas_matmul_equals_numpy_and_keeps_the_thread_count(shape):
    a = RNG.standard_normal(shape[0]).astype(np.float32)
    b = RNG.standard_normal(shape[1]).astype(np.float32)
    blas.matmul(a, b)  # finds the BLAS library
    get = blas._STATE["get"]
    before = get() if get is not None else None
    np.testing.assert_array_equal(blas.matmul(a, b), np.matmul(a, b))
    out = np.empty(np.matmul(a, b).shape, np.float32)
    assert blas.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, np.matmul(a, b))
    if get is not None:
        assert get() == before  # restored after each small product


def test_run_parts_runs_every_part_and_raises_a_helpers_error():
    out = np.zeros(4)

    def fill(i, sync):  # a Python function: no post/finish (the helpers report it done themselves)
        out[i] = i + 1

    jit.run_parts(fill, [(0,), (1,), (2,), (3,)])
    np.testing.assert_array_equal(out, [1, 2, 3, 4])

    def fail(i, sync):
        if i == 1:
            raise ValueError("part 1 failed")

    with pytest.raises(ValueError, match="part 1 failed"):
        jit.run_parts(fail, [(0,), (1,)])
    jit.run_parts(fill, [(0,), (1,)])  # the helpers still work afterwards


def test_slices_split_evenly_or_not_at_all():
    assert jit.slices(10, 5, 100) == [(0, 10)]
    parts = jit.slices(7, 1000, 1)
    assert parts[0][0] == 0 and parts[-1][1] == 7
    assert all(a < b for a, b in parts) and all(p[1] == q[0] for p, q in zip(parts, parts[1:]))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_run_parts_works_in_a_forked_child():
    """A DataLoader worker forked after the helpers started must not post to the parent's (absent) threads."""
    import multiprocessing as mp

    jit.run_parts(lambda i, sync: None, [(0,), (1,)])  # helpers exist in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_run_parts, args=(q,))
    p.start()
    p.join(60)
    if p.exitcode is None:
        p.kill()
        p.join()
    assert p.exitcode == 0 and q.get(timeout=5) == [1, 2]


def _child_run_parts(q):
    out = [0, 0]

    def fill(i, sync):
        out[i] = i + 1

    jit.run_parts(fill, [(0,), (1,)])
    q.put(out)


@pytest.mark.parametrize("hw", [(9, 10), (7, 7), (20, 35)])
def test_fused_pool_propagates_nan_like_torch(tiles, hw):
    """The 2x2 pool kernel: NaN wins (as max_pool2d), odd sizes floor, rows wider than one 16-column step."""
    x, w, b, y, _ = _torch_case((2, 3) + hw, (5, 3, 3), (1, 1), (1, 1), 1, (0, 0))
    x32 = x.detach().numpy().astype(np.float32)
    x32[0, 1, 3, 4] = np.nan
    want = F.max_pool2d(F.relu(F.conv2d(torch.from_numpy(x32).double(), w.detach(), b.detach(), padding=1)), 2)
    got = conv_tiled.forward(x32, *(t.detach().numpy().astype(np.float32) for t in (w, b)), (1, 1), (1, 1), 1,
                             tuple(y.shape[2:]), pool=True, relu=True)
    assert np.isnan(got).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want.numpy()))
    _close(np.nan_to_num(got), torch.nan_to_num(want))
