"""Observers: modules that watch tensors during calibration and turn what they saw into qparams.

Modelled on ``torch.ao.quantization.observer``: the same classes, constructor arguments, defaults
and float32 formulas, so one calibration run gives torch's scale / zero_point. Statistics are kept
in buffers (so ``state_dict`` carries them) and computed with numpy on the detached input. Per-tensor
qparams are 0-d tensors (torch returns shape (1,)), per-channel ones 1-d (C,); zero points are int32.
"""
from __future__ import annotations

import functools

import numpy as np

import ember
from ember import dtypes as _dt
from ember.nn import Module

per_tensor_affine = "per_tensor_affine"
per_tensor_symmetric = "per_tensor_symmetric"
per_channel_affine = "per_channel_affine"
per_channel_symmetric = "per_channel_symmetric"
_PER_TENSOR = (per_tensor_affine, per_tensor_symmetric)
_PER_CHANNEL = (per_channel_affine, per_channel_symmetric)
_SYMMETRIC = (per_tensor_symmetric, per_channel_symmetric)

_EPS = float(np.finfo(np.float32).eps)
_INT_RANGE = {_dt.uint8: (0, 255), _dt.int8: (-128, 127)}


# ---- factories (``Observer.with_args``) -------------------------------------------------------
class _PartialWrapper:
    """A factory that remembers constructor arguments, as torch's ``with_args`` returns: each call
    builds a fresh instance; ``with_callable_args`` values are computed at construction time."""

    def __init__(self, p):
        self.p = p
        self.callable_args = {}

    def __call__(self, *args, **keywords):
        for name, fn in self.callable_args.items():
            if name not in keywords:
                keywords = {**keywords, name: fn()}
        return self.p(*args, **keywords)

    def __repr__(self):
        return repr(self.p) + repr(self.callable_args)

    def with_args(self, **kwargs):
        return _with_args(self, **kwargs)

    def with_callable_args(self, **kwargs):
        r = _PartialWrapper(self.p)
        r.callable_args = {**self.callable_args, **kwargs}
        return r


def _with_args(cls_or_self, **kwargs):
    return _PartialWrapper(functools.partial(cls_or_self, **kwargs))


def _with_callable_args(cls_or_self, **kwargs):
    return _PartialWrapper(functools.partial(cls_or_self)).with_callable_args(**kwargs)


def factory_keywords(factory) -> dict:
    """The keyword arguments a (possibly nested) ``with_args`` factory will pass, outermost last."""
    p = getattr(factory, "p", None)
    if not isinstance(p, functools.partial):
        return {}
    return {**factory_keywords(p.func), **p.keywords}


# ---- helpers ---------------------------------------------------------------------------------
def _as_quant_dtype(dtype, who):
    try:
        d = _dt.as_dtype(dtype)
    except TypeError:
        d = None
    if d not in _INT_RANGE:
        raise TypeError(f"{who}: dtype must be ember.uint8 or ember.int8, got {dtype!r}")
    return d


def quant_range(dtype, quant_min, quant_max, reduce_range, who="observer"):
    """torch's ``calculate_qmin_qmax``: the dtype's range, or the custom [quant_min, quant_max]
    (which must contain 0), halved by ``reduce_range``."""
    lo, hi = _INT_RANGE[dtype]
    if (quant_min is None) != (quant_max is None):
        raise ValueError(f"{who}: give both quant_min and quant_max or neither (got {quant_min}, {quant_max})")
    if quant_min is not None:
        if not quant_min <= 0 <= quant_max or quant_min >= quant_max:
            raise ValueError(f"{who}: the range [quant_min, quant_max] = [{quant_min}, {quant_max}] must "
                             f"contain 0 and have quant_min < quant_max")
        if quant_min < lo or quant_max > hi:
            raise ValueError(f"{who}: [quant_min, quant_max] = [{quant_min}, {quant_max}] is outside the "
                             f"range of {dtype} [{lo}, {hi}]")
        lo, hi = quant_min, quant_max
    if reduce_range:
        lo, hi = lo // 2, hi // 2
    return int(lo), int(hi)


