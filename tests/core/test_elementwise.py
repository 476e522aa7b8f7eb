"""Elementwise ops against PyTorch: forward, gradients, broadcasting, scalars, dtypes, kinks, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops import elementwise as E

from .oracle import check_against_torch, gradcheck

rng = np.random.default_rng(0)


def _r(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _away0(*shape):
    a = _r(*shape, lo=0.3, hi=2.0)
    return a * np.where(rng.random(shape) < 0.5, -1, 1).astype(np.float32)


POS = dict(lo=0.2, hi=3.0)
UNARY = [  # name, ember fn, torch fn, input sampler
    ("neg", E.neg, torch.neg, _r),
    ("abs", E.abs, torch.abs, _away0),
    ("exp", E.exp, torch.exp, _r),
    ("log", E.log, torch.log, lambda *s: _r(*s, **POS)),
    ("log1p", E.log1p, torch.log1p, lambda *s: _r(*s, **POS)),
    ("expm1", E.expm1, torch.expm1, _r),
    ("sqrt", E.sqrt, torch.sqrt, lambda *s: _r(*s, **POS)),
    ("rsqrt", E.rsqrt, torch.rsqrt, lambda *s: _r(*s, **POS)),
    ("sin", E.sin, torch.sin, _r),
    ("cos", E.cos, torch.cos, _r),
    ("tanh", E.tanh, torch.tanh, _r),
    ("sigmoid", E.sigmoid, torch.sigmoid, lambda *s: _r(*s, lo=-30, hi=30)),
    ("relu", E.relu, torch.relu, _away0),
    ("gelu", E.gelu, TF.gelu, _r),
    ("gelu_tanh", lambda x: E.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"), _r),
    ("silu", E.silu, TF.silu, lambda *s: _r(*s, lo=-30, hi=30)),
    ("leaky_relu", lambda x: E.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2), _away0),
    ("square", E.square, torch.square, _r),
    ("reciprocal", E.reciprocal, torch.reciprocal, _away0),
    ("sign", E.sign, torch.sign, _away0),
    ("floor", E.floor, torch.floor, _r),
    ("ceil", E.ceil, torch.ceil, _r),
    ("round", E.round, torch.round, _r),
    ("round2", lambda x: E.round(x, decimals=1), lambda x: torch.round(x, decimals=1), _r),
    ("clamp", lambda x: E.clamp(x, -0.5, 0.7), lambda x: torch.clamp(x, -0.5, 0.7), _r),
    ("clamp_min", lambda x: E.clamp(x, min=-0.5), lambda x: torch.clamp(x, min=-0.5), _r),
    ("clamp_max", lambda x: E.clamp_max(x, 0.3), lambda x: torch.clamp_max(x, 0.3), _r),
    ("transposed_exp", lambda x: E.exp(x.transpose(0, 1)), lambda x: torch.exp(x.transpose(0, 1)), _r),
]
DIFFERENTIABLE = [u for u in UNARY if u[0] not in ("sign", "floor", "ceil", "round", "round2")]


@pytest.mark.parametrize("name,efn,tfn,sample", UNARY, ids=[u[0] for u in UNARY])
def test_unary_vs_torch(name, efn, tfn, sample):
    check_against_torch(efn, tfn, [sample(3, 5)])
    check_against_torch(efn, tfn, [sample(2, 3, 4)[..., ::2]])  # strided input


@pytest.mark.parametrize("name,efn,tfn,sample", DIFFERENTIABLE, ids=[u[0] for u in DIFFERENTIABLE])
def test_unary_gradcheck(name, efn, tfn, sample):
    gradcheck(efn, [sample(2, 3).astype(np.float64)])


def test_unary_methods_and_float16():
    x = ember.tensor([[-1.5, 0.0, 2.0]])
    assert np.allclose(x.exp().numpy(), np.exp(x.numpy()))
    assert x.relu().tolist() == [[0.0, 0.0, 2.0]] and abs(x).tolist() == [[1.5, 0.0, 2.0]]
    assert (-x).tolist() == [[1.5, 0.0, -2.0]] and x.clamp(0, 1).tolist() == [[0.0, 0.0, 1.0]]
    h = x.half()
    for f in (E.exp, E.sigmoid, E.gelu, E.silu, E.relu, E.tanh):
        out = f(h)
        assert out.dtype == ember.float16
        np.testing.assert_allclose(out.numpy().astype(np.float32), f(x).numpy(), atol=2e-3, rtol=2e-3)


BINARY = [
    ("add", E.add, torch.add, _r, _r),
    ("add_alpha", lambda a, b: E.add(a, b, alpha=2.5), lambda a, b: torch.add(a, b, alpha=2.5), _r, _r),
    ("sub", E.sub, torch.sub, _r, _r),
    ("sub_alpha", lambda a, b: a.sub(b, alpha=-3), lambda a, b: a.sub(b, alpha=-3), _r, _r),
    ("mul", E.mul, torch.mul, _r, _r),
    ("div", E.div, torch.div, _r, _away0),
    ("pow", E.pow, torch.pow, lambda *s: _r(*s, **POS), _r),
    ("maximum", E.maximum, torch.maximum, _r, _r),
    ("minimum", E.minimum, torch.minimum, _r, _r),
    ("remainder", E.remainder, torch.remainder, _r, _away0),
    ("div_floor", lambda a, b: E.div(a, b, rounding_mode="floor"), lambda a, b: torch.div(a, b, rounding_mode="floor"),
     _r, _away0),
    ("div_trunc", lambda a, b: E.div(a, b, rounding_mode="trunc"), lambda a, b: torch.div(a, b, rounding_mode="trunc"),
     _r, _away0),
]
SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (3,)), ((4, 1), ())]


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("name,efn,tfn,sa,sb", BINARY, ids=[b[0] for b in BINARY])
def test_binary_vs_torch(name, efn, tfn, sa, sb, shapes):
    check_against_torch(efn, tfn, [sa(*shapes[0]), sb(*shapes[1])])


@pytest.mark.parametrize("name,efn,tfn,sa,sb", BINARY[:10], ids=[b[0] for b in BINARY[:10]])
def test_binary_gradcheck(name, efn, tfn, sa, sb):
    gradcheck(efn, [sa(2, 3).astype(np.float64), sb(3).astype(np.float64)])


def test_dunders_vs_torch():
    cases = [
        lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b, lambda a, b: a ** 2,
        lambda a, b: 2.0 ** a, lambda a, b: 1.5 - a, lambda a, b: 3 / b, lambda a, b: 2 * a + 1, lambda a, b: -a,
        lambda a, b: abs(b), lambda a, b: a.pow(3) - b.add(a, alpha=0.5), lambda a, b: a % b,
        lambda a, b: +a, lambda a, b: a.multiply(b).divide(b.abs() + 1),
    ]
    for f in cases:
        check_against_torch(f, f, [_r(3, 4), _away0(3, 4)])
    # torch has no derivative for floor_divide (ember's is zero, as for div(rounding_mode="floor"))
    for f in (lambda a, b: a // b, lambda a, b: 7 % b):  # torch: "derivative ... is not implemented"
        check_against_torch(f, f, [_r(3, 4), _away0(3, 4)], grad=False)


def test_python_scalars_keep_float32():
    x = ember.ones(3)
    for y in (x + 2.5, 2.5 + x, x * 1e-3, x / 3, x - 1, 1 - x, x ** 2.5, 2 ** x, E.maximum(x, 0.5), x.clamp(0.1)):
        assert y.dtype == ember.float32
    assert (ember.ones(3, dtype=ember.float64) * 2.5).dtype == ember.float64
    assert (x * ember.tensor(2.0, dtype=ember.float64)).dtype == ember.float32  # 0-d does not widen


INT_EXPRS = [  # (a, b: int64 tensors, c: float32 tensor, L: the library, for dtype names and functions)
    lambda a, b, c, L: a + c,
    lambda a, b, c, L: a / b,
    lambda a, b, c, L: a + 1,
    lambda a, b, c, L: a * 1.5,
    lambda a, b, c, L: a.exp(),
    lambda a, b, c, L: a.sqrt(),
    lambda a, b, c, L: a.sigmoid(),
    lambda a, b, c, L: a ** 2,
    lambda a, b, c, L: a ** 0.5,
    lambda a, b, c, L: 2 ** a,
    lambda a, b, c, L: 2.0 ** a,
    lambda a, b, c, L: a // b,
    lambda a, b, c, L: a % b,
    lambda a, b, c, L: -a,
    lambda a, b, c, L: abs(-a),
    lambda a, b, c, L: a.relu(),
    lambda a, b, c, L: a.clamp(min=2),
    lambda a, b, c, L: a.clamp(min=2.5),
    lambda a, b, c, L: a.floor(),
    lambda a, b, c, L: a.reciprocal(),
    lambda a, b, c, L: (a > 2) + (b < 3),
    lambda a, b, c, L: (a > 2) * 2.0,
    lambda a, b, c, L: a.to(L.int32) + a,
    lambda a, b, c, L: a.to(L.int32) * 2,
    lambda a, b, c, L: a.to(L.uint8) + 1.5,
    lambda a, b, c, L: L.div(-a, b, rounding_mode="trunc"),
    lambda a, b, c, L: L.div(-a, b, rounding_mode="floor"),
]


@pytest.mark.parametrize("expr", INT_EXPRS, ids=range(len(INT_EXPRS)))
def test_int_dtype_rules(expr):
    a, b, c = np.array([1, 2, 3, 4]), np.array([2, -3, 2, 5]), _r(4)
    got = expr(ember.tensor(a), ember.tensor(b), ember.tensor(c), ember)
    want = expr(torch.tensor(a), torch.tensor(b), torch.tensor(c), torch)
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_integer_division_at_the_dtype_minimum(dtype):
    """trunc and floor division of the most negative value (whose abs() would wrap) follow torch."""
    lo = np.iinfo(dtype).min
    a = np.array([lo, lo, lo + 1, -7, 7], dtype)
    b = np.array([3, -3, 2, 2, -2], dtype)
    for mode in ("trunc", "floor"):
        got = ember.tensor(a).div(ember.tensor(b), rounding_mode=mode)
        want = torch.div(torch.from_numpy(a), torch.from_numpy(b), rounding_mode=mode)
        assert got.dtype.name == str(want.dtype).split(".")[-1]
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=mode)


def test_comparisons_and_logic_vs_torch():
    a, b = _r(3, 4), _r(4)
    a[0, :2] = b[:2]
    for name in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor"):
        check_against_torch(getattr(E, name), getattr(torch, name), [a, b], grad=False)
    for f in (lambda x, y: x == y, lambda x, y: x != 0.5, lambda x, y: x < y, lambda x, y: 0.1 <= x,
              lambda x, y: (x > 0) & (y > 0), lambda x, y: (x > 0) | (y > 0), lambda x, y: (x > 0) ^ (y > 0),
              lambda x, y: ~(x > 0), lambda x, y: x.logical_not(), lambda x, y: x.isnan(), lambda x, y: x.isfinite()):
        check_against_torch(f, f, [a, b], grad=False)
    x = ember.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    assert E.isnan(x).tolist() == [False, True, False, False]
    assert E.isinf(x).tolist() == [False, False, True, True]
    assert E.isfinite(x).tolist() == [True, False, False, False]
    assert (~ember.tensor([1, 2])).tolist() == [-2, -3]
    assert (ember.tensor([5, 6]) & 3).tolist() == [1, 2]


def test_eq_operator_and_hash():
    x, y = ember.ones(2), ember.ones(2)
    assert (x == y).tolist() == [True, True]
    assert (x == None) is False and (x != None) is True  # noqa: E711
    d = {x: 1, y: 2}
    assert d[x] == 1 and d[y] == 2 and len({x, y, x}) == 2


KINK_FNS = [  # same expression in both libraries
    lambda t: t.relu(), lambda t: t.abs(), lambda t: t.clamp(0.0, 1.0), lambda t: t.clamp(min=0.0),
    lambda t: t.clamp(max=1.0), lambda t: t.sign(), lambda t: t.round(), lambda t: t * t.relu(),
]


@pytest.mark.parametrize("f", KINK_FNS, ids=range(len(KINK_FNS)))
def test_kinks_match_torch(f):
    x = np.array([-1.0, 0.0, 0.0, 1.0, 2.0, 0.5], np.float32)
    check_against_torch(f, f, [x], atol=0, rtol=0, grad_atol=0, grad_rtol=0)


def test_kinks_binary_exact():
    x = np.array([-1.0, 0.0, 0.0, 1.0, 2.0], np.float32)
    y = np.array([0.0, 0.0, 1.0, 1.0, -1.0], np.float32)
    exact = dict(atol=0, rtol=0, grad_atol=0, grad_rtol=0)
    check_against_torch(E.maximum, torch.maximum, [x, y], **exact)
    check_against_torch(E.minimum, torch.minimum, [x, y], **exact)
    check_against_torch(lambda t: E.leaky_relu(t, 0.1), lambda t: TF.leaky_relu(t, 0.1), [x], **exact)
    check_against_torch(lambda a, b: a ** b, lambda a, b: a ** b, [np.abs(y), x])  # 0 ** b and a ** 0
    check_against_torch(lambda a: a ** 0, lambda a: a ** 0, [x])
    r = ember.tensor(x, requires_grad=True)
    E.relu(r).sum().backward()
    assert r.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_nan_propagation():
    x = ember.tensor([float("nan"), 1.0])
    assert np.isnan(E.relu(x).numpy()[0]) and np.isnan(E.maximum(x, 0.0).numpy()[0])
    assert np.isnan(E.clamp(x, 0, 1).numpy()[0]) and np.isnan(E.sigmoid(x).numpy()[0])
    assert E.sigmoid(ember.tensor([-200.0, 200.0])).tolist() == [0.0, 1.0]
    assert E.exp(ember.tensor([1000.0])).tolist() == [float("inf")]  # silently, like torch


def test_clamp_tensor_bounds_vs_torch():
    check_against_torch(lambda x, lo, hi: E.clamp(x, lo, hi), lambda x, lo, hi: torch.clamp(x, lo, hi),
                        [_r(3, 4), _r(4, lo=-1, hi=0), _r(3, 1, lo=0, hi=1)])
    check_against_torch(lambda x, lo: x.clamp(min=lo), lambda x, lo: x.clamp(min=lo), [_r(3, 4), _r(4)])
    gradcheck(lambda x, lo, hi: E.clamp(x, lo, hi), [_r(3, 4).astype(np.float64), _r(4, lo=-1, hi=0).astype(np.float64),
                                                     _r(3, 1, lo=0, hi=1).astype(np.float64)])


WHERE_PAIRS = [
    (lambda c, a, b: E.where(c, a, b), lambda c, a, b: torch.where(c, a, b)),
    (lambda c, a, b: E.where(c, a, 0.0), lambda c, a, b: torch.where(c, a, 0.0)),
    (lambda c, a, b: E.where(c, 2.0, b), lambda c, a, b: torch.where(c, 2.0, b)),
    (lambda c, a, b: a.where(c, b), lambda c, a, b: a.where(c, b)),
]


@pytest.mark.parametrize("ef,tf", WHERE_PAIRS, ids=range(len(WHERE_PAIRS)))
def test_where_vs_torch(ef, tf):
    c = rng.random((3, 4)) < 0.5
    check_against_torch(ef, tf, [c, _r(3, 1), _r(4)])
    gradcheck(ef, [c, _r(3, 1).astype(np.float64), _r(4).astype(np.float64)])


def test_where_dtypes_and_nonzero_form():
    assert E.where(ember.tensor([True, False]), 1.0, 0).dtype == ember.float32
    assert E.where(ember.tensor([True, False]), 1, 0).dtype == ember.int64
    idx = E.where(ember.tensor([[True, False], [False, True]]))
    assert [i.tolist() for i in idx] == [[0, 1], [0, 1]]


@settings(deadline=None, max_examples=20)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=3), st.lists(st.booleans(), min_size=3, max_size=3),
       st.sampled_from(["add", "sub", "mul", "div", "maximum", "where"]), st.booleans())
def test_broadcasting_property(shape, ones, op, transpose):
    sa = tuple(shape)
    sb = tuple(1 if o else s for s, o in zip(sa, ones))[1:] if sa else ()
    a, b = _r(*sa), _away0(*sb)
    def view(t):
        return t.transpose(0, 1) if transpose and a.ndim >= 2 else t

    if transpose and a.ndim >= 2:
        a = np.ascontiguousarray(a.swapaxes(0, 1))  # the op then sees a non-contiguous transposed view
    if op == "where":
        cond = rng.random(sa) < 0.5
        check_against_torch(lambda c, x, y: E.where(c, view(x), y), lambda c, x, y: torch.where(c, view(x), y),
                            [cond, a, b])
    else:
        check_against_torch(lambda x, y: getattr(E, op)(view(x), y), lambda x, y: getattr(torch, op)(view(x), y),
                            [a, b])


def test_noncontiguous_numpy_inputs():
    base = _r(4, 6)
    for arr in (base.T, base[:, ::2], base[::-1]):
        t = ember.from_numpy(arr)
        np.testing.assert_allclose(E.relu(t).numpy(), np.maximum(arr, 0))
        np.testing.assert_allclose(E.gelu(t).numpy(), TF.gelu(torch.from_numpy(arr.copy())).numpy(), atol=1e-6)
        np.testing.assert_allclose((t * 2 + t).numpy(), arr * 3, rtol=1e-6)
        np.testing.assert_allclose(ember.ops.activation._relu_bw.kernels["cpu"](arr, arr), np.where(arr > 0, arr, 0))


def test_error_messages():
    with pytest.raises(RuntimeError, match=r"add: shapes \(2, 3\) and \(4,\) are not broadcastable"):
        ember.ones(2, 3) + ember.ones(4)
    with pytest.raises(RuntimeError, match="where: expected condition to be a bool tensor, got ember.float32"):
        E.where(ember.ones(2), ember.ones(2), 0.0)
    with pytest.raises(RuntimeError, match="sub: subtraction of two bool tensors"):
        ember.tensor([True]) - ember.tensor([False])
    with pytest.raises(RuntimeError, match="neg: negation of a bool tensor"):
        -ember.tensor([True])
    with pytest.raises(RuntimeError, match="gelu: expected a floating point tensor, got ember.int64"):
        E.gelu(ember.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="bitwise_and: only integer and bool tensors are supported, got "
                                           "ember.float32"):
        ember.ones(2) & ember.ones(2)
    with pytest.raises(RuntimeError, match="clamp: at least one of 'min' or 'max'"):
        E.clamp(ember.ones(2))
    with pytest.raises(RuntimeError, match="pow: integers to negative integer powers"):
        ember.tensor([2]) ** -1
    with pytest.raises(TypeError, match="mul: got a numpy array"):
        E.mul(ember.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="rounding_mode"):
        E.div(ember.ones(2), 2, rounding_mode="round")
