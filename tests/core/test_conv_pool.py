"""conv2d_maxpool (conv2d + a 2x2 / stride-2 max pool with the argmax as window codes) and its backward, and
nn.Sequential's use of them, against PyTorch: values, the argmax (torch's max_pool2d indices on the same conv
output, ties and NaN included) and every gradient; the tiles' unpooling into the backward's scratch bit for bit
against the full-size gradient; the plain kernels' path (float64) by gradcheck in op_samples.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ember
from ember import nn
from ember.backends.cpu import conv_tile_ir, conv_tiled, pool_kernels
from ember.ops import conv_pool, registry

RNG = np.random.default_rng(11)

# (N, C, H, W), (Cout, kh, kw), padding, dilation, groups: even and odd conv outputs, channel counts off the tiles'
# blocks, pooled rows narrower than, as wide as and wider than the 8 windows of a kernel step, batches split over both
# threads
GEOMETRIES = [
    ((3, 16, 14, 14), (32, 3, 3), (1, 1), (1, 1), 1),
    ((2, 1, 28, 28), (16, 3, 3), (1, 1), (1, 1), 1),
    ((3, 6, 9, 11), (10, 3, 3), (1, 2), (1, 1), 2),
    ((2, 4, 10, 9), (5, 3, 5), (2, 2), (2, 1), 1),
    ((2, 3, 7, 7), (4, 1, 1), (0, 0), (1, 1), 1),
    ((17, 5, 37, 5), (13, 2, 2), (1, 0), (1, 1), 1),
    ((1, 2, 3, 40), (3, 2, 3), (0, 1), (1, 1), 1),
    ((2, 3, 5, 17), (4, 3, 3), (1, 1), (1, 1), 1),  # pooled rows of exactly 8 windows
]


def _use_tiles(monkeypatch, shapes):
    t = None if shapes is None else conv_tile_ir.compile_tiles(shapes)
    if shapes is not None and t is None:
        pytest.skip("llvmlite has no native code generator here")
    monkeypatch.setattr(conv_tiled, "host_tiles", lambda: t)
    return t


@pytest.fixture(params=[conv_tile_ir.AVX512, conv_tile_ir.AVX2, None], ids=["avx512-tiles", "avx2-tiles", "no-tiles"])
def tiles(request, monkeypatch):
    return _use_tiles(monkeypatch, request.param)


@pytest.fixture(params=[conv_tile_ir.AVX512, conv_tile_ir.AVX2], ids=["avx512-tiles", "avx2-tiles"])
def only_tiles(request, monkeypatch):
    return _use_tiles(monkeypatch, request.param)


def _case(xs, ws, groups, bias=True):
    co, kh, kw = ws
    x = RNG.standard_normal(xs).astype(np.float32)
    w = RNG.standard_normal((co, xs[1] // groups, kh, kw)).astype(np.float32)
    b = RNG.standard_normal(co).astype(np.float32) if bias else None
    return x, w, b


def _ember(x, w, b, padding, dilation, groups):
    xe, we = ember.tensor(x, requires_grad=True), ember.tensor(w, requires_grad=True)
    be = None if b is None else ember.tensor(b, requires_grad=True)
    return xe, we, be, conv_pool.conv2d_maxpool(xe, we, be, (1, 1), padding, dilation, groups)


def _torch(x, w, b, padding, dilation, groups):
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    conv = TF.conv2d(xt, wt, bt, padding=padding, dilation=dilation, groups=groups)
    return xt, wt, bt, TF.max_pool2d(conv, 2)


def _codes_of(y):
    return y.grad_fn.ctx.outputs[1].numpy()


@pytest.mark.parametrize("geo", GEOMETRIES, ids=[str(g[0]) for g in GEOMETRIES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_values_argmax_and_gradients_match_torch(tiles, geo, bias):
    xs, ws, padding, dilation, groups = geo
    x, w, b = _case(xs, ws, groups, bias)
    xe, we, be, ye = _ember(x, w, b, padding, dilation, groups)
    xt, wt, bt, yt = _torch(x, w, b, padding, dilation, groups)
    np.testing.assert_allclose(ye.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    # the argmax is torch's max_pool2d's on the very values ember's conv2d computes
    conv = ember.nn.functional.conv2d(ember.tensor(x), ember.tensor(w), None if b is None else ember.tensor(b),
                                      padding=padding, dilation=dilation, groups=groups).numpy()
    pooled, idx = TF.max_pool2d(torch.from_numpy(conv), 2, return_indices=True)
    codes = _codes_of(ye)
    wc = conv.shape[3]
    oh, ow = np.meshgrid(np.arange(codes.shape[2]), np.arange(codes.shape[3]), indexing="ij")
    np.testing.assert_array_equal((2 * oh + codes // 2) * wc + 2 * ow + codes % 2, idx.numpy())
    np.testing.assert_array_equal(ye.detach().numpy(), pooled.numpy())
    g = RNG.standard_normal(yt.shape).astype(np.float32)
    ye.backward(ember.tensor(g))
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(we.grad.numpy(), wt.grad.numpy(), rtol=1e-4, atol=1e-3)
    if bias:
        np.testing.assert_allclose(be.grad.numpy(), bt.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_ties_and_nan_pick_torchs_argmax(tiles):
    """A 1x1 depthwise identity convolution: the pool sees x itself; integer values give ties everywhere, NaNs win."""
    x = RNG.integers(-2, 3, (2, 3, 9, 10)).astype(np.float32)
    x[0, 0, 0, :4] = np.nan
    x[1, 2, 3, 3] = np.nan
    x[1, 1, :2, :2] = [[np.nan, 1.0], [np.nan, 0.0]]
    w = np.ones((3, 1, 1, 1), np.float32)  # depthwise: a NaN stays in its channel
    xe, _, _, ye = _ember(x, w, None, (0, 0), (1, 1), 3)
    pooled, idx = TF.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(ye.detach().numpy(), pooled.numpy())
    codes = _codes_of(ye)
    oh, ow = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    np.testing.assert_array_equal((2 * oh + codes // 2) * 10 + 2 * ow + codes % 2, idx.numpy())
    ye.sum().backward()
    xt = torch.from_numpy(x).requires_grad_(True)
    TF.max_pool2d(xt, 2).sum().backward()
    np.testing.assert_array_equal(xe.grad.numpy(), xt.grad.numpy())


@pytest.mark.parametrize("geo", GEOMETRIES[:6], ids=[str(g[0]) for g in GEOMETRIES[:6]])
def test_unpooling_into_the_scratch_is_the_full_size_gradient(only_tiles, geo):
    """The backward's tiles fed the pooled gradient and codes give bit for bit what they give fed the full-size
    gradient (the plain kernels' unpooling)."""
    xs, ws, padding, dilation, groups = geo
    x, w, _ = _case(xs, ws, groups)
    n, co = xs[0], ws[0]
    hw = conv_pool._conv_hw(x.shape, w.shape, None, {**conv_pool._CONV_ATTRS, "padding": padding,
                                                      "dilation": dilation, "groups": groups})
    g = RNG.standard_normal((n, co, hw[0] // 2, hw[1] // 2)).astype(np.float32)
    codes = RNG.integers(0, 4, g.shape).astype(np.uint8)
    full = pool_kernels.unpool2x2_backward(g, codes, hw)
    gw, gb = conv_tiled.weight_grad(g, x, w.shape, padding, dilation, groups, True, codes, hw)
    gw_full, gb_full = conv_tiled.weight_grad(full, x, w.shape, padding, dilation, groups, True)
    np.testing.assert_array_equal(gw, gw_full)
    # (float32 row sums of other rows: a sum that cancels to near 0 keeps only an absolute agreement)
    np.testing.assert_allclose(gb, gb_full, rtol=1e-5, atol=1e-6 * np.abs(g).sum(axis=(0, 2, 3)).max())
    gx = conv_tiled.input_grad(g, w, padding, dilation, groups, x.shape[2:], codes, hw)
    np.testing.assert_array_equal(gx, conv_tiled.input_grad(full, w, padding, dilation, groups, x.shape[2:]))


def _cnn():
    ember.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.MaxPool2d(kernel_size=(2, 2), stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))


def _torch_cnn(model):
    """_cnn's layers in torch, with the ember model's weights."""
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                             torch.nn.Flatten(), torch.nn.Linear(24, 3))
    with torch.no_grad():
        for p, q in zip(model.parameters(), tm.parameters()):
            q.copy_(torch.from_numpy(p.detach().numpy()))
    return tm


def _calls(monkeypatch):
    op = registry.get_op("conv2d_maxpool")
    seen = []
    plain = op.kernels["cpu"]
    monkeypatch.setitem(op.kernels, "cpu", lambda *a, **k: seen.append(1) or plain(*a, **k))
    return seen


def test_sequential_runs_conv_relu_pool_as_the_fused_op_with_torchs_gradients(monkeypatch):
    model = _cnn()
    seen = _calls(monkeypatch)
    tm = _torch_cnn(model)
    x = RNG.standard_normal((5, 1, 9, 8)).astype(np.float32)
    y = model(ember.tensor(x))
    yt = tm(torch.from_numpy(x))
    assert len(seen) == 2  # both conv -> (relu ->) pool runs
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    yt.square().sum().backward()
    for (k, p), q in zip(model.named_parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=k)


def test_sequential_keeps_the_modules_apart_where_it_must(monkeypatch):
    seen = _calls(monkeypatch)
    x = ember.randn(2, 1, 8, 8)
    model = _cnn()
    model[1].register_forward_hook(lambda m, i, o: None)  # a hook on the ReLU sees the full-size tensor
    model(x)
    assert len(seen) == 1  # only the second conv -> pool
    _cnn()(x)  # no hooks: both fused
    assert len(seen) == 3
    model = _cnn().double()
    model(ember.randn(2, 1, 8, 8, dtype=ember.float64))  # float64: the modules one by one
    assert len(seen) == 3
    from ember.serialize import trace

    prog = trace(_cnn().eval(), ember.randn(2, 1, 8, 8))
    ops = [n.op for n in prog.graph.nodes]
    assert "conv2d_maxpool" not in ops and "max_pool2d" in ops  # a tracer records the standard ops


def test_sequential_too_small_for_the_pool_says_what_max_pool2d_says():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(RuntimeError, match="max_pool2d"):
        model(ember.randn(1, 1, 3, 3))  # a 1x1 conv output


def test_bad_backward_inputs_are_named():
    x, w = ember.randn(1, 2, 6, 6), ember.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"conv2d_maxpool_backward: grad_output \(1, 3, 3, 3\)"):
        registry.apply("conv2d_maxpool_backward", ember.randn(1, 3, 3, 3), ember.zeros(1, 3, 2, 2, dtype=ember.uint8),
                       x, w, output_mask=(True, True, False))
    with pytest.raises(RuntimeError, match="smaller than the 2x2 pooling window"):
        conv_pool.conv2d_maxpool(ember.randn(1, 2, 3, 3), w, None, (1, 1), (0, 0), (1, 1), 1)


