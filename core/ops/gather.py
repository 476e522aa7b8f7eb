"""Index ops along one dim: gather, scatter, scatter_add, index_select, index_add, take_along_dim, one_hot.

gather/scatter address elements through flat (C-order) positions computed once per call; the sums
in the gradients (and scatter_add / index_add) go through ``backends.cpu.index_kernels``.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..backends.cpu import index_kernels
from ..tensor import Tensor
from .index import check_int_index, getitem
from .registry import apply, backward, kernel, register_op
from .util import broadcast_shapes, norm_dim


def _int_tensor(index, op_name, what="index"):
    if not isinstance(index, Tensor):
        raise TypeError(f"{op_name}: {what} must be an integer Tensor, got {type(index).__name__}")
    if index.dtype not in (_dt.int64, _dt.int32, _dt.int16, _dt.int8, _dt.uint8):
        raise RuntimeError(f"{op_name}: expected {what} to be an integer tensor (int64), got {index.dtype}")
    return index


def _linear_index(shape, index, dim, op_name):
    """Flat C-order positions in a tensor of ``shape`` of the elements ``index`` addresses along ``dim``."""
    check_int_index(index, dim, shape[dim], op_name, allow_negative=False)
    strides = np.cumprod((1,) + tuple(shape[:0:-1]), dtype=np.int64)[::-1]
    lin = index.astype(np.int64) * strides[dim]
    for k, n in enumerate(index.shape):
        if k != dim and n > 1:
            lin = lin + (np.arange(n, dtype=np.int64) * strides[k]).reshape((n,) + (1,) * (index.ndim - k - 1))
    return lin


def _along_dim_rule(op_name, x_shape, i_shape, dim, src_shape=None):
    if len(i_shape) != len(x_shape):
        raise RuntimeError(
            f"{op_name}: index tensor must have the same number of dimensions as input tensor "
            f"(index shape {tuple(i_shape)}, input shape {tuple(x_shape)})"
        )
    for k, (a, b) in enumerate(zip(i_shape, x_shape)):
        if k != dim and a > b:
            raise RuntimeError(
                f"{op_name}: size does not match at dimension {k}: expected index {tuple(i_shape)} to be no larger "
                f"than self {tuple(x_shape)} apart from dimension {dim}"
            )
    if src_shape is not None and len(src_shape) and tuple(src_shape) != tuple(i_shape):
        raise RuntimeError(f"{op_name}: src shape {tuple(src_shape)} must equal index shape {tuple(i_shape)}")


def _attr_shape_rule(*_, shape, **__):
    """Gradient ops that scatter into zeros of the forward input's shape, given as the ``shape`` attribute."""
    return tuple(shape)


# ---- gather ---------------------------------------------------------------------------------------

def _gather_rule(x_shape, i_shape, dim):
    _along_dim_rule("gather", x_shape, i_shape, dim)
    return tuple(i_shape)


_gather = register_op("gather", attrs={"dim": 0}, shape=_gather_rule,
                      doc="out[..i..] = x[..index[..i..]..] along dim (torch.gather)")


@kernel("gather")
def _gather_cpu(x, index, dim):
    lin = _linear_index(x.shape, index, dim, "gather")
    return np.ascontiguousarray(x).reshape(-1)[lin]


@backward("gather")
def _gather_bw(ctx, g):
    index = ctx.inputs[1]
    return apply(_gather_backward, g, index, dim=ctx.attrs["dim"], shape=ctx.input_shapes[0]), None


_gather_backward = register_op("gather_backward", attrs={"dim": 0, "shape": ()}, shape=_attr_shape_rule,
                               doc="gradient of gather: g summed into zeros of x's shape at the gathered places")


@kernel("gather_backward")
def _gather_backward_cpu(g, index, dim, shape):
    out = np.zeros(shape, dtype=g.dtype)
    index_kernels.scatter_add_flat(out, _linear_index(shape, index, dim, "gather"), g)
    return out


@backward("gather_backward")
def _gather_backward_bw(ctx, gg):
    return apply(_gather, gg, ctx.inputs[1], dim=ctx.attrs["dim"]), None


def gather(x: Tensor, dim: int, index: Tensor) -> Tensor:
    index = _int_tensor(index, "gather")
    if x.ndim == 0:
        return gather(x.reshape(1), dim, index.reshape(1)).reshape(index.shape)
    return apply(_gather, x, index, dim=norm_dim(dim, x.ndim, "gather"))


