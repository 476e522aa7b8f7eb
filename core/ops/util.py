"""Helpers shared by op modules: python-scalar operands, dtype promotion, gradient un-broadcasting."""
from __future__ import annotations

import operator

import numpy as np

from .. import _hooks
from .. import dtypes as _dt
from ..tensor import Tensor


def scalar_tensor(value, dtype) -> Tensor:
    """A 0-d tensor holding a python scalar in ``dtype`` (so float32 stays float32)."""
    if _hooks.factory is not None and isinstance(value, int) and type(value) not in (int, bool):
        # a tracer's symbolic size (``x.sum() / x.shape[0]``): a recorded arange follows the run-time
        # size, where a constant would bake in the example's
        from ..factories import arange

        return arange(value, value + 1, dtype=dtype).reshape(())
    return Tensor._wrap(np.asarray(value, dtype=dtype.np))


def binary_operands(a, b, op_name):
    """Turn ``(a, b)`` (Tensors or python scalars) into two Tensors of the promoted dtype."""
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if ta and tb:
        da, db = a.dtype, b.dtype
        if da is not db:
            # torch: a 0-d tensor does not widen a dimensioned tensor of the same category
            if a.ndim == 0 and b.ndim > 0 and da._cat <= db._cat:
                out = db
            elif b.ndim == 0 and a.ndim > 0 and db._cat <= da._cat:
                out = da
            else:
                out = _dt.promote(da, db)
            if da is not out:
                a = a.to(out)
            if db is not out:
                b = b.to(out)
        return a, b
    if ta:
        _check_scalar(b, op_name)
        d = _dt.promote_with_scalar(a.dtype, b)
        return (a if a.dtype is d else a.to(d)), scalar_tensor(b, d)
    if tb:
        _check_scalar(a, op_name)
        d = _dt.promote_with_scalar(b.dtype, a)
        return scalar_tensor(a, d), (b if b.dtype is d else b.to(d))
    raise TypeError(f"{op_name}: at least one operand must be a Tensor")


def _check_scalar(v, op_name):
    if not isinstance(v, (int, float, bool, np.number, np.bool_)):
        if isinstance(v, np.ndarray):
            raise TypeError(f"{op_name}: got a numpy array; wrap it with ember.from_numpy() or ember.tensor() first")
        raise TypeError(f"{op_name}: unsupported operand type {type(v).__name__}; expected a Tensor or a number")


def broadcast_shapes(op_name, *shapes):
    """numpy broadcasting in plain Python (symbolic dims flow through), with an error naming the op and shapes."""
    out = list(shapes[0])
    for s in shapes[1:]:
        lead = len(s) - len(out)
        if lead > 0:
            out[:0] = s[:lead]
        k = len(out) - len(s)
        for i in range(max(lead, 0), len(s)):
            a, b = out[k + i], s[i]
            if a != b:
                if a == 1:
                    out[k + i] = b
                elif b != 1:
                    raise RuntimeError(
                        f"{op_name}: shapes {' and '.join(str(tuple(s)) for s in shapes)} are not broadcastable "
                        f"(trailing dimensions must be equal or 1)"
                    )
    return tuple(out)


def prod(dims):
    """Product of shape dims in plain Python (1 for none), so symbolic dims flow through shape rules."""
    it = iter(dims)
    out = next(it, 1)
    for d in it:
        out = out * d
    return out


def same_shape(s, *_, **__):
    """Shape rule of ops whose output has the shape of their first input."""
    return s


def unbroadcast(g: Tensor, shape) -> Tensor:
    """Sum ``g`` down to ``shape`` (the reverse of broadcasting); returns ``g`` itself when equal."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g.reshape(tuple(shape))


def norm_dim(dim, ndim, op_name):
    n = max(ndim, 1)
    if not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{op_name}: dim must be an int, got {type(dim).__name__}")
    if not -n <= dim < n:
        raise IndexError(f"{op_name}: dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return int(dim) % n


def norm_dims(dim, ndim, op_name):
    """None -> all dims; int or sequence -> sorted tuple of non-negative dims."""
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (int, np.integer)):
        return (norm_dim(dim, ndim, op_name),)
    out = tuple(sorted(norm_dim(d, ndim, op_name) for d in dim))
    if len(set(out)) != len(out):
        raise RuntimeError(f"{op_name}: dim {tuple(dim)} appears multiple times in the list of dims")
    return out


def as_size(s):
    """A size argument as an int, keeping int subclasses (a tracer's symbolic dims) as they are."""
    if isinstance(s, int) and not isinstance(s, bool):
        return s
    return operator.index(s)


def float32_input(op, x):
    """x, or a TypeError naming ``op`` when x is not float32 (the fused kernels that compute in float32 only)."""
    if x.dtype != np.float32:
        raise TypeError(f"{op}: input must be float32, got {x.dtype} (shape {x.shape})")
    return x