def test_sequential_without_autograd_runs_the_inference_op(monkeypatch):
    """Under no_grad (or with nothing requiring grad) the fused path is conv2d_pool (ReLU fused, no window codes):
    the same values as torch."""
    model = _cnn()
    op = registry.get_op("conv2d_pool")
    seen, plain = [], op.kernels["cpu"]
    monkeypatch.setitem(op.kernels, "cpu", lambda *a, **k: seen.append(k.get("act")) or plain(*a, **k))
    training = _calls(monkeypatch)
    x = RNG.standard_normal((3, 1, 9, 8)).astype(np.float32)
    with ember.no_grad():
        got = model(ember.tensor(x)).numpy()
    assert seen == ["relu", "none"] and not training  # conv -> relu -> pool, then conv -> pool (-> ReLU after)
    with torch.no_grad():
        want = _torch_cnn(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    model(ember.tensor(x))  # parameters requiring grad, grad mode on: the training op
    assert len(training) == 2 and len(seen) == 2


@pytest.mark.parametrize("grads", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)],
                         ids=["input-only", "weight-only", "bias-only", "no-bias-grad"])
def test_partial_gradients_match_torch(tiles, grads):
    """Frozen weights / bias / input: each output mask of the backward."""
    x, w, b = _case((3, 4, 9, 10), (6, 3, 3), 1)
    xe, we, be = (ember.tensor(a, requires_grad=r) for a, r in zip((x, w, b), grads))
    xt, wt, bt = (torch.tensor(a, requires_grad=r) for a, r in zip((x, w, b), grads))
    ye = conv_pool.conv2d_maxpool(xe, we, be, (1, 1), (1, 1), (1, 1), 1)
    yt = TF.max_pool2d(TF.conv2d(xt, wt, bt, padding=1), 2)
    g = RNG.standard_normal(yt.shape).astype(np.float32)
    ye.backward(ember.tensor(g))
    yt.backward(torch.from_numpy(g))
    for te, tt, r in zip((xe, we, be), (xt, wt, bt), grads):
        assert (te.grad is None) == (not r)
        if r:
            np.testing.assert_allclose(te.grad.numpy(), tt.grad.numpy(), rtol=1e-4, atol=1e-4)
