"""Shape ops: reshape/view, permute/transpose, expand, flatten/squeeze/unsqueeze, movedim, narrow, flip, repeat.

Ops that only change the shape are the reshape op; concatenation, splitting and padding are in join.py.
"""
from __future__ import annotations

import math

import numpy as np

from ..tensor import Tensor
from .registry import apply, backward, kernel, register_op
from .util import as_size, norm_dim, norm_dims, prod, same_shape, unbroadcast


def _infer_shape(shape, numel, op_name, in_shape):
    shape = list(shape)
    neg = [i for i, s in enumerate(shape) if s == -1]
    if len(neg) > 1:
        raise RuntimeError(f"{op_name}: only one dimension can be inferred (-1), got shape {tuple(shape)}")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise RuntimeError(f"{op_name}: invalid shape dimension {s} in {tuple(shape)}")
            known *= s
    if neg:
        if known == 0 or numel % known:
            raise RuntimeError(f"{op_name}: shape {tuple(shape)} is invalid for input of size {numel} (shape {in_shape})")
        shape[neg[0]] = numel // known
    elif known != numel:
        raise RuntimeError(f"{op_name}: shape {tuple(shape)} is invalid for input of size {numel} (shape {in_shape})")
    return tuple(shape)


def _reshape_rule(x_shape, shape):
    return _infer_shape(shape, prod(x_shape), "reshape", tuple(x_shape))


_reshape = register_op("reshape", attrs={"shape": ()}, shape=_reshape_rule, save_inputs=False,
                       doc="same elements, new shape (a view when the layout allows)")


@kernel("reshape")
def _reshape_cpu(x, shape):
    return x.reshape(shape)


@backward("reshape")
def _reshape_bw(ctx, g):
    return (g.reshape(ctx.input_shapes[0]),)


def reshape(x: Tensor, *shape) -> Tensor:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = tuple(as_size(s) for s in shape)
    if shape == x.shape:
        return x
    return apply(_reshape, x, shape=_reshape_rule(x.shape, shape))


def view(x: Tensor, *shape) -> Tensor:
    """Like reshape, but refuses (as torch does) when the new shape cannot share the tensor's memory."""
    out = reshape(x, *shape)
    if out._data.__class__ is np.ndarray and out._data.size and not np.may_share_memory(out._data, x._data):
        raise RuntimeError(
            f"view size is not compatible with input tensor's size and stride (shape {x.shape} -> "
            f"{tuple(out.shape)} needs a copy of this non-contiguous tensor). Use .reshape(...) instead."
        )
    return out


Tensor.reshape = reshape
Tensor.view = view


def _permute_rule(x_shape, dims):
    if sorted(dims) != list(range(len(x_shape))):
        raise RuntimeError(f"permute: dims {tuple(dims)} is not a permutation of the {len(x_shape)} dims of shape {tuple(x_shape)}")
    return tuple(x_shape[d] for d in dims)


_permute = register_op("permute", attrs={"dims": ()}, shape=_permute_rule, save_inputs=False,
                       doc="reorder dimensions (a view)")


@kernel("permute")
def _permute_cpu(x, dims):
    return x.transpose(dims)


@backward("permute")
def _permute_bw(ctx, g):
    dims = ctx.attrs["dims"]
    inv = [0] * len(dims)
    for i, d in enumerate(dims):
        inv[d] = i
    return (permute(g, *inv),)


def permute(x: Tensor, *dims) -> Tensor:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    n = x.ndim
    if len(dims) != n:
        raise RuntimeError(f"permute: number of dims {len(dims)} doesn't match the tensor's {n} dims (shape {x.shape})")
    dims = tuple(norm_dim(d, n, "permute") for d in dims)
    if dims == tuple(range(n)):
        return x
    return apply(_permute, x, dims=dims)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    n = x.ndim
    if n == 0:
        return x
    for d in (dim0, dim1):
        if not -n <= d < n:
            raise IndexError(f"transpose: dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})")
    dims = list(range(n))
    a, b = dim0 % n, dim1 % n
    dims[a], dims[b] = dims[b], dims[a]
    return permute(x, *dims)


def _expand_rule(x_shape, shape):
    lead = len(shape) - len(x_shape)
    if lead < 0:
        raise RuntimeError(f"expand: the target shape {tuple(shape)} has fewer dims than the tensor's shape {tuple(x_shape)}")
    for i, s in enumerate(x_shape):
        if s != 1 and s != shape[lead + i]:
            raise RuntimeError(
                f"expand: the expanded size {shape[lead + i]} must match the existing size {s} at non-singleton "
                f"dimension {lead + i}; target shape {tuple(shape)}, tensor shape {tuple(x_shape)}"
            )
    return tuple(shape)


_expand = register_op("expand", attrs={"shape": ()}, shape=_expand_rule, save_inputs=False,
                      doc="broadcast to a larger shape without copying (a read-only view)")


