"""Observers and QConfigs against torch.ao.quantization: the same batches give the same running
statistics and bit-identical scale / zero_point for every observer and argument combination."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.quantize import observer as eo
from ember.quantize import qconfig as eq

TORCH_DTYPE = {ember.uint8: torch.quint8, ember.int8: torch.qint8}
TORCH_QSCHEME = {eo.per_tensor_affine: torch.per_tensor_affine, eo.per_tensor_symmetric: torch.per_tensor_symmetric,
                 eo.per_channel_affine: torch.per_channel_affine,
                 eo.per_channel_symmetric: torch.per_channel_symmetric}


def torch_kwargs(kw):
    out = dict(kw)
    if "dtype" in out:
        out["dtype"] = TORCH_DTYPE[out["dtype"]]
    if "qscheme" in out:
        out["qscheme"] = TORCH_QSCHEME[out["qscheme"]]
    return out


def observe_both(name, kw, batches):
    """Run the same float32 batches through ember's and torch's observer ``name``; return both."""
    e = getattr(eo, name)(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's reduce_range deprecation warning
        t = getattr(tq, name)(**torch_kwargs(kw))
    for b in batches:
        assert e(ember.from_numpy(b.copy())) is not None
        t(torch.from_numpy(b.copy()))
    return e, t


def assert_same_qparams(e, t):
    es, ez = e.calculate_qparams()
    ts, tz = t.calculate_qparams()
    assert es.dtype == ember.float32 and ez.dtype == ember.int32
    np.testing.assert_array_equal(es.numpy().reshape(-1), ts.numpy().reshape(-1))
    np.testing.assert_array_equal(ez.numpy().reshape(-1), tz.numpy().reshape(-1).astype(np.int32))
    assert (es.numpy() > 0).all()
    return es, ez


def batches(seed, shape=(4, 3, 5), scales=(1.0, 2.5, 0.4), shift=0.3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * s + shift).astype(np.float32) for s in scales]


DTYPE_QSCHEME = [(ember.uint8, eo.per_tensor_affine), (ember.int8, eo.per_tensor_affine),
                 (ember.int8, eo.per_tensor_symmetric), (ember.uint8, eo.per_tensor_symmetric)]
RANGES = [dict(), dict(reduce_range=True), dict(quant_min=0, quant_max=127), dict(quant_min=0, quant_max=15)]


def _range_kw(dtype, rng_kw):
    if dtype == ember.int8 and "quant_min" in rng_kw:
        return dict(quant_min=-rng_kw["quant_max"] - 1, quant_max=rng_kw["quant_max"])
    return rng_kw


@pytest.mark.parametrize("name", ["MinMaxObserver", "MovingAverageMinMaxObserver"])
@pytest.mark.parametrize("dtype,qscheme", DTYPE_QSCHEME)
@pytest.mark.parametrize("rng_kw", RANGES)
def test_per_tensor_minmax_matches_torch(name, dtype, qscheme, rng_kw):
    kw = dict(dtype=dtype, qscheme=qscheme, **_range_kw(dtype, rng_kw))
    if qscheme == eo.per_tensor_symmetric and dtype == ember.uint8 and kw.get("reduce_range"):
        with pytest.raises(NotImplementedError, match="reduce range"):
            getattr(eo, name)(**kw)
        return
    e, t = observe_both(name, kw, batches(1))
    assert (e.quant_min, e.quant_max) == (t.quant_min, t.quant_max)
    assert e.min_val.item() == t.min_val.item() and e.max_val.item() == t.max_val.item()
    assert_same_qparams(e, t)


@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
def test_moving_average_tracks_torch_over_many_batches(c):
    data = batches(2, shape=(64,), scales=tuple(np.linspace(0.5, 3.0, 8)), shift=-0.7)
    e, t = observe_both("MovingAverageMinMaxObserver", dict(averaging_constant=c), data)
    assert e.min_val.item() == t.min_val.item() and e.max_val.item() == t.max_val.item()
    assert_same_qparams(e, t)


def test_eps_guard_and_zero_in_range():
    # All-positive constant input: the range widens to [0, 5]; an all-zero input gives scale eps.
    e, t = observe_both("MinMaxObserver", {}, [np.full((3,), 5.0, np.float32)])
    s, z = assert_same_qparams(e, t)
    assert z.item() == 0
    for kw in (dict(), dict(qscheme=eo.per_tensor_symmetric, dtype=ember.int8), dict(eps=2 ** -12)):
        e, t = observe_both("MinMaxObserver", kw, [np.zeros((4,), np.float32)])
        s, _ = assert_same_qparams(e, t)
        assert s.item() == np.float32(kw.get("eps", np.finfo(np.float32).eps))


@pytest.mark.parametrize("name", ["PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver"])
@pytest.mark.parametrize("dtype,qscheme", [(ember.int8, eo.per_channel_symmetric), (ember.uint8, eo.per_channel_affine),
                                           (ember.int8, eo.per_channel_affine),
                                           (ember.uint8, eo.per_channel_symmetric)])
@pytest.mark.parametrize("ch_axis", [0, 1, -1])
def test_per_channel_matches_torch(name, dtype, qscheme, ch_axis):
    kw = dict(dtype=dtype, qscheme=qscheme, ch_axis=ch_axis)
    e, t = observe_both(name, kw, batches(3, shape=(5, 4, 3)))
    np.testing.assert_array_equal(e.min_val.numpy(), t.min_val.numpy())
    np.testing.assert_array_equal(e.max_val.numpy(), t.max_val.numpy())
    s, z = assert_same_qparams(e, t)
    assert s.shape == (e.min_val.shape[0],)


@pytest.mark.parametrize("rng_kw", [dict(reduce_range=True), dict(quant_min=-127, quant_max=127, eps=2 ** -12)])
def test_per_channel_ranges_match_torch(rng_kw):
    kw = dict(dtype=ember.int8, qscheme=eo.per_channel_symmetric, **rng_kw)
    e, t = observe_both("MovingAveragePerChannelMinMaxObserver", dict(averaging_constant=0.5, **kw), batches(4))
    assert_same_qparams(e, t)


@settings(deadline=None, max_examples=20)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), data=st.data(), transpose=st.booleans())
def test_per_channel_shapes_and_strides(shape, data, transpose):
    ch_axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    if transpose:  # a non-contiguous view of the same shape
        x = np.ascontiguousarray(x.T).T
    e = eo.PerChannelMinMaxObserver(ch_axis=ch_axis)
    t = tq.PerChannelMinMaxObserver(ch_axis=ch_axis)
    e(ember.from_numpy(x))
    t(torch.from_numpy(x))
    np.testing.assert_array_equal(e.min_val.numpy(), t.min_val.numpy())
    assert_same_qparams(e, t)


# ---- histogram -------------------------------------------------------------------------------
def histogram_batches(kind, seed, n=4):
    """Batches whose range grows (and sometimes shrinks) from one to the next."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        size = int(rng.integers(200, 2000))
        if kind == "normal":
            b = rng.standard_normal(size) * rng.uniform(0.5, 3) + rng.normal()
        elif kind == "lognormal":
            b = np.exp(rng.standard_normal(size) * rng.uniform(0.5, 2))
        else:  # post-ReLU activations: a spike at 0 and a long tail
            b = np.maximum(rng.standard_normal(size), 0) * rng.uniform(0.5, 4)
        out.append(b.astype(np.float32).reshape(-1, 4 if size % 4 == 0 else 1))
    return out


