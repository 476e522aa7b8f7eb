"""Sample calls for every differentiable primitive op in ``ember.ops.registry``: data, not tests.

``SAMPLES[op_name]`` is a list of ``Sample(fn, inputs, options, note)``: ``fn`` takes ember tensors
(one per numpy array of ``inputs``) and reaches ``op_name`` through the public API the way a user
would; ``options`` are keyword arguments for ``oracle.gradcheck`` (grad_inputs, eps, atol, rtol).
Inputs are small and kept away from kinks, ties and jumps so central differences are meaningful.
The gradcheck test, and later the tracer / ONNX tests, iterate over this table.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

import ember
import ember.nn.functional as F
import ember.ops.sorting as _sorting  # registers tril/triu/sort/topk (until ember's __init__ imports it)
from ember.ops import conv_pool, linear_relu
from ember.ops.index import encode_index
from ember.ops.registry import apply


class Sample(NamedTuple):
    fn: Callable
    inputs: list
    options: dict = {}  # never mutated; copied by the consumer
    note: str = ""


_rng = np.random.default_rng(20240611)


def _n(*shape):
    """Standard normal values."""
    return _rng.standard_normal(shape)


def _u(lo, hi, *shape):
    return _rng.uniform(lo, hi, shape)


def _away(*shape, gap=0.25):
    """Values with |v| in [gap, 2]: away from the kink of abs/relu/sign at 0."""
    return _rng.choice([-1.0, 1.0], shape) * _rng.uniform(gap, 2.0, shape)


def _distinct(*shape):
    """Distinct values 0.37 apart (shuffled): max/min/pool have no ties for eps to cross."""
    n = int(np.prod(shape))
    return (_rng.permutation(n) * 0.37 - 0.37 * n / 2 + 0.05).reshape(shape)


def _idx(high, *shape):
    return _rng.integers(0, high, shape).astype(np.int64)


def _off_grid(*shape):
    """Values whose fractional part is in [0.15, 0.35] or [0.65, 0.85]: far from floor/ceil/round jumps."""
    frac = _rng.uniform(0.15, 0.35, shape) + _rng.choice([0.0, 0.5], shape)
    return _rng.integers(-3, 3, shape) + frac


def _dropout(x):
    ember.manual_seed(7)  # the same mask on every evaluation of the central difference
    return F.dropout(x, p=0.3, training=True)


def _index_put_basic(x, v):
    y = x.clone()
    y[1:3, 0] = v
    return y


def _index_put_advanced(x, v, i):
    y = x.clone()
    y[i] = v
    return y


def _getitem_backward_basic(g):
    items, _ = encode_index((slice(1, 3), 0, None))
    return apply("getitem_backward", g, index=items, shape=(4, 3))


def _getitem_backward_advanced(g, i):
    return apply("getitem_backward", g, i, index=("tensor", (None, None, None)), shape=(4, 3))


def _batch_norm_eval(x, rm, rv, w, b):
    return F.batch_norm(x, rm, rv, w, b, training=False)


def _bce(x, t):
    return F.binary_cross_entropy(x, t, reduction="sum")


_HALF_POS = np.array([0.5, -1.25, 2.0, 0.75, -3.5, 1.125])  # exact in float32, as are x +- 2**-10

SAMPLES: dict[str, list[Sample]] = {
    # ---- elementwise: binary --------------------------------------------------------------------------
    "add": [Sample(lambda a, b: a + b, [_n(3, 4), _n(4)]),
            Sample(lambda a, b: ember.add(a, b, alpha=2.5), [_n(2, 3), _n(2, 1)])],
    "sub": [Sample(lambda a, b: a - b, [_n(3, 1), _n(1, 4)]),
            Sample(lambda a: 1.5 - a, [_n(5)])],
    "mul": [Sample(lambda a, b: a * b, [_n(2, 3), _n(2, 1)]),
            Sample(lambda a: a * 3.0, [_n(4)])],
    "div": [Sample(lambda a, b: a / b, [_n(3, 4), _away(4, gap=0.5)]),
            Sample(lambda a, b: ember.div(a, b, rounding_mode="floor"),
                   [np.array([0.5, 1.7, -2.3, 3.1]), np.array([2.0, 0.8, 1.5, -1.3])],
                   note="a/b is away from integers: the numeric derivative is 0")],
    "pow": [Sample(lambda a, b: a ** b, [_u(0.5, 2.0, 2, 3), _n(2, 3)]),
            Sample(lambda a: a ** 3.0, [_n(5)])],
    "maximum": [Sample(ember.maximum, [_distinct(3, 4)[0], _distinct(4) + 0.1])],
    "minimum": [Sample(ember.minimum, [_distinct(2, 3), _distinct(3) + 0.1])],
    "remainder": [Sample(ember.remainder, [np.array([2.3, -1.7, 5.2, 0.4]), np.array([1.5, 1.5, -2.0, 0.7])],
                         note="a/b is away from integers, where remainder jumps")],
    "where": [Sample(lambda c, a, b: ember.where(c, a, b), [_n(3, 4) > 0, _n(3, 4), _n(4)])],
    # ---- elementwise: unary ---------------------------------------------------------------------------
    "neg": [Sample(lambda x: -x, [_n(2, 3)])],
    "abs": [Sample(ember.abs, [_away(2, 3)])],
    "exp": [Sample(ember.exp, [_n(2, 3)])],
    "expm1": [Sample(ember.expm1, [_n(2, 3)])],
    "log": [Sample(ember.log, [_u(0.3, 3.0, 2, 3)])],
    "log1p": [Sample(ember.log1p, [_u(-0.6, 2.0, 2, 3)])],
    "sin": [Sample(ember.sin, [_n(2, 3)])],
    "cos": [Sample(ember.cos, [_n(2, 3)])],
    "tanh": [Sample(ember.tanh, [_n(2, 3)])],
    "sqrt": [Sample(ember.sqrt, [_u(0.3, 3.0, 2, 3)])],
    "rsqrt": [Sample(ember.rsqrt, [_u(0.3, 3.0, 2, 3)])],
    "reciprocal": [Sample(ember.reciprocal, [_away(2, 3, gap=0.4)])],
    "square": [Sample(ember.square, [_n(2, 3)])],
    "sign": [Sample(ember.sign, [_away(2, 3)], note="gradient 0 away from 0")],
    "floor": [Sample(ember.floor, [_off_grid(2, 3)], note="gradient 0 away from integers")],
    "ceil": [Sample(ember.ceil, [_off_grid(2, 3)], note="gradient 0 away from integers")],
    "round": [Sample(ember.round, [_off_grid(2, 3)], note="gradient 0 away from the .5 jumps"),
              Sample(lambda x: ember.round(x, decimals=1), [_off_grid(2, 3) / 10.0])],
    # ---- activations ----------------------------------------------------------------------------------
    "relu": [Sample(ember.relu, [_away(3, 4)])],
    "sigmoid": [Sample(ember.sigmoid, [_n(3, 4)])],
    "silu": [Sample(F.silu, [_n(3, 4)])],
    "gelu": [Sample(F.gelu, [_n(3, 4)]),
             Sample(lambda x: F.gelu(x, approximate="tanh"), [_n(3, 4)])],
    "leaky_relu": [Sample(lambda x: F.leaky_relu(x, 0.1), [_away(3, 4)])],
    "clamp": [Sample(lambda x: ember.clamp(x, -0.5, 0.5), [np.array([-1.2, -0.3, 0.1, 0.4, 0.9, -0.7])],
                     note="no element within eps of a bound"),
              Sample(lambda x: x.clamp(min=0.0), [_away(5)])],
    # ---- basic ----------------------------------------------------------------------------------------
    "cast": [Sample(lambda x: x.float(), [_HALF_POS], {"eps": 2.0 ** -10},
                    note="float64 -> float32: inputs and x +- eps are exact in float32, so the difference is exact")],
    "clone": [Sample(lambda x: x.clone(), [_n(2, 3)])],
    # ---- shape ----------------------------------------------------------------------------------------
    "reshape": [Sample(lambda x: x.reshape(3, 2), [_n(2, 3)])],
    "permute": [Sample(lambda x: x.permute(2, 0, 1), [_n(2, 3, 2)])],
    "expand": [Sample(lambda x: x.expand(3, 4), [_n(1, 4)]),
               Sample(lambda x: x.expand(2, 3, 2), [_n(3, 1)])],
    "flip": [Sample(lambda x: ember.flip(x, (0, 1)), [_n(2, 3)])],
    "narrow": [Sample(lambda x: x.narrow(1, 1, 2), [_n(3, 4)])],
    "repeat": [Sample(lambda x: x.repeat(2, 3), [_n(2, 2)])],
    # ---- join -----------------------------------------------------------------------------------------
    "cat": [Sample(lambda a, b: ember.cat([a, b], dim=1), [_n(2, 3), _n(2, 2)])],
    "stack": [Sample(lambda a, b: ember.stack([a, b], dim=1), [_n(2, 3), _n(2, 3)])],
    "pad": [Sample(lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), [_n(2, 3)]),
            Sample(lambda x: F.pad(x, (-1, 1)), [_n(2, 4)], note="negative pad crops"),
            Sample(lambda x: F.pad(x, (2, 1), mode="reflect"), [_n(2, 4)]),
            Sample(lambda x: F.pad(x, (1, 2), mode="replicate"), [_n(2, 3)]),
            Sample(lambda x: F.pad(x, (1, 1, 2, 1), mode="circular"), [_n(1, 3, 3)])],
    "pad_backward": [Sample(lambda g: apply("pad_backward", g, pad=(2, 1), mode="reflect", shape=(2, 4)), [_n(2, 7)],
                            note="a differentiable backward op: ember has no create_graph, so applied directly")],
    # ---- indexing -------------------------------------------------------------------------------------
    "getitem": [Sample(lambda x: x[1:3, ::2], [_n(4, 5)]),
                Sample(lambda x: x[None, ..., 1], [_n(2, 3)]),
                Sample(lambda x: x.select(0, 1), [_n(3, 2)])],
    "getitem_backward": [Sample(_getitem_backward_basic, [_n(2, 1)], note="applied directly: no create_graph"),
                         Sample(_getitem_backward_advanced, [_n(4, 3), np.array([0, 2, 2, 3])],
                                note="repeated index rows are summed")],
    "index": [Sample(lambda x, i: x[i], [_n(4, 3), np.array([3, 0, 3])]),
              Sample(lambda x, m: x[m], [_n(3, 4), _n(3, 4) > 0.2]),
              Sample(lambda x, i: x[:, i], [_n(2, 4), np.array([[1, 1], [0, 3]])])],
    "index_put": [Sample(_index_put_basic, [_n(4, 3), _n(2)]),
                  Sample(_index_put_advanced, [_n(4, 3), _n(2, 3), np.array([3, 1])])],
    "masked_fill": [Sample(lambda x, m: x.masked_fill(m, 0.5), [_n(3, 4), _n(4) > 0]),
                    Sample(lambda x, m, v: ember.masked_fill(x, m, v), [_n(3, 4), _n(3, 4) > 0, np.array(0.3)])],
    "gather": [Sample(lambda x, i: ember.gather(x, 1, i), [_n(3, 4), _idx(4, 3, 5)])],
    "gather_backward": [Sample(lambda g, i: apply("gather_backward", g, i, dim=1, shape=(3, 4)),
                               [_n(3, 5), _idx(4, 3, 5)], note="applied directly: no create_graph")],
    "scatter": [Sample(lambda x, i, s: ember.scatter(x, 1, i, s),
                       [_n(3, 4), np.array([[0, 2], [3, 1], [1, 0]]), _n(3, 2)],
                       note="no repeated target within a row: scatter with duplicates is order-dependent")],
    "scatter_add": [Sample(lambda x, i, s: ember.scatter_add(x, 0, i, s), [_n(3, 4), _idx(3, 2, 4), _n(2, 4)])],
    "index_select": [Sample(lambda x, i: ember.index_select(x, 0, i), [_n(4, 3), np.array([2, 0, 2])])],
    "index_select_backward": [Sample(lambda g, i: apply("index_select_backward", g, i, dim=1, shape=(2, 4)),
                                     [_n(2, 3), np.array([3, 0, 3])], note="applied directly: no create_graph")],
    "index_add": [Sample(lambda x, i, s: ember.index_add(x, 1, i, s, alpha=2.0),
                         [_n(2, 4), np.array([1, 3, 1]), _n(2, 3)])],
    "embedding": [Sample(lambda i, w: F.embedding(i, w), [np.array([[1, 3], [3, 0]]), _n(4, 3)]),
                  Sample(lambda i, w: F.embedding(i, w), [np.array([2, 0, 2, 2]), _n(3, 2)],
                         note="padding_idx / scale_grad_by_freq change the gradient on purpose (torch): not here")],
    # ---- reductions -----------------------------------------------------------------------------------
    "sum": [Sample(lambda x: x.sum(), [_n(2, 3)]),
            Sample(lambda x: x.sum(dim=(0, 2), keepdim=True), [_n(2, 3, 2)])],
    "mean": [Sample(lambda x: x.mean(), [_n(2, 3)]),
             Sample(lambda x: x.mean(dim=1), [_n(2, 3, 2)])],
    "var": [Sample(lambda x: x.var(dim=1), [_n(3, 4)]),
            Sample(lambda x: ember.var(x, unbiased=False), [_n(2, 3)])],
    "std": [Sample(lambda x: x.std(dim=0, keepdim=True), [_n(3, 4)]),
            Sample(lambda x: ember.std(x), [_n(2, 3)])],
    "amax": [Sample(lambda x: x.amax(dim=1), [_distinct(3, 4)])],
    "amin": [Sample(lambda x: ember.amin(x, dim=(0, 1)), [_distinct(2, 3, 2)])],
    "max_dim": [Sample(lambda x: x.max(dim=1), [_distinct(3, 4)])],
    "min_dim": [Sample(lambda x: ember.min(x, dim=0, keepdim=True), [_distinct(3, 4)])],
    "prod": [Sample(lambda x: x.prod(), [_u(0.5, 1.5, 2, 3)]),
             Sample(lambda x: x.prod(dim=1), [np.array([[0.0, 1.5, -2.0], [0.5, 1.2, 0.8]])],
                    note="a zero element: the backward must not divide by it")],
    "cumsum": [Sample(lambda x: x.cumsum(1), [_n(2, 4)])],
    "norm": [Sample(lambda x: x.norm(), [_n(2, 3)]),
             Sample(lambda x: ember.norm(x, p=1, dim=1), [_away(2, 3)]),
             Sample(lambda x: ember.norm(x, p=3, dim=0), [_away(3, 2)])],
    "logsumexp": [Sample(lambda x: ember.logsumexp(x, dim=1), [_n(3, 4)])],
    "softmax": [Sample(lambda x: F.softmax(x, dim=-1), [_n(3, 4)])],
    "log_softmax": [Sample(lambda x: F.log_softmax(x, dim=0), [_n(3, 4)])],
    # ---- linear algebra -------------------------------------------------------------------------------
    "matmul": [Sample(lambda a, b: a @ b, [_n(2, 3), _n(3, 4)]),
               Sample(ember.matmul, [_n(2, 2, 3), _n(3, 2)]),
               Sample(ember.matmul, [_n(3), _n(3, 2)])],
    "linear": [Sample(F.linear, [_n(2, 3), _n(4, 3), _n(4)]),
               Sample(F.linear, [_n(2, 2, 3), _n(2, 3)])],
    # ---- nn -------------------------------------------------------------------------------------------
    "conv2d": [Sample(lambda x, w, b: F.conv2d(x, w, b, padding=1), [_n(1, 2, 4, 4), _n(3, 2, 3, 3), _n(3)]),
               Sample(lambda x, w: F.conv2d(x, w, stride=2, dilation=1, groups=2),
                      [_n(1, 4, 5, 5), _n(2, 2, 2, 2)])],
    "dropout": [Sample(_dropout, [_n(4, 5)], note="reseeded inside, so every evaluation draws the same mask")],
    "batch_norm": [Sample(_batch_norm_eval, [_n(2, 3, 2), _n(3), _u(0.5, 2.0, 3), _n(3), _n(3)],
                          {"grad_inputs": [0, 3, 4]}, note="running statistics are not differentiable (torch)")],
    "batch_norm_train": [Sample(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                                [_n(3, 2, 2), _n(2), _n(2)]),
                         Sample(lambda x: F.group_norm(x, 2), [_n(2, 4, 3)])],
    "layer_norm": [Sample(lambda x, w, b: F.layer_norm(x, (4,), w, b), [_n(3, 4), _n(4), _n(4)]),
                   Sample(lambda x: F.layer_norm(x, (2, 3)), [_n(2, 2, 3)])],
    "conv2d_maxpool": [Sample(lambda x, w, b: conv_pool.conv2d_maxpool(x, w, b, (1, 1), (1, 1), (1, 1), 1),
                              [_n(2, 2, 4, 5), _n(3, 2, 3, 3), _n(3)], note="float64: the plain kernels' path"),
                       Sample(lambda x, w: conv_pool.conv2d_maxpool(x, w, None, (1, 1), (0, 1), (2, 1), 2),
                              [_n(1, 4, 7, 5), _n(2, 2, 2, 3)], note="odd conv output (5x5), groups, dilation")],
    "linear_relu": [Sample(linear_relu.linear_relu, [_n(5, 3), _n(4, 3), _n(4)],
                           note="float64 (the kernels of both dtypes are numba-compiled)"),
                    Sample(linear_relu.linear_relu, [_n(3, 6), _n(2, 6)], note="no bias")],
    "max_pool2d": [Sample(lambda x: F.max_pool2d(x, 2), [_distinct(1, 2, 4, 4)]),
                   Sample(lambda x: F.max_pool2d(x, 3, stride=2, padding=1), [_distinct(1, 1, 5, 5)])],
    "avg_pool2d": [Sample(lambda x: F.avg_pool2d(x, 2), [_n(1, 2, 4, 4)]),
                   Sample(lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
                          [_n(1, 1, 5, 5)])],
    "adaptive_avg_pool2d": [Sample(lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [_n(1, 2, 5, 5)])],
    "adaptive_max_pool2d": [Sample(lambda x: F.adaptive_max_pool2d(x, (2, 2)), [_distinct(1, 2, 5, 4)],
                                   note="not exported by ember.nn.functional yet: called from its op family")],
    # ---- losses ---------------------------------------------------------------------------------------
    "mse_loss": [Sample(F.mse_loss, [_n(3, 4), _n(3, 4)]),
                 Sample(lambda x, t: F.mse_loss(x, t, reduction="none"), [_n(2, 3), _n(2, 3)])],
    "l1_loss": [Sample(lambda x, t: F.l1_loss(x, t, reduction="sum"), [_away(3, 4), np.zeros((3, 4))])],
    "smooth_l1_loss": [Sample(lambda x, t: F.smooth_l1_loss(x, t, beta=0.5),
                              [np.array([[-1.3, -0.2, 0.1, 0.9], [0.3, 2.0, -0.7, -0.4]]), np.zeros((2, 4))],
                              note="|x - t| away from beta and 0")],
    "huber_loss": [Sample(lambda x, t: F.huber_loss(x, t, delta=0.8, reduction="sum"),
                          [np.array([-1.3, -0.2, 0.1, 0.9, 0.3, 2.0]), np.zeros(6)])],
    "kl_div": [Sample(lambda x, t: F.kl_div(x, t, reduction="batchmean"), [_n(2, 3), _u(0.1, 1.0, 2, 3)]),
               Sample(lambda x, t: F.kl_div(x, t, log_target=True, reduction="none"), [_n(2, 3), _n(2, 3)])],
    "binary_cross_entropy": [Sample(_bce, [_u(0.1, 0.9, 2, 3), _u(0.0, 1.0, 2, 3)])],
    "binary_cross_entropy_with_logits": [
        Sample(F.binary_cross_entropy_with_logits, [_n(2, 3), _u(0.0, 1.0, 2, 3)]),
        Sample(lambda x, t, w, pw: F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw),
               [_n(2, 3), _u(0.0, 1.0, 2, 3), _u(0.5, 2.0, 3), _u(0.5, 2.0, 3)], {"grad_inputs": [0, 1]},
               note="weight and pos_weight are constants (ember rejects them requiring grad)")],
    "cross_entropy": [Sample(F.cross_entropy, [_n(3, 4), np.array([0, 3, 1])]),
                      Sample(lambda x, t, w: F.cross_entropy(x, t, w, ignore_index=2, label_smoothing=0.1),
                             [_n(4, 3), np.array([0, 2, 1, 1]), _u(0.5, 2.0, 3)], {"grad_inputs": [0]}),
                      Sample(lambda x, t: F.cross_entropy(x, t, reduction="none"),
                             [_n(2, 3, 2), np.array([[0, 2], [1, 1]])])],
    "cross_entropy_prob": [Sample(F.cross_entropy, [_n(3, 4), _u(0.0, 1.0, 3, 4)]),
                           Sample(lambda x, t: F.cross_entropy(x, t, label_smoothing=0.2, reduction="sum"),
                                  [_n(2, 3), _u(0.0, 1.0, 2, 3)])],
    "nll_loss": [Sample(F.nll_loss, [_n(3, 4), np.array([1, 0, 3])]),
                 Sample(lambda x, t, w: F.nll_loss(x, t, w, reduction="sum"),
                        [_n(3, 4), np.array([2, 2, 0]), _u(0.5, 2.0, 4)], {"grad_inputs": [0]})],
    # ---- sorting --------------------------------------------------------------------------------------
    "tril": [Sample(lambda x: _sorting.tril(x), [_n(3, 4)]),
             Sample(lambda x: x.tril(diagonal=-1), [_n(2, 3, 3)])],
    "triu": [Sample(lambda x: _sorting.triu(x, 1), [_n(4, 3)])],
    "sort": [Sample(lambda x: x.sort(dim=1, descending=True).values, [_distinct(3, 4)]),
             Sample(lambda x: _sorting.sort(x, dim=0)[0], [_distinct(4, 2)])],
    "topk": [Sample(lambda x: x.topk(2, dim=1).values, [_distinct(3, 5)]),
             Sample(lambda x: _sorting.topk(x, 3, dim=0, largest=False)[0], [_distinct(4, 2)])],
    # ---- quantization ---------------------------------------------------------------------------------
    # fake_quantize is piecewise constant with a straight-through gradient: eps is a whole number of
    # quantization steps of every channel, so the central difference sees slope 1 inside the range and 0
    # where it saturates; x / scale sits 0.2-0.3 away from the .5 ties, and codes inside the range stay inside
    # after +-eps (those outside stay outside)
    "fake_quantize": [
        Sample(lambda x: ember.ops.quantized.fake_quantize_per_tensor_affine(x, 0.125, 3, 0, 15),
               [0.125 * np.array([[-1.3, 0.2, 2.7, 4.8, 7.3], [9.8, -7.2, -20.3, 15.7, 30.2]])], {"eps": 0.25},
               note="scale 0.125, codes -3..12 inside; eps = 2 steps"),
        Sample(lambda x: ember.ops.quantized.fake_quantize_per_channel_affine(
            x, ember.tensor(np.array([0.125, 0.25, 0.0625], np.float32)), ember.tensor([3, 0, 8]), 1, 0, 15),
            [np.ascontiguousarray((np.array([0.125, 0.25, 0.0625])[:, None] * np.array(
                [[0.2, 9.7, -8.3, 3.3], [1.3, 13.8, 20.2, -3.3], [-3.8, 2.7, 15.3, -0.2]])).reshape(3, 2, 2)
                .transpose(1, 0, 2))], {"eps": 0.25},
            note="eps = 2, 1 and 4 steps of the three channels")],
}
