"""ONNX lowerings of the losses (export/ops_loss.py), run in ONNX Runtime and onnx.reference against ember:
every loss at the lowest and the default opset, each reduction and attribute, float32 with a dynamic batch
and float64, class losses with weights, ignore_index, label smoothing and extra spatial dims."""
import os
import tempfile
import warnings

import numpy as np
import pytest

import ember
import ember.export.ops_loss  # noqa: F401  (registers the loss lowerings)
import ember.nn.functional as F
from core.op_samples import SAMPLES
from ember.export import DEFAULT_OPSET, MIN_OPSET, ExportError, to_onnx
from ember.serialize import trace

from .onnx_check import OPSETS, assert_same, check_export, ort_session, run_onnx

rng = np.random.default_rng(31)
# NaN / inf / 0-divisor cases are on purpose: numpy (in onnx.reference and the kernels) warns on them
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

OPS = ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "binary_cross_entropy",
       "binary_cross_entropy_with_logits", "nll_loss", "cross_entropy", "cross_entropy_prob"]
SAMPLE_CASES = [pytest.param(op, i, id=f"{op}[{i}]") for op in OPS for i in range(len(SAMPLES[op]))]


def _x(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _u(lo, hi, *shape, dtype=np.float32):
    return rng.uniform(lo, hi, shape).astype(dtype)


def _cls(n_cls, *shape, dtype=np.int64):
    return rng.integers(0, n_cls, shape).astype(dtype)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("op,i", SAMPLE_CASES)
def test_samples(op, i, opset):
    """The gradcheck samples: float32 with a dynamic batch, and float64 as they are."""
    s = SAMPLES[op][i]
    check_export(s.fn, [a.astype(np.float32) if a.dtype.kind == "f" else a for a in s.inputs], opset=opset,
                 batches=(1, 5))
    check_export(s.fn, s.inputs, opset=opset, batches=(1, 5))


# ---- pointwise losses ------------------------------------------------------------------------------------
X, T = _x(4, 3), _x(4, 3)
P, Y = _u(0.05, 0.95, 4, 3), _u(0, 1, 4, 3)  # probabilities and soft labels
W3 = _u(0.5, 2, 3)
POINTWISE = {
    "mse": (F.mse_loss, {}, [X, T]),
    "l1": (F.l1_loss, {}, [X, T]),
    "smooth_l1_beta_0.5": (F.smooth_l1_loss, {"beta": 0.5}, [X, T]),
    "smooth_l1_beta_0": (F.smooth_l1_loss, {"beta": 0.0}, [X, T]),
    "smooth_l1_beta_2": (F.smooth_l1_loss, {"beta": 2.0}, [X * 2, T]),
    "huber_delta_1": (F.huber_loss, {}, [X * 2, T]),
    "huber_delta_0.3": (F.huber_loss, {"delta": 0.3}, [X, T]),
    "kl_div": (F.kl_div, {}, [np.log(P), Y * (Y > 0.3)]),  # zero targets take the t <= 0 branch
    "kl_div_log_target": (F.kl_div, {"log_target": True}, [np.log(P), np.log(Y)]),
    "kl_div_broadcast_target": (F.kl_div, {}, [np.log(P), Y[:1]]),
    "bce": (F.binary_cross_entropy, {}, [P, Y]),
    "bce_weight": (lambda x, t, w, **kw: F.binary_cross_entropy(x, t, w, **kw), {}, [P, Y, W3]),
    "bce_hard_0_1": (F.binary_cross_entropy, {}, [np.array([[0., 1., 1e-45], [1., 0., 0.5]], np.float32),
                                                  np.array([[0., 1., 1.], [0., 1., 0.5]], np.float32)]),
    "bce_logits": (F.binary_cross_entropy_with_logits, {}, [X * 5, Y]),
    "bce_logits_weight": (lambda x, t, w, **kw: F.binary_cross_entropy_with_logits(x, t, w, **kw), {},
                          [X * 40, Y, W3]),
    "bce_logits_pos_weight": (lambda x, t, pw, **kw: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, **kw),
                              {}, [X * 5, Y, W3]),
    "bce_logits_both": (lambda x, t, w, pw, **kw: F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, **kw),
                        {}, [X, Y, W3, W3[::-1].copy()]),
}
REDUCTIONS = ["none", "mean", "sum"]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", sorted(POINTWISE))
def test_pointwise(case, reduction, opset):
    fn, kw, inputs = POINTWISE[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broadcast-target warning
        check_export(lambda *a: fn(*a, reduction=reduction, **kw), inputs, opset=opset, batches=(1, 5))


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_batchmean(log_target, opset):
    t = np.log(Y) if log_target else Y
    check_export(lambda x, t: F.kl_div(x, t, reduction="batchmean", log_target=log_target), [np.log(P), t],
                 opset=opset, batches=(1, 5))
    check_export(lambda x, t: F.kl_div(x, t, reduction="batchmean", log_target=log_target),
                 [np.log(P).astype(np.float64), t.astype(np.float64)], opset=opset,
                 dynamic_axes={"x": None, "t": None})


@pytest.mark.parametrize("case", sorted(POINTWISE))
def test_pointwise_float64(case):
    fn, kw, inputs = POINTWISE[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_export(lambda *a: fn(*a, reduction="mean", **kw), [a.astype(np.float64) for a in inputs],
                     batches=(1, 5))


def test_kl_div_special_targets():
    """t = 0 with x = -inf and a NaN target give NaN, as the kernel's -t x 0 does."""
    x = np.array([[-np.inf, -1.0, 0.5]], np.float32)
    t = np.array([[0.0, np.nan, 0.0]], np.float32)
    check_export(lambda x, t: F.kl_div(x, t, reduction="none"), [x, t], dynamic_axes={"x": None, "t": None})


# ---- class losses ------------------------------------------------------------------------------------------
LOGITS, W4 = _x(5, 4), _u(0.5, 2, 4)
TARGET = np.array([0, 3, 1, 1, 2])
IGNORED = np.array([0, -100, 3, -100, 2])
CLASS = {
    "ce": (lambda x, t, **kw: F.cross_entropy(x, t, **kw), [LOGITS, TARGET]),
    "ce_weight": (lambda x, t, w, **kw: F.cross_entropy(x, t, w, **kw), [LOGITS, TARGET, W4]),
    "ce_ignore_default": (lambda x, t, **kw: F.cross_entropy(x, t, **kw), [LOGITS, IGNORED]),
    "ce_ignore_class_1_weight": (lambda x, t, w, **kw: F.cross_entropy(x, t, w, ignore_index=1, **kw),
                                 [LOGITS, TARGET, W4]),
    "ce_smoothing": (lambda x, t, **kw: F.cross_entropy(x, t, label_smoothing=0.2, **kw), [LOGITS, IGNORED]),
    "ce_smoothing_weight": (lambda x, t, w, **kw: F.cross_entropy(x, t, w, label_smoothing=0.1, **kw),
                            [LOGITS * 10, IGNORED, W4]),
    "ce_smoothing_1": (lambda x, t, **kw: F.cross_entropy(x, t, label_smoothing=1.0, **kw), [LOGITS, TARGET]),
    "ce_int32_target": (lambda x, t, **kw: F.cross_entropy(x, t, **kw), [LOGITS, TARGET.astype(np.int32)]),
    "ce_spatial": (lambda x, t, **kw: F.cross_entropy(x, t, **kw), [_x(3, 4, 2, 2), _cls(4, 3, 2, 2)]),
    "ce_spatial_smoothing_weight": (lambda x, t, w, **kw: F.cross_entropy(x, t, w, label_smoothing=0.3, **kw),
                                    [_x(3, 4, 5), _cls(4, 3, 5), W4]),
    "ce_prob": (lambda x, t, **kw: F.cross_entropy(x, t, **kw), [LOGITS, _u(0, 1, 5, 4)]),
    "ce_prob_weight_smoothing": (lambda x, t, w, **kw: F.cross_entropy(x, t, w, label_smoothing=0.25, **kw),
                                 [LOGITS, _u(0, 1, 5, 4), W4]),
    "ce_prob_spatial": (lambda x, t, **kw: F.cross_entropy(x, t, **kw), [_x(3, 4, 2), _u(0, 1, 3, 4, 2)]),
    "nll": (lambda x, t, **kw: F.nll_loss(x, t, **kw), [LOGITS, TARGET]),
    "nll_weight_ignore": (lambda x, t, w, **kw: F.nll_loss(x, t, w, **kw), [LOGITS, IGNORED, W4]),
    "nll_ignore_class_3": (lambda x, t, **kw: F.nll_loss(x, t, ignore_index=3, **kw), [LOGITS, TARGET]),
    "nll_spatial_weight": (lambda x, t, w, **kw: F.nll_loss(x, t, w, **kw), [_x(3, 4, 2, 3), _cls(4, 3, 2, 3), W4]),
}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", sorted(CLASS))
def test_class_losses(case, reduction, opset):
    fn, inputs = CLASS[case]
    check_export(lambda *a: fn(*a, reduction=reduction), inputs, opset=opset, batches=(1, 5))


@pytest.mark.parametrize("case", sorted(CLASS))
def test_class_losses_float64(case):
    fn, inputs = CLASS[case]
    check_export(lambda *a: fn(*a, reduction="mean"), [a.astype(np.float64) if a.dtype.kind == "f" else a
                                                        for a in inputs], batches=(1, 5))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_symbolic_class_count(soft, reduction):
    """A class dim traced as a symbol: the smoothing share e / C and the range check read C from the shape."""
    def fn(x, t, w):
        return F.cross_entropy(x, t, w, label_smoothing=0.2, reduction=reduction)

    def inputs(n_cls):
        t = _u(0, 1, 5, n_cls) if soft else np.array([0, 1, -100, n_cls - 1, 2])
        return [_x(5, n_cls), t, _u(0.5, 2, n_cls)]

    axes = {"x": {0: "batch", 1: "classes"}, "w": {0: "classes"}}
    if soft:
        axes["t"] = {0: "batch", 1: "classes"}
    model = check_export(fn, inputs(4), dynamic_axes=axes, batches=(1, 5))
    arrays = inputs(7)
    want = fn(*(ember.tensor(a) for a in arrays)).numpy()
    (got,) = ort_session(model).run(None, dict(zip(["x", "t", "w"], arrays)))
    assert_same(got, want, "onnxruntime at 7 classes")


def test_every_target_ignored_gives_nan_for_mean():
    fn = lambda x, t: F.cross_entropy(x, t)  # noqa: E731  0 / 0, as torch
    check_export(fn, [LOGITS, np.full(5, -100)], dynamic_axes={"x": None, "t": None})


def test_float16_runs():
    """float16 losses compute in float32 and round once, as the kernels do: float16 precision in the tolerance."""
    h = lambda a: a.astype(np.float16)  # noqa: E731
    for fn, inputs in [(F.mse_loss, [h(X), h(T)]), (F.binary_cross_entropy_with_logits, [h(X), h(Y)]),
                       (F.kl_div, [h(np.log(P)), h(Y)]), (F.cross_entropy, [h(LOGITS), TARGET]),
                       (lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), [h(LOGITS), h(_u(0, 1, 5, 4))])]:
        check_export(fn, inputs, batches=(1, 5), atol=1e-2, rtol=1e-2)


# ---- what an exported graph does where ember raises, and refusals ---------------------------------------
def _run(fn, example, feeds):
    prog = trace(fn, tuple(ember.tensor(a) for a in example))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        to_onnx(prog, path)
        return run_onnx(path, dict(zip(prog.graph.inputs, feeds)))


@pytest.mark.parametrize("bad", [4, -1])
def test_out_of_range_class_target_gives_nan(bad):
    """ember raises IndexError; the exported graph marks the row NaN (ONNX Gather would wrap -1 silently)."""
    x, t = LOGITS[:3], np.array([0, bad, 1])
    for engine, (got,) in _run(lambda x, t: F.cross_entropy(x, t, reduction="none"), [x, TARGET[:3]], [x, t]).items():
        assert np.isnan(got).tolist() == [False, True, False], engine
    for engine, (got,) in _run(lambda x, t: F.nll_loss(x, t, reduction="sum"), [x, TARGET[:3]], [x, t]).items():
        assert np.isnan(got), engine


def test_bce_input_outside_0_1_gives_nan():
    x = np.array([[0.5, 1.5, -0.5]], np.float32)
    for engine, (got,) in _run(lambda x, t: F.binary_cross_entropy(x, t, reduction="none"),
                               [P[:1], Y[:1]], [x, Y[:1]]).items():
        assert not np.isnan(got[0, 0]) and np.isnan(got[0, 1:]).all(), engine


@pytest.mark.parametrize("fn,bad", [
    (lambda x, t: F.mse_loss(x, t), "max"),
    (lambda x, t: F.cross_entropy(x, t.argmax(dim=1)), "batchmean"),
    (lambda x, t: F.cross_entropy(x, t), "batchmean"),
])
def test_unknown_reductions_are_refused(fn, bad):
    prog = trace(fn, (ember.tensor(X), ember.tensor(Y)))
    prog.graph.nodes[-1].attrs["reduction"] = bad  # a hand-edited graph: the public API checks the reduction
    with pytest.raises(ExportError, match=f"reduction='{bad}' is not one of 'none', 'mean', 'sum'"), \
            tempfile.TemporaryDirectory() as d:
        to_onnx(prog, os.path.join(d, "m.onnx"))
