"""``ember.Tensor``: a backend array plus autograd metadata.

Operators and most methods are bound onto the class by the op modules (``ember/ops/*.py``) next
to the ops they call, so each op family lives in one file. This file holds what every tensor has:
construction, metadata, conversion, autograd entry points and the in-place protocol.
"""
from __future__ import annotations

import numpy as np

from . import _hooks
from . import dtypes as _dt
from .autograd.grad_mode import is_grad_enabled, no_grad
from .device import CPU


class Tensor:
    __slots__ = ("_data", "_requires_grad", "grad", "grad_fn", "_out_idx", "_vbox", "_retains_grad", "_grad_hooks",
                 "__weakref__")

    # numpy must defer to our reflected operators (ndarray + Tensor -> Tensor.__radd__)
    __array_priority__ = 1000

    def __init__(self, data, dtype=None, requires_grad=False, device=None):
        t = tensor(data, dtype=dtype, requires_grad=requires_grad, device=device)
        self._data = t._data
        self._requires_grad = t._requires_grad
        self.grad = None
        self.grad_fn = None
        self._out_idx = 0
        self._vbox = [0]
        self._retains_grad = False
        self._grad_hooks = None

    @staticmethod
    def _wrap(array) -> "Tensor":
        """Fast constructor from a backend array (no copy, no checks beyond making it an array)."""
        if array.__class__ is not np.ndarray and not getattr(array, "_ember_cuda", False):  # CUDA arrays pass as they are
            array = np.asarray(array)
        return Tensor._new(Tensor, array)

    @staticmethod
    def _new(cls, array):
        """A bare instance of ``cls`` (Tensor or a subclass such as Parameter) over ``array``."""
        t = object.__new__(cls)
        t._data = array
        t._requires_grad = False
        t.grad = None
        t.grad_fn = None
        t._out_idx = 0
        t._vbox = [0]
        t._retains_grad = False
        t._grad_hooks = None
        return t

    # ---- metadata -------------------------------------------------------------------------
    @property
    def shape(self):
        if _hooks.shape is not None:
            s = _hooks.shape(self)
            if s is not None:
                return s
        return self._data.shape

    def size(self, dim=None):
        if dim is None:
            return self.shape
        return self.shape[_norm_dim(dim, self._data.ndim, "size")]

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def dim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        if _hooks.shape is not None and _hooks.shape(self) is not None:
            n = 1
            for d in self.shape:
                n = n * d
            return n
        return int(self._data.size)

    @property
    def dtype(self):
        return _dt.from_numpy_dtype(self._data.dtype)

    @property
    def device(self):
        a = self._data
        return CPU if a.__class__ is np.ndarray else a.device

    @property
    def is_cuda(self) -> bool:
        return self._data.__class__ is not np.ndarray

    def _host(self) -> np.ndarray:
        """The values as a host array: the array itself on CPU, a copy from a GPU."""
        a = self._data
        return a if a.__class__ is np.ndarray else a.get()

    def is_floating_point(self) -> bool:
        return self._data.dtype.kind == "f"

    def is_contiguous(self) -> bool:
        return bool(self._data.flags.c_contiguous)

    def element_size(self) -> int:
        return self._data.itemsize

    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __hash__(self):
        return id(self)

    # ---- autograd metadata ----------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad=True):
        if self.grad_fn is not None and not requires_grad:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf tensors; use detach() to get a tensor "
                "without history"
            )
        if requires_grad and self._data.dtype.kind != "f":
            raise RuntimeError(
                f"only floating point tensors can require gradients, got dtype {self.dtype}; "
                f"convert with .float() first"
            )
        self._requires_grad = bool(requires_grad)
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def _version(self) -> int:
        return self._vbox[0]

    def _bump_version(self):
        self._vbox[0] += 1

    def retain_grad(self):
        """Keep ``.grad`` for this non-leaf tensor after backward (leaves always keep theirs)."""
        if self.grad_fn is not None and not self._retains_grad:
            self._retains_grad = True
            node = self.grad_fn
            node.retained = (node.retained or ()) + (self,)

    def register_hook(self, hook):
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned tensor replaces it."""
        from .autograd.node import RemovableHook

        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is None:
            if self._grad_hooks is None:
                self._grad_hooks = []
            hooks = self._grad_hooks
        else:
            node = self.grad_fn
            if node.hooks is None:
                node.hooks = {}
            hooks = node.hooks.setdefault(self._out_idx, [])
        hooks.append(hook)
        return RemovableHook(hooks, hook)

    def detach(self) -> "Tensor":
        """A tensor sharing storage (and version counter) with no autograd history."""
        t = Tensor._wrap(self._data)
        t._vbox = self._vbox
        return t

    def detach_(self) -> "Tensor":
        self.grad_fn = None
        self._requires_grad = False
        return self

    @property
    def data(self) -> "Tensor":
        return self.detach()

    @data.setter
    def data(self, value):
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be set to a Tensor, got {type(value).__name__}")
        self._data = value._data

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        from .autograd.engine import run_backward, refuse_create_graph

        refuse_create_graph(create_graph)

        if not self._requires_grad:
            raise RuntimeError(
                "element 0 of tensors does not require grad and does not have a grad_fn: "
                "the tensor was not computed from a tensor with requires_grad=True (or grad was disabled)"
            )
        seeds = _seed_grads((self,), None if gradient is None else (gradient,))
        if inputs is not None:
            inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
            grads = run_backward((self,), seeds, retain_graph=bool(retain_graph), inputs=inputs)
            with no_grad():
                for t, g in zip(inputs, grads):
                    if g is not None:
                        t.grad = g.clone() if t.grad is None else t.grad + g
            return
        run_backward((self,), seeds, retain_graph=bool(retain_graph))

    # ---- conversion ----------------------------------------------------------------------
    def numpy(self, force=False) -> np.ndarray:
        """The underlying array (zero-copy on CPU). Refuses tensors that require grad, as torch does."""
        if _hooks.concrete is not None:
            _hooks.concrete(self, "numpy()")
        if self._requires_grad and not force:
            raise RuntimeError(
                "Can't call numpy() on a tensor that requires grad. Use tensor.detach().numpy() instead."
            )
        if self._data.__class__ is not np.ndarray:
            if not force:
                raise TypeError(
                    f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                    f"to host memory first."
                )
            return self._data.get()
        return self._data

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def item(self):
        if _hooks.concrete is not None:
            _hooks.concrete(self, "item()")
        if self._data.size != 1:
            raise RuntimeError(
                f"a Tensor with {self._data.size} elements cannot be converted to a Python scalar (shape {self.shape})"
            )
        return self._host().reshape(()).item()

    def tolist(self):
        if _hooks.concrete is not None:
            _hooks.concrete(self, "tolist()")
        return self._host().tolist()

    def __bool__(self):
        if _hooks.concrete is not None:
            _hooks.concrete(self, "bool()")
        if self._data.size != 1:
            raise RuntimeError(
                f"Boolean value of a Tensor with {self._data.size} elements is ambiguous (shape {self.shape}); "
                f"use .any() or .all()"
            )
        return bool(self._host().reshape(()))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if _hooks.concrete is not None:
            _hooks.concrete(self, "an index")
        if self._data.dtype.kind not in "iub":
            raise TypeError(f"only integer tensors of a single element can be converted to an index, got {self.dtype}")
        return int(self.item())

    def contiguous(self):
        return self if self._data.flags.c_contiguous else self.clone()

    def __repr__(self):
        from .printing import format_tensor

        return format_tensor(self)

    def __format__(self, spec):
        # torch: a 0-d tensor formats as its value (f"{loss:.4f}"); others only with an empty spec
        if self._data.ndim == 0:
            return format(self.item(), spec)
        if not spec:
            return repr(self)
        raise TypeError(f"unsupported format string {spec!r} for a Tensor of shape {self.shape}; use .item() or .tolist()")

    def new_tensor(self, data, dtype=None, requires_grad=False):
        return tensor(data, dtype=dtype or self.dtype, requires_grad=requires_grad, device=self.device)

    def new_zeros(self, *size, dtype=None, requires_grad=False):
        from . import factories

        return factories.zeros(*size, dtype=dtype or self.dtype, device=self.device, requires_grad=requires_grad)

    def new_ones(self, *size, dtype=None, requires_grad=False):
        from . import factories

        return factories.ones(*size, dtype=dtype or self.dtype, device=self.device, requires_grad=requires_grad)

    def new_empty(self, *size, dtype=None, requires_grad=False):
        from . import factories

        return factories.empty(*size, dtype=dtype or self.dtype, device=self.device, requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, requires_grad=False):
        from . import factories

        return factories.full(size, fill_value, dtype=dtype or self.dtype, device=self.device, requires_grad=requires_grad)

    # ---- in-place protocol ---------------------------------------------------------------
    def _inplace(self, compute):
        """Run an in-place op: ``compute(src)`` returns the new value computed out-of-place from
        ``src``; it is written into this tensor's storage and the autograd history is rebased."""
        if self._requires_grad and self.grad_fn is None and is_grad_enabled():
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation; "
                "wrap it in `with ember.no_grad():` (as optimizers do) or use an out-of-place op"
            )
        if is_grad_enabled():
            # Ops may save their inputs for backward: give them a snapshot, not this buffer, which
            # is about to change (also when only the other operand carries history).
            src = Tensor._wrap(self._data.copy())
            if self._requires_grad:
                src._requires_grad, src.grad_fn, src._out_idx = True, self.grad_fn, self._out_idx
            out = compute(src)
            if out._requires_grad:
                if out.shape != self.shape:
                    raise RuntimeError(
                        f"output with shape {self.shape} doesn't match the broadcast shape {out.shape} of an in-place op"
                    )
                self._data[...] = out._data
                self._requires_grad, self.grad_fn, self._out_idx = True, out.grad_fn, out._out_idx
                self._bump_version()
                if _hooks.inplace is not None:
                    _hooks.inplace(self, out)
                return self
        else:
            out = compute(self)
        if out.shape != self.shape:
            raise RuntimeError(
                f"output with shape {self.shape} doesn't match the broadcast shape {out.shape} of an in-place op"
            )
        if out._data.dtype != self._data.dtype and not np.can_cast(out._data.dtype, self._data.dtype, "same_kind"):
            raise RuntimeError(f"result type {out.dtype} can't be cast to the desired output type {self.dtype}")
        if self._data.__class__ is np.ndarray:
            np.copyto(self._data, out._data, casting="unsafe")
        else:
            self._data[...] = out._data
        self._bump_version()
        if _hooks.inplace is not None:
            _hooks.inplace(self, out)
        return self

    def __setitem__(self, index, value):
        from .ops.index import setitem

        setitem(self, index, value)


def _norm_dim(dim, ndim, what):
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{what}: dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim % n


def _seed_grads(outputs, grads):
    from . import factories

    seeds = []
    for i, out in enumerate(outputs):
        g = None if grads is None else grads[i]
        if g is None:
            if out.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs; output {i} has shape {out.shape}: "
                    f"pass gradient= with that shape (e.g. ember.ones_like(out))"
                )
            g = factories.ones_like(out)
        elif not isinstance(g, Tensor):
            g = tensor(g, dtype=out.dtype)
        if g.shape != out.shape:
            raise RuntimeError(f"gradient has shape {g.shape} but output {i} has shape {out.shape}")
        seeds.append(g.detach())
    return seeds


# the constructors live in creation.py; re-exported here for ``from .tensor import tensor``
from .creation import as_tensor, from_numpy, is_tensor, tensor  # noqa: E402,F401
