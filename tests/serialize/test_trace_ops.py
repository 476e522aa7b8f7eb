"""Every op sample traces with a symbolic batch dim: the graph reproduces eager at other batch sizes.

Iterates over ``tests/core/op_samples.py`` (each op reached through the public API, the way users call
it). ``trace`` itself checks the example batch and one more; here the program also runs at batch 1
and 5, so an op wrapper that turns a symbolic size into a plain int (baking it in) is caught.
"""
import os
import sys

import numpy as np
import pytest

import ember
from ember.serialize import trace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "core"))
from op_samples import SAMPLES  # noqa: E402

# Samples that cannot be traced with a batch dim by nature, keyed "op" (every sample) or "op[i]".
SKIP = {
    "reshape": "x.reshape(3, 2) names the example's sizes: dim 0 is not a batch dim",
    "expand[0]": "expands a (1, 4) input to a fixed (3, 4): dim 0 is not a batch dim",
    "expand[1]": "expands a (3, 1) input to a fixed (2, 3, 2): its dim 0 is the fixed target's dim 1",
    "getitem_backward[0]": "applied directly with a fixed shape=(4, 3) attribute: dim 0 is not a batch dim",
    "dropout": "training-mode dropout reseeds the global RNG inside the function: random masks cannot be "
               "captured in a graph",
}

# Samples that reach past row 0 along dim 0, so eager itself rejects batch 1: run at batch 5 only.
NO_BATCH_1 = {
    "getitem[2]": "x.select(0, 1) needs at least 2 rows",
    "topk[1]": "topk(x, 3, dim=0) needs at least 3 rows",
    "index_put[0]": "y[1:3, 0] = v with 2 values needs at least 3 rows",
}


def _cases():
    for op, samples in SAMPLES.items():
        for i, s in enumerate(samples):
            if not all(isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.ndim >= 1 for a in s.inputs):
                continue
            key = f"{op}[{i}]"
            reason = SKIP.get(key, SKIP.get(op))
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            yield pytest.param(s, (5,) if key in NO_BATCH_1 else (1, 5), id=key, marks=marks)


def _resize(arrays, n):
    """The example at batch ``n``: inputs sharing input 0's leading size are tiled along dim 0."""
    b = arrays[0].shape[0]
    out = []
    for a in arrays:
        if a.shape[0] == b:
            a = np.concatenate([a] * (n // b + 1))[:n]
        out.append(ember.tensor(np.ascontiguousarray(a)))
    return out


def _outputs(out):
    return (out,) if isinstance(out, ember.Tensor) else tuple(out)


@pytest.mark.parametrize("sample,batches", list(_cases()))
def test_op_traces_with_a_symbolic_batch(sample, batches):
    arrays = [a.astype(np.float32) for a in sample.inputs]
    prog = trace(sample.fn, tuple(ember.tensor(a) for a in arrays))  # checks batch b and b + 1 itself
    assert prog.signature["inputs"][0]["shape"][0] == "batch"
    for n in batches:
        xs = _resize(arrays, n)
        with ember.no_grad():
            want = _outputs(sample.fn(*xs))
        got = _outputs(prog(*xs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape, f"batch {n}: graph shape {g.shape}, eager shape {w.shape}"
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-5, rtol=1e-4, err_msg=f"batch {n}")


def test_skip_list_names_real_samples():
    """A stale entry would silently hide nothing; keep the list honest."""
    for key in list(SKIP) + list(NO_BATCH_1):
        op, _, idx = key.partition("[")
        assert op in SAMPLES, key
        if idx:
            assert int(idx.rstrip("]")) < len(SAMPLES[op]), key


def _r(*shape):
    return np.random.default_rng(sum(shape) + len(shape)).standard_normal(shape).astype(np.float32)


# User code that passes sizes read from x.shape back into ops: the sizes must stay symbolic.
SIZE_CALLS = {
    "reshape(b, -1)": (lambda x: x.reshape(x.shape[0], -1), [_r(3, 2, 2)]),
    "view(-1, last)": (lambda x: x.view(-1, x.shape[-1]), [_r(3, 2, 4)]),
    "reshape(b * c, -1)": (lambda x: x.reshape(x.shape[0] * x.shape[1], -1), [_r(3, 2, 4)]),
    "flatten/unflatten": (lambda x: x.flatten(0, 1).unflatten(0, (x.shape[0], 2)), [_r(3, 2, 4)]),
    "expand(b, 3, 4)": (lambda x: x.expand(x.shape[0], 3, 4), [_r(2, 1, 4)]),
    "expand_as": (lambda x, y: x.expand_as(y), [_r(3, 1), _r(3, 4)]),
    "narrow(0, 1, b - 1)": (lambda x: x.narrow(0, 1, x.shape[0] - 1), [_r(3, 4)]),
    "narrow(0, -(b - 1))": (lambda x: x.narrow(0, 1 - x.shape[0], x.shape[0] - 1), [_r(3, 4)]),
    "x[:b - 1]": (lambda x: x[: x.shape[0] - 1, 1:], [_r(3, 4)]),
    "x[b - 1]": (lambda x: x[x.shape[0] - 1], [_r(3, 4)]),
    "select(0, b - 1)": (lambda x: x.select(0, x.shape[0] - 1), [_r(3, 4)]),
    "split([b - 1, 1])": (lambda x: x.split([x.shape[0] - 1, 1], dim=0), [_r(3, 4)]),
    "split(b - 1)": (lambda x: x.split(x.shape[0] - 1, dim=0)[0], [_r(3, 4)]),
    "zeros(b, 4)": (lambda x: x + ember.zeros(x.shape[0], 4), [_r(3, 4)]),
    "ones((b, 1))": (lambda x: x * ember.ones((x.shape[0], 1)), [_r(3, 4)]),
    "full((b, 4))": (lambda x: x - ember.full((x.shape[0], 4), 0.5), [_r(3, 4)]),
    "arange(b)": (lambda x: x + ember.arange(x.shape[0], dtype=ember.float32).reshape(-1, 1), [_r(3, 4)]),
    "new_zeros(b, 4)": (lambda x: x + x.new_zeros(x.shape[0], 4), [_r(3, 4)]),
    "repeat(1, 2)": (lambda x: x.repeat(1, 2), [_r(3, 4)]),
    "topk(b - 1, dim=0)": (lambda x: x.topk(x.shape[0] - 1, dim=0).values, [_r(3, 4)]),
    "sum / b": (lambda x: x.sum(dim=0) / x.shape[0], [_r(3, 4)]),
    "b * x": (lambda x: x.shape[0] * x, [_r(3, 4)]),
    "batch-first attention": (
        lambda x: (x.reshape(x.shape[0], x.shape[1], 2, -1).transpose(1, 2)
                   @ x.reshape(x.shape[0], x.shape[1], 2, -1).permute(0, 2, 3, 1)).softmax(-1)
        .reshape(x.shape[0], -1), [_r(2, 3, 4)]),
}


# Known gaps outside the op wrappers, strict so the entry goes once they are fixed.
@pytest.mark.parametrize("key", list(SIZE_CALLS))
def test_sizes_read_from_shape_stay_symbolic(key):
    fn, arrays = SIZE_CALLS[key]
    prog = trace(fn, tuple(ember.tensor(a) for a in arrays))
    for n in (2, 5):
        xs = _resize(arrays, n)
        with ember.no_grad():
            want = _outputs(fn(*xs))
        got = _outputs(prog(*xs))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape, f"batch {n}: graph shape {g.shape}, eager shape {w.shape}"
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-5, rtol=1e-4, err_msg=f"batch {n}")
