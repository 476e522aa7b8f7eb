"""ONNX lowerings of the reductions, softmax, sort/topk and tril/triu (the losses are in ops_loss.py).

ONNX Runtime lacks kernels for some dtypes (ReduceSum of int8/bool, ArgMax of int16, Trilu of int8 ...):
integer sums, products and running sums run in int64 and are cast back, which wraps exactly as numpy's
narrower accumulator does. ORT's ReduceMax/ArgMax skip NaN where numpy (so ember) returns it: float
max/min go through NaN-aware forms (TopK orders NaN as the largest value, as ember's sort does).
"""
from __future__ import annotations

import numpy as np

from .lowering import lowers, onnx_dtype

_F16, _F32, _I32, _I64, _U8 = (np.dtype(d) for d in ("float16", "float32", "int32", "int64", "uint8"))


# ---- helpers shared with ops_loss.py ---------------------------------------------------------------
def reduce_or_same(g, op_type, x, dims, keepdim):
    """``g.reduce`` over ``dims``; ``x`` itself for no dims (numpy's ``axis=()`` reduces nothing, where
    ONNX reads no axes as all axes)."""
    return g.reduce(op_type, x, dims, keepdim) if dims else x


def count(g, x, dims, dtype):
    """The number of elements of ``x`` over ``dims`` (a 0-d ``dtype``), read from its shape when symbolic."""
    sizes = [g.shape(x)[d] for d in dims]
    if all(isinstance(s, int) for s in sizes):
        return g.scalar(int(np.prod(sizes, dtype=np.int64)), dtype)
    picked = g.op("Gather", [g.op("Shape", [x]), g.ints(list(dims))])
    return convert(g, g.reduce("ReduceProd", picked, None, False), _I64, dtype)


def finish(g, value, dtype, out):
    """Define ``out`` as ``value`` (of numpy ``dtype``), cast to ``out``'s dtype."""
    if dtype == g.dtype(out):
        return g.op("Identity", [value], out)
    return g.op("Cast", [value], out, to=onnx_dtype(g.dtype(out)))


def reduce_into(g, op_type, x, dims, keepdim, dtype, out):
    """``reduce_or_same`` of ``x`` (of ``dtype``) defining ``out``, cast to its dtype when they differ."""
    if dims and dtype == g.dtype(out):
        return g.reduce(op_type, x, dims, keepdim, out)
    return finish(g, reduce_or_same(g, op_type, x, dims, keepdim), dtype, out)


def convert(g, x, have, want, outputs=None):
    """``x`` (of numpy dtype ``have``) as ``want`` (``g.cast`` with the dtype given: helper values too)."""
    return g.cast(x, want, outputs, have=have)


def work_float(dtype):
    """The dtype ember's kernels compute ``dtype`` losses and statistics in (float16 in float32)."""
    return _F32 if dtype == _F16 else np.dtype(dtype)


def _dims(g, node):
    rank = g.rank(node.inputs[0])
    return tuple(sorted({int(d) % rank for d in node.attrs["dims"]})) if rank else ()


def _int_work(dtype):
    return dtype.kind in "biu"


# ---- sum / mean / prod / var / std -------------------------------------------------------------------
def _accumulate(g, node, op_type, dims):
    """sum/prod: elements cast to the output dtype first (numpy's ``dtype=``), ints accumulated in int64."""
    x, out = node.inputs[0], node.outputs[0]
    odt = g.dtype(out)
    work = _I64 if _int_work(odt) else odt
    xw = convert(g, convert(g, x, g.dtype(x), odt), odt, work)
    reduce_into(g, op_type, xw, dims, node.attrs["keepdim"], work, out)


@lowers("sum")
def _sum(g, node):
    _accumulate(g, node, "ReduceSum", _dims(g, node))


@lowers("prod")
def _prod(g, node):
    dim, rank = node.attrs["dim"], g.rank(node.inputs[0])
    dims = tuple(range(rank)) if dim is None else ((int(dim) % rank,) if rank else ())
    _accumulate(g, node, "ReduceProd", dims)


@lowers("mean")
def _mean(g, node):
    x, out = node.inputs[0], node.outputs[0]
    dims, keep, odt = _dims(g, node), node.attrs["keepdim"], g.dtype(out)
    xo = convert(g, x, g.dtype(x), odt)
    if odt.kind == "f":
        work = work_float(odt)
        reduce_into(g, "ReduceMean", convert(g, xo, odt, work), dims, keep, work, out)
        return
    # an integer (or bool) dtype: numpy sums in it (wrapping), divides as float64 and truncates
    s = reduce_or_same(g, "ReduceSum", convert(g, xo, odt, _I64), dims, keep)
    s = convert(g, convert(g, s, _I64, odt), odt, np.float64)
    q = g.op("Div", [s, count(g, x, dims, np.float64)])
    finish(g, q, np.float64, out)