def _observed(x, who) -> np.ndarray:
    """The observed tensor as a float32 numpy array (detached; observers never record autograd)."""
    if not isinstance(x, ember.Tensor):
        raise TypeError(f"{who}: expected an ember Tensor, got {type(x).__name__}")
    a = x.detach().numpy()
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _set_buffer(module, name, value):
    """Write ``value`` into buffer ``name`` in place, or replace it when the shape changes
    (torch's ``resize_`` + ``copy_``)."""
    buf = module._buffers[name]
    value = np.asarray(value, dtype=buf.numpy().dtype)
    if buf.shape == value.shape:
        with ember.no_grad():
            buf.copy_(ember.from_numpy(value))
    else:
        setattr(module, name, ember.from_numpy(value.copy()))


def _check_not_nan(lo, hi, x, who):
    # min/max propagate NaN, so checking the reduced values costs nothing
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ValueError(f"{who}: the observed tensor (shape {x.shape}) contains NaN; calibration data must not")


def _no_data_error(obs):
    return RuntimeError(
        f"{type(obs).__name__}.calculate_qparams: the observer has not seen any data; run calibration "
        f"data through the model (forward passes after prepare) before asking for qparams or converting"
    )


class _ResizableState:
    """Load-time rule for buffers whose shape depends on the data (per-channel min/max, histogram,
    FakeQuantize scale): take the checkpoint's shape, as torch's observers do."""

    _resizable = ()

    def _load_from_state_dict(self, state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs,
                              assign=False):
        reshaped = {}
        for name in self._resizable:
            key = prefix + name
            if key in state_dict and self._buffers.get(name) is not None:
                shape = tuple(np.shape(state_dict[key]))
                want = self._state_shape(shape)
                if want != shape:
                    reshaped[key] = np.reshape(np.asarray(state_dict[key]), want)
                if want != tuple(self._buffers[name].shape):
                    dtype = self._buffers[name].numpy().dtype
                    setattr(self, name, ember.from_numpy(np.zeros(want, dtype)))
        if reshaped:
            state_dict = {**state_dict, **reshaped}
        super()._load_from_state_dict(state_dict, prefix, strict, missing_keys, unexpected_keys, error_msgs,
                                      assign)

    def _state_shape(self, shape):
        return shape


# ---- base classes ----------------------------------------------------------------------------
class ObserverBase(Module):
    """Base of every observer: ``forward`` records statistics and returns its input unchanged;
    ``calculate_qparams`` returns (scale, zero_point)."""

    with_args = classmethod(_with_args)
    with_callable_args = classmethod(_with_callable_args)

    def __init__(self, dtype, is_dynamic=False):
        super().__init__()
        self.dtype = _dt.as_dtype(dtype)
        self.is_dynamic = is_dynamic

    def calculate_qparams(self):
        raise NotImplementedError(f"{type(self).__name__} does not compute quantization parameters")