@pytest.mark.parametrize("kind", ["normal", "lognormal", "relu"])
@pytest.mark.parametrize("kw", [dict(), dict(reduce_range=True),
                                dict(dtype=ember.int8, qscheme=eo.per_tensor_symmetric),
                                dict(quant_min=0, quant_max=127), dict(bins=256)])
@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_matches_torch(kind, kw, seed):
    e, t = observe_both("HistogramObserver", kw, histogram_batches(kind, seed))
    assert e.min_val.item() == t.min_val.item() and e.max_val.item() == t.max_val.item()
    eh, th = e.histogram.numpy(), t.histogram.numpy()
    assert eh.sum() == th.sum()
    # torch's SIMD linspace rounds a few upsampled mid points differently from its scalar formula
    # (which ember uses), which can move 1/16 of a bin's mass to the neighbouring bin.
    assert np.abs(eh - th).sum() <= 1e-3 * th.sum()
    assert_same_qparams(e, t)


@pytest.mark.parametrize("kind,n", [("normal", 50000), ("t3", 100000)])
def test_histogram_search_clips_dense_tails_like_torch(kind, n):
    # Dense tails make the L2 search walk many candidate ranges before the error rises again.
    rng = np.random.default_rng(11)
    draw = (lambda: rng.standard_normal(n)) if kind == "normal" else (lambda: rng.standard_t(3, n))
    e, t = observe_both("HistogramObserver", {}, [(draw() * s).astype(np.float32) for s in (1.0, 1.3, 0.8)])
    s, _ = assert_same_qparams(e, t)
    assert s.item() < 0.95 * (e.max_val.item() - e.min_val.item()) / 255  # the range really was clipped


