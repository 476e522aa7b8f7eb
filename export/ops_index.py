"""ONNX lowerings of the indexing ops: getitem, index, index_put, gather, scatter, scatter_add, index_select,
index_add, one_hot, embedding, nonzero.

``x[index]`` follows numpy's rules, as ember's kernels do: slices become one Slice, basic ints a Gather
each, integer tensors (and ints among them) a Gather or a GatherND whose result dims are then moved
where numpy puts them, and None a final Unsqueeze. Boolean masks become their NonZero positions.
"""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .lowering import _is_sym, lowers
from .ops_shape import INT64_MAX, INT64_MIN, axes, compute_as, finish, shape_of, slice_, squeeze, unsqueeze

TENSOR, ELLIPSIS = "tensor", "..."


def _is_slice(it):
    return isinstance(it, (tuple, list))


def _is_full(it):
    start, stop, step = it
    return start is None and stop is None and (step is None or (not _is_sym(step) and step == 1))


def _int64(g, t):
    return g.cast(t, np.int64)


# ---- x[index] ------------------------------------------------------------------------------------------

def _expand_masks(g, x, rank, items, tensors):
    """Replace boolean masks by integer positions (numpy's meaning of a mask index).

    Returns (x, rank, items, [(name, rank)]): a k-dim mask becomes k position vectors (rows of NonZero);
    a 0-d mask inserts a dim of size 1 into x that positions [0] (True) or [] (False) index."""
    used = sum((g.rank(t) if g.dtype(t) == np.bool_ else 1) for t in tensors)
    used += sum(1 for it in items if it is not None and it != ELLIPSIS and it != TENSOR)
    new_items, new_tensors, new_axes, d, k = [], [], [], 0, 0
    for it in items:
        if it != TENSOR:
            new_items.append(it)
            d += (rank - used) if it == ELLIPSIS else 0 if it is None else 1
            continue
        t = tensors[k]
        k += 1
        if g.dtype(t) != np.bool_:
            new_items.append(TENSOR)
            new_tensors.append((_int64(g, t), g.rank(t)))
            d += 1
        elif g.rank(t) == 0:
            new_axes.append(d)
            nz = g.op("NonZero", [g.op("Reshape", [t, axes(g, [1])])])
            new_items.append(TENSOR)
            new_tensors.append((squeeze(g, nz, [0]), 1))
            d += 1
        else:
            nz = g.op("NonZero", [t])
            for j in range(g.rank(t)):
                new_items.append(TENSOR)
                new_tensors.append((g.op("Gather", [nz, g.int_scalar(j)], axis=0), 1))
            d += g.rank(t)
    if new_axes:
        x = unsqueeze(g, x, new_axes)
    return x, rank + len(new_axes), new_items, new_tensors


def index_value(g, x, rank, items, tensors):
    """``x[items]`` (``tensors``: the index tensors, ONNX names); returns (value name, rank)."""
    x, rank, items, tensors = _expand_masks(g, x, rank, items, tensors)
    used = sum(1 for it in items if it is not None and it != ELLIPSIS)
    if used > rank:
        raise g.error(f"index {tuple(items)} uses {used} dims of a tensor of rank {rank}")
    advanced = any(it == TENSOR for it in items)
    slices, picks, adv, layout = [], [], [], []  # layout: the output's dims (x dims; None for new ones)
    insert_at, last, split, d, k = None, None, False, 0, 0
    for pos, it in enumerate(items):
        if it is None:
            layout.append(None)
        elif it == ELLIPSIS:
            layout.extend(range(d, d + rank - used))
            d += rank - used
        elif _is_slice(it):
            if not _is_full(it):
                slices.append((d, *it))
            layout.append(d)
            d += 1
        elif it != TENSOR and not advanced:
            picks.append((d, it))
            d += 1
        else:  # an advanced item: an index tensor, or an int among tensors
            if it == TENSOR:
                adv.append((d,) + tensors[k])
                k += 1
            else:
                adv.append((d, g.int_scalar(it), 0))
            if insert_at is None:
                insert_at = len(layout)
            elif last != pos - 1:
                split = True
            last = pos
            d += 1
    layout.extend(range(d, rank))

    cur = _apply_slices(g, x, slices)
    for d, i in sorted(picks, key=lambda p: -p[0]):
        cur = g.op("Gather", [cur, g.int_scalar(i)], axis=d)
    current = [d for d in range(rank) if d not in {p[0] for p in picks}]
    b_rank = max((r for _, _, r in adv), default=0)
    if len(adv) == 1:
        d, i, _ = adv[0]
        cur = g.op("Gather", [cur, i], axis=d)
        current[d] = "B"
    elif adv:
        cur, current = _gather_nd(g, cur, current, adv)
    target = list(layout)
    if adv:
        target.insert(0 if split else insert_at, "B")

    def dims(order):
        return [f"B{j}" if e == "B" else e for e in order for j in (range(b_rank) if e == "B" else [0])]

    have, want = dims(current), dims([e for e in target if e is not None])
    perm = [have.index(e) for e in want]
    if perm != list(range(len(perm))):
        cur = g.op("Transpose", [cur], perm=perm)
    full = dims(target)
    new = [j for j, e in enumerate(full) if e is None]
    if new:
        cur = unsqueeze(g, cur, new)
    return cur, len(full)


