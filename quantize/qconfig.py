"""QConfig: which observer (or fake-quantize) factories watch a layer's activations and weights.

Mirrors ``torch.ao.quantization.qconfig``: the same named configurations with the same observers and
arguments. ``get_default_qconfig("x86")`` is torch's x86/fbgemm post-training default (histogram
activations with reduce_range, per-channel symmetric int8 weights). torch's version-1 QAT configs use a
fused observer+fake-quant module; ``get_default_qat_qconfig`` returns the unfused ``FakeQuantize``
equivalents (torch's version 0), for either version.
"""
from __future__ import annotations

from collections import namedtuple

from ember import dtypes as _dt
from ember.nn import Identity, Module

from .fake_quantize import (FakeQuantize, default_fake_quant, default_per_channel_weight_fake_quant,
                            default_weight_fake_quant)
from .observer import (HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver,
                       PlaceholderObserver, per_channel_symmetric,
                       default_dynamic_quant_observer, default_observer,
                       default_per_channel_weight_observer, default_weight_observer,
                       per_channel_weight_observer_range_neg_127_to_127, weight_observer_range_neg_127_to_127)

_BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """Observer *factories* (classes or ``with_args`` results) for activations and weights; each
    prepared layer calls them to get its own observers."""

    __slots__ = ()

    def __new__(cls, activation, weight):
        if isinstance(activation, Module) or isinstance(weight, Module):
            raise ValueError("QConfig received an observer instance; pass the observer class or a factory "
                             "instead, e.g. MinMaxObserver.with_args(dtype=ember.int8)")
        return super().__new__(cls, activation, weight)


default_qconfig = QConfig(activation=default_observer, weight=default_weight_observer)
default_per_channel_qconfig = QConfig(activation=default_observer, weight=default_per_channel_weight_observer)
default_dynamic_qconfig = QConfig(activation=default_dynamic_quant_observer, weight=default_weight_observer)
per_channel_dynamic_qconfig = QConfig(activation=default_dynamic_quant_observer,
                                      weight=default_per_channel_weight_observer)
# Dynamic layers quantize their activations to 7 bits (0..127) unless the activation placeholder says
# reduce_range=False (DynamicLinear; torch's x86 backend always does): with those, x86 CPUs without VNNI run the
# exact ``vpmaddubsw`` tile, ~1.5x faster than the int16 one (docs/quantize-design.md).
# Not in torch: ONNX Runtime's ``quantize_dynamic(reduce_range=True)``, per-channel 7-bit weights (-64..63) and
# 8-bit activations (the same tile, exact for those weights), when ORT's numerics are wanted.
per_channel_7bit_dynamic_qconfig = QConfig(activation=PlaceholderObserver.with_args(dtype=_dt.uint8, is_dynamic=True,
                                                                                    reduce_range=False),
                                           weight=PerChannelMinMaxObserver.with_args(
                                               dtype=_dt.int8, qscheme=per_channel_symmetric, reduce_range=True))
default_qat_qconfig = QConfig(activation=default_fake_quant, weight=default_weight_fake_quant)
default_weight_only_qconfig = QConfig(activation=Identity, weight=default_weight_fake_quant)
default_activation_only_qconfig = QConfig(activation=default_fake_quant, weight=Identity)
default_quint8_weight_qconfig = QConfig(activation=HistogramObserver, weight=MinMaxObserver)
default_symmetric_qnnpack_qconfig = QConfig(
    activation=HistogramObserver.with_args(dtype=_dt.int8, reduce_range=False, eps=2 ** -12),
    weight=weight_observer_range_neg_127_to_127)
default_per_channel_symmetric_qnnpack_qconfig = QConfig(
    activation=HistogramObserver.with_args(dtype=_dt.int8, reduce_range=False, eps=2 ** -12),
    weight=per_channel_weight_observer_range_neg_127_to_127)
float16_static_qconfig = QConfig(activation=PlaceholderObserver.with_args(dtype=_dt.float16),
                                 weight=PlaceholderObserver.with_args(dtype=_dt.float16))


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend {backend!r} is not supported; use one of {_BACKENDS} (all run on ember's "
                         f"CPU int8 kernels; they differ only in the observers they choose)")


def get_default_qconfig(backend="x86", version=0):
    """torch's post-training default for ``backend``: histogram-observed uint8 activations and
    symmetric int8 weights (per channel except on qnnpack); x86/fbgemm reduce the activation range."""
    _check_backend(backend)
    if version != 0:
        raise ValueError(f"get_default_qconfig: version must be 0, got {version}")
    if backend in ("x86", "fbgemm"):
        return QConfig(activation=HistogramObserver.with_args(reduce_range=True),
                       weight=default_per_channel_weight_observer)
    if backend == "qnnpack":
        return QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=default_weight_observer)
    return QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                   weight=default_per_channel_weight_observer)


def get_default_qat_qconfig(backend="x86", version=1):
    """torch's quantization-aware-training default for ``backend``: moving-average fake-quant of uint8
    activations and symmetric int8 weights (per channel except on qnnpack)."""
    _check_backend(backend)
    if version not in (0, 1, None):
        raise ValueError(f"get_default_qat_qconfig: version must be 0 or 1, got {version}")
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        reduce_range=backend in ("x86", "fbgemm"))
    weight = default_weight_fake_quant if backend == "qnnpack" else default_per_channel_weight_fake_quant
    return QConfig(activation=activation, weight=weight)


def qconfig_equals(q1, q2):
    """Whether two QConfigs build the same observers (same classes and arguments)."""
    if q1 is None or q2 is None:
        return q1 is q2

    def same(a, b):
        pa, pb = getattr(a, "p", None), getattr(b, "p", None)
        if pa is None or pb is None:
            return a == b
        return (same(pa.func, pb.func) and pa.args == pb.args and pa.keywords == pb.keywords
                and a.callable_args == b.callable_args)

    return same(q1.activation, q2.activation) and same(q1.weight, q2.weight)


def require_cpu_model(model, fn_name):
    """ember.quantize prepares, calibrates and converts models on the CPU (as torch's eager-mode
    quantization does); the converted model can then move to CUDA, where its int8 kernels run."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_cuda:
            raise RuntimeError(
                f"{fn_name}: the model is on {t.device} (its {name!r} is); ember.quantize works on CPU models: "
                f"call {fn_name}(model.cpu(), ...), then move the result with .to('cuda') (the int8 kernels run "
                f"on CUDA)"
            )

