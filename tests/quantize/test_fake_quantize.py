"""FakeQuantize against torch.ao.quantization.FakeQuantize: the same batches give the same scale /
zero_point buffers, outputs and input gradients, through the enable / disable toggles.

One documented difference: ember rounds ``x / scale`` (ONNX's float32 division, see the quantization
spec), torch rounds ``x * (1 / scale)``. They disagree only where ``x / scale`` is within a rounding
error of halfway between two integers, which a symmetric scheme hits at the largest |x|
(scale = max|x| / 127.5). At those elements ember is checked against the spec's formula instead.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq

import ember
import ember.nn as nn
from ember.quantize import fake_quantize as ef
from ember.quantize import observer as eo

TORCH_DTYPE = {ember.uint8: torch.quint8, ember.int8: torch.qint8}


def spec_fake_quant(x, scale, zero_point, qmin, qmax, axis):
    """The contract's math in numpy: (clamp(rint(x / scale) + zp) - zp) * scale, and the gradient mask
    (x / scale + zp within [qmin - 0.5, qmax + 0.5]: torch's, except that ties half a step out count)."""
    shape = [1] * x.ndim
    if axis is not None and scale.ndim:
        shape[axis] = -1
    s = scale.reshape(shape).astype(np.float32)
    z = zero_point.reshape(shape).astype(np.float32)
    v = x / s
    q = np.rint(v) + z
    # where torch's rounding disagrees, and the .5 ties just past either end (which ember's mask keeps)
    differs = (np.rint(v) != np.rint(x * (np.float32(1) / s))) | (v + z == qmin - 0.5) | (v + z == qmax + 0.5)
    mask = (v + z >= qmin - 0.5) & (v + z <= qmax + 0.5)
    return (np.clip(q, qmin, qmax) - z) * s, mask, differs


def torch_build(factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's reduce_range deprecation warning
        return factory()


FACTORIES = {
    "default_fake_quant": (ef.default_fake_quant, tq.default_fake_quant, (6, 5)),
    "default_weight_fake_quant": (ef.default_weight_fake_quant, tq.default_weight_fake_quant, (6, 5)),
    "default_per_channel_weight_fake_quant": (ef.default_per_channel_weight_fake_quant,
                                              tq.default_per_channel_weight_fake_quant, (4, 3, 2, 2)),
    "default_dynamic_fake_quant": (ef.default_dynamic_fake_quant, tq.default_dynamic_fake_quant, (3, 8)),
    "default_histogram_fake_quant": (ef.default_histogram_fake_quant, tq.default_histogram_fake_quant, (8, 16)),
    "minmax_4bit": (ef.FakeQuantize.with_args(observer=eo.MinMaxObserver, quant_min=0, quant_max=15),
                    tq.FakeQuantize.with_args(observer=tq.MinMaxObserver, quant_min=0, quant_max=15), (5, 7)),
    "per_channel_affine_axis1": (
        ef.FakeQuantize.with_args(observer=eo.MovingAveragePerChannelMinMaxObserver, ch_axis=1, averaging_constant=0.5,
                                  qscheme=eo.per_channel_affine, quant_min=0, quant_max=255),
        tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, ch_axis=1, averaging_constant=0.5,
                                  qscheme=torch.per_channel_affine, quant_min=0, quant_max=255), (3, 4, 5)),
}

# (toggle applied before the step, via model.apply on a container, as a QAT loop does)
SCHEDULE = [None, None, "disable_observer", "disable_fake_quant", "enable_fake_quant", "enable_observer"]


def check_step(e_fq, t_fq, e_model, t_model, x, g):
    xe = ember.from_numpy(x.copy()).requires_grad_()
    xt = torch.from_numpy(x.copy()).requires_grad_()
    ye, yt = e_model(xe), t_model(xt)
    ye.backward(ember.from_numpy(g))
    yt.backward(torch.from_numpy(g))
    scale, zp = e_fq.scale.numpy(), e_fq.zero_point.numpy()
    np.testing.assert_array_equal(scale.reshape(-1), t_fq.scale.numpy())
    np.testing.assert_array_equal(zp.reshape(-1), t_fq.zero_point.numpy())
    assert e_fq.zero_point.dtype == ember.int32 and e_fq.scale.dtype == ember.float32
    y, gx = ye.detach().numpy(), xe.grad.numpy()
    if e_fq.fake_quant_enabled.numpy()[0] == 0:
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(gx, g)
        return
    axis = e_fq.ch_axis if e_fq.is_per_channel else None
    ref, mask, differs = spec_fake_quant(x, scale, zp, e_fq.quant_min, e_fq.quant_max, axis)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(gx, np.where(mask, g, 0))
    assert differs.mean() < 0.1
    keep = ~differs
    np.testing.assert_allclose(y[keep], yt.detach().numpy()[keep], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(gx[keep], xt.grad.numpy()[keep])


@pytest.mark.parametrize("name", list(FACTORIES))
def test_fake_quantize_matches_torch_through_toggles(name):
    e_factory, t_factory, shape = FACTORIES[name]
    e_fq, t_fq = e_factory(), torch_build(t_factory)
    e_model, t_model = nn.Sequential(e_fq), torch.nn.Sequential(t_fq)
    rng = np.random.default_rng(len(name))
    for step, toggle in enumerate(SCHEDULE):
        if toggle is not None:
            e_model.apply(getattr(ef, toggle))
            t_model.apply(getattr(tq, toggle))
        x = (rng.standard_normal(shape) * (1 + 0.5 * step) + 0.2).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        check_step(e_fq, t_fq, e_model, t_model, x, g)
    for a, b in zip(e_fq.calculate_qparams(), t_fq.calculate_qparams()):
        np.testing.assert_array_equal(a.numpy().reshape(-1), b.numpy().reshape(-1))


def test_symmetric_extremes_follow_the_spec():
    # scale = max|x| / 127.5, so x / scale is exactly +-127.5 at the extremes: round-half-even gives
    # -128 and 128 (saturates to 127); both keep their gradient (a tie half a step out counts as inside,
    # as torch's x * (1 / scale) lands just inside), so QAT keeps training each channel's largest weight.
    fq = ef.default_weight_fake_quant()
    x = ember.tensor([-2.55, 1.0, 2.55], requires_grad=True)
    y = fq(x)
    y.sum().backward()
    s = fq.scale.item()
    assert s == np.float32(np.float32(2.55) / np.float32(127.5))
    np.testing.assert_array_equal(y.detach().numpy(), np.array([-128 * s, np.rint(1.0 / s) * s, 127 * s], np.float32))
    np.testing.assert_array_equal(x.grad.numpy(), [1, 1, 1])


def test_observer_disabled_from_the_start_uses_unit_scale():
    e, t = ef.default_fake_quant(), torch_build(tq.default_fake_quant)
    e.disable_observer()
    t.disable_observer()
    x = np.array([-3.0, -0.4, 0.6, 2.2, 200.0], np.float32)
    np.testing.assert_array_equal(e(ember.from_numpy(x)).numpy(), t(torch.from_numpy(x)).numpy())
    assert e.scale.item() == 1.0 and e.zero_point.item() == 0
    with pytest.raises(RuntimeError, match="calibration data"):
        e.calculate_qparams()


@pytest.mark.parametrize("name", ["default_fake_quant", "default_per_channel_weight_fake_quant"])
def test_state_dict_round_trip_and_torch_checkpoint(name):
    e_factory, t_factory, shape = FACTORIES[name]
    e, t = e_factory(), torch_build(t_factory)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    e(ember.from_numpy(x))
    t(torch.from_numpy(x))
    e.disable_observer()
    t.disable_observer()
    assert list(e.state_dict()) == list(t.state_dict())
    for source in (e.state_dict(), t.state_dict()):
        fresh = e_factory()
        fresh.load_state_dict(source)
        assert fresh.scale.shape == e.scale.shape  # torch's (1,) per-tensor scale loads as 0-d
        np.testing.assert_array_equal(fresh.scale.numpy(), e.scale.numpy())
        np.testing.assert_array_equal(fresh.zero_point.numpy(), e.zero_point.numpy())
        y_fresh, y_e = fresh(ember.from_numpy(x * 2)), e(ember.from_numpy(x * 2))
        np.testing.assert_array_equal(y_fresh.numpy(), y_e.numpy())
    assert fresh.observer_enabled.item() == 0


def test_fixed_qparams_fake_quantize_matches_torch():
    for e_fac, t_fac in ((ef.default_fixed_qparams_range_0to1_fake_quant,
                          tq.default_fixed_qparams_range_0to1_fake_quant),
                         (ef.default_fixed_qparams_range_neg1to1_fake_quant,
                          tq.default_fixed_qparams_range_neg1to1_fake_quant)):
        e, t = e_fac(), t_fac()
        x = np.linspace(-1.2, 1.2, 41, dtype=np.float32)
        np.testing.assert_allclose(e(ember.from_numpy(x)).numpy(), t(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-7)
        assert e.scale.item() == t.scale.item() and e.zero_point.item() == t.zero_point.item()
    with pytest.raises(TypeError, match="FixedQParamsObserver"):
        ef.FixedQParamsFakeQuantize(observer=eo.MinMaxObserver)


def test_constructor_checks_and_repr():
    with pytest.raises(ValueError, match="outside the range"):
        ef.FakeQuantize(quant_min=-1, quant_max=255)
    with pytest.raises(ValueError, match="outside the range"):
        ef.FakeQuantize(observer=eo.MinMaxObserver.with_args(dtype=ember.int8), quant_min=0, quant_max=255)
    with pytest.raises(ValueError, match="<= quant_max"):
        ef.FakeQuantize(quant_min=10, quant_max=5)
    fq = ef.FakeQuantize(observer=eo.MovingAverageMinMaxObserver.with_args(dtype=ember.int8), quant_min=-8, quant_max=7)
    assert (fq.quant_min, fq.quant_max, fq.dtype) == (-8, 7, ember.int8)
    assert "quant_max=7" in repr(fq) and "MovingAverageMinMaxObserver" in repr(fq)