def _apply_slices(g, x, slices):
    if not slices:
        return x
    starts, ends, steps = [], [], []
    for _, start, stop, step in slices:
        step = 1 if step is None else step
        back = not _is_sym(step) and step < 0  # a sym step is a size: positive
        starts.append((INT64_MAX if back else 0) if start is None else start)
        ends.append((INT64_MIN if back else INT64_MAX) if stop is None else stop)
        steps.append(step)
    plain = all(not _is_sym(s) and s == 1 for s in steps)
    return slice_(g, x, starts, ends, [s[0] for s in slices], None if plain else steps)


def _gather_nd(g, x, current, adv):
    """GatherND of x by several broadcast index tensors: their dims first, then x's other dims in order."""
    adv_dims = [d for d, _, _ in adv]
    rest = [d for d in current if d not in adv_dims]
    perm = [current.index(d) for d in adv_dims + rest]
    if perm != list(range(len(perm))):
        x = g.op("Transpose", [x], perm=perm)
    names = [i for _, i, _ in adv]
    total = names[0]
    for i in names[1:]:
        total = g.op("Add", [total, i])  # its shape is the broadcast shape of the indices
    shape = shape_of(g, total)
    cols = [unsqueeze(g, g.op("Expand", [i, shape]), [-1]) for i in names]
    return g.op("GatherND", [x, g.op("Concat", cols, axis=-1)]), ["B"] + rest


@lowers("getitem", "index")
def _getitem(g, node):
    x, *tensors = node.inputs
    cur, _ = index_value(g, x, g.rank(x), list(node.attrs["index"]), tensors)
    finish(g, cur, node.outputs[0])


@lowers("index_put")
def _index_put(g, node):
    x, value, *tensors = node.inputs
    items, out, r = list(node.attrs["index"]), node.outputs[0], g.rank(x)
    v = g.cast(value, g.dtype(x))
    if _mask_write(g, node, x, v, items, tensors):
        return
    # Index a tensor of x's flat positions the same way, then write value there with ScatterND
    n, xs = g.op("Size", [x]), shape_of(g, x)
    lin = g.op("Reshape", [g.op("Range", [g.int_scalar(0), n, g.int_scalar(1)]), xs])
    pos, pr = index_value(g, lin, r, items, tensors)
    vr = g.rank(value)
    if vr > pr:  # numpy lets the value carry extra leading 1s
        v = squeeze(g, v, range(vr - pr))
    v = g.op("Expand", [v, shape_of(g, pos)])
    flat = g.op("Reshape", [x, axes(g, [-1])])
    written = g.op("ScatterND", [flat, unsqueeze(g, pos, [-1]), v])
    g.op("Reshape", [written, xs], out)


def _mask_write(g, node, x, v, items, tensors):
    """``x[:, mask] = v`` with v covering only the dims after the mask: a Where. False when it does not apply."""
    if len(tensors) != 1 or g.dtype(tensors[0]) != np.bool_ or g.rank(tensors[0]) == 0:
        return False
    m, k = tensors[0], items.index(TENSOR)
    if not all(_is_slice(it) and _is_full(it) for it in items[:k]):
        return False
    if not all(it == ELLIPSIS or (_is_slice(it) and _is_full(it)) for it in items[k + 1:]):
        return False
    after = g.rank(x) - k - g.rank(m)
    if g.rank(node.inputs[1]) > after:
        return False
    if after:
        m = unsqueeze(g, m, range(g.rank(m), g.rank(m) + after))
    g.op("Where", [m, v, x], node.outputs[0])
    return True


# ---- along one dim ---------------------------------------------------------------------------------------

def _crop_to(g, x, idx, dim):
    """x cut to idx's sizes in every dim but ``dim`` (torch lets the index be smaller; GatherElements in
    onnx.reference wants them equal)."""
    xs, js = g.shape(x), g.shape(idx)
    other = [k for k in range(len(xs)) if k != dim and xs[k] != js[k]]
    if not other:
        return x
    return slice_(g, x, [0] * len(other), shape_of(g, idx, other), other)