def test_histogram_special_inputs_match_torch():
    const = [np.full((10,), 1.5, np.float32), np.full((10,), 1.5, np.float32), np.linspace(-1, 3, 50, dtype=np.float32)]
    with_inf = [np.array([1.0, np.inf, -2.0, 0.5], np.float32), np.array([-np.inf, np.inf], np.float32)]
    for data in (const[:1], const[:2], const, with_inf):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the infinities it drops
            e, t = observe_both("HistogramObserver", {}, data)
        np.testing.assert_array_equal(e.histogram.numpy(), t.histogram.numpy())
        assert_same_qparams(e, t)


def test_histogram_percentile():
    rng = np.random.default_rng(5)
    data = np.concatenate([rng.standard_normal(20000), [40.0, -35.0]]).astype(np.float32)
    full = eo.HistogramObserver(percentile=100)
    clipped = eo.HistogramObserver(percentile=99.9)
    for obs in (full, clipped):
        obs(ember.from_numpy(data))
    lo, hi = np.percentile(data, [0.1, 99.9])
    width = (data.max() - data.min()) / 2048
    s_full, _ = full.calculate_qparams()
    s_clip, z_clip = clipped.calculate_qparams()
    assert s_full.item() == pytest.approx((40.0 + 35.0) / 255, rel=1e-6)
    s_ref = (hi - lo) / 255
    assert abs(s_clip.item() - s_ref) <= 2 * width / 255
    assert z_clip.item() == pytest.approx(-lo / s_ref, abs=1.5)
    with pytest.raises(ValueError, match="percentile"):
        eo.HistogramObserver(percentile=30)


# ---- errors, state, forward contract ----------------------------------------------------------
ALL_UNIFORM = ["MinMaxObserver", "MovingAverageMinMaxObserver", "PerChannelMinMaxObserver",
               "MovingAveragePerChannelMinMaxObserver", "HistogramObserver"]


@pytest.mark.parametrize("name", ALL_UNIFORM)
def test_no_data_raises(name):
    obs = getattr(eo, name)()
    obs(ember.zeros(0))  # an empty batch records nothing
    with pytest.raises(RuntimeError, match="calibration data"):
        obs.calculate_qparams()