class UniformQuantizationObserverBase(_ResizableState, ObserverBase):
    """Common arguments of the uniform (affine / symmetric) observers and torch's qparams formula."""

    def __init__(self, dtype=_dt.uint8, qscheme=per_tensor_affine, reduce_range=False, quant_min=None,
                 quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, **kwargs):
        who = type(self).__name__
        if kwargs:
            raise TypeError(f"{who}: unexpected arguments {sorted(kwargs)}")
        super().__init__(_as_quant_dtype(dtype, who), is_dynamic)
        if qscheme not in _PER_TENSOR + _PER_CHANNEL:
            raise ValueError(f"{who}: qscheme must be one of {_PER_TENSOR + _PER_CHANNEL}, got {qscheme!r}")
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        self.register_buffer("eps", ember.tensor([eps], dtype=ember.float32))
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        self.quant_min, self.quant_max = quant_range(self.dtype, quant_min, quant_max, reduce_range, who)
        if qscheme in _SYMMETRIC and reduce_range and self.dtype == _dt.uint8:
            raise NotImplementedError(f"{who}: cannot reduce range for symmetric quantization of uint8")

    def _calculate_qparams(self, min_val, max_val):
        """(scale float32, zero_point int32) for the ranges [min_val, max_val] (0-d or per channel):
        the range is widened to contain 0 and the scale is at least ``eps``."""
        min_val = np.asarray(min_val, np.float32)
        max_val = np.asarray(max_val, np.float32)
        if np.any(min_val > max_val):
            raise ValueError(f"{type(self).__name__}: min {min_val} is greater than max {max_val}")
        qmin, qmax = self.quant_min, self.quant_max
        eps = self.eps.numpy()[0]
        min_neg = np.minimum(min_val, np.float32(0))
        max_pos = np.maximum(max_val, np.float32(0))
        if self.qscheme in _SYMMETRIC:
            max_pos = np.maximum(-min_neg, max_pos)
            scale = np.maximum(max_pos / np.float32((qmax - qmin) / 2), eps)
            zp = 0
            if self.dtype == _dt.uint8:
                zp = (qmin + qmax) // 2 if self.has_customized_qrange else 128
            zero_point = np.full(scale.shape, zp, np.int32)
        else:
            scale = np.maximum((max_pos - min_neg) / np.float32(qmax - qmin), eps)
            zero_point = qmin - np.rint(min_neg / scale).astype(np.int32)
            zero_point = np.clip(zero_point, qmin, qmax).astype(np.int32)
        return (ember.from_numpy(np.asarray(scale, np.float32).copy()),
                ember.from_numpy(np.asarray(zero_point, np.int32).copy()))

    def reset_min_max_vals(self):
        raise NotImplementedError(f"{type(self).__name__} cannot reset its statistics")


