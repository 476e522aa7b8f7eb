"""ONNX lowerings of the shape, join and shape-arithmetic ops: sym_size, sym_arith, full, arange, reshape,
permute, expand, narrow, flip, repeat, cat, stack, pad. Also the small helpers ops_index.py shares."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from .lowering import _is_sym, lowers

INT64_MAX, INT64_MIN = int(np.iinfo(np.int64).max), int(np.iinfo(np.int64).min)


# ---- helpers ---------------------------------------------------------------------------------------

def axes(g, values) -> str:
    """A 1-D int64 constant (axes, perms, literal starts/ends)."""
    return g.const(np.asarray(list(values), dtype=np.int64).reshape(-1), "axes")


def unsqueeze(g, x, ax, out=None) -> str:
    return g.op("Unsqueeze", [x, axes(g, ax)], out)


def squeeze(g, x, ax, out=None) -> str:
    return g.op("Squeeze", [x, axes(g, ax)], out)


def slice_(g, x, starts, ends, ax, steps=None, out=None) -> str:
    """ONNX Slice; ``starts`` / ``ends`` / ``steps`` are lists of ints and syms, or int64 tensor names."""
    def arg(v):
        return v if isinstance(v, str) else g.ints(v)

    ins = [x, arg(starts), arg(ends), axes(g, ax)]
    if steps is not None:
        ins.append(arg(steps))
    return g.op("Slice", ins, out)


def shape_of(g, x, dims=None) -> str:
    """Shape(x) as a 1-D int64 tensor, or only the listed dims of it."""
    s = g.op("Shape", [x])
    return s if dims is None else g.op("Gather", [s, axes(g, dims)], axis=0)


def scalar_sum(g, a, b):
    """``a + b`` for ints / syms: an int when both are ints, else an int64 scalar value name as a sym."""
    if not _is_sym(a) and not _is_sym(b):
        return int(a) + int(b)
    return {"sym": g.op("Add", [g.int_scalar(a), g.int_scalar(b)])}


def compute_as(dtype, unsupported, wider):
    """The dtype to run an op in: ``wider`` when ONNX Runtime has no kernel for ``dtype`` (in ``unsupported``)."""
    return np.dtype(wider) if np.dtype(dtype).name in unsupported else np.dtype(dtype)


def finish(g, cur, out) -> str:
    """Make value ``cur`` available as ``out``: rename the node that just made ``cur`` when it is a fresh helper."""
    last = g.nodes[-1] if g.nodes else None
    if cur != out and last is not None and list(last.output) == [cur] and cur not in g.graph.values:
        last.output[0] = out
        return out
    return g.op("Identity", [cur], out)


# ---- shape arithmetic --------------------------------------------------------------------------------

@lowers("sym_size")
def _sym_size(g, node):
    x = node.inputs[0]
    r, d = g.rank(x), node.attrs["dim"]
    if not -r <= d < r:
        raise g.error(f"dim {d} is out of range for a tensor of rank {r}")
    d %= r  # Shape's end=d+1 would be 0 for d=-1
    s = g.op("Shape", [x], start=d, end=d + 1)
    squeeze(g, s, [0], node.outputs[0])


@lowers("sym_arith")
def _sym_arith(g, node):
    kind, const, reverse = node.attrs["kind"], node.attrs["const"], node.attrs["reverse"]
    a = node.inputs[0]
    b = node.inputs[1] if const is None else g.int_scalar(int(const))
    if reverse:
        a, b = b, a
    out = node.outputs[0]
    if kind in ("add", "sub", "mul"):
        g.op(kind.capitalize(), [a, b], out)
    elif kind == "mod":
        g.op("Mod", [a, b], out, fmod=0)  # integer Mod with fmod=0 takes the divisor's sign, as Python's %
    elif kind == "floordiv":
        # Div truncates toward zero; a - a % b is an exact multiple of b, so dividing it floors as Python's //
        g.op("Div", [g.op("Sub", [a, g.op("Mod", [a, b], fmod=0)]), b], out)
    else:
        raise g.error(f"unknown kind {kind!r}; valid: add, sub, mul, floordiv, mod")


@lowers("full")
def _full(g, node):
    dtype = g.dtype(node.outputs[0])
    value = np.full((1,), node.attrs["value"], dtype=dtype)  # the kernel's np.full cast of the value
    g.op("ConstantOfShape", [g.ints(node.attrs["shape"])], node.outputs[0], value=numpy_helper.from_array(value))


@lowers("arange")
def _arange(g, node):
    start, end, step = (v if _is_sym(v) else int(v) for v in (node.attrs[k] for k in ("start", "end", "step")))
    if not _is_sym(step) and step == 0:
        raise g.error("step must be nonzero")
    r = g.op("Range", [g.int_scalar(start), g.int_scalar(end), g.int_scalar(step)])
    g.cast(r, g.dtype(node.outputs[0]), node.outputs[0])


# ---- shape ops ---------------------------------------------------------------------------------------

@lowers("reshape")
def _reshape(g, node):
    shape = node.attrs["shape"]
    # ember's 0 is an empty dim, never ONNX's "copy this dim"; a sym may be 0 at run time too
    zero = any(_is_sym(s) or s == 0 for s in shape)
    g.op("Reshape", [node.inputs[0], g.ints(shape)], node.outputs[0], allowzero=1 if zero else None)


@lowers("permute")
def _permute(g, node):
    dims = [int(d) for d in node.attrs["dims"]]
    if not dims:
        g.op("Identity", [node.inputs[0]], node.outputs[0])
    else:
        g.op("Transpose", [node.inputs[0]], node.outputs[0], perm=dims)


@lowers("expand")
def _expand(g, node):
    # Expand broadcasts both ways: a target 1 keeps the input's size, which is what ember's -1 means
    shape = [1 if not _is_sym(s) and s == -1 else s for s in node.attrs["shape"]]
    g.op("Expand", [node.inputs[0], g.ints(shape)], node.outputs[0])


@lowers("narrow")
def _narrow(g, node):
    x = node.inputs[0]
    d, start, length = node.attrs["dim"], node.attrs["start"], node.attrs["length"]
    d %= max(g.rank(x), 1)
    slice_(g, x, [start], [scalar_sum(g, start, length)], [d], out=node.outputs[0])


@lowers("flip")
def _flip(g, node):
    x, dims = node.inputs[0], [int(d) for d in node.attrs["dims"]]
    if not dims:
        g.op("Identity", [x], node.outputs[0])
        return
    k = len(dims)
    slice_(g, x, [-1] * k, [INT64_MIN] * k, dims, [-1] * k, out=node.outputs[0])


@lowers("repeat")
def _repeat(g, node):
    x, sizes = node.inputs[0], list(node.attrs["sizes"])
    lead = len(sizes) - g.rank(x)
    if lead < 0:
        raise g.error(f"{len(sizes)} repeat sizes for a tensor of rank {g.rank(x)}: needs at least one per dim")
    if not sizes:
        g.op("Identity", [x], node.outputs[0])
        return
    if lead:
        x = unsqueeze(g, x, range(lead))
    g.op("Tile", [x, g.ints(sizes)], node.outputs[0])


# ---- join ----------------------------------------------------------------------------------------------

@lowers("cat")
def _cat(g, node):
    g.op("Concat", list(node.inputs), node.outputs[0], axis=int(node.attrs["dim"]))


@lowers("stack")
def _stack(g, node):
    d = int(node.attrs["dim"])
    g.op("Concat", [unsqueeze(g, x, [d]) for x in node.inputs], node.outputs[0], axis=d)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@lowers("pad")
def _pad(g, node):
    x, out = node.inputs[0], node.outputs[0]
    pad, mode = list(node.attrs["pad"]), node.attrs["mode"]
    if mode not in _PAD_MODES:
        raise g.error(f"unknown mode {mode!r}; valid: {', '.join(_PAD_MODES)}")
    if any(_is_sym(p) for p in pad):
        raise g.error("symbolic pad amounts are not supported; pad takes ints (as ember.nn.functional.pad records)")
    r = g.rank(x)
    if len(pad) % 2 or len(pad) > 2 * r:
        raise g.error(f"pad {tuple(pad)} must hold an even number of at most {2 * r} entries for rank {r}")
    begin, end = [0] * r, [0] * r
    for j in range(len(pad) // 2):  # pairs run from the last dim backwards
        begin[r - 1 - j], end[r - 1 - j] = int(pad[2 * j]), int(pad[2 * j + 1])
    dtype = g.dtype(x)
    work = compute_as(dtype, ("int16",), "int32")  # ORT's Pad has no int16 kernel
    y = g.cast(x, work)
    # Pad the positive amounts, then crop the negative ones: onnx.reference refuses negative pads
    grow_b, grow_e = [max(0, p) for p in begin], [max(0, p) for p in end]
    if any(grow_b) or any(grow_e):
        if mode == "circular" and g.opset < 19:
            y = _wrap_pad(g, y, grow_b, grow_e)
        else:
            ins = [y, g.ints(grow_b + grow_e)]
            if mode == "constant":
                ins.append(g.scalar(np.full((), node.attrs["value"], dtype=dtype), work))
            y = g.op("Pad", ins, mode=_PAD_MODES[mode])
    crop = [d for d in range(r) if begin[d] < 0 or end[d] < 0]
    if crop:
        y = slice_(g, y, [-min(0, begin[d]) for d in crop], [min(0, end[d]) or INT64_MAX for d in crop], crop)
    if work != dtype:
        g.cast(y, dtype, out)
    else:
        finish(g, y, out)


def _wrap_pad(g, x, begin, end):
    """Circular padding before opset 19's Pad mode 'wrap': concat the tail, x and the head along each dim."""
    for d in range(len(begin)):
        if begin[d] or end[d]:
            parts = [slice_(g, x, [-begin[d]], [INT64_MAX], [d])] if begin[d] else []
            parts.append(x)
            if end[d]:
                parts.append(slice_(g, x, [0], [end[d]], [d]))
            x = g.op("Concat", parts, axis=d)
    return x
