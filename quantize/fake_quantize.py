"""FakeQuantize: an observer plus quantize-dequantize in float, for quantization-aware training.

Modelled on ``torch.ao.quantization.fake_quantize``: the same constructor, buffers
(``fake_quant_enabled``, ``observer_enabled``, ``scale``, ``zero_point``), toggles and default factories.
The forward runs the ``fake_quantize_per_*_affine`` core ops, whose straight-through gradient passes
where the input is inside the quantized range. Per-tensor ``scale`` / ``zero_point`` are 0-d here
(torch keeps shape (1,)); a torch checkpoint's (1,) values load into them.
"""
from __future__ import annotations

import numpy as np

import ember
from ember import dtypes as _dt
from ember.nn import Module
from ember.ops.quantized import fake_quantize_per_channel_affine, fake_quantize_per_tensor_affine

from .observer import (_INT_RANGE, _PER_CHANNEL, _PER_TENSOR, FixedQParamsObserver, HistogramObserver,
                       MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver, _ResizableState,
                       _set_buffer, _with_args, default_fixed_qparams_range_0to1_observer,
                       default_fixed_qparams_range_neg1to1_observer, factory_keywords, per_channel_symmetric,
                       per_tensor_affine, per_tensor_symmetric)


class FakeQuantizeBase(Module):
    """Base of fake-quantize modules: the two on/off switches, kept as uint8 buffers as in torch."""

    with_args = classmethod(_with_args)

    def __init__(self):
        super().__init__()
        self.register_buffer("fake_quant_enabled", ember.tensor([1], dtype=ember.uint8))
        self.register_buffer("observer_enabled", ember.tensor([1], dtype=ember.uint8))

    def enable_fake_quant(self, enabled=True):
        _set_buffer(self, "fake_quant_enabled", [1 if enabled else 0])

    def disable_fake_quant(self):
        self.enable_fake_quant(False)

    def enable_observer(self, enabled=True):
        _set_buffer(self, "observer_enabled", [1 if enabled else 0])

    def disable_observer(self):
        self.enable_observer(False)

    def calculate_qparams(self):
        raise NotImplementedError(f"{type(self).__name__} does not compute quantization parameters")