def _variance(g, node, work, outputs=None):
    """The variance in ``work`` with numpy's ``ddof``: sum((x - mean)^2) / max(n - ddof, 0); its last node
    defines ``outputs`` when given."""
    x, odt = node.inputs[0], g.dtype(node.outputs[0])
    dims, keep, ddof = _dims(g, node), node.attrs["keepdim"], int(node.attrs["correction"])
    xw = convert(g, convert(g, x, g.dtype(x), odt), odt, work)
    d = g.op("Sub", [xw, reduce_or_same(g, "ReduceMean", xw, dims, True)])
    sq = g.op("Mul", [d, d])
    if ddof == 0:
        return g.reduce("ReduceMean", sq, dims, keep, outputs) if dims else g.op("Identity", [sq], outputs)
    dof = g.op("Max", [g.op("Sub", [count(g, x, dims, work), g.scalar(ddof, work)]), g.scalar(0, work)])
    return g.op("Div", [reduce_or_same(g, "ReduceSum", sq, dims, keep), dof], outputs)


@lowers("var")
def _var(g, node):
    out = node.outputs[0]
    work = work_float(g.dtype(out))
    if work == g.dtype(out):
        _variance(g, node, work, out)
    else:
        convert(g, _variance(g, node, work), work, g.dtype(out), out)


@lowers("std")
def _std(g, node):
    out = node.outputs[0]
    work = work_float(g.dtype(out))
    sd = g.op("Sqrt", [_variance(g, node, work)], out if work == g.dtype(out) else None)
    if work != g.dtype(out):
        convert(g, sd, work, g.dtype(out), out)


# ---- max / min / any / all -----------------------------------------------------------------------------
def _nan_aware_extreme(g, op_type, x, dt, dims, keep, outputs=None):
    """ReduceMax/Min of ``x`` (of dtype ``dt``); NaN where a reduced slice holds one (ORT's kernels skip NaN)."""
    if dt.kind == "b" or dt == np.int16:  # no ORT kernel: compare in a wider exact type
        w = _U8 if dt.kind == "b" else _I32
        return convert(g, g.reduce(op_type, convert(g, x, dt, w), dims, keep), w, dt, outputs)
    if dt.kind != "f":
        return g.reduce(op_type, x, dims, keep, outputs)
    r = g.reduce(op_type, x, dims, keep)
    has_nan = convert(g, g.reduce("ReduceMax", convert(g, g.op("IsNaN", [x]), bool, _U8), dims, keep), _U8, bool)
    return g.op("Where", [has_nan, g.scalar(np.nan, dt), r], outputs)


def _extreme(op_type):
    def lower(g, node):
        x, out, dims = node.inputs[0], node.outputs[0], _dims(g, node)
        if not dims:
            g.op("Identity", [x], out)
        else:
            _nan_aware_extreme(g, op_type, x, g.dtype(x), dims, node.attrs["keepdim"], out)

    return lower


lowers("amax")(_extreme("ReduceMax"))
lowers("amin")(_extreme("ReduceMin"))


def _any_all(is_all):
    def lower(g, node):
        # count the nonzero (any) or zero (all) elements: exact for empty slices too
        b = g.cast(node.inputs[0], bool)
        hits = convert(g, g.op("Not", [b]) if is_all else b, bool, _I64)
        n = reduce_or_same(g, "ReduceSum", hits, _dims(g, node), node.attrs["keepdim"])
        g.op("Equal" if is_all else "Greater", [n, g.scalar(0, _I64)], node.outputs[0])

    return lower


lowers("any")(_any_all(False))
lowers("all")(_any_all(True))


# ---- argmax / argmin / max_dim / min_dim ----------------------------------------------------------------
def _select(g, x, dt, axis, largest, values_out=None, indices_out=None, values=True):
    """(values or None, int64 indices) of the first max (min) along ``axis``, keeping the axis; NaN counts
    as the extreme, as numpy's argmax/argmin (so ember's kernels) have it."""
    if dt.kind == "f":
        # TopK orders NaN as the largest and breaks ties by the lower index: negate for the min
        key = x if largest else g.op("Neg", [x])
        outs = [values_out if largest and values_out else g.fresh("topk"), indices_out or g.fresh("topk")]
        v, i = g.op("TopK", [key, g.ints([1])], outs, axis=axis, largest=1, sorted=1)
        return (v if largest or not values else g.op("Neg", [v], values_out)), i
    w = convert(g, x, dt, _U8 if dt.kind == "b" else _I32 if dt == np.int16 else dt)
    i = g.op("ArgMax" if largest else "ArgMin", [w], indices_out, axis=axis, keepdims=1, select_last_index=0)
    return (g.op("GatherElements", [x, i], values_out, axis=axis) if values else None), i


