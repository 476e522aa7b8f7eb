"""Every op's shape rule returns the shapes its kernel produces, and keeps symbolic dims flowing.

The tracer of ``ember.serialize`` calls ``op.shape(*input_shapes, **attrs)`` with symbolic dims (int
subclasses whose arithmetic records graph nodes). Here the trace hook records real op calls (the
gradcheck samples of ``op_samples.py``, their backward passes, and extra samples for the
non-differentiable ops); each rule must reproduce the actual output shapes, both from plain ints and
from dims wrapped in ``D`` below, whose arithmetic returns ``D`` and which refuses ``int()``.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops import registry

from .op_samples import SAMPLES

# Ops with no shape rule on purpose: their output shape depends on the data, so the tracer must
# refuse to trace them (a traced graph could not know its output shape).
DATA_DEPENDENT = {
    "nonzero": "one row per nonzero element: the count is data (x[mask] and masked_select go through it)",
}


# A slice whose bounds lie inside the dim has a constant length (x[1:3] has 2 rows for any n >= 3).
_SLICING = {"getitem", "index", "arange"}  # output sizes computed from constants (slice bounds, range ends)


class D(int):
    """A stand-in for a symbolic dim: arithmetic keeps the type; converting back to int is refused."""

    def __int__(self):
        raise AssertionError("a shape rule converted a dim with int()")

    def _wrap(name):
        base = getattr(int, name)

        def f(self, *args):
            r = base(self, *args)
            return D.__new__(D, r) if r.__class__ is int else r

        f.__name__ = name
        return f

    for _n in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
               "__rfloordiv__", "__mod__", "__rmod__", "__neg__", "__abs__", "__pos__"):
        locals()[_n] = _wrap(_n)
    del _n, _wrap

    def __repr__(self):
        return f"D({int.__repr__(self)})"


def _ints_in(v, acc):
    if isinstance(v, bool):
        return acc
    if isinstance(v, (int, np.integer)):
        acc.add(v)
    elif isinstance(v, (tuple, list)):
        for x in v:
            _ints_in(x, acc)
    elif isinstance(v, dict):
        for x in v.values():
            _ints_in(x, acc)
    return acc


# ---- extra samples: ops no gradcheck sample reaches -----------------------------------------------

def _i(*shape, high=4):
    return ember.tensor(np.random.default_rng(len(shape)).integers(0, high, shape))


def _x(*shape):
    return ember.randn(*shape)


def _extra_calls():
    a, b, c = _x(3, 1, 4), _x(2, 1), _x(())
    for fn in (ember.eq, ember.ne, ember.lt, ember.le, ember.gt, ember.ge, ember.maximum):
        fn(a, b), fn(c, a), fn(a, 0.5)
    m, n = a > 0, b < 0
    ember.logical_and(m, n), ember.logical_or(m, c > 0), ember.logical_xor(m, n), ember.logical_not(m)
    ia, ib = _i(3, 4), _i(4)
    ember.bitwise_and(ia, ib), ember.bitwise_or(ia, ib), ember.bitwise_xor(ia, 3), ember.bitwise_not(ia)
    ember.isfinite(a), ember.isinf(a), ember.isnan(a)
    ember.where(m, a, 0.0), ember.where(c > 0, b, a)
    x = _x(3, 4, 2)
    for fn in (ember.argmax, ember.argmin):
        fn(x), fn(x, dim=1), fn(x, dim=-1, keepdim=True)
    (x > 0).any(), (x > 0).all(dim=1), (x > 0).any(dim=(0, 2), keepdim=True)
    F.one_hot(_i(2, 3), 5), F.one_hot(_i(4), 4)
    x.prod(dim=1), x.prod(dim=0, keepdim=True), x.sum(dim=(0, 2)), x.mean(dim=-1, keepdim=True)
    x.cumsum(2), x.var(), x.amax(dim=(0, 1), keepdim=True)
    # indexing: basic, advanced (adjacent and split advanced indices), masks, None, Ellipsis
    y = _x(4, 5, 3)
    y[1], y[-1, 2:], y[None, ..., 1], y[::2, 1:5:3, None], y[..., :0], y[1:100, -3:-1], y[7:]
    j, k = ember.tensor([[0, 3], [1, 1]]), ember.tensor([2, 0])
    y[j], y[:, j], y[j, k], y[j, :, k], y[1, :, k], y[..., k], y[None, j, 1:], y[j, None]
    y[y[:, :, 0] > 0], y[:, y[0, :, 0] > 0], y[True], y[False, 1]
    y.masked_select(y > 0), y.nonzero(), ember.nonzero(y[0, 0] > 0, as_tuple=True)
    # reductions and shape ops at the edges: 0-d, empty, negative dims
    z = _x(())
    z.sum(), z.reshape(1, 1), z.expand(2, 3), z.flip(()), x.reshape(-1, 2), x.flatten(1), x.squeeze(), _x(0, 3).sum(0)
    ember.cat([_x(2, 0), _x(2, 3)], dim=1), ember.stack([z, z]), x.narrow(-1, 1, 1), x.repeat(2, 1, 1, 3)
    x.to(ember.int64), x.clone(), x.flip(-1)
    F.pad(_x(1, 2, 3, 4), (1, 2, 2, 0), mode="reflect"), F.pad(_x(1, 2, 5), (2, 2), mode="replicate")
    F.pad(_x(2, 3), (-1, 2, 1, -1))
    # shape arithmetic ops the tracer records for symbolic dims (never reached from eager code)
    n = registry.apply("sym_size", y, dim=1)
    registry.apply("sym_arith", n, kind="mul", const=3), registry.apply("sym_arith", n, n, kind="floordiv")
    registry.apply("sym_arith", n, kind="sub", const=7, reverse=True)
    registry.apply("full", shape=(2, 3), value=1.5, dtype="float32")
    registry.apply("arange", start=0, end=5, step=1, dtype="int64"), registry.apply("arange", start=5, end=0, step=-2,
                                                                                    dtype="float32")
    registry.apply("arange", start=3, end=3, step=1, dtype="int64")
    # backward ops the CPU backward runs as plain kernels (dispatched as ops on CUDA)
    registry.apply("linear_weight_grad", _x(2, 3, 4), _x(2, 3, 5))
    registry.apply("cross_entropy_backward", _x(()), _x(4, 3), ember.tensor([0, 2, 1, 1]), ignore_index=-100,
                   reduction="mean", label_smoothing=0.0)
    # fused inference ops the serialize passes emit (never reached from eager code)
    registry.apply("linear_act", _x(3, 4), _x(5, 4), _x(5), act="relu")
    registry.apply("linear_act", _x(2, 3, 4), _x(5, 4), act="gelu")
    registry.apply("conv2d_act", _x(2, 3, 7, 6), _x(4, 3, 3, 3), _x(4), stride=(2, 1), padding=(1, 0), dilation=(1, 1),
                   groups=1, padding_extra=(0, 0), act="gelu_tanh")
    registry.apply("conv2d_pool", _x(2, 3, 9, 8), _x(4, 3, 3, 3), _x(4), stride=(1, 1), padding=(1, 0), dilation=(1, 1),
                   groups=1, padding_extra=(0, 0), act="relu")
    registry.apply("linear_mlp", _x(2, 3, 4), _x(5, 4), _x(5), _x(2, 5), _x(2), relus=(True, False))
    # int8 layers: dynamic (float in / out) and static (uint8 in / out)
    w8 = ember.tensor(np.arange(-12, 12).reshape(4, 6).astype(np.int8))
    registry.apply("dynamic_quantized_linear", _x(3, 6), w8, ember.ones(4), ember.zeros(4), relu=True)
    w8b = ember.tensor(np.arange(-4, 4).reshape(2, 4).astype(np.int8))
    registry.apply("dynamic_quantized_mlp", _x(2, 3, 6), w8, ember.ones(4), ember.zeros(4), w8b, ember.ones(2),
                   ember.zeros(2), relus=(True, False))
    u8 = lambda *shape: ember.tensor((np.arange(int(np.prod(shape))) % 251).reshape(shape).astype(np.uint8))  # noqa: E731
    qp = (ember.tensor(np.float32(0.1)), ember.tensor(np.uint8(3)))
    registry.apply("quantized_linear", u8(2, 3, 6), *qp, w8, ember.ones(4), *qp, ember.zeros(4), relu=False)
    wc = ember.tensor(np.ones((4, 3, 3, 3), np.int8))
    registry.apply("quantized_conv2d", u8(2, 3, 7, 6), *qp, wc, ember.ones(()), *qp, stride=(2, 1), padding=(1, 0),
                   dilation=(1, 1), groups=1, relu=True)
    # the runtime's quantization folding: a requantize table and max pooling of the codes
    registry.apply("requantize", u8(2, 3, 4), *qp, ember.tensor(np.float32(0.05)), ember.tensor(np.int8(-2)),
                   dtype="int8")
    registry.apply("quantized_conv2d_pool", u8(2, 3, 7, 6), *qp, wc, ember.ones(()), *qp, stride=(1, 1),
                   padding=(1, 1), dilation=(1, 1), groups=1, relu=False)
    registry.apply("quantized_max_pool2d", u8(2, 3, 7, 6), kernel_size=(3, 2), stride=(2, 2), padding=(1, 1),
                   dilation=(1, 1), ceil_mode=True)
    # quantization: quantize / dequantize, per tensor and per channel (fake_quantize has gradcheck samples)
    quant = ember.ops.quantized
    quant.dequantize(quant.quantize_per_tensor(x, 0.05, 3, ember.uint8), 0.05, 3)
    q8 = quant.quantize_per_channel(x, [0.1, 0.2, 0.3, 0.4], ember.tensor([0, 1, -1, 2]), 1, ember.int8)
    quant.dequantize(q8, [0.1, 0.2, 0.3, 0.4], ember.tensor([0, 1, -1, 2]), axis=1)
    quant.quantize_per_tensor(z, 0.05, -3, ember.int8)


def _run_sample(sample):
    """Run one gradcheck sample forward, then backward through a weighted sum of its outputs."""
    ins, which = [], sample.options.get("grad_inputs")
    for i, a in enumerate(np.asarray(v) for v in sample.inputs):
        floating = a.dtype.kind == "f"
        t = ember.tensor(a.astype(np.float64) if floating else a.copy())
        ins.append(t.requires_grad_(True) if floating and (which is None or i in which) else t)
    out = sample.fn(*ins)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    loss = None
    for o in outs:
        if isinstance(o, ember.Tensor) and o.requires_grad:
            term = (o * ember.randn(*o.shape, dtype=o.dtype)).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()


def _record():
    calls = []

    def hook(op, inputs, attrs, outputs):
        calls.append((op, tuple(t.shape for t in inputs), dict(attrs), tuple(o.shape for o in outputs)))

    prev = registry.set_trace_hook(hook)
    try:
        ember.manual_seed(0)
        for _, samples in sorted(SAMPLES.items()):
            for s in samples:
                _run_sample(s)
        _extra_calls()
    finally:
        registry.set_trace_hook(prev)
    return calls


_CALLS = _record()


def _expected(op, outs):
    return outs if op.n_outputs > 1 else outs[0]


def _by_op():
    by = {}
    for op, ins, attrs, outs in _CALLS:
        by.setdefault(op.name, []).append((op, ins, attrs, outs))
    return by


_BY_OP = _by_op()


@pytest.mark.parametrize("name", sorted(_BY_OP))
def test_rule_matches_kernel(name):
    for op, ins, attrs, outs in _BY_OP[name]:
        if op.shape is None:
            assert name in DATA_DEPENDENT, f"{name}: no shape rule"
            continue
        got = op.shape(*ins, **attrs)
        assert got == _expected(op, outs), f"{name}: rule gives {got}, kernel gave {outs} (inputs {ins}, {attrs})"


@pytest.mark.parametrize("name", sorted(n for n in _BY_OP if n not in DATA_DEPENDENT))
def test_rule_keeps_symbolic_dims(name):
    for op, ins, attrs, outs in _BY_OP[name]:
        sym = tuple(tuple(D(n) for n in s) for s in ins)
        got = op.shape(*sym, **attrs)
        want = _expected(op, outs)
        assert got == want, f"{name}: rule on symbolic dims gives {got}, want {want} (inputs {ins}, {attrs})"
        shapes = got if op.n_outputs > 1 else (got,)
        assert isinstance(shapes, tuple) and all(isinstance(s, tuple) for s in shapes), f"{name}: {got!r}"
        # A dim that is not D must be a constant of the op (0, 1, the number of inputs, or a number from
        # its attributes);
        # anything else was computed outside D's arithmetic (numpy, int(), slice.indices ...).
        consts = _ints_in(attrs, {0, 1, len(ins)})
        bound = max(abs(c) for c in consts) if name in _SLICING else -1
        for s in shapes:
            for v in s:
                assert v.__class__ is D or (v.__class__ is int and (v in consts or v <= bound)), (
                    f"{name}: output dim {v!r} of {got} lost its symbolic type (inputs {ins}, {attrs})")


def test_every_op_has_a_rule_or_a_reason():
    missing = [n for n, op in sorted(registry._REGISTRY.items()) if op.shape is None and n not in DATA_DEPENDENT]
    assert not missing, f"ops without a shape rule: {missing}"
    assert all(registry._REGISTRY[n].shape is None for n in DATA_DEPENDENT)


def test_every_op_is_exercised():
    unreached = sorted(set(registry._REGISTRY) - set(_BY_OP))
    assert not unreached, f"ops no sample reaches (add one to _extra_calls): {unreached}"


@pytest.mark.parametrize("call,msg", [
    (lambda: _x(2, 3) + _x(4), "add: shapes (2, 3) and (4,) are not broadcastable"),
    (lambda: ember.where(_x(2) > 0, _x(3), 0.0), "where: shapes"),
    (lambda: _x(2, 3) @ _x(4, 2), "matmul"),
    (lambda: _x(2, 3).reshape(4, 2), "reshape: shape (4, 2) is invalid for input of size 6"),
    (lambda: _x(2, 3)[0, 0, 0], "too many indices for tensor of dimension 2"),
    (lambda: _x(2, 3)[..., 0, ...], "single ellipsis"),
    (lambda: _x(2, 3)[ember.tensor([True, False, True])], "shape of the mask"),
    (lambda: ember.index_select(_x(2, 3), 0, ember.tensor([[0]])), "index_select: index is supposed to be a vector"),
])
def test_bad_shapes_still_raise_named_errors(call, msg):
    with pytest.raises((RuntimeError, IndexError), match=msg.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_index_rule_matches_numpy():
    """The getitem/index rule against numpy's own indexing on random mixes of items."""
    from ember.ops.index_rules import index_shape

    rng = np.random.default_rng(3)
    pool = [None, "...", 0, -1, 2, (None, None, None), (1, None, None), (None, -1, 2), (-5, 3, 3), (2, 1, None)]
    for _ in range(300):
        n_t = rng.integers(0, 3)
        # (index tensors hold 0, so with them every dim is >= 1: the kernel checks index values)
        shape = tuple(int(n) for n in rng.integers(1 if n_t else 0, 4, rng.integers(0, 4)))
        a = np.zeros(shape)
        items = [pool[j] for j in rng.integers(0, len(pool), rng.integers(0, 4))]
        t_shapes = [tuple(int(n) for n in rng.integers(1, 3, rng.integers(0, 3))) for _ in range(n_t)]
        for _ in t_shapes:
            items.insert(rng.integers(0, len(items) + 1), "tensor")
        ts = iter(t_shapes)
        np_items = tuple(np.zeros(next(ts), np.int64) if it == "tensor" else Ellipsis if it == "..." else
                         slice(*it) if isinstance(it, tuple) else it for it in items)
        try:
            want = a[np_items].shape
        except IndexError:
            want = IndexError
        except ValueError:  # index shapes that do not broadcast
            want = RuntimeError
        try:
            got = index_shape(shape, *t_shapes, index=tuple(items))
        except (IndexError, RuntimeError) as e:
            got = type(e)
        assert got == want, (shape, items, t_shapes)