@kernel("expand")
def _expand_cpu(x, shape):
    return np.broadcast_to(x, shape)


@backward("expand")
def _expand_bw(ctx, g):
    return (unbroadcast(g, ctx.input_shapes[0]),)


def expand(x: Tensor, *shape) -> Tensor:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 and i >= lead else as_size(s) for i, s in enumerate(shape))
    if shape == x.shape:
        return x
    return apply(_expand, x, shape=_expand_rule(x.shape, shape))


def broadcast_to(x: Tensor, shape) -> Tensor:
    return expand(x, tuple(shape))


Tensor.permute = permute
Tensor.transpose = transpose
Tensor.expand = expand
Tensor.T = property(lambda self: permute(self, *reversed(range(self.ndim))))
Tensor.mT = property(lambda self: transpose(self, -2, -1))

__all__ = ["reshape", "permute", "transpose", "broadcast_to"]


# ---- views built on reshape / permute -----------------------------------------------------------
# flatten, unflatten, squeeze and unsqueeze only change the shape, so they are the reshape op.

def _norm(dim, ndim, op_name):
    return norm_dim(dim, ndim, op_name)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:
        return reshape(x, 1)
    s, e = _norm(start_dim, x.ndim, "flatten"), _norm(end_dim, x.ndim, "flatten")
    if s > e:
        raise RuntimeError(
            f"flatten: start_dim cannot come after end_dim (start_dim={start_dim}, end_dim={end_dim}, shape {x.shape})"
        )
    n = prod(x.shape[s:e + 1])
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


def unflatten(x: Tensor, dim: int, sizes) -> Tensor:
    d = _norm(dim, x.ndim, "unflatten")
    sizes = tuple(as_size(s) for s in sizes)
    try:
        sizes = _infer_shape(sizes, x.shape[d], "unflatten", x.shape)
    except RuntimeError:
        raise RuntimeError(
            f"unflatten: provided sizes {sizes} don't multiply up to the size of dim {dim} ({x.shape[d]}) "
            f"in the input tensor (shape {x.shape})"
        ) from None
    return reshape(x, x.shape[:d] + sizes + x.shape[d + 1:])


def squeeze(x: Tensor, dim=None) -> Tensor:
    """Drop size-1 dims (all of them, or those in ``dim``; a listed dim of another size is kept, as in torch)."""
    dims = norm_dims(dim, x.ndim, "squeeze")
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1)))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    d = _norm(dim, x.ndim + 1, "unsqueeze")
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def expand_as(x: Tensor, other: Tensor) -> Tensor:
    return expand(x, other.shape)


def view_as(x: Tensor, other: Tensor) -> Tensor:
    return reshape(x, other.shape)


def movedim(x: Tensor, source, destination) -> Tensor:
    src = (source,) if isinstance(source, (int, np.integer)) else tuple(source)
    dst = (destination,) if isinstance(destination, (int, np.integer)) else tuple(destination)
    if len(src) != len(dst):
        raise RuntimeError(
            f"movedim: source {src} and destination {dst} must name the same number of dims"
        )
    n = x.ndim
    src = [_norm(d, n, "movedim") for d in src]
    dst = [_norm(d, n, "movedim") for d in dst]
    for name, ds in (("source", src), ("destination", dst)):
        if len(set(ds)) != len(ds):
            raise RuntimeError(f"movedim: repeated dim in {name} {tuple(ds)}")
    rest = iter(d for d in range(n) if d not in src)
    placed = dict(zip(dst, src))
    return permute(x, *[placed[i] if i in placed else next(rest) for i in range(n)])


def t(x: Tensor) -> Tensor:
    """Transpose of a matrix; 0-d and 1-D tensors are returned as they are (torch.t)."""
    if x.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {x.ndim}D (shape {x.shape})")
    return transpose(x, 0, 1) if x.ndim == 2 else x


# ---- narrow: one slice along one dim (the piece split/chunk/unbind return) ---------------------------

def _narrow_rule(x_shape, dim, start, length):
    if len(x_shape) == 0:
        raise RuntimeError("narrow: cannot be applied to a 0-dim tensor")
    if not -len(x_shape) <= dim < len(x_shape):
        raise RuntimeError(f"narrow: dim {dim} is out of range for a tensor of {len(x_shape)} dims")
    dim %= len(x_shape)
    n = x_shape[dim]
    if length < 0:
        raise RuntimeError(f"narrow: length must be non-negative, got {length}")
    if not 0 <= start <= n or start + length > n:
        raise RuntimeError(
            f"narrow: start ({start}) + length ({length}) exceeds dimension {dim} of size {n} (shape {tuple(x_shape)})"
        )
    return x_shape[:dim] + (length,) + x_shape[dim + 1:]