def _squeeze(g, x, axes, outputs):
    return g.op("Squeeze", [x, g.ints(list(axes))], outputs)


def _arg(largest):
    def lower(g, node):
        x, out, dim, keep = node.inputs[0], node.outputs[0], node.attrs["dim"], node.attrs["keepdim"]
        rank = g.rank(x)
        if rank == 0:
            g.op("Identity", [g.const(np.asarray(0, np.int64))], out)
        elif dim is None:  # over the flattened tensor
            _, i = _select(g, g.op("Reshape", [x, g.ints([-1])]), g.dtype(x), 0, largest, values=False)
            g.op("Reshape", [i, g.ints([1] * rank if keep else [])], out)
        elif keep:
            _select(g, x, g.dtype(x), int(dim) % rank, largest, indices_out=out, values=False)
        else:
            _, i = _select(g, x, g.dtype(x), int(dim) % rank, largest, values=False)
            _squeeze(g, i, [int(dim) % rank], out)

    return lower


lowers("argmax")(_arg(True))
lowers("argmin")(_arg(False))


def _select_dim(largest):
    def lower(g, node):
        x, (vals, idx) = node.inputs[0], node.outputs
        rank = g.rank(x)
        if rank == 0:
            g.op("Identity", [x], vals)
            g.op("Identity", [g.const(np.asarray(0, np.int64))], idx)
        elif node.attrs["keepdim"]:
            _select(g, x, g.dtype(x), int(node.attrs["dim"]) % rank, largest, vals, idx)
        else:
            axis = int(node.attrs["dim"]) % rank
            v, i = _select(g, x, g.dtype(x), axis, largest)
            _squeeze(g, v, [axis], vals)
            _squeeze(g, i, [axis], idx)

    return lower


lowers("max_dim")(_select_dim(True))
lowers("min_dim")(_select_dim(False))


# ---- logsumexp / norm -----------------------------------------------------------------------------------
@lowers("logsumexp")
def _logsumexp(g, node):
    out, dims, keep = node.outputs[0], _dims(g, node), node.attrs["keepdim"]
    odt = g.dtype(out)
    x = g.cast(node.inputs[0], odt)
    if not dims:  # log(exp(x - m)) + m with m = x where finite: x itself
        return g.op("Identity", [x], out)
    m = g.reduce("ReduceMax", x, dims, True)
    # the shift is 0 where the max is not finite (m - m == 0 only for finite m): all -inf gives -inf
    m = g.op("Where", [g.op("Equal", [g.op("Sub", [m, m]), g.scalar(0, odt)]), m, g.scalar(0, odt)])
    s = g.reduce("ReduceSum", g.op("Exp", [g.op("Sub", [x, m])]), dims, keep)
    g.op("Add", [g.op("Log", [s]), m if keep else _squeeze(g, m, dims, None)], out)


@lowers("norm")
def _norm(g, node):
    x, out, p = node.inputs[0], node.outputs[0], node.attrs["p"]
    dims, keep, odt = _dims(g, node), node.attrs["keepdim"], g.dtype(out)
    a = g.op("Abs", [g.cast(x, odt)])
    if p in ("inf", "-inf"):
        op = "ReduceMax" if p == "inf" else "ReduceMin"
        return g.op("Identity", [a], out) if not dims else _nan_aware_extreme(g, op, a, odt, dims, keep, out)
    p = float(p)
    if p == 0.0:
        nonzero = convert(g, g.op("Not", [g.op("Equal", [a, g.scalar(0, odt)])]), bool, _I64)
        return convert(g, reduce_or_same(g, "ReduceSum", nonzero, dims, keep), _I64, odt, out)
    if p == 1.0:
        return g.reduce("ReduceL1", a, dims, keep, out) if dims else g.op("Identity", [a], out)
    if p == 2.0:
        return g.reduce("ReduceL2", a, dims, keep, out) if dims else g.op("Sqrt", [g.op("Mul", [a, a])], out)
    s = reduce_or_same(g, "ReduceSum", g.op("Pow", [a, g.scalar(p, odt)]), dims, keep)
    return g.op("Pow", [s, g.scalar(1.0 / p, odt)], out)