# ---- min / max observers ---------------------------------------------------------------------
class MinMaxObserver(UniformQuantizationObserverBase):
    """Running minimum and maximum of everything observed (per tensor)."""

    def __init__(self, dtype=_dt.uint8, qscheme=per_tensor_affine, reduce_range=False, quant_min=None,
                 quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, **kwargs):
        if qscheme not in _PER_TENSOR:
            raise NotImplementedError(f"{type(self).__name__}: qscheme must be one of {_PER_TENSOR}, got {qscheme!r}")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic,
                         **kwargs)
        self.register_buffer("min_val", ember.tensor(float("inf")))
        self.register_buffer("max_val", ember.tensor(float("-inf")))

    _resizable = ("min_val", "max_val")

    def _seen(self):
        return not (self.min_val.item() == float("inf") and self.max_val.item() == float("-inf"))

    def forward(self, x_orig):
        x = _observed(x_orig, type(self).__name__)
        if x.size == 0:
            return x_orig
        lo, hi = x.min(), x.max()
        _check_not_nan(lo, hi, x, type(self).__name__)
        lo, hi = self._update(lo, hi)
        _set_buffer(self, "min_val", lo)
        _set_buffer(self, "max_val", hi)
        return x_orig

    def _update(self, lo, hi):
        return np.minimum(lo, self.min_val.numpy()), np.maximum(hi, self.max_val.numpy())

    def calculate_qparams(self):
        if not self._seen():
            raise _no_data_error(self)
        return self._calculate_qparams(self.min_val.numpy(), self.max_val.numpy())

    def extra_repr(self):
        return f"min_val={self.min_val.item()}, max_val={self.max_val.item()}"

    def reset_min_max_vals(self):
        _set_buffer(self, "min_val", np.float32(np.inf))
        _set_buffer(self, "max_val", np.float32(-np.inf))


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max: ``m += c * (batch_min - m)``."""

    def __init__(self, averaging_constant=0.01, dtype=_dt.uint8, qscheme=per_tensor_affine, reduce_range=False,
                 quant_min=None, quant_max=None, eps=_EPS, is_dynamic=False, **kwargs):
        if is_dynamic and averaging_constant != 1:
            raise NotImplementedError(f"{type(self).__name__}: dynamic quantization needs averaging_constant=1, "
                                      f"got {averaging_constant}")
        self.averaging_constant = averaging_constant
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, eps=eps, is_dynamic=is_dynamic,
                         **kwargs)

    def _update(self, lo, hi):
        if not self._seen():
            return lo, hi
        c = np.float32(self.averaging_constant)
        m, n = self.min_val.numpy(), self.max_val.numpy()
        return m + c * (lo - m), n + c * (hi - n)


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """Running minimum and maximum of each slice along ``ch_axis`` (per-channel weights)."""

    def __init__(self, ch_axis=0, dtype=_dt.uint8, qscheme=per_channel_affine, reduce_range=False, quant_min=None,
                 quant_max=None, factory_kwargs=None, eps=_EPS, is_dynamic=False, **kwargs):
        who = type(self).__name__
        if qscheme not in _PER_CHANNEL:
            raise NotImplementedError(f"{who}: qscheme must be one of {_PER_CHANNEL}, got {qscheme!r}")
        if is_dynamic:
            raise NotImplementedError(f"{who} doesn't support dynamic quantization")
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic,
                         **kwargs)
        self.ch_axis = ch_axis
        self.register_buffer("min_val", ember.zeros(0))
        self.register_buffer("max_val", ember.zeros(0))

    _resizable = ("min_val", "max_val")

    def forward(self, x_orig):
        who = type(self).__name__
        x = _observed(x_orig, who)
        if x.size == 0:
            return x_orig
        if not -x.ndim <= self.ch_axis < x.ndim:
            raise ValueError(f"{who}: ch_axis {self.ch_axis} is out of range for an input of shape {x.shape}")
        y = np.moveaxis(x, self.ch_axis, 0).reshape(x.shape[self.ch_axis], -1)
        lo, hi = y.min(axis=1), y.max(axis=1)
        _check_not_nan(lo, hi, x, who)
        if self.min_val.numel():
            if self.min_val.shape[0] != lo.shape[0]:
                raise ValueError(f"{who}: input has {lo.shape[0]} channels along axis {self.ch_axis} (shape "
                                 f"{x.shape}), but the observer has recorded {self.min_val.shape[0]}")
            lo, hi = self._update(lo, hi)
        _set_buffer(self, "min_val", lo)
        _set_buffer(self, "max_val", hi)
        return x_orig

    def _update(self, lo, hi):
        return np.minimum(lo, self.min_val.numpy()), np.maximum(hi, self.max_val.numpy())

    def calculate_qparams(self):
        if self.min_val.numel() == 0:
            raise _no_data_error(self)
        return self._calculate_qparams(self.min_val.numpy(), self.max_val.numpy())

    def extra_repr(self):
        return f"ch_axis={self.ch_axis}, min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self):
        _set_buffer(self, "min_val", np.zeros(0, np.float32))
        _set_buffer(self, "max_val", np.zeros(0, np.float32))


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel exponential moving average of each batch's min and max."""

    def __init__(self, averaging_constant=0.01, ch_axis=0, dtype=_dt.uint8, qscheme=per_channel_affine,
                 reduce_range=False, quant_min=None, quant_max=None, eps=_EPS, is_dynamic=False, **kwargs):
        super().__init__(ch_axis, dtype, qscheme, reduce_range, quant_min, quant_max, eps=eps,
                         is_dynamic=is_dynamic, **kwargs)
        self.averaging_constant = averaging_constant

    def _update(self, lo, hi):
        c = np.float32(self.averaging_constant)
        m, n = self.min_val.numpy(), self.max_val.numpy()
        return m + c * (lo - m), n + c * (hi - n)