_narrow = register_op("narrow", attrs={"dim": 0, "start": 0, "length": 0}, shape=_narrow_rule, save_inputs=False,
                      doc="elements start..start+length-1 along one dim (a view)")


@kernel("narrow")
def _narrow_cpu(x, dim, start, length):
    dim = dim % x.ndim if x.ndim else dim  # a negative dim counts from the end, as in the shape rule
    return x[(slice(None),) * dim + (slice(start, start + length),)]


@backward("narrow")
def _narrow_bw(ctx, g):
    from .join import pad

    shape, dim, start = ctx.input_shapes[0], ctx.attrs["dim"], ctx.attrs["start"]
    spec = [0] * (2 * (len(shape) - dim))
    spec[-2:] = [start, shape[dim] - start - ctx.attrs["length"]]
    return (pad(g, tuple(spec)),)


def narrow(x: Tensor, dim: int, start: int, length: int) -> Tensor:
    d = _norm(dim, x.ndim, "narrow")
    start = as_size(start)
    if start < 0 and x.ndim:
        start += x.shape[d]
    out = apply(_narrow, x, dim=d, start=start, length=as_size(length))
    out._vbox = x._vbox  # a view shares its base's version counter, as in torch
    return out


# ---- flip, repeat -----------------------------------------------------------------------------------

_flip = register_op("flip", attrs={"dims": ()}, shape=same_shape, save_inputs=False, doc="reverse the order along dims (a copy)")


@kernel("flip")
def _flip_cpu(x, dims):
    return np.flip(x, dims).copy()  # a copy, as torch.flip; .copy() keeps 0-d arrays 0-d


@backward("flip")
def _flip_bw(ctx, g):
    return (apply(_flip, g, dims=ctx.attrs["dims"]),)


def flip(x: Tensor, *dims) -> Tensor:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return apply(_flip, x, dims=norm_dims(dims, x.ndim, "flip") if x.ndim else ())


def _repeat_rule(x_shape, sizes):
    if len(sizes) < len(x_shape):
        raise RuntimeError(
            f"repeat: number of dims of repeat sizes {tuple(sizes)} can not be smaller than the tensor's {len(x_shape)} "
            f"dims (shape {tuple(x_shape)})"
        )
    if any(s < 0 for s in sizes):
        raise RuntimeError(f"repeat: repeat sizes must be non-negative, got {tuple(sizes)}")
    full = (1,) * (len(sizes) - len(x_shape)) + tuple(x_shape)
    return tuple(a * b for a, b in zip(full, sizes))


_repeat = register_op("repeat", attrs={"sizes": ()}, shape=_repeat_rule, save_inputs=False,
                      doc="tile the tensor sizes[i] times along dim i (torch.Tensor.repeat)")


@kernel("repeat")
def _repeat_cpu(x, sizes):
    return np.tile(x, sizes)


@backward("repeat")
def _repeat_bw(ctx, g):
    # View g as (r0, n0, r1, n1, ...) and sum over the repeat axes.
    sizes, shape = ctx.attrs["sizes"], ctx.input_shapes[0]
    full = (1,) * (len(sizes) - len(shape)) + tuple(shape)
    inter = tuple(v for pair in zip(sizes, full) for v in pair)
    if 0 in inter:
        from ..factories import zeros

        return (zeros(shape, dtype=g.dtype),)
    return (g.reshape(inter).sum(dim=tuple(range(0, 2 * len(sizes), 2))).reshape(shape),)


def _sizes(sizes):
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return tuple(as_size(s) for s in sizes)


def repeat(x: Tensor, *sizes) -> Tensor:
    sizes = _sizes(sizes)
    return apply(_repeat, x, sizes=sizes)


def tile(x: Tensor, dims) -> Tensor:
    dims = _sizes((dims,))
    return repeat(x, (1,) * (x.ndim - len(dims)) + dims)


Tensor.flatten = flatten
Tensor.unflatten = unflatten
Tensor.squeeze = squeeze
Tensor.unsqueeze = unsqueeze
Tensor.expand_as = expand_as
Tensor.view_as = view_as
Tensor.reshape_as = view_as
Tensor.movedim = movedim
Tensor.moveaxis = movedim
Tensor.swapaxes = transpose
Tensor.swapdims = transpose
Tensor.t = t
Tensor.narrow = narrow
Tensor.flip = flip
Tensor.repeat = repeat
Tensor.tile = tile

__all__ += [
    "flatten", "unflatten", "squeeze", "unsqueeze", "movedim", "moveaxis", "swapaxes", "swapdims", "t",
    "narrow", "flip", "repeat", "tile",
]
moveaxis = movedim
swapaxes = swapdims = transpose

# Concatenation, splitting and padding live in join.py; importing it here registers them with the
# shape family.
from .join import *  # noqa: E402,F401,F403
from .join import __all__ as _join_all  # noqa: E402

__all__ += _join_all
