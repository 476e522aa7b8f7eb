"""CUDA matrix products and convolutions against the CPU backend: matmul (1-D, 2-D, batched with broadcast
batch dims, int and bool dtypes), linear, linear_act, linear_weight_grad, conv2d (stride, padding incl.
"same", dilation, groups, 1x1), conv2d_act, conv2d_pool and conv2d_backward (every output mask, chunked)."""
import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops.registry import apply, get_op

from .conftest import grads_match, same

_rng = np.random.default_rng(3)
TOL = dict(rtol=1e-4, atol=1e-5)


def _t(*shape, dtype="float32"):
    if dtype == "bool":
        return ember.from_numpy(np.asarray(_rng.random(shape) > 0.5))
    if np.dtype(dtype).kind in "iu":
        return ember.from_numpy(np.asarray(_rng.integers(-9, 10, shape), dtype))
    return ember.from_numpy(np.asarray(_rng.standard_normal(shape), dtype))


def _needs_cuda(*ops):
    """Skip a gradient whose backward runs an op of another kernel family not on CUDA yet."""
    ember.cuda._backend()
    for op in ops:
        if "cuda" not in get_op(op).kernels:
            pytest.skip(f"the backward needs {op!r} on CUDA")


def _cuda(*ts):
    return tuple(None if t is None else t.cuda() for t in ts)


def _check_op(name, *inputs, **attrs):
    """The registry op on CPU tensors and on their CUDA copies."""
    same(apply(name, *inputs, **attrs), apply(name, *_cuda(*inputs), **attrs), **TOL)


# ---- matmul ----------------------------------------------------------------------------------------------
MATMUL_SHAPES = [((3, 4), (4, 5)), ((4,), (4, 3)), ((3, 4), (4,)), ((5,), (5,)), ((2, 1, 3, 4), (3, 4, 2)),
                 ((2, 3, 4), (4, 3)), ((3, 4), (2, 4, 3)), ((3,), (2, 3, 2)), ((3, 0), (0, 2))]


@pytest.mark.filterwarnings("ignore:overflow encountered")  # int8 wraps, as in numpy (simulator warns)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int8", "bool"])
def test_matmul_forward(dtype):
    for sa, sb in MATMUL_SHAPES:
        a, b = _t(*sa, dtype=dtype), _t(*sb, dtype=dtype)
        same(ember.matmul(a, b), ember.matmul(*_cuda(a, b)), **TOL)


def test_matmul_tiles():
    # M, N, K past one tile and not multiples of it (partial tiles at every edge, several K slabs)
    a, b = _t(17, 19), _t(19, 15)
    same(a @ b, a.cuda() @ b.cuda(), **TOL)
    a, b = _t(2, 9, 20), _t(2, 20, 9)
    same(ember.bmm(a, b), ember.bmm(*_cuda(a, b)), **TOL)


def test_split_k():
    """Few output tiles and a long K: the GEMM splits K over blocks and adds the partial sums in a second
    kernel (bias, activation and accumulation applied there), same results as the CPU."""
    from ember.backends.cuda import matmul_kernels as mk

    k = mk.SPLIT_MIN_STEPS * mk.BK * 3 + 5  # not a multiple of the K step
    assert mk._split_k(1, 1, k)[0] > 1 and mk._split_k(1, 2, k)[0] == 1  # batched GEMMs do not split
    a, b = _t(5, k), _t(k, 7)
    same(a @ b, a.cuda() @ b.cuda(), **TOL)
    x, w, bias = _t(3, k), _t(6, k), _t(6)
    _check_op("linear_act", x, w, bias, act="relu")
    _check_op("linear", x.double(), w.double(), bias.double())
    c0 = _t(5, 7)
    c = c0.cuda()
    ad, bd = a.cuda(), b.cuda()
    mk.gemm(ad._data.d, bd._data.d, c._data.d, 5, 7, k, k, 1, 7, 1, accumulate=True)
    np.testing.assert_allclose(c.cpu().numpy(), c0.numpy() + a.numpy() @ b.numpy(), **TOL)


def test_matmul_aliases():
    a, b, v = _t(3, 4, dtype="float64"), _t(4, 2, dtype="float64"), _t(4, dtype="float64")
    same(a.mm(b), a.cuda().mm(b.cuda()), **TOL)
    same(v.dot(v), v.cuda().dot(v.cuda()), **TOL)
    same(a @ v, a.cuda() @ v.cuda(), **TOL)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (2, 4, 3)), ((3, 4), (4,))])
def test_matmul_grad(sa, sb):
    _needs_cuda("permute", "sum", "reshape")
    grads_match(lambda a, b: a @ b, _t(*sa), _t(*sb))


# ---- linear ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_forward_backward(dtype):
    _needs_cuda("sum", "reshape")
    x, w, b = _t(2, 3, 5, dtype=dtype), _t(4, 5, dtype=dtype), _t(4, dtype=dtype)
    grads_match(lambda x, w, b: F.linear(x, w, b), x, w, b)
    grads_match(lambda x, w: F.linear(x, w), _t(3, 5, dtype=dtype), w)


def test_linear_scalar_bias_and_ints():
    x, w = _t(3, 4), _t(2, 4)
    b = ember.tensor(1.5)  # a 0-d bias: on CUDA, and as a CPU scalar tensor joining CUDA ones
    _check_op("linear", x, w, b)
    same(apply("linear", x, w, b), apply("linear", x.cuda(), w.cuda(), b), **TOL)
    _check_op("linear", _t(3, 4, dtype="int64"), _t(2, 4, dtype="int64"))


