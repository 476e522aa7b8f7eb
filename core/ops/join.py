"""Concatenation, splitting and padding: cat, stack, split, chunk, unbind, pad.

cat, stack and pad are primitive ops with their own backward. The pieces of split/chunk/unbind are
``narrow`` / ``select`` views: an op has a fixed number of outputs, so a split into a data-dependent
number of pieces is one view op per piece.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op
from .shape import _norm, narrow
from .util import as_size


def _promoted(tensors, op_name):
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{op_name}: expected a non-empty list of Tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op_name}: expected a sequence of Tensors, but element {i} is {type(t).__name__}")
    npd = tensors[0]._data.dtype
    if all(t._data.dtype == npd for t in tensors):
        return tensors
    out = tensors[0].dtype
    for t in tensors[1:]:
        out = _dt.promote(out, t.dtype)
    return [t if t.dtype is out else t.to(out) for t in tensors]


# ---- cat ------------------------------------------------------------------------------------------

def _cat_rule(*shapes, dim):
    first = shapes[0]
    for i, s in enumerate(shapes[1:], 1):
        if len(s) != len(first):
            raise RuntimeError(
                f"cat: tensors must have the same number of dimensions: got {len(first)} (tensor 0, shape "
                f"{tuple(first)}) and {len(s)} (tensor {i}, shape {tuple(s)})"
            )
        for k, (a, b) in enumerate(zip(first, s)):
            if k != dim and a != b:
                raise RuntimeError(
                    f"cat: sizes of tensors must match except in dimension {dim}; expected size {a} but got size "
                    f"{b} in dimension {k} for tensor number {i} in the list (shapes "
                    f"{', '.join(str(tuple(x)) for x in shapes)})"
                )
    return first[:dim] + (sum(s[dim] for s in shapes),) + first[dim + 1:]


_cat = register_op("cat", attrs={"dim": 0}, shape=_cat_rule, save_inputs=False,
                   doc="join tensors along an existing dim")


@kernel("cat")
def _cat_cpu(*xs, dim):
    return np.concatenate(xs, axis=dim)


@backward("cat")
def _cat_bw(ctx, g):
    dim, start, grads = ctx.attrs["dim"], 0, []
    for need, shape in zip(ctx.needs_input_grad, ctx.input_shapes):
        grads.append(narrow(g, dim, start, shape[dim]) if need else None)
        start += shape[dim]
    return tuple(grads)


def cat(tensors, dim: int = 0) -> Tensor:
    """Join along ``dim``; dtypes promote as in torch. 1-D empty tensors are skipped (torch's legacy rule)."""
    tensors = _promoted(tensors, "cat")
    if len({t.ndim for t in tensors}) > 1:
        tensors = [t for t in tensors if t.shape != (0,)] or tensors
    for i, t in enumerate(tensors):
        if t.ndim == 0:
            raise RuntimeError(f"cat: zero-dimensional tensor (at position {i}) cannot be concatenated")
    return apply(_cat, *tensors, dim=_norm(dim, tensors[0].ndim, "cat"))


concat = concatenate = cat


# ---- stack ----------------------------------------------------------------------------------------

def _stack_rule(*shapes, dim):
    for i, s in enumerate(shapes[1:], 1):
        if s != shapes[0]:
            raise RuntimeError(
                f"stack: expects each tensor to be equal size, but got {tuple(shapes[0])} at entry 0 and "
                f"{tuple(s)} at entry {i}"
            )
    return shapes[0][:dim] + (len(shapes),) + shapes[0][dim:]


_stack = register_op("stack", attrs={"dim": 0}, shape=_stack_rule, save_inputs=False,
                     doc="join equal-shaped tensors along a new dim")


@kernel("stack")
def _stack_cpu(*xs, dim):
    return np.stack(xs, axis=dim)


@backward("stack")
def _stack_bw(ctx, g):
    from .index import select

    dim = ctx.attrs["dim"]
    return tuple(select(g, dim, i) if need else None for i, need in enumerate(ctx.needs_input_grad))


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = _promoted(tensors, "stack")
    return apply(_stack, *tensors, dim=_norm(dim, tensors[0].ndim + 1, "stack"))


# ---- split, chunk, unbind -------------------------------------------------------------------------

def split(x: Tensor, split_size_or_sections, dim: int = 0):
    """Pieces of ``split_size`` along ``dim`` (the last may be smaller), or pieces of the listed sizes."""
    d = _norm(dim, x.ndim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)):
        size = as_size(split_size_or_sections)
        if size < 0:
            raise RuntimeError(f"split: split_size must be non-negative, but got split_size={size}")
        if size == 0 and n != 0:
            raise RuntimeError(f"split: split_size can only be 0 if dimension size is 0, but got dimension size of {n}")
        sizes = [min(size, n - s) for s in range(0, n, size)] if n else [0]
    else:
        sizes = [as_size(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes) or sum(sizes) != n:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's size at dimension {d}, "
                f"shape {x.shape}), but got split_sizes={sizes}"
            )
    out, start = [], 0
    for s in sizes:
        out.append(narrow(x, d, start, s))
        start += s
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0):
    """At most ``chunks`` pieces of ceil(size / chunks) along ``dim`` (torch may return fewer)."""
    if chunks <= 0:
        raise RuntimeError(f"chunk: expects `chunks` to be greater than 0, got: {chunks}")
    n = x.shape[_norm(dim, x.ndim, "chunk")]
    if n == 0:
        return split(x, [0] * chunks, dim)
    return split(x, -(-n // chunks), dim)


def unbind(x: Tensor, dim: int = 0):
    """The slices along ``dim``, each without that dim."""
    from .index import select

    d = _norm(dim, x.ndim, "unbind")
    return tuple(select(x, d, i) for i in range(x.shape[d]))


# ---- pad ------------------------------------------------------------------------------------------
# ``pad`` pairs run from the last dim backwards: (left_last, right_last, left_prev, right_prev, ...).
# Non-constant modes map every output position to an input position along each padded dim.

_MODES = ("constant", "reflect", "replicate", "circular")


def _pad_rule(x_shape, pad, mode, value):
    nd, k = len(x_shape), len(pad) // 2
    if len(pad) % 2:
        raise RuntimeError(f"pad: padding length must be divisible by 2, got {len(pad)} (pad={tuple(pad)})")
    if k > nd:
        raise RuntimeError(
            f"pad: padding length should be less than or equal to two times the input dimension but got padding "
            f"length {len(pad)} and input of dimension {nd} (shape {tuple(x_shape)})"
        )
    if mode not in _MODES:
        raise NotImplementedError(f"pad: unrecognised padding mode {mode!r}; valid modes: {', '.join(_MODES)}")
    if mode != "constant" and (k not in (1, 2, 3) or nd not in (k + 1, k + 2)):
        raise NotImplementedError(
            f"pad: padding size {len(pad)} is not supported for {nd}D input in mode {mode!r}; non-constant padding "
            f"supports 2D/3D input with padding size 2, 3D/4D with 4, 4D/5D with 6"
        )
    out = list(x_shape)
    for j in range(k):
        d, left, right = nd - 1 - j, pad[2 * j], pad[2 * j + 1]
        n = x_shape[d]
        if mode == "reflect" and (left >= n or right >= n):
            raise RuntimeError(
                f"pad: padding size should be less than the corresponding input dimension in reflect mode, but got "
                f"padding ({left}, {right}) at dimension {d} of input {tuple(x_shape)}"
            )
        if mode == "circular" and (left > n or right > n):
            raise RuntimeError(
                f"pad: circular padding ({left}, {right}) at dimension {d} of input {tuple(x_shape)} wraps around "
                f"more than once"
            )
        if mode == "replicate" and n == 0 and left + right > 0:
            raise RuntimeError(f"pad: cannot replicate-pad the empty dimension {d} of input {tuple(x_shape)}")
        out[d] = n + left + right
        if out[d] < 0:
            raise RuntimeError(
                f"pad: the input size {n}, plus negative padding {left} and {right} resulted in a negative output "
                f"size, which is invalid; check dimension {d} of your input (shape {tuple(x_shape)})"
            )
    return tuple(out)


def _source_positions(n, left, right, mode):
    """For each output position along one dim, the input position it copies."""
    i = np.arange(-left, n + right, dtype=np.int64)
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= n, 2 * (n - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    return i % n  # circular


def _padded_dims(shape, pad):
    nd = len(shape)
    return [(nd - 1 - j, pad[2 * j], pad[2 * j + 1]) for j in range(len(pad) // 2)]


_pad = register_op("pad", attrs={"pad": (), "mode": "constant", "value": 0.0}, shape=_pad_rule, save_inputs=False,
                   doc="torch.nn.functional.pad: constant/reflect/replicate/circular; negative pads crop")


@kernel("pad")
def _pad_cpu(x, pad, mode, value):
    if mode == "constant":
        out = np.full(_pad_rule(x.shape, pad, mode, value), value, dtype=x.dtype)
        src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        for d, left, right in _padded_dims(x.shape, pad):
            lo, hi = max(0, -left), x.shape[d] - max(0, -right)
            m = max(0, hi - lo)
            src[d] = slice(lo, lo + m)
            dst[d] = slice(max(0, left), max(0, left) + m)
        out[tuple(dst)] = x[tuple(src)]
        return out
    for d, left, right in _padded_dims(x.shape, pad):
        x = np.take(x, _source_positions(x.shape[d], left, right, mode), axis=d)
    return x


@backward("pad")
def _pad_bw(ctx, g):
    pad, mode = ctx.attrs["pad"], ctx.attrs["mode"]
    if mode == "constant":  # the adjoint of padding is cropping, and of cropping is zero-padding
        return (apply(_pad, g, pad=tuple(-p for p in pad), mode="constant", value=0.0),)
    return (apply(_pad_backward, g, pad=pad, mode=mode, shape=ctx.input_shapes[0]),)


_pad_backward = register_op("pad_backward", attrs={"pad": (), "mode": "reflect", "shape": ()}, save_inputs=False,
                            shape=lambda g, shape, **_: tuple(shape),
                            doc="gradient of non-constant pad: sum each output position back into its source")


@kernel("pad_backward")
def _pad_backward_cpu(g, pad, mode, shape):
    for d, left, right in reversed(_padded_dims(shape, pad)):
        n = shape[d]
        src = _source_positions(n, left, right, mode)
        res = np.zeros(g.shape[:d] + (n,) + g.shape[d + 1:], dtype=g.dtype)
        # Output positions left..left+n-1 copy input 0..n-1 one-to-one; add the rest one slab at a time.
        lo, hi = max(0, left), min(len(src), n + left)
        pre, slab = (slice(None),) * d, (slice(None),) * (g.ndim - d - 1)
        if hi > lo:
            res[pre + (slice(lo - left, hi - left),)] = g[pre + (slice(lo, hi),)]
        for j in (*range(0, lo), *range(max(hi, lo), len(src))):
            res[pre + (src[j],) + slab] += g[pre + (j,) + slab]
        g = res
    return g


@backward("pad_backward")
def _pad_backward_bw(ctx, gg):
    return (apply(_pad, gg, pad=ctx.attrs["pad"], mode=ctx.attrs["mode"], value=0.0),)


def pad(x: Tensor, pad, mode: str = "constant", value=None) -> Tensor:
    """torch.nn.functional.pad. ``value`` (constant mode only) is cast to the tensor's dtype."""
    spec = tuple(int(p) for p in pad)
    if mode != "constant" and value not in (None, 0, 0.0):
        raise ValueError(f"pad: padding mode {mode!r} doesn't take in value argument (got value={value})")
    value = 0.0 if value is None else value
    value = float(value) if x.dtype.is_floating_point else int(value) if x.dtype is not _dt.bool_ else bool(value)
    return apply(_pad, x, pad=spec, mode=mode, value=value)


Tensor.split = split
Tensor.chunk = chunk
Tensor.unbind = unbind

__all__ = ["cat", "concat", "concatenate", "stack", "split", "chunk", "unbind"]