def take_along_dim(x: Tensor, indices: Tensor, dim=None) -> Tensor:
    """gather after broadcasting x and indices in every dim but ``dim`` (flattened when dim is None)."""
    indices = _int_tensor(indices, "take_along_dim", "indices")
    if dim is None:
        return gather(x.reshape(-1), 0, indices.reshape(-1))
    if x.ndim != indices.ndim:
        raise RuntimeError(
            f"take_along_dim: input and indices should have the same number of dimensions, but got input shape "
            f"{x.shape} and indices shape {indices.shape}"
        )
    d = norm_dim(dim, x.ndim, "take_along_dim")
    b = list(broadcast_shapes("take_along_dim", x.shape[:d] + (1,) + x.shape[d + 1:],
                              indices.shape[:d] + (1,) + indices.shape[d + 1:]))
    xs, js = list(b), list(b)
    xs[d], js[d] = x.shape[d], indices.shape[d]
    return gather(x.expand(tuple(xs)), d, indices.expand(tuple(js)))


# ---- scatter, scatter_add -------------------------------------------------------------------------

def _scatter_rule(x_shape, i_shape, s_shape, dim):
    _along_dim_rule("scatter", x_shape, i_shape, dim, s_shape)
    return tuple(x_shape)


_scatter = register_op("scatter", attrs={"dim": 0}, shape=_scatter_rule,
                       doc="copy of x with src written at the places index addresses along dim")
_scatter_add = register_op("scatter_add", attrs={"dim": 0}, shape=_scatter_rule,
                           doc="copy of x with src summed into the places index addresses along dim")


@kernel("scatter")
def _scatter_cpu(x, index, src, dim):
    out = np.array(x, copy=True, order="C")
    lin = _linear_index(x.shape, index, dim, "scatter")
    out.reshape(-1)[lin.reshape(-1)] = np.broadcast_to(src, index.shape).reshape(-1)
    return out


@kernel("scatter_add")
def _scatter_add_cpu(x, index, src, dim):
    out = np.array(x, copy=True, order="C")
    lin = _linear_index(x.shape, index, dim, "scatter_add")
    index_kernels.scatter_add_flat(out, lin, np.broadcast_to(src, index.shape).astype(x.dtype, copy=False))
    return out


def _scatter_src_grad(ctx, g):
    if not ctx.needs_input_grad[2]:
        return None
    gs = apply(_gather, g, ctx.inputs[1], dim=ctx.attrs["dim"])
    return gs if len(ctx.input_shapes[2]) else gs.sum()


@backward("scatter")
def _scatter_bw(ctx, g):
    gx = None
    if ctx.needs_input_grad[0]:  # overwritten places get no gradient
        zero = Tensor._wrap(np.zeros((), dtype=g._data.dtype))
        gx = apply(_scatter, g, ctx.inputs[1], zero, dim=ctx.attrs["dim"])
    return gx, None, _scatter_src_grad(ctx, g)


@backward("scatter_add")
def _scatter_add_bw(ctx, g):
    return (g if ctx.needs_input_grad[0] else None), None, _scatter_src_grad(ctx, g)


def _scatter_args(x, dim, index, src, op_name):
    index = _int_tensor(index, op_name)
    d = norm_dim(dim, x.ndim, op_name)
    if not isinstance(src, Tensor):
        src = Tensor._wrap(np.asarray(src, dtype=x.dtype.np))
    elif src.ndim:
        if src.ndim != index.ndim or any(a > b for a, b in zip(index.shape, src.shape)):
            raise RuntimeError(
                f"{op_name}: expected index {index.shape} to be no larger than src {src.shape} in every dimension"
            )
        if src.shape != index.shape:  # torch reads only the leading index.shape block of src
            src = getitem(src, tuple(slice(0, n) for n in index.shape))
    if src.dtype != x.dtype:
        src = src.to(x.dtype)
    return d, index, src


def scatter(x: Tensor, dim: int, index: Tensor, src=None, *, value=None) -> Tensor:
    """Write ``src`` (a tensor, or the scalar ``value``) into a copy of x at ``index`` along ``dim``."""
    d, index, src = _scatter_args(x, dim, index, value if src is None else src, "scatter")
    return apply(_scatter, x, index, src, dim=d)


