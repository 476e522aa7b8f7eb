"""The conv2d (+ relu) -> 2x2 max-pool fusion: the ``conv2d_pool`` kernel against torch, and the pass
that emits it only where the result is the same."""
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ember
import ember.nn as nn
from ember.ops.registry import get_op
from ember.serialize import Program, trace
from ember.serialize.passes import optimize

rng = np.random.default_rng(8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [
    dict(cin=1, cout=16, k=3, padding=1, hw=(28, 28)),  # the direct (im2col-free) path
    dict(cin=16, cout=32, k=3, padding=1, hw=(14, 14)),  # im2col + GEMM, stride 1
    dict(cin=3, cout=8, k=3, padding=0, hw=(9, 7)),  # odd conv output: the last row/column is in no window
    dict(cin=4, cout=6, k=3, padding=1, hw=(10, 9), stride=2),  # strided: plain im2col
    dict(cin=4, cout=6, k=3, padding=2, hw=(9, 9), dilation=2, groups=2),
], ids=["direct", "gemm", "odd", "strided", "dilated-grouped"])
@pytest.mark.parametrize("act", ["none", "relu"])
def test_kernel_matches_torch(geom, act, dtype):
    g = dict(geom)
    stride, dilation, groups = g.get("stride", 1), g.get("dilation", 1), g.get("groups", 1)
    x = rng.standard_normal((5, g["cin"], *g["hw"])).astype(dtype)
    w = rng.standard_normal((g["cout"], g["cin"] // groups, g["k"], g["k"])).astype(dtype)
    b = rng.standard_normal(g["cout"]).astype(dtype)
    got = get_op("conv2d_pool").kernels["cpu"](x, w, b, stride=(stride,) * 2, padding=(g["padding"],) * 2,
                                               dilation=(dilation,) * 2, groups=groups, act=act)
    y = F.conv2d(*(torch.from_numpy(a) for a in (x, w, b)), stride=stride, padding=g["padding"], dilation=dilation,
                 groups=groups)
    want = F.max_pool2d(F.relu(y) if act == "relu" else y, 2).numpy()
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_kernel_keeps_nan_and_zeroes_negatives():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 2:, 2:] = -3.0
    w = np.ones((2, 1, 1, 1), np.float32)
    got = get_op("conv2d_pool").kernels["cpu"](x, w, None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                                               act="relu")
    want = F.max_pool2d(F.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(w))), 2).numpy()
    np.testing.assert_array_equal(got, want)


def test_shape_rule_explains_bad_attributes():
    rule = get_op("conv2d_pool").shape
    kw = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    assert rule((2, 3, 9, 8), (4, 3, 3, 3), **kw, act="relu") == (2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="act must be 'none' or 'relu'"):
        rule((2, 3, 9, 8), (4, 3, 3, 3), **kw, act="gelu")
    with pytest.raises(RuntimeError, match="smaller than the 2x2 pooling window"):
        rule((2, 3, 3, 8), (4, 3, 3, 3), **kw, act="none")


def _ops(graph):
    return Counter(n.op for n in graph.nodes)


def _check_same(model, shape, batches=(1, 3)):
    model.eval()
    prog = trace(model, ember.randn(2, *shape))
    fast, plain = Program(prog.graph), Program(prog.graph, optimize=False)
    for b in batches:
        x = ember.randn(b, *shape)
        outs = [(o,) if isinstance(o, ember.Tensor) else o for o in (fast(x), plain(x))]
        for f, p in zip(*outs):
            np.testing.assert_allclose(f.numpy(), p.numpy(), atol=1e-5, rtol=1e-5)
    return _ops(fast._executor.graph)


def test_pass_fuses_conv_relu_pool_blocks():
    ember.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))
    ops = _check_same(model, (1, 9, 9))
    assert ops["conv2d_pool"] == 2 and ops["max_pool2d"] == 0 and ops["conv2d_act"] == 0


class _KeepsConvOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return ember.nn.functional.max_pool2d(y, 2), y  # y used twice: pooling in the conv's pass would lose it


@pytest.mark.parametrize("model", [
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.GELU(), nn.MaxPool2d(2)),  # gelu: no commuting
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(3)),  # not 2x2
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2, ceil_mode=True)),
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2, return_indices=True)),
    _KeepsConvOutput,
], ids=["gelu", "3x3", "ceil", "indices", "conv-output-used"])
def test_pass_leaves_pools_it_cannot_fuse(model):
    ember.manual_seed(0)
    ops = _check_same(model(), (2, 7, 7))
    assert ops["conv2d_pool"] == 0 and ops["max_pool2d"] == 1
