"""Tensor operators, methods and in-place variants for the elementwise ops.

In-place ops follow torch's rules through ``Tensor._inplace``. When no autograd is involved
(optimizer updates under ``no_grad``, buffers), add_/sub_/mul_/div_ write straight into the
tensor's storage with a numpy ufunc: one pass instead of compute-then-copy.
"""
from __future__ import annotations

import numpy as np

from .. import _hooks
from ..autograd.grad_mode import is_grad_enabled
from ..random import rng_of
from ..tensor import Tensor
from . import elementwise as E
from .shape import expand


def _rev(fn):
    def r(self, other):
        return fn(other, self)

    r.__name__ = "__r" + fn.__name__ + "__"
    return r


_NUMBER = (Tensor, int, float, bool, np.number, np.bool_)


def _operator(fn, name):
    def method(self, other):
        if not isinstance(other, _NUMBER):
            return NotImplemented  # so `t == None` is False, as in torch
        return fn(self, other)

    method.__name__ = name
    return method


# ---- in-place -------------------------------------------------------------------------------
def _tracked(self, other):
    """Whether an in-place op must go through Tensor._inplace: autograd needs it, or a tracer listens."""
    if _hooks.inplace is not None:
        return True
    return is_grad_enabled() and (self._requires_grad or (other.__class__ is Tensor and other._requires_grad))


def _check_writeable(self, name):
    if not self._data.flags.writeable:
        raise RuntimeError(
            f"{name}: the tensor's memory is read-only (an expanded/broadcast view, several elements share one "
            f"location); clone() it before writing in place"
        )


def _ufunc_inplace(self, ufunc, other, name, fn):
    """``self = ufunc(self, other)`` directly in self's storage (no autograd involved)."""
    o = other._data if other.__class__ is Tensor else other
    if self._data.__class__ is not np.ndarray:  # CUDA: out of place, then copied into self's buffer
        out = fn(self.detach(), other.detach() if isinstance(other, Tensor) else other)
        if out.dtype != self.dtype and not np.can_cast(out._data.dtype, self._data.dtype, "same_kind"):
            raise RuntimeError(f"{name}: result type {out.dtype} can't be cast to the desired output type {self.dtype}")
        if out.shape != self.shape:
            raise RuntimeError(f"{name}: output with shape {self.shape} doesn't match the broadcast shape {out.shape} "
                               f"of the in-place op")
        self._data[...] = out._data
        self._bump_version()
        return self
    try:
        with np.errstate(all="ignore"):
            ufunc(self._data, o, out=self._data, casting="same_kind")
    except TypeError:
        result = fn(self.detach(), other.detach() if isinstance(other, Tensor) else other).dtype
        raise RuntimeError(
            f"{name}: result type {result} can't be cast to the desired output type {self.dtype}"
        ) from None
    except ValueError:
        try:
            want = f"the broadcast shape {np.broadcast_shapes(self.shape, np.shape(o))}"
        except ValueError:
            want = f"a shape broadcastable with the operand's {np.shape(o)}"
        raise RuntimeError(f"{name}: output with shape {self.shape} doesn't match {want} of the in-place op") from None
    self._bump_version()
    return self


def _own_input(src, other):
    # An op that saves `src` for backward must not see it overwritten: give it a copy when only
    # `other` carries history (when `src` does, Tensor._inplace already snapshots it).
    if not src._requires_grad and other.__class__ is Tensor and other._requires_grad:
        return Tensor._wrap(src._data.copy())
    return src


def _make_binary_inplace(fn, ufunc, name, with_alpha):
    def method(self, other, *, alpha=1):
        if not isinstance(other, _NUMBER):
            raise TypeError(f"{name}: unsupported operand type {type(other).__name__}; expected a Tensor or a number")
        _check_writeable(self, name)
        if not _tracked(self, other):
            if alpha != 1:
                if other.__class__ is Tensor and other.is_cuda:
                    other = other.detach() * alpha
                else:
                    other = other._data * alpha if other.__class__ is Tensor else other * alpha
                    other = Tensor._wrap(np.asarray(other))
            return _ufunc_inplace(self, ufunc, other, name, fn)
        if alpha != 1:
            return self._inplace(lambda src: fn(src, other, alpha=alpha))
        return self._inplace(lambda src: fn(_own_input(src, other), other))

    def plain(self, other):
        return method(self, other)

    method.__name__ = plain.__name__ = name
    return method if with_alpha else plain


def _make_unary_inplace(fn, name):
    def method(self, *args, **kwargs):
        _check_writeable(self, name)
        return self._inplace(lambda src: fn(_own_input(src, args[0]) if args else src, *args, **kwargs))

    method.__name__ = name
    return method


def _overwrite(src, value: Tensor):
    """``value`` broadcast to src's shape. Where src has history (then Tensor._inplace passes a
    snapshot), that history gets a zero gradient, torch's rule for fill_/zero_/copy_ on a non-leaf."""
    value = value.to(src.dtype) if value.dtype != src.dtype else value
    if is_grad_enabled() and src._requires_grad:
        from ..factories import zeros

        return E.where(zeros(*src.shape, dtype=bool, device=src.device), src, value)
    out = expand(value, src.shape)
    return out.clone() if out is value else out  # a node of its own, so the gradient reaches `value`