def scatter_add(x: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    d, index, src = _scatter_args(x, dim, index, src, "scatter_add")
    return apply(_scatter_add, x, index, src, dim=d)


# ---- index_select, index_add ----------------------------------------------------------------------

def _vector_index(i_shape, op_name):
    if len(i_shape) > 1:
        raise IndexError(f"{op_name}: index is supposed to be a vector, got shape {tuple(i_shape)}")
    return i_shape[0] if i_shape else 1


def _index_select_rule(x_shape, i_shape, dim):
    return x_shape[:dim] + (_vector_index(i_shape, "index_select"),) + x_shape[dim + 1:]


_index_select = register_op("index_select", attrs={"dim": 0}, shape=_index_select_rule,
                            doc="the entries at positions index (a vector) along dim")


@kernel("index_select")
def _index_select_cpu(x, index, dim):
    index = index.reshape(-1)
    check_int_index(index, dim, x.shape[dim], "index_select", allow_negative=False)
    return np.take(x, index, axis=dim)


@backward("index_select")
def _index_select_bw(ctx, g):
    return apply(_index_select_backward, g, ctx.inputs[1], dim=ctx.attrs["dim"], shape=ctx.input_shapes[0]), None


_index_select_backward = register_op("index_select_backward", attrs={"dim": 0, "shape": ()}, shape=_attr_shape_rule,
                                     doc="gradient of index_select: rows of g summed into zeros of x's shape")


@kernel("index_select_backward")
def _index_select_backward_cpu(g, index, dim, shape):
    out = np.zeros(shape, dtype=g.dtype)
    index_kernels.index_add(out, dim, index.reshape(-1), g)
    return out


@backward("index_select_backward")
def _index_select_backward_bw(ctx, gg):
    return apply(_index_select, gg, ctx.inputs[1], dim=ctx.attrs["dim"]), None


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    index = _int_tensor(index, "index_select")
    if x.ndim == 0:
        return index_select(x.reshape(1), 0, index).reshape(())
    return apply(_index_select, x, index, dim=norm_dim(dim, x.ndim, "index_select"))


def _index_add_rule(x_shape, i_shape, s_shape, dim, alpha):
    n = _vector_index(i_shape, "index_add")
    want = x_shape[:dim] + (n,) + x_shape[dim + 1:]
    if tuple(s_shape) != tuple(want):
        raise RuntimeError(
            f"index_add: source shape {tuple(s_shape)} must be {want}: the input's shape {tuple(x_shape)} with "
            f"dimension {dim} equal to the number of indices ({n})"
        )
    return tuple(x_shape)


_index_add = register_op("index_add", attrs={"dim": 0, "alpha": 1.0}, shape=_index_add_rule,
                         doc="copy of x with alpha * source[j] summed into entry index[j] along dim")


@kernel("index_add")
def _index_add_cpu(x, index, source, dim, alpha):
    index = index.reshape(-1)
    check_int_index(index, dim, x.shape[dim], "index_add", allow_negative=False)
    out = np.array(x, copy=True, order="C")
    src = source if alpha == 1 else source * np.asarray(alpha, dtype=x.dtype)
    index_kernels.index_add(out, dim, index, src.astype(x.dtype, copy=False))
    return out


@backward("index_add")
def _index_add_bw(ctx, g):
    gs = None
    if ctx.needs_input_grad[2]:
        gs = apply(_index_select, g, ctx.inputs[1], dim=ctx.attrs["dim"])
        if ctx.attrs["alpha"] != 1:
            gs = gs * ctx.attrs["alpha"]
    return (g if ctx.needs_input_grad[0] else None), None, gs


def index_add(x: Tensor, dim: int, index: Tensor, source: Tensor, *, alpha=1) -> Tensor:
    index = _int_tensor(index, "index_add")
    if source.dtype != x.dtype:
        source = source.to(x.dtype)
    return apply(_index_add, x, index, source, dim=norm_dim(dim, x.ndim, "index_add"), alpha=alpha)


# ---- one_hot --------------------------------------------------------------------------------------

_one_hot = register_op("one_hot", attrs={"num_classes": 0}, shape=lambda x, num_classes: tuple(x) + (num_classes,),
                       doc="int64 one-hot encoding along a new last dim")


@kernel("one_hot")
def _one_hot_cpu(x, num_classes):
    if x.size and x.min() < 0:
        raise RuntimeError(f"one_hot: class values must be non-negative, got {int(x.min())}")
    if x.size and x.max() >= num_classes:
        raise RuntimeError(f"one_hot: class values must be smaller than num_classes ({num_classes}), got {int(x.max())}")
    return (x[..., None] == np.arange(num_classes)).astype(np.int64)


def one_hot(x: Tensor, num_classes: int = -1) -> Tensor:
    """torch.nn.functional.one_hot: ``num_classes=-1`` means max(x) + 1."""
    if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype is _dt.bool_:
        raise RuntimeError(f"one_hot: only applicable to integer (int64) index tensors, got {getattr(x, 'dtype', x)}")
    if num_classes == -1:
        if x.numel() == 0:
            raise RuntimeError("one_hot: can not infer the total number of classes from an empty tensor")
        num_classes = int(x.max().item()) + 1
    return apply(_one_hot, x, num_classes=int(num_classes))


def _inplace(fn):
    def method(x, *args, **kw):
        return x._inplace(lambda src: fn(src, *args, **kw))

    method.__name__ = fn.__name__ + "_"
    return method


Tensor.gather = gather
Tensor.take_along_dim = take_along_dim
Tensor.scatter = scatter
Tensor.scatter_ = _inplace(scatter)
Tensor.scatter_add = scatter_add
Tensor.scatter_add_ = _inplace(scatter_add)
Tensor.index_select = index_select
Tensor.index_add = index_add
Tensor.index_add_ = _inplace(index_add)

__all__ = ["gather", "take_along_dim", "scatter", "scatter_add", "index_select", "index_add"]