# ---- observers that record nothing -----------------------------------------------------------
class PlaceholderObserver(ObserverBase):
    """Carries a dtype (and is_dynamic) to the converted module; observes nothing. Used for dynamic
    quantization, where activations are quantized with their own min/max at run time.

    ``reduce_range`` (not in torch, whose dynamic Linear always quantizes its activations to 7 bits on x86):
    whether a dynamic layer quantizes its activations to codes 0 .. 127; None leaves it to the layer
    (``DynamicLinear``: True, as torch). False keeps 8 bits: more precision, and on x86 CPUs without VNNI the
    slower int16 GEMM tile (docs/quantize-design.md)."""

    def __init__(self, dtype=_dt.float32, custom_op_name="", compute_dtype=None, quant_min=None, quant_max=None,
                 qscheme=None, eps=None, is_dynamic=False, reduce_range=None):
        super().__init__(dtype, is_dynamic=is_dynamic or bool(compute_dtype))
        self.reduce_range = reduce_range
        self.qscheme = per_tensor_affine if qscheme is None else qscheme
        self.quant_min, self.quant_max = quant_min, quant_max
        self.eps = _EPS if eps is None else eps
        self.custom_op = custom_op_name

    def forward(self, x):
        return x

    def extra_repr(self):
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"

    def calculate_qparams(self):
        raise RuntimeError("calculate_qparams should not be called for PlaceholderObserver: it observes nothing")


class NoopObserver(ObserverBase):
    """Observes nothing; marks a tensor that keeps a float dtype."""

    def __init__(self, dtype=_dt.float16, custom_op_name=""):
        super().__init__(dtype, is_dynamic=False)
        self.custom_op = custom_op_name

    def forward(self, x):
        return x

    def calculate_qparams(self):
        raise RuntimeError("calculate_qparams should not be called for NoopObserver: it observes nothing")


class FixedQParamsObserver(ObserverBase):
    """Fixed scale / zero point for ops whose output range is known (sigmoid: [0, 1], tanh: [-1, 1])."""

    def __init__(self, scale, zero_point, dtype=_dt.uint8, qscheme=per_tensor_affine, quant_min=0, quant_max=255,
                 is_dynamic=False, **kwargs):
        if is_dynamic:
            raise NotImplementedError("FixedQParamsObserver doesn't support dynamic quantization")
        if kwargs:
            raise TypeError(f"FixedQParamsObserver: unexpected arguments {sorted(kwargs)}")
        super().__init__(_as_quant_dtype(dtype, "FixedQParamsObserver"), is_dynamic)
        self.quant_min, self.quant_max, self.qscheme = quant_min, quant_max, qscheme
        self.register_buffer("scale", ember.tensor(scale, dtype=ember.float32))
        self.register_buffer("zero_point", ember.tensor(zero_point, dtype=ember.int32))

    def forward(self, x):
        return x

    def calculate_qparams(self):
        return self.scale, self.zero_point


# ---- torch's default observer factories ------------------------------------------------------
default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_weight_observer = MinMaxObserver.with_args(dtype=_dt.int8, qscheme=per_tensor_symmetric)
weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=_dt.int8, qscheme=per_tensor_symmetric, quant_min=-127, quant_max=127, eps=2 ** -12)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=_dt.int8, qscheme=per_channel_symmetric)
per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=_dt.int8, qscheme=per_channel_symmetric, quant_min=-127, quant_max=127, eps=2 ** -12)
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=_dt.uint8, quant_min=0, quant_max=255, is_dynamic=True)
default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=_dt.uint8, quant_min=0, quant_max=255)
default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=_dt.uint8, quant_min=0, quant_max=255)


# HistogramObserver lives in histogram.py (it builds on the bases above); re-exported so every observer
# is reachable from this module, as in torch.
from .histogram import HistogramObserver, default_histogram_observer  # noqa: E402,F401
