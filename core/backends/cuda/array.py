"""``CudaArray``: the CUDA backend's array, what ``Tensor._data`` holds for a tensor on ``"cuda"``.

It is a flat, C-contiguous numba device buffer plus a shape and a numpy dtype. Every CUDA array is
contiguous: reshape is free (a new header over the same buffer); ops that would make a strided view
on the CPU (permute, slicing) copy on CUDA. Kernels index the flat buffer ``a.d`` themselves.

It looks enough like an ndarray (``shape``, ``dtype``, ``ndim``, ``size``, ``itemsize``, ``flags``,
``reshape``, ``copy``) for the device-agnostic code in the core. It refuses to turn into a host
array implicitly: ``np.asarray(cuda_array)`` raises, so a CPU-only code path fed a CUDA tensor fails
with a clear message instead of copying behind the user's back.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import config, cuda

from ...device import device as _device

CUDA0 = _device("cuda", 0)
_F16 = np.dtype(np.float16)


class _Flags:
    __slots__ = ()
    c_contiguous = True
    contiguous = True
    writeable = True
    f_contiguous = False


_FLAGS = _Flags()


class CudaArray:
    __slots__ = ("d", "shape", "dtype", "device", "base")
    _ember_cuda = True  # what Tensor._wrap looks for (numpy 2 arrays and scalars have a .device too)

    def __init__(self, d, shape, dtype, device=CUDA0, base=None):
        self.d = d
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.base = base  # the array whose buffer a reshape shares (as ndarray.base), else None

    # ---- ndarray-like metadata ----------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def flags(self):
        return _FLAGS

    @property
    def strides(self):
        st, acc = [], self.dtype.itemsize
        for s in reversed(self.shape):
            st.append(acc)
            acc *= max(s, 1)
        return tuple(reversed(st))

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __repr__(self):
        return f"CudaArray(shape={self.shape}, dtype={self.dtype}, device={self.device})"

    # ---- views and copies ---------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        n = self.size
        if -1 in shape:
            known = 1
            for s in shape:
                if s != -1:
                    known *= s
            shape = tuple(n // known if s == -1 else s for s in shape)
        m = 1
        for s in shape:
            m *= s
        if m != n:
            raise ValueError(f"cannot reshape a CUDA array of size {n} into shape {shape}")
        return CudaArray(self.d, shape, self.dtype, self.device, self.base if self.base is not None else self)

    def ravel(self):
        return self.reshape(-1)

    def copy(self):
        out = empty(self.shape, self.dtype)
        if self.size:
            out.d.copy_to_device(self.d)
        return out

    def get(self) -> np.ndarray:
        """A host copy (numpy array of the same shape and dtype)."""
        n = self.size
        if n == 0:
            return np.empty(self.shape, self.dtype)
        return self.d.copy_to_host()[:n].reshape(self.shape)

    def fill(self, value):
        from .launch import fill

        fill(self, value)

    def __setitem__(self, index, value):
        if index is not Ellipsis and index != slice(None):
            raise NotImplementedError("a CUDA array is only assigned whole (a[...] = b); index it through ember ops")
        copy_into(self, value)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            f"a tensor on {self.device} cannot be used as a host (numpy) array; copy it with .cpu() first "
            f"(this code path runs on the CPU only)"
        )


def empty(shape, dtype) -> CudaArray:
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= s
    n = max(n, 1)
    if _DIRECT and not _SIM and cuda.device_array is _numba_device_array():  # (not a test's stand-in)
        # numba's device_array looks the context up through the driver twice per call (its decorator and the
        # array's constructor); this thread's context is looked up once and the buffer handed to the array
        try:
            d = _DIRECT[0]((n,), (dtype.itemsize,), dtype, gpu_data=_context().memalloc(n * dtype.itemsize))
            return CudaArray(_typed(d), tuple(shape), dtype)
        except (AttributeError, TypeError):  # a numba-cuda whose internals differ: its device_array from now on
            _DIRECT.clear()
    return CudaArray(_typed(cuda.device_array(n, dtype)), tuple(shape), dtype)


def _device_ndarray_class():
    try:
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        return [DeviceNDArray]
    except ImportError:
        return []


_SIM = bool(config.ENABLE_CUDASIM)
_DIRECT = [] if _SIM else _device_ndarray_class()  # [the array class] while direct allocation works


_TLS = threading.local()


def _context():
    """numba's CUDA context, made current in this thread by the first lookup (cached per thread)."""
    ctx = getattr(_TLS, "ctx", None)
    if ctx is None:
        from numba.cuda.cudadrv import devices

        ctx = _TLS.ctx = devices.get_context()
    return ctx


_API: list = []


def _numba_device_array():
    if not _API:
        from numba.cuda import api

        _API.append(api)
    return _API[0].device_array


_TYPES: dict = {}


def _typed(d):
    """``d`` with numba's type of it filled in: a flat buffer is always a 1-D C-layout array, and numba
    would otherwise work that out (flags, a new type object) on the first launch of every new array."""
    if not _SIM:
        t = _TYPES.get(d.dtype)
        if t is None:
            from numba.cuda.np.numpy_support import from_dtype
            from numba.cuda.types import Array

            t = _TYPES[d.dtype] = Array(from_dtype(d.dtype), 1, "C")
        try:
            d.__dict__["_numba_type_"] = t  # the value of numba's cached property, stored where it caches it
        except AttributeError:  # (an array type without a __dict__: numba works the type out itself)
            pass
    return d


def from_host(a) -> CudaArray:
    """Copy a host array (or scalar) to the device."""
    a = np.asarray(a)
    if a.dtype == _F16:
        raise TypeError("float16 tensors are not supported on CUDA yet; use float32 (t.float()) before .to('cuda')")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"dtype {a.dtype} cannot be put on CUDA; valid: float32, float64, int8/16/32/64, uint8, bool")
    flat = np.ascontiguousarray(a).reshape(-1)
    if flat.size == 0:
        flat = np.zeros(1, a.dtype)
    return CudaArray(_typed(cuda.to_device(flat)), tuple(a.shape), a.dtype)


def copy_into(dst: CudaArray, src) -> None:
    """``dst[...] = src`` for a same-shape CUDA array, a host array or a scalar (cast to dst's dtype)."""
    if isinstance(src, CudaArray):
        if src.shape != dst.shape:
            from .launch import broadcast_to

            src = broadcast_to(src, dst.shape)
        if src.dtype != dst.dtype:
            from .launch import cast

            src = cast(src, dst.dtype)
        if dst.size:
            dst.d.copy_to_device(src.d)
        return
    if np.ndim(src) == 0:
        from .launch import fill

        fill(dst, np.asarray(src).item())
        return
    host = np.broadcast_to(np.asarray(src, dtype=dst.dtype), dst.shape)
    if dst.size:
        dst.d.copy_to_device(np.ascontiguousarray(host).reshape(-1))
