"""ember dtypes: thin named wrappers over numpy dtypes, with torch-style promotion."""
from __future__ import annotations

import numpy as np


class dtype:
    """A tensor element type (``ember.float32`` ...). Compare with ``==``; hashable."""

    __slots__ = ("name", "np", "is_floating_point", "is_signed", "itemsize", "_cat")

    def __init__(self, name: str, np_dtype, category: int):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.is_floating_point = category == 2
        self.is_signed = self.np.kind in "if"
        self.itemsize = self.np.itemsize
        self._cat = category  # 0 bool, 1 integer, 2 floating

    def __repr__(self) -> str:
        return f"ember.{self.name}"

    def __reduce__(self):
        return (_by_name, (self.name,))


bool_ = dtype("bool", np.bool_, 0)
uint8 = dtype("uint8", np.uint8, 1)
int8 = dtype("int8", np.int8, 1)
int16 = dtype("int16", np.int16, 1)
int32 = dtype("int32", np.int32, 1)
int64 = dtype("int64", np.int64, 1)
float16 = dtype("float16", np.float16, 2)
float32 = dtype("float32", np.float32, 2)
float64 = dtype("float64", np.float64, 2)

ALL = (bool_, uint8, int8, int16, int32, int64, float16, float32, float64)
_FROM_NP = {d.np: d for d in ALL}
_NAMES = {d.name: d for d in ALL}
_NAMES.update({"float": float32, "double": float64, "half": float16, "long": int64, "int": int32})

default_float = float32
default_int = int64


def _by_name(name: str) -> dtype:
    return _NAMES[name]


def from_numpy_dtype(npd) -> dtype:
    d = _FROM_NP.get(np.dtype(npd))
    if d is None:
        valid = ", ".join(x.name for x in ALL)
        raise TypeError(f"numpy dtype {np.dtype(npd)} is not supported by ember; valid dtypes: {valid}")
    return d


def as_dtype(d) -> dtype:
    """Accept an ember dtype, a name ('float32'), a numpy dtype or a python type."""
    if isinstance(d, dtype):
        return d
    if d is float:
        return default_float
    if d is int:
        return default_int
    if d is bool:
        return bool_
    if isinstance(d, str):
        if d in _NAMES:
            return _NAMES[d]
        raise TypeError(f"unknown dtype {d!r}; valid: {', '.join(sorted(_NAMES))}")
    try:
        return from_numpy_dtype(d)
    except TypeError:
        raise TypeError(f"cannot interpret {d!r} as an ember dtype") from None


def promote(a: dtype, b: dtype) -> dtype:
    """torch's rule: the higher category wins (bool < int < float); within a category the wider."""
    if a is b:
        return a
    if a._cat != b._cat:
        return a if a._cat > b._cat else b
    return from_numpy_dtype(np.promote_types(a.np, b.np))


def scalar_dtype(value) -> dtype:
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer)):
        return default_int
    return default_float


def promote_with_scalar(t: dtype, value) -> dtype:
    """A python scalar never widens a tensor within its category (float32 + 1.5 stays float32)."""
    s = scalar_dtype(value)
    if s._cat <= t._cat:
        return t
    return s