def test_linear_weight_grad():
    _check_op("linear_weight_grad", _t(2, 3, 4), _t(2, 3, 5))
    _check_op("linear_weight_grad", _t(6, 4, dtype="float64"), _t(6, 3, dtype="float64"))


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh"])
def test_linear_act(act):
    x, w, b = _t(2, 3, 5), _t(4, 5), _t(4)
    _check_op("linear_act", x, w, b, act=act)
    _check_op("linear_act", x.double(), w.double(), act=act)


def test_nn_linear_module():
    _needs_cuda("sum", "reshape")
    lin = ember.nn.Linear(5, 3)
    x = _t(4, 5)
    ref = lin(x)
    ref.sum().backward()
    lin_g = ember.nn.Linear(5, 3)
    lin_g.load_state_dict(lin.state_dict())
    lin_g.cuda()
    out = lin_g(x.cuda())
    same(ref, out, **TOL)
    out.sum().backward()
    same(lin.weight.grad, lin_g.weight.grad, **TOL)
    same(lin.bias.grad, lin_g.bias.grad, **TOL)


# ---- conv2d ----------------------------------------------------------------------------------------------
# (input shape, weight shape, conv2d keywords)
CONV_CASES = [
    ((2, 2, 5, 5), (3, 2, 3, 3), dict(padding=1)),
    ((1, 4, 6, 5), (4, 2, 3, 2), dict(stride=2, padding=1, groups=2)),
    ((2, 3, 5, 6), (2, 3, 2, 2), dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1))),
    ((2, 4, 4, 4), (6, 2, 1, 1), dict(groups=2)),
    ((1, 2, 5, 4), (2, 2, 2, 3), dict(padding="same", dilation=2)),
]


def _attrs(w_shape, stride=1, padding=0, dilation=1, groups=1):
    """The registry attributes conv2d(...) passes for these keywords."""
    pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
    dilation = pair(dilation)
    extra = (0, 0)
    if padding == "same":
        th, tw = dilation[0] * (w_shape[2] - 1), dilation[1] * (w_shape[3] - 1)
        padding, extra = (th // 2, tw // 2), (th % 2, tw % 2)
    return dict(stride=pair(stride), padding=pair(padding), dilation=dilation, groups=groups, padding_extra=extra)


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv2d_forward_backward(case):
    xs, ws, kw = CONV_CASES[case]
    grads_match(lambda x, w, b: F.conv2d(x, w, b, **kw), _t(*xs), _t(*ws), _t(ws[0]))


def test_conv2d_float64_no_bias_unbatched():
    grads_match(lambda x, w: F.conv2d(x, w, stride=2, padding=1), _t(2, 2, 5, 5, dtype="float64"),
                _t(3, 2, 3, 3, dtype="float64"))
    _needs_cuda("reshape")
    grads_match(lambda x, w: F.conv2d(x, w, padding=1), _t(2, 4, 4), _t(2, 2, 3, 3))


def test_nn_conv2d_module():
    conv = ember.nn.Conv2d(2, 4, 3, stride=1, padding=1, groups=2)
    x = _t(2, 2, 4, 4)
    ref = conv(x)
    ref.sum().backward()
    conv_g = ember.nn.Conv2d(2, 4, 3, stride=1, padding=1, groups=2)
    conv_g.load_state_dict(conv.state_dict())
    conv_g.cuda()
    out = conv_g(x.cuda())
    same(ref, out, **TOL)
    _needs_cuda("sum")
    out.sum().backward()
    same(conv.weight.grad, conv_g.weight.grad, **TOL)
    same(conv.bias.grad, conv_g.bias.grad, **TOL)


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True)])
def test_conv2d_backward_masks(mask):
    x, w = _t(2, 2, 4, 5), _t(4, 1, 3, 2)
    attrs = _attrs(w.shape, stride=(2, 1), padding=1, groups=2)
    g = _t(*apply("conv2d", x, w, **attrs).shape)
    _check_op("conv2d_backward", g, x, w, output_mask=mask, **attrs)


def test_conv2d_chunked(monkeypatch):
    from ember.backends.cuda import conv_kernels

    monkeypatch.setattr(conv_kernels, "CHUNK_ELEMS", 1)  # one image per chunk: the weight gradient accumulates
    x, w, b = _t(3, 2, 4, 4), _t(2, 1, 3, 3), _t(2)
    attrs = _attrs(w.shape, padding=1, groups=2)
    _check_op("conv2d", x, w, b, **attrs)
    g = _t(3, 2, 4, 4)
    _check_op("conv2d_backward", g, x, w, output_mask=(True, True, True), **attrs)


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh"])
def test_conv2d_act(act):
    x, w, b = _t(1, 2, 5, 5), _t(3, 2, 3, 3), _t(3)
    _check_op("conv2d_act", x, w, b, act=act, **_attrs(w.shape, padding=1))
    _check_op("conv2d_act", x.double(), w.double(), act=act, **_attrs(w.shape, stride=2, dilation=2))


@pytest.mark.parametrize("act", ["none", "relu"])
def test_conv2d_pool(act):
    x, w, b = _t(1, 2, 5, 5), _t(3, 2, 2, 2), _t(3)
    _check_op("conv2d_pool", x, w, b, act=act, **_attrs(w.shape, padding=1))  # 6x6 conv output
    _check_op("conv2d_pool", _t(1, 2, 6, 5), w, act=act, **_attrs(w.shape))  # 5x4 output: floor mode drops a row
    xn = x.numpy().copy()
    xn[0, 0, 2, 2] = np.nan  # NaN wins the max, as in max_pool2d
    _check_op("conv2d_pool", ember.from_numpy(xn), w, b, act=act, **_attrs(w.shape, stride=(1, 2), padding=(0, 1)))
    _check_op("conv2d_pool", _t(1, 4, 5, 5, dtype="float64"), _t(2, 2, 3, 3, dtype="float64"), act=act,
              **_attrs((2, 2, 3, 3), padding=1, groups=2))