def _assign(self, value: Tensor, name):
    if value.shape != self.shape:
        try:
            fits = np.broadcast_shapes(value.shape, self.shape) == self.shape
        except ValueError:
            fits = False
        if not fits:
            raise RuntimeError(
                f"{name}: the source of shape {value.shape} can't be broadcast to the tensor's shape {self.shape}"
            )
    _check_writeable(self, name)
    if not _tracked(self, value):
        if self._data.__class__ is not np.ndarray:  # on CUDA: from a CUDA array, a host array or a scalar
            self._data[...] = value._data
        else:
            np.copyto(self._data, value._host(), casting="unsafe")
        self._bump_version()
        return self
    return self._inplace(lambda src: _overwrite(src, value))


def zero_(self):
    return _assign(self, Tensor._wrap(np.zeros((), self._data.dtype)), "zero_")


def fill_(self, value):
    if isinstance(value, Tensor):
        if value.ndim:
            raise RuntimeError(f"fill_: only supports a 0-dimensional value tensor, got shape {value.shape}")
        return _assign(self, value, "fill_")
    return _assign(self, Tensor._wrap(np.asarray(value, self._data.dtype)), "fill_")


def copy_(self, src, non_blocking=False):
    """Copy ``src`` (broadcast, cast to this dtype) into this tensor; gradients flow to ``src``."""
    if not isinstance(src, Tensor):
        raise TypeError(f"copy_: expected a Tensor as the source, got {type(src).__name__}")
    return _assign(self, src, "copy_")


def _random_fill(self, name, draw):
    if not self.dtype.is_floating_point:
        raise RuntimeError(f"{name}: expected a floating point tensor, got {self.dtype}")
    npdt = self._data.dtype if self._data.dtype == np.float64 else np.dtype(np.float32)
    return _assign(self, Tensor._wrap(draw(npdt)), name)


def uniform_(self, a=0.0, b=1.0, *, generator=None):
    """Fill with U(a, b) samples from ember's global generator (or ``generator``)."""
    def draw(npdt):
        r = rng_of(generator).random(self.shape, dtype=npdt)
        r *= b - a
        r += a
        return r

    return _random_fill(self, "uniform_", draw)


def normal_(self, mean=0.0, std=1.0, *, generator=None):
    """Fill with N(mean, std^2) samples from ember's global generator (or ``generator``)."""
    def draw(npdt):
        r = rng_of(generator).standard_normal(self.shape, dtype=npdt)
        r *= std
        r += mean
        return r

    return _random_fill(self, "normal_", draw)


# ---- bindings ----------------------------------------------------------------------------------
def _bind():
    T = Tensor
    T.__add__, T.__radd__ = E.add, _rev(E.add)
    T.__sub__, T.__rsub__ = E.sub, _rev(E.sub)
    T.__mul__, T.__rmul__ = E.mul, _rev(E.mul)
    T.__truediv__, T.__rtruediv__ = E.div, _rev(E.div)
    T.__floordiv__, T.__rfloordiv__ = E.floor_divide, _rev(E.floor_divide)
    T.__mod__, T.__rmod__ = E.remainder, _rev(E.remainder)
    T.__pow__, T.__rpow__ = E.pow, _rev(E.pow)
    T.__neg__, T.__pos__, T.__abs__ = E.neg, lambda self: self, E.abs
    T.__invert__ = E.bitwise_not
    for name in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(T, f"__{name}__", _operator(getattr(E, name), f"__{name}__"))
    T.__and__ = T.__rand__ = _operator(E.bitwise_and, "__and__")
    T.__or__ = T.__ror__ = _operator(E.bitwise_or, "__or__")
    T.__xor__ = T.__rxor__ = _operator(E.bitwise_xor, "__xor__")
    # assigning __eq__ after class creation keeps Tensor.__hash__ (id-based) in place
    for name in ("add", "sub", "mul", "div", "floor_divide", "remainder", "pow", "maximum", "minimum", "neg",
                 "negative", "abs", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "sin", "cos", "tanh",
                 "sigmoid", "relu", "square", "reciprocal", "sign", "floor", "ceil", "round", "isnan", "isinf",
                 "isfinite", "clamp", "clamp_min", "clamp_max", "clip", "eq", "ne", "lt", "le", "gt", "ge",
                 "logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or",
                 "bitwise_xor", "bitwise_not"):
        setattr(T, name, getattr(E, name))
    T.subtract, T.multiply, T.divide, T.true_divide = E.sub, E.mul, E.div, E.div
    T.greater, T.less, T.greater_equal, T.less_equal, T.not_equal = E.gt, E.lt, E.ge, E.le, E.ne
    T.where = lambda self, condition, other: E.where(condition, self, other)

    T.add_ = _make_binary_inplace(E.add, np.add, "add_", with_alpha=True)
    T.sub_ = _make_binary_inplace(E.sub, np.subtract, "sub_", with_alpha=True)
    T.mul_ = _make_binary_inplace(E.mul, np.multiply, "mul_", with_alpha=False)
    T.div_ = _make_binary_inplace(E.div, np.true_divide, "div_", with_alpha=False)
    T.__iadd__, T.__isub__, T.__imul__, T.__itruediv__ = T.add_, T.sub_, T.mul_, T.div_
    for name in ("pow", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu",
                 "square", "reciprocal", "sign", "floor", "ceil", "round", "clamp", "clamp_min", "clamp_max",
                 "clip", "maximum", "minimum", "remainder", "floor_divide"):
        setattr(T, name + "_", _make_unary_inplace(getattr(E, name), name + "_"))
    T.__ipow__ = T.pow_
    T.zero_, T.fill_, T.copy_, T.uniform_, T.normal_ = zero_, fill_, copy_, uniform_, normal_


_bind()