@lowers("gather")
def _gather(g, node):
    x, idx = node.inputs
    d = node.attrs["dim"] % max(g.rank(x), 1)
    g.op("GatherElements", [_crop_to(g, x, idx, d), _int64(g, idx)], node.outputs[0], axis=d)


def _scatter_elements(g, x, idx, src, out, dim, reduction):
    """ScatterElements into x; float16 sums run in float32 (ORT has no float16 'add')."""
    dtype = g.dtype(x)
    work = compute_as(dtype, ("float16",) if reduction else (), "float32")
    y = g.op("ScatterElements", [g.cast(x, work), idx, g.cast(src, work)], None if work != dtype else out,
             axis=dim, reduction=reduction)
    if work != dtype:
        g.cast(y, dtype, out)


@lowers("scatter", "scatter_add")
def _scatter(g, node):
    x, idx, src = node.inputs
    d = node.attrs["dim"] % max(g.rank(x), 1)
    if g.shape(src) != g.shape(idx):  # the kernel broadcasts src (a 0-d value) to the index's shape
        src = g.op("Expand", [src, shape_of(g, idx)])
    reduction = "add" if node.op == "scatter_add" else None
    _scatter_elements(g, x, _int64(g, idx), g.cast(src, g.dtype(x)), node.outputs[0], d, reduction)


@lowers("index_select")
def _index_select(g, node):
    x, idx = node.inputs
    d = node.attrs["dim"] % max(g.rank(x), 1)
    g.op("Gather", [x, g.op("Reshape", [_int64(g, idx), axes(g, [-1])])], node.outputs[0], axis=d)


@lowers("index_add")
def _index_add(g, node):
    x, idx, src = node.inputs
    r, dtype, alpha = g.rank(x), g.dtype(x), node.attrs["alpha"]
    d = node.attrs["dim"] % max(r, 1)
    src = g.cast(src, dtype)
    if alpha != 1:  # the kernel multiplies by alpha cast to x's dtype
        a = np.asarray(alpha, dtype=dtype)
        if dtype == np.bool_:
            src = g.op("And", [src, g.scalar(a, dtype)])
        else:
            work = compute_as(dtype, ("int8", "int16", "uint8"), "int64")  # no ORT Mul kernel for these
            src = g.cast(g.op("Mul", [g.cast(src, work), g.scalar(a, work)]), dtype)
    # one index per source element: idx along dim, repeated over the other dims
    col = g.op("Reshape", [_int64(g, idx), axes(g, [1] * d + [-1] + [1] * (r - d - 1))])
    full = g.op("Expand", [col, shape_of(g, src)])
    _scatter_elements(g, x, full, src, node.outputs[0], d, "add")


# ---- one_hot, embedding, nonzero -------------------------------------------------------------------------

@lowers("one_hot")
def _one_hot(g, node):
    x, n = node.inputs[0], int(node.attrs["num_classes"])
    if n == 0:  # OneHot needs a positive depth; ember accepts 0 classes for an empty input
        shape = g.op("Concat", [shape_of(g, x), axes(g, [0])], axis=0)
        g.op("ConstantOfShape", [shape], node.outputs[0], value=numpy_helper.from_array(np.zeros(1, np.int64)))
        return
    values = g.const(np.asarray([0, 1], dtype=np.int64), "onehot")
    g.op("OneHot", [_int64(g, x), g.int_scalar(n), values], node.outputs[0], axis=-1)


@lowers("embedding")
def _embedding(g, node):
    w, idx = node.inputs  # padding_idx and scale_grad_by_freq only change the gradient
    g.op("Gather", [w, _int64(g, idx)], node.outputs[0], axis=0)


@lowers("nonzero")
def _nonzero(g, node):
    x, out = node.inputs[0], node.outputs[0]
    dtype = g.dtype(x)
    if g.rank(x) == 0:  # (1, 0) or (0, 0): argwhere of a scalar
        count = g.op("Reshape", [g.cast(g.cast(x, np.bool_), np.int64), axes(g, [1])])
        shape = g.op("Concat", [count, axes(g, [0])], axis=0)
        g.op("ConstantOfShape", [shape], out, value=numpy_helper.from_array(np.zeros(1, np.int64)))
        return
    if dtype.name in ("int8", "int16", "float64"):  # no ORT NonZero kernel: nonzero-ness is the bool cast
        x = g.cast(x, np.bool_)
    g.op("Transpose", [g.op("NonZero", [x])], out, perm=[1, 0])

