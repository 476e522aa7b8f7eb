"""ONNX lowerings of ember's losses, composed from elementary ONNX ops with the formulas of
``core/backends/cpu/loss_kernels.py`` (computed in float32 for float16 inputs, as the kernels do).

Where ember's kernels raise on bad data, an exported graph cannot: binary_cross_entropy of inputs
outside [0, 1] gives NaN (the log of a negative number), and a class target outside [0, C) that is
not ``ignore_index`` gives a NaN loss for its row.
"""
from __future__ import annotations

import numpy as np

from .lowering import lowers
from .ops_reduce import convert, log_softmax, work_float

_I64 = np.dtype(np.int64)
_REDUCTIONS = ("none", "mean", "sum")


def _reduced(g, v, work, node, allowed=_REDUCTIONS):
    """Define the node's output as ``v`` (per element, in ``work``) under its ``reduction``."""
    out, reduction = node.outputs[0], node.attrs["reduction"]
    if reduction not in allowed:
        raise g.error(f"reduction={reduction!r} is not one of {', '.join(map(repr, allowed))}")
    odt = g.dtype(out)
    target = out if work == odt else None
    if reduction == "none":
        r = g.op("Identity", [v], target)
    elif reduction == "sum":
        r = g.reduce("ReduceSum", v, None, False, target)
    elif reduction == "mean":
        r = g.reduce("ReduceMean", v, None, False, target)
    else:  # batchmean: the sum over max(input's dim 0, 1)
        r = g.op("Div", [g.reduce("ReduceSum", v, None, False), _batch(g, node.inputs[0], work)], target)
    if target is None:
        convert(g, r, work, odt, out)


def _batch(g, x, work):
    shape = g.shape(x)
    if not shape or isinstance(shape[0], int):
        return g.scalar(max(shape[0] if shape else 1, 1), work)
    n = convert(g, g.op("Squeeze", [g.op("Shape", [x], start=0, end=1), g.ints([0])]), _I64, work)
    return g.op("Max", [n, g.scalar(1, work)])


def _dim(g, x, axis, work):
    """Size of ``x`` along ``axis`` as a 0-d ``work`` scalar."""
    n = g.shape(x)[axis]
    if isinstance(n, int):
        return g.scalar(n, work)
    return convert(g, g.op("Squeeze", [g.op("Shape", [x], start=axis, end=axis + 1), g.ints([0])]), _I64, work)


def _per_class(g, e, x, work):
    """The smoothing share e / C of each of the C classes of ``x`` (N, C)."""
    n = g.shape(x)[1]
    return g.scalar(e / n, work) if isinstance(n, int) else g.op("Div", [g.scalar(e, work), _dim(g, x, 1, work)])


# ---- pointwise losses ----------------------------------------------------------------------------------
def _log_clamped(g, a, work):
    """log(a) clamped below at -100, as torch's binary_cross_entropy (NaN stays NaN)."""
    return g.op("Max", [g.op("Log", [a]), g.scalar(-100.0, work)])


def _pointwise_value(g, name, x, t, extra, attrs, work):
    """The per-element loss, as ``pointwise_value`` in loss_kernels.py."""
    s = lambda v: g.scalar(v, work)  # noqa: E731
    op = g.op
    if name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
        d = op("Sub", [x, t])
        ad = op("Abs", [d])
        if name == "mse_loss":
            return op("Mul", [d, d])
        if name == "l1_loss":
            return ad
        half_sq = op("Mul", [op("Mul", [s(0.5), d]), d])
        if name == "smooth_l1_loss":
            beta = float(attrs["beta"])
            if beta == 0:
                return ad
            return op("Where", [op("Less", [ad, s(beta)]), op("Div", [half_sq, s(beta)]),
                                op("Sub", [ad, s(0.5 * beta)])])
        delta = float(attrs["delta"])
        return op("Where", [op("LessOrEqual", [ad, s(delta)]), half_sq,
                            op("Mul", [s(delta), op("Sub", [ad, s(0.5 * delta)])])])
    if name == "kl_div":
        if attrs["log_target"]:
            return op("Mul", [op("Exp", [t]), op("Sub", [t, x])])
        pos = op("Greater", [t, s(0)])
        a = op("Mul", [t, op("Sub", [op("Log", [op("Where", [pos, t, s(1)])]), x])])
        return op("Where", [pos, a, op("Mul", [op("Mul", [op("Neg", [t]), x]), s(0)])])  # -t x 0: NaN stays NaN
    if name == "binary_cross_entropy":
        one_minus = lambda v: op("Sub", [s(1), v])  # noqa: E731
        return op("Neg", [op("Add", [op("Mul", [t, _log_clamped(g, x, work)]),
                                     op("Mul", [one_minus(t), _log_clamped(g, one_minus(x), work)])])])
    if name == "binary_cross_entropy_with_logits":
        # log(1 + exp(-|x|)) + max(-x, 0): ONNX has no log1p; the difference is below 1e-7 absolute
        sp = op("Add", [op("Log", [op("Add", [s(1), op("Exp", [op("Neg", [op("Abs", [x])])])])]),
                        op("Max", [op("Neg", [x]), s(0)])])
        pw = extra.get("pos_weight")
        lw = sp if pw is None else op("Mul", [op("Add", [s(1), op("Mul", [op("Sub", [pw, s(1)]), t])]), sp])
        return op("Add", [op("Mul", [op("Sub", [s(1), t]), x]), lw])
    raise g.error(f"no ONNX formula for the loss {name!r}")


