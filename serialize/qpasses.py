"""Quantization folding, a load-time pass: keep a converted int8 model in uint8 between its int8 layers.

A traced static-quantized model dequantizes after every int8 layer and quantizes again before the
next (the QDQ form ONNX uses), with float max pooling and reshapes in between. Two exact rewrites,
repeated until neither applies:

- sink: ``dequantize -> max_pool2d`` (indices unused) becomes ``quantized_max_pool2d -> dequantize``,
  and ``dequantize -> reshape`` becomes ``reshape -> dequantize`` (max pooling commutes with a
  monotonic map, reshape with any elementwise one);
- fold: ``dequantize -> quantize_per_tensor`` becomes one ``requantize`` (a 256-entry table computed
  with the same kernels), or nothing at all when that table is the identity;
- fuse: ``quantized_conv2d -> quantized_max_pool2d`` (2x2, stride 2) becomes ``quantized_conv2d_pool``.

On CPU, ``fold_requantize_into_convs`` then gives a ``requantize`` read only by a ``quantized_conv2d_pool`` to that
conv (its ``in_requant`` attribute): one node fewer, and the integer Winograd path looks the table up while it lays
its input out.

Only per-tensor dequantize with constant qparams, whose float output has no other reader, is moved.
"""
from __future__ import annotations

import numpy as np

from ember.ops import qfold
from ember.ops.registry import get_op

from .ir import Graph, Node, Value
from .passes import _fresh, _producers, _replace_uses, _users

_SINK = {"max_pool2d": "quantized_max_pool2d", "reshape": "reshape"}


def fold_quantization(g: Graph) -> int:
    """Apply the sink and fold rewrites until neither applies; returns how many were made."""
    total = 0
    while True:
        users, prod = _users(g), _producers(g)
        made = 0
        for n in list(g.nodes):
            if n.op in _SINK:
                made += _sink(g, n, users, prod)
            elif n.op == "quantize_per_tensor":
                made += _fold(g, n, users, prod)
            elif n.op == "quantized_max_pool2d":
                made += _fuse_pool(g, n, users, prod)
            if made:
                break  # the node list and the use maps changed: recompute them
        if not made:
            return total
        total += made


def _movable_dequantize(g, value, users, prod):
    """The per-tensor dequantize producing ``value`` (read by one node only), or None."""
    d = prod.get(value)
    if d is None or d.op != "dequantize" or d.attrs.get("axis") is not None or len(users.get(value, ())) != 1:
        return None
    if len(d.inputs) != 3 or not all(x in g.constants and g.constants[x].ndim == 0 for x in d.inputs[1:]):
        return None
    return d


def _sink(g, n, users, prod):
    d = _movable_dequantize(g, n.inputs[0], users, prod)
    if d is None or (n.op == "max_pool2d" and users.get(n.outputs[1])):
        return 0
    q = d.inputs[0]
    out = n.outputs[0]
    codes = _fresh(g, f"{out}.q")
    g.values[codes] = Value(codes, g.values[q].dtype, tuple(g.values[out].shape))
    if n.op == "max_pool2d":
        g.values.pop(n.outputs[1], None)
        n.op, n.version = _SINK[n.op], get_op(_SINK[n.op]).version
    n.inputs = [q] + n.inputs[1:]
    n.outputs = [codes]
    i = g.nodes.index(n)
    g.nodes.insert(i + 1, Node("dequantize", [codes] + d.inputs[1:], [out], dict(d.attrs), d.version))
    g.nodes.remove(d)
    del g.values[d.outputs[0]]
    return 1


def _fold(g, n, users, prod):
    d = _movable_dequantize(g, n.inputs[0], users, prod)
    if d is None or len(n.inputs) != 3 or not all(x in g.constants and g.constants[x].ndim == 0 for x in n.inputs[1:]):
        return 0
    q, (s1, z1), (s2, z2) = d.inputs[0], d.inputs[1:], n.inputs[1:]
    dtype = n.attrs.get("dtype", "uint8")
    c = g.constants
    table = qfold.requantize_table(np.dtype(g.values[q].dtype), c[s1], c[z1], c[s2], c[z2], dtype)
    identity = table.dtype == np.dtype(g.values[q].dtype) and np.array_equal(
        table, np.arange(256, dtype=np.uint8).view(table.dtype))
    out = n.outputs[0]
    if identity and out not in g.outputs:
        _replace_uses(g, out, q)
        g.nodes.remove(n)
        del g.values[out]
    else:
        n.op, n.version = "requantize", get_op("requantize").version
        n.inputs, n.attrs = [q, s1, z1, s2, z2], {"dtype": dtype}
    g.nodes.remove(d)
    del g.values[d.outputs[0]]
    return 1


def fold_requantize_into_convs(g: Graph) -> int:
    """``requantize`` (uint8 codes in and out, constant per-tensor qparams) -> ``quantized_conv2d_pool`` as the one
    reader becomes the conv with ``in_requant`` = (s1, z1, s2, z2); returns how many (CPU kernels only)."""
    users, prod, made = _users(g), _producers(g), 0
    for n in list(g.nodes):
        r = prod.get(n.inputs[0]) if n.op == "quantized_conv2d_pool" and n.inputs else None
        if r is None or r.op != "requantize" or r.attrs.get("dtype", "uint8") != "uint8" or n.attrs.get("in_requant"):
            continue
        out, c = r.outputs[0], g.constants
        if len(users.get(out, ())) != 1 or out in g.outputs or np.dtype(g.values[r.inputs[0]].dtype) != np.uint8:
            continue
        if len(r.inputs) != 5 or not all(x in c and c[x].ndim == 0 for x in r.inputs[1:]):
            continue
        s1, z1, s2, z2 = (c[x] for x in r.inputs[1:])
        n.attrs = {**n.attrs, "in_requant": (float(s1), int(z1), float(s2), int(z2))}
        n.inputs = [r.inputs[0]] + list(n.inputs[1:])
        g.nodes.remove(r)
        del g.values[out]
        made += 1
    return made


def _fuse_pool(g, pool, users, prod):
    attrs = {**get_op("quantized_max_pool2d").attrs, **pool.attrs}
    if any(tuple(attrs[k]) != tuple(v) if isinstance(v, tuple) else attrs[k] != v
           for k, v in qfold._POOL_2X2.items()):
        return 0
    x = pool.inputs[0]
    conv = prod.get(x)
    if conv is None or conv.op != "quantized_conv2d" or len(users.get(x, ())) != 1:
        return 0
    conv.op, conv.version = "quantized_conv2d_pool", get_op("quantized_conv2d_pool").version
    conv.outputs = [pool.outputs[0]]
    g.nodes.remove(pool)
    del g.values[x]
    return 1
