"""Ops that compute with shapes, for graphs captured with symbolic dims (see docs/serialize-design.md).

``sym_size`` reads one dim of a tensor as an int64 scalar; ``sym_arith`` combines such scalars
(or a scalar and a constant); ``full`` and ``arange`` build tensors whose size is only known at
run time. Eager code never calls these: the tracer records them when shape arithmetic happens on
symbolic dims, and the runtime resolves ``{"sym": name}`` attributes from their results.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from .registry import kernel, register_op

register_op("sym_size", attrs={"dim": 0}, shape=lambda x, dim: (), doc="size of one dim, as an int64 scalar")


@kernel("sym_size")
def _sym_size(x, dim):
    return np.asarray(x.shape[dim], dtype=np.int64)


_ARITH = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
}


def _arith_rule(*scalars, kind, const=None, reverse=False):
    if kind not in _ARITH:
        raise RuntimeError(f"sym_arith: unknown kind {kind!r}; valid: {', '.join(_ARITH)}")
    n = 1 if const is not None else 2
    if len(scalars) != n:
        raise RuntimeError(f"sym_arith: expected {n} scalar input(s), got {len(scalars)}")
    return ()


register_op("sym_arith", attrs={"kind": "add", "const": None, "reverse": False}, shape=_arith_rule,
            doc="int64 scalar arithmetic on sizes: a kind b, or a kind const (const kind a when reverse)")


@kernel("sym_arith")
def _sym_arith(*scalars, kind, const=None, reverse=False):
    a = int(scalars[0])
    b = int(scalars[1]) if const is None else int(const)
    if reverse:
        a, b = b, a
    return np.asarray(_ARITH[kind](a, b), dtype=np.int64)


def _full_rule(shape, value, dtype):
    return tuple(shape)


register_op("full", attrs={"shape": (), "value": 0.0, "dtype": "float32"}, shape=_full_rule,
            doc="a new tensor of the given shape filled with value")


@kernel("full")
def _full(shape, value, dtype):
    return np.full(tuple(int(s) for s in shape), value, dtype=_dt.as_dtype(dtype).np)


def _arange_rule(start, end, step, dtype):
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    n = (end - start + step - (1 if step > 0 else -1)) // step
    return (n if n > 0 else 0,) if not isinstance(n, int) or n > 0 else (0,)


register_op("arange", attrs={"start": 0, "end": 0, "step": 1, "dtype": "int64"}, shape=_arange_rule,
            doc="values from start to end (exclusive) by step")


@kernel("arange")
def _arange(start, end, step, dtype):
    return np.arange(int(start), int(end), int(step), dtype=_dt.as_dtype(dtype).np)