def _pointwise(name):
    def lower(g, node):
        x, t = node.inputs[:2]
        work = work_float(g.dtype(x))
        xw, tw = (convert(g, v, g.dtype(v), work) for v in (x, t))
        names = [n for n in ("weight", "pos_weight") if node.attrs.get("has_" + n)]
        extra = {n: convert(g, v, g.dtype(v), work) for n, v in zip(names, node.inputs[2:])}
        v = _pointwise_value(g, name, xw, tw, extra, node.attrs, work)
        if "weight" in extra:
            v = g.op("Mul", [v, extra["weight"]])
        _reduced(g, v, work, node, _REDUCTIONS + ("batchmean",))

    return lower


for _name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "binary_cross_entropy",
              "binary_cross_entropy_with_logits"):
    lowers(_name)(_pointwise(_name))


# ---- class-index losses: rows (N, C), targets (N,) --------------------------------------------------------
def _class_rows(g, node, x, work):
    """(-x[i, t_i], the class weights or None, w[t_i] (0 where ignored), not ignored, out of range) for the
    rows of ``x`` (in the work dtype) and the node's targets."""
    xin, t = node.inputs[:2]
    t64 = convert(g, t, g.dtype(t), _I64)
    valid = g.op("Not", [g.op("Equal", [t64, g.scalar(int(node.attrs["ignore_index"]), _I64)])])
    n_cls = _dim(g, xin, 1, _I64)
    out_of_range = g.op("Or", [g.op("Less", [t64, g.scalar(0, _I64)]),
                               g.op("Not", [g.op("Less", [t64, n_cls])])])
    bad = g.op("And", [valid, out_of_range])
    ok = g.op("And", [valid, g.op("Not", [out_of_range])])
    tt = g.op("Where", [ok, t64, g.scalar(0, _I64)])
    col = g.ints([1])
    picked = g.op("Squeeze", [g.op("GatherElements", [x, g.op("Unsqueeze", [tt, col])], axis=1), col])
    if len(node.inputs) > 2:
        w = convert(g, node.inputs[2], g.dtype(node.inputs[2]), work)
        wt = g.op("Where", [valid, g.op("Gather", [w, tt], axis=0), g.scalar(0, work)])
    else:
        w, wt = None, convert(g, valid, bool, work)
    return g.op("Neg", [picked]), w, wt, valid, bad


def _class_loss(g, node, per_row, wt, bad, work):
    """Reduce the per-row losses as nll_loss / cross_entropy do: 'mean' divides by the summed weight."""
    per_row = g.op("Where", [bad, g.scalar(np.nan, work), per_row])
    if node.attrs["reduction"] != "mean":
        return _reduced(g, per_row, work, node)
    total = g.reduce("ReduceSum", per_row, None, False)
    odt = g.dtype(node.outputs[0])
    v = g.op("Div", [total, g.reduce("ReduceSum", wt, None, False)], node.outputs[0] if work == odt else None)
    if work != odt:
        convert(g, v, work, odt, node.outputs[0])


@lowers("nll_loss")
def _nll_loss(g, node):
    x = node.inputs[0]
    work = work_float(g.dtype(x))
    nll, _, wt, _, bad = _class_rows(g, node, convert(g, x, g.dtype(x), work), work)
    _class_loss(g, node, g.op("Mul", [nll, wt]), wt, bad, work)


@lowers("cross_entropy")
def _cross_entropy(g, node):
    x = node.inputs[0]
    work = work_float(g.dtype(x))
    logp = log_softmax(g, convert(g, x, g.dtype(x), work), work, 1)
    nll, w, wt, valid, bad = _class_rows(g, node, logp, work)
    loss = g.op("Mul", [wt, nll])
    e = float(node.attrs["label_smoothing"])
    if e != 0.0:
        # (1 - e) w[t] (-logp[t]) + e / C sum_c w[c] (-logp[c]), zero for ignored rows
        wl = logp if w is None else g.op("Mul", [logp, w])
        smooth = g.op("Neg", [g.reduce("ReduceSum", wl, [1], False)])
        share = _per_class(g, e, node.inputs[0], work)
        loss = g.op("Add", [g.op("Mul", [g.scalar(1.0 - e, work), loss]), g.op("Mul", [share, smooth])])
        loss = g.op("Where", [valid, loss, g.scalar(0, work)])
    _class_loss(g, node, loss, wt, bad, work)


@lowers("cross_entropy_prob")
def _cross_entropy_prob(g, node):
    x, t = node.inputs[:2]
    work = work_float(g.dtype(x))
    logp = log_softmax(g, convert(g, x, g.dtype(x), work), work, 1)
    tp = convert(g, t, g.dtype(t), work)
    e = float(node.attrs["label_smoothing"])
    if e != 0.0:
        tp = g.op("Add", [g.op("Mul", [tp, g.scalar(1.0 - e, work)]), _per_class(g, e, x, work)])
    if len(node.inputs) > 2:
        tp = g.op("Mul", [tp, convert(g, node.inputs[2], g.dtype(node.inputs[2]), work)])
    per_row = g.op("Neg", [g.reduce("ReduceSum", g.op("Mul", [tp, logp]), [1], False)])
    _reduced(g, per_row, work, node)  # 'mean': over the N rows