# ---- cumsum / softmax ------------------------------------------------------------------------------------
@lowers("cumsum")
def _cumsum(g, node):
    x, out = node.inputs[0], node.outputs[0]
    odt, rank = g.dtype(out), g.rank(x)
    xo = convert(g, x, g.dtype(x), odt)
    if rank == 0:
        return finish(g, xo, odt, out)
    work = _I64 if _int_work(odt) else odt
    axis = g.const(np.asarray(int(node.attrs["dim"]) % rank, np.int64))
    r = g.op("CumSum", [convert(g, xo, odt, work), axis], out if work == odt else None,
             reverse=int(bool(node.attrs["reverse"])))
    if work != odt:
        convert(g, r, work, odt, out)


def log_softmax(g, x, dt, axis, outputs=None):
    """LogSoftmax of ``x`` (of float ``dt``) along ``axis``. float64 is composed the kernel's way
    (x - m - log(sum(exp(x - m))), m = the max or 0 where it is -inf): ORT's double LogSoftmax returns
    finite values for rows holding NaN or inf, where ember gives NaN."""
    if dt != np.float64:
        return g.op("LogSoftmax", [x], outputs, axis=axis)
    m = g.reduce("ReduceMax", x, [axis], True)
    m = g.op("Where", [g.op("Equal", [m, g.scalar(-np.inf, dt)]), g.scalar(0, dt), m])
    z = g.op("Sub", [x, m])
    return g.op("Sub", [z, g.op("Log", [g.reduce("ReduceSum", g.op("Exp", [z]), [axis], True)])], outputs)


def _softmax(log):
    def lower(g, node):
        out, odt = node.outputs[0], g.dtype(node.outputs[0])
        rank = g.rank(node.inputs[0])
        if rank == 0:  # the kernel's ones_like / zeros_like
            return g.op("Identity", [g.scalar(0 if log else 1, odt)], out)
        x, axis = g.cast(node.inputs[0], odt), int(node.attrs["dim"]) % rank
        if log:
            log_softmax(g, x, odt, axis, out)
        else:
            g.op("Softmax", [x], out, axis=axis)

    return lower


lowers("softmax")(_softmax(False))
lowers("log_softmax")(_softmax(True))


# ---- sort / topk / tril / triu ---------------------------------------------------------------------------
def _top(g, node, k, axis, largest):
    """TopK into (values, indices): the order of ember's stable sort (ties by index, NaN the largest)."""
    x, (vals, idx) = node.inputs[0], node.outputs
    dt = g.dtype(x)
    if dt.kind == "b":  # TopK has no bool kernel
        v, _ = g.op("TopK", [g.cast(x, _U8), k], [g.fresh("topk"), idx], axis=axis, largest=int(largest), sorted=1)
        convert(g, v, _U8, dt, vals)
    else:
        g.op("TopK", [x, k], [vals, idx], axis=axis, largest=int(largest), sorted=1)


@lowers("sort")
def _sort(g, node):
    x = node.inputs[0]
    rank = g.rank(x)
    if rank == 0:
        raise g.error("sort of a 0-d tensor (ember's public sort reshapes it to 1-d first): nothing to sort along")
    axis = int(node.attrs["dim"]) % rank
    n = g.shape(x)[axis]
    k = g.ints([n]) if isinstance(n, int) else g.op("Shape", [x], start=axis, end=axis + 1)
    _top(g, node, k, axis, node.attrs["descending"])


@lowers("topk")
def _topk(g, node):
    rank = g.rank(node.inputs[0])
    if rank == 0:
        raise g.error("topk of a 0-d tensor (ember's public topk reshapes it to 1-d first): nothing to select along")
    _top(g, node, g.ints([node.attrs["k"]]), int(node.attrs["dim"]) % rank, node.attrs["largest"])


def _tri(upper):
    def lower(g, node):
        x, out = node.inputs[0], node.outputs[0]
        dt = g.dtype(x)
        k = g.const(np.asarray(int(node.attrs["diagonal"]), np.int64))
        if dt in (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16)):  # no ORT kernel: exact in int32
            convert(g, g.op("Trilu", [g.cast(x, _I32), k], upper=int(upper)), _I32, dt, out)
        else:
            g.op("Trilu", [x, k], out, upper=int(upper))

    return lower


lowers("tril")(_tri(False))
lowers("triu")(_tri(True))