@pytest.mark.parametrize("name", ALL_UNIFORM)
def test_state_dict_round_trip_and_torch_checkpoint(name):
    kw = dict(qscheme=eo.per_channel_affine) if "PerChannel" in name else {}
    e, t = observe_both(name, kw, histogram_batches("normal", 7, n=2) if "Histogram" in name else batches(8))
    assert list(e.state_dict()) == list(t.state_dict())
    fresh = getattr(eo, name)(**kw)
    fresh.load_state_dict(e.state_dict())
    for a, b in zip(fresh.calculate_qparams(), e.calculate_qparams()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    from_torch = getattr(eo, name)(**kw)
    from_torch.load_state_dict(t.state_dict())
    assert_same_qparams(from_torch, t)
    from_torch.load_state_dict(getattr(eo, name)(**kw).state_dict())  # back to "no data"
    with pytest.raises(RuntimeError, match="calibration data"):
        from_torch.calculate_qparams()


def test_forward_returns_input_and_records_no_graph():
    x = ember.randn(3, 4, requires_grad=True)
    y = x * 2
    for name in ALL_UNIFORM:
        obs = getattr(eo, name)()
        assert obs(y) is y
    assert y.grad_fn is not None
    for obs in (eo.PlaceholderObserver(), eo.NoopObserver()):
        assert obs(y) is y
        with pytest.raises(RuntimeError, match="should not be called"):
            obs.calculate_qparams()


def test_reset_min_max_vals():
    for obs in (eo.MinMaxObserver(), eo.PerChannelMinMaxObserver()):
        obs(ember.randn(3, 2))
        obs.reset_min_max_vals()
        with pytest.raises(RuntimeError, match="calibration data"):
            obs.calculate_qparams()


def test_argument_errors():
    with pytest.raises(TypeError, match="uint8 or ember.int8"):
        eo.MinMaxObserver(dtype=ember.float32)
    with pytest.raises(NotImplementedError, match="qscheme"):
        eo.MinMaxObserver(qscheme=eo.per_channel_affine)
    with pytest.raises(NotImplementedError, match="qscheme"):
        eo.PerChannelMinMaxObserver(qscheme=eo.per_tensor_affine)
    with pytest.raises(ValueError, match="contain 0"):
        eo.MinMaxObserver(quant_min=1, quant_max=100)
    with pytest.raises(ValueError, match="outside the range"):
        eo.MinMaxObserver(dtype=ember.int8, quant_min=-200, quant_max=100)
    with pytest.raises(ValueError, match="both quant_min and quant_max"):
        eo.MinMaxObserver(quant_min=0)
    with pytest.raises(NotImplementedError, match="averaging_constant=1"):
        eo.MovingAverageMinMaxObserver(is_dynamic=True)
    with pytest.raises(TypeError, match="unexpected arguments"):
        eo.MinMaxObserver(bins=10)
    for name in ALL_UNIFORM:
        with pytest.raises(ValueError, match="contains NaN"):
            getattr(eo, name)()(ember.tensor([[1.0, float("nan")]]))
    obs = eo.PerChannelMinMaxObserver(ch_axis=2)
    with pytest.raises(ValueError, match="out of range"):
        obs(ember.randn(3, 4))
    obs = eo.PerChannelMinMaxObserver()
    obs(ember.randn(3, 4))
    with pytest.raises(ValueError, match="has recorded 3"):
        obs(ember.randn(5, 4))


def test_fixed_qparams_observer():
    e = eo.default_fixed_qparams_range_neg1to1_observer()
    t = tq.default_fixed_qparams_range_neg1to1_observer()
    e(ember.randn(4))
    assert_same_qparams(e, t)


# ---- factories and QConfigs -------------------------------------------------------------------
def test_with_args_builds_fresh_instances():
    factory = eo.MinMaxObserver.with_args(dtype=ember.int8).with_args(qscheme=eo.per_tensor_symmetric)
    a, b = factory(), factory()
    assert a is not b and a.dtype == ember.int8 and a.qscheme == eo.per_tensor_symmetric
    counter = iter(range(100))
    lazy = eo.MovingAverageMinMaxObserver.with_callable_args(averaging_constant=lambda: next(counter) / 10)
    assert lazy().averaging_constant == 0.0 and lazy().averaging_constant == 0.1
    assert eo.factory_keywords(factory) == dict(dtype=ember.int8, qscheme=eo.per_tensor_symmetric)


def describe(obs, ember_side=True):
    """The settings that decide an observer's qparams, in torch's spelling."""
    d = dict(cls=type(obs).__name__)
    for key in ("quant_min", "quant_max", "reduce_range", "averaging_constant", "ch_axis", "bins", "is_dynamic"):
        if key == "reduce_range" and type(obs).__name__ == "PlaceholderObserver":
            continue  # (ember's PlaceholderObserver carries reduce_range for dynamic layers; torch's has none)
        if hasattr(obs, key):
            d[key] = getattr(obs, key)
    d["dtype"] = TORCH_DTYPE.get(obs.dtype, obs.dtype) if ember_side else obs.dtype
    if hasattr(obs, "qscheme"):
        d["qscheme"] = TORCH_QSCHEME.get(obs.qscheme, obs.qscheme) if ember_side else obs.qscheme
    if hasattr(obs, "eps"):
        d["eps"] = float(np.asarray(obs.eps).reshape(-1)[0])
    if hasattr(obs, "activation_post_process"):
        d["inner"] = describe(obs.activation_post_process, ember_side)
    return d


QCONFIGS = [
    (eq.default_qconfig, tq.default_qconfig),
    (eq.default_per_channel_qconfig, tq.default_per_channel_qconfig),
    (eq.default_dynamic_qconfig, tq.default_dynamic_qconfig),
    (eq.per_channel_dynamic_qconfig, tq.per_channel_dynamic_qconfig),
    (eq.default_qat_qconfig, tq.default_qat_qconfig),
    (eq.default_symmetric_qnnpack_qconfig, tq.default_symmetric_qnnpack_qconfig),
    (eq.default_per_channel_symmetric_qnnpack_qconfig, tq.default_per_channel_symmetric_qnnpack_qconfig),
    (eq.default_quint8_weight_qconfig, tq.qconfig.default_quint8_weight_qconfig),
] + [(eq.get_default_qconfig(b), tq.get_default_qconfig(b)) for b in ("x86", "fbgemm", "qnnpack", "onednn")] + [
    (eq.get_default_qat_qconfig(b), tq.get_default_qat_qconfig(b, version=0)) for b in ("x86", "fbgemm", "qnnpack")]


@pytest.mark.parametrize("pair", QCONFIGS, ids=lambda p: "")
def test_qconfigs_build_torchs_observers(pair):
    ours, theirs = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for field in ("activation", "weight"):
            assert describe(getattr(ours, field)()) == describe(getattr(theirs, field)(), ember_side=False)


def test_qconfig_rejects_instances_and_compares():
    with pytest.raises(ValueError, match="observer instance"):
        eq.QConfig(activation=eo.MinMaxObserver(), weight=eo.MinMaxObserver)
    assert eq.qconfig_equals(eq.get_default_qconfig("x86"), eq.get_default_qconfig("fbgemm"))
    assert not eq.qconfig_equals(eq.get_default_qconfig("x86"), eq.get_default_qconfig("qnnpack"))
    with pytest.raises(ValueError, match="not supported"):
        eq.get_default_qconfig("tpu")