class FakeQuantize(_ResizableState, FakeQuantizeBase):
    """``x_out = (clamp(round(x / scale) + zero_point, quant_min, quant_max) - zero_point) * scale``,
    with scale / zero_point refreshed from the observer on every forward while observing is enabled.

    ``observer`` is an observer class or ``with_args`` factory; ``observer_kwargs`` go to it.
    """

    _resizable = ("scale", "zero_point")

    def __init__(self, observer=MovingAverageMinMaxObserver, quant_min=None, quant_max=None, is_dynamic=False,
                 **observer_kwargs):
        super().__init__()
        if quant_min is not None and quant_max is not None:
            if quant_min > quant_max:
                raise ValueError(f"FakeQuantize: quant_min ({quant_min}) must be <= quant_max ({quant_max})")
            dtype = factory_keywords(observer).get("dtype", observer_kwargs.get("dtype", _dt.uint8))
            lo, hi = _INT_RANGE.get(_dt.as_dtype(dtype), (None, None))
            if lo is not None and not lo <= quant_min <= quant_max <= hi:
                raise ValueError(f"FakeQuantize: [quant_min, quant_max] = [{quant_min}, {quant_max}] is outside "
                                 f"the range of {dtype} [{lo}, {hi}]")
            observer_kwargs.update(quant_min=quant_min, quant_max=quant_max)
        observer_kwargs["is_dynamic"] = is_dynamic
        self.activation_post_process = observer(**observer_kwargs)
        obs = self.activation_post_process
        self.quant_min, self.quant_max = obs.quant_min, obs.quant_max
        self.is_dynamic = obs.is_dynamic
        self.dtype, self.qscheme = obs.dtype, obs.qscheme
        if self.qscheme not in _PER_TENSOR + _PER_CHANNEL:
            raise ValueError(f"FakeQuantize: only per-tensor and per-channel qschemes are supported, got "
                             f"{self.qscheme!r}")
        self.is_per_channel = self.qscheme in _PER_CHANNEL
        self.ch_axis = getattr(obs, "ch_axis", -1)
        shape = (1,) if self.is_per_channel else ()
        self.register_buffer("scale", ember.from_numpy(np.ones(shape, np.float32)))
        self.register_buffer("zero_point", ember.from_numpy(np.zeros(shape, np.int32)))

    def _state_shape(self, shape):
        # torch stores a per-tensor scale / zero point with shape (1,); ours are 0-d
        return () if not self.is_per_channel and shape == (1,) else shape

    def calculate_qparams(self):
        return self.activation_post_process.calculate_qparams()

    def forward(self, X):
        if self.observer_enabled.numpy()[0] == 1:
            self.activation_post_process(X.detach())
            scale, zero_point = self.calculate_qparams()
            _set_buffer(self, "scale", scale.numpy())
            _set_buffer(self, "zero_point", zero_point.numpy())
        if self.fake_quant_enabled.numpy()[0] == 1:
            if self.is_per_channel:
                X = fake_quantize_per_channel_affine(X, self.scale, self.zero_point, self.ch_axis, self.quant_min,
                                                     self.quant_max)
            else:
                X = fake_quantize_per_tensor_affine(X, self.scale, self.zero_point, self.quant_min, self.quant_max)
        return X

    def extra_repr(self):
        return (f"fake_quant_enabled={self.fake_quant_enabled.tolist()}, "
                f"observer_enabled={self.observer_enabled.tolist()}, quant_min={self.quant_min}, "
                f"quant_max={self.quant_max}, dtype={self.dtype}, qscheme={self.qscheme}, ch_axis={self.ch_axis}, "
                f"scale={self.scale.tolist()}, zero_point={self.zero_point.tolist()}")


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake quantization with the fixed scale / zero point of a ``FixedQParamsObserver``."""

    def __init__(self, observer):
        super().__init__(observer=observer)
        if type(self.activation_post_process) is not FixedQParamsObserver:
            raise TypeError(f"FixedQParamsFakeQuantize: the observer must be a FixedQParamsObserver, got "
                            f"{type(self.activation_post_process).__name__}")
        self.scale = self.activation_post_process.scale
        self.zero_point = self.activation_post_process.zero_point

    def calculate_qparams(self):
        return self.scale, self.zero_point


# ---- model.apply helpers, as torch.ao.quantization's ------------------------------------------
def disable_fake_quant(mod):
    """``model.apply(disable_fake_quant)``: pass values through unquantized (observers may still run)."""
    if isinstance(mod, FakeQuantizeBase):
        mod.disable_fake_quant()


def enable_fake_quant(mod):
    """``model.apply(enable_fake_quant)``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.enable_fake_quant()


def disable_observer(mod):
    """``model.apply(disable_observer)``: freeze scale / zero_point (usual late in QAT)."""
    if isinstance(mod, FakeQuantizeBase):
        mod.disable_observer()


def enable_observer(mod):
    """``model.apply(enable_observer)``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.enable_observer()


# ---- torch's default factories ------------------------------------------------------------------
default_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=_dt.uint8,
    qscheme=per_tensor_affine, reduce_range=True)
default_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=_dt.int8,
    qscheme=per_tensor_symmetric, reduce_range=False)
default_dynamic_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, is_dynamic=True, dtype=_dt.uint8,
    averaging_constant=1)
default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=_dt.int8,
    qscheme=per_channel_symmetric, reduce_range=False, ch_axis=0)
default_histogram_fake_quant = FakeQuantize.with_args(
    observer=HistogramObserver, quant_min=0, quant_max=255, dtype=_dt.uint8, qscheme=per_tensor_affine,
    reduce_range=True)
default_fixed_qparams_range_neg1to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_neg1to1_observer)
default_fixed_qparams_range_0to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_0to1_observer)
