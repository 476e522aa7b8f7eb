"""int8 compute ops of quantized models (docs/quantize-design.md): ``dynamic_quantized_linear``.

The int8 weight is an ordinary int8 tensor input (so files store one byte per weight and the ONNX
export sees the plain (N, K) matrix); the kernels' packed layout is made on first use and cached per
weight array (an int8 weight changed in place is not seen: assign a new tensor instead).
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from ..backends.cpu import int8_kernels as _ik
from .registry import kernel, register_op

_PACKED = {}  # id(weight array) -> (weakref to it, PackedWeight)
_PACK_LOCK = threading.Lock()


def packed(w: np.ndarray) -> _ik.PackedWeight:
    """The kernels' layout of int8 weight ``w``, packed once per array."""
    key = id(w)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is w:
        return hit[1]
    p = _ik.pack_weight(w)
    with _PACK_LOCK:
        try:
            ref = weakref.ref(w, lambda _r, k=key: _PACKED.pop(k, None))
        except TypeError:  # not weak-referenceable: pack per call
            return p
        _PACKED[key] = (ref, p)
    return p


def _dql_rule(x, w, w_scale, bias=None, *, relu=False):
    if len(w) != 2:
        raise RuntimeError(f"dynamic_quantized_linear: weight must be 2-D (out_features, in_features), got shape "
                           f"{tuple(w)}")
    if not x or x[-1] != w[1]:
        raise RuntimeError(f"dynamic_quantized_linear: input has {x[-1] if x else 0} features, weight expects {w[1]} "
                           f"(input shape {tuple(x)})")
    if tuple(w_scale) not in ((), (w[0],)):
        raise RuntimeError(f"dynamic_quantized_linear: w_scale has shape {tuple(w_scale)}; expected () (per tensor) "
                           f"or ({w[0]},) (per output channel)")
    if bias is not None and tuple(bias) != (w[0],):
        raise RuntimeError(f"dynamic_quantized_linear: bias has shape {tuple(bias)}, expected ({w[0]},)")
    return tuple(x[:-1]) + (w[0],)


register_op("dynamic_quantized_linear", attrs={"relu": False}, shape=_dql_rule,
            doc="float32 x @ dequantized(int8 weight)^T + bias, with x quantized to uint8 per call from its own "
                "min/max (torch's dynamic quantization); inputs (x, weight int8, w_scale, [bias])")


@kernel("dynamic_quantized_linear")
def _dql_cpu(x, w, w_scale, bias=None, *, relu=False):
    if w.dtype != np.int8:
        raise TypeError(f"dynamic_quantized_linear: weight must be int8 (symmetric), got {w.dtype}")
    if x.dtype != np.float32:
        raise TypeError(f"dynamic_quantized_linear: input must be float32, got {x.dtype}")
    return _ik.qlinear_dynamic(x, packed(w), w_scale, bias, relu=bool(relu))
