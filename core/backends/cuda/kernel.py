"""``Kernel``: a numba CUDA kernel launched as ``k[grid, block](*args)`` with a cached launch plan.

numba-cuda spends ~35-45 us of Python on every launch (measured on an H100 host, benchmarks/README.md):
it builds a launch configuration, types every argument, picks the overload, and converts arguments
through generic paths. A training step launches dozens of small kernels, so that time, not the GPU,
set the step's length. ``Kernel`` does numba's work once per argument-type signature: the first
launch goes through numba (which compiles), then the compiled overload for exactly those argument
types is looked up and a plan is kept — the driver's kernel handle and one converter per argument
producing the same parameter values numba's ``_Kernel.launch`` would. Later launches with arguments
of the same types convert and call ``cuda.core.launch`` directly.

Anything the plan does not cover (host arrays that numba copies in and out, tuples, records, a
signature that numba matched to another overload by conversion, debug or cooperative kernels, the
simulator) keeps numba's own launch for that signature, so behaviour never differs, only speed.
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading

from numba import cuda

# EMBER_CUDA_LAUNCH_CHECK=1: compare every planned launch's parameters with numba's own (a test aid)
CHECK = os.environ.get("EMBER_CUDA_LAUNCH_CHECK", "0") not in ("", "0")
_COUNT = [0]  # launches so far (benchmarks/gpu_check.py reports launches per training step)
_SLOW = object()  # plan marker: launch through numba


def launches() -> int:
    return _COUNT[0]


class Kernel:
    """Wraps a ``cuda.jit`` dispatcher; ``k[grid, block](*args)`` as with numba."""

    __slots__ = ("dispatcher", "plans", "__weakref__")

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.plans = {}

    def __getitem__(self, cfg):
        return _Configured(self, cfg)

    def __getattr__(self, name):  # py_func, overloads, inspect_* ... as on the dispatcher
        return getattr(self.dispatcher, name)

    def launch(self, cfg, args):
        _COUNT[0] += 1
        key = tuple(map(_key, args))
        plan = self.plans.get(key)
        if plan is None:
            self.dispatcher[cfg](*args)  # compiles on first use
            self.plans[key] = _plan(self.dispatcher, args)
            return
        if plan is _SLOW:
            self.dispatcher[cfg](*args)
            return
        values = []
        for conv, a in zip(plan.convs, args):
            conv(a, values)
        if CHECK:
            _check(plan, args, values)
        if not plan.launch(_config(cfg), values):
            self.dispatcher[cfg](*args)  # the driver refused (no current context in this thread, ...)


class _Configured:
    __slots__ = ("kernel", "cfg")

    def __init__(self, kernel, cfg):
        self.kernel, self.cfg = kernel, cfg

    def __call__(self, *args):
        self.kernel.launch(self.cfg, args)


_SCALARS = (int, float, bool)


def _key(a):
    """What numba's type of ``a`` depends on: a device array's numba type (cached on the array), a tuple's
    element keys, else the Python type."""
    t = type(a)
    if t in _SCALARS:
        return t
    if t is tuple:
        ts = tuple(map(type, a))  # a tuple of Python scalars (the common case): their types decide
        for x in ts:
            if x not in _SCALARS:
                return tuple([_key(x) for x in a])
        return ts
    nt = getattr(a, "_numba_type_", None)
    return t if nt is None else nt


# ---- plans -----------------------------------------------------------------------------------
def _plan(dispatcher, args):
    """The launch plan for ``args``' types after numba launched (and so compiled) them once, or _SLOW."""
    try:
        from numba.cuda.typing.typeof import Purpose, typeof
        from numba.cuda import types

        argtypes = tuple(typeof(a, Purpose.argument) for a in args)
        overload = dispatcher.overloads.get(argtypes)
        if overload is None or overload.debug or overload.cooperative or dispatcher.extensions:
            return _SLOW
        slots = []
        convs = [_converter(t, a, types, slots) for t, a in zip(argtypes, args)]
        if any(c is None for c in convs):
            return _SLOW
        return _Plan(overload, convs, slots)
    except Exception:  # an API this version of numba-cuda lacks (or the simulator): numba launches it
        return _SLOW


class _Plan:
    """One kernel overload's launch: converters to the flat parameter values, and the parameter block.

    Every parameter gets an 8-byte slot in one buffer packed by a ``struct`` format (the driver copies
    each parameter's own size from its slot), and a fixed array of pointers to the slots is what
    ``cuLaunchKernel`` takes; a launch packs the values and calls the driver, under a lock because the
    buffer is shared by threads. Without the driver library (or ``EMBER_CUDA_LAUNCH=core``) the values
    go to cuda.core's ``launch`` as numba would pass them."""

    def __init__(self, overload, convs, slots):
        self.overload, self.convs = overload, convs
        cufunc = overload._codelibrary.get_cufunc()
        self.kernel = cufunc.kernel
        self.ctypes = [_CTYPES.get(c) for c in slots]  # for cuda.core: scalars as ctypes, ints plain
        self.driver = _driver_launch()
        self.fmt = struct.Struct("<" + "".join(c + "x" * (8 - struct.calcsize(c)) for c in slots))
        if self.driver is not None:
            n = len(slots)
            self.buf = ctypes.create_string_buffer(8 * max(n, 1))
            base = ctypes.addressof(self.buf)
            self.params = (ctypes.c_void_p * max(n, 1))(*[base + 8 * i for i in range(n)])
            self.handle = ctypes.c_void_p(_handle_value(cufunc.handle))
            self.lock = threading.Lock()

    def launch(self, cfg, values):
        if self.driver is None:
            kargs = [v if c is None else c(v) for c, v in zip(self.ctypes, values)]
            _launch(_stream(), cfg.core, self.kernel, *kargs)
            return True
        (gx, gy, gz), (bx, by, bz), shmem = cfg.dims
        with self.lock:
            try:
                self.fmt.pack_into(self.buf, 0, *values)
            except struct.error:  # a value out of its C type's range (numba wraps it): numba launches it
                return False
            err = self.driver(self.handle, gx, gy, gz, bx, by, bz, shmem, None, self.params, None)
        return err == 0


def _handle_value(h):
    try:
        return int(h)
    except TypeError:
        return ctypes.c_void_p.from_address(h.getPtr()).value


_CTYPES = {"b": ctypes.c_int8, "B": ctypes.c_uint8, "h": ctypes.c_int16, "H": ctypes.c_uint16,
           "i": ctypes.c_int32, "I": ctypes.c_uint32, "q": ctypes.c_int64, "Q": ctypes.c_uint64,
           "f": ctypes.c_float, "d": ctypes.c_double}
_INT_CODES = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
              "int64": "q", "uint64": "Q"}
_ARRAY_SLOTS = "qqqqQ"  # meminfo, parent, nitems, itemsize, data; then shape and strides (int64 each)


def _converter(ty, a, types, slots):
    """A function appending ``a``'s kernel parameter values to a list (numba's order), and the struct
    codes of those parameters appended to ``slots``; None where the plan cannot take ``a``."""
    if isinstance(ty, types.Array):
        if getattr(a, "_numba_type_", None) is None or not hasattr(a, "_strided_memory_view_shim"):
            return None  # a host array: numba copies it to the device and back
        slots.extend(_ARRAY_SLOTS + "q" * (2 * ty.ndim))
        return _array_arg
    if isinstance(ty, types.BaseTuple):  # numba passes a tuple's elements one by one
        if not isinstance(a, tuple) or len(a) != len(ty.types):
            return None
        convs = [_converter(t, x, types, slots) for t, x in zip(ty.types, a)]
        return None if any(c is None for c in convs) else _tuple_arg(convs)
    if ty == types.boolean:
        slots.append("?")
        return _plain_arg
    if isinstance(ty, types.Integer) and str(ty) in _INT_CODES:
        slots.append(_INT_CODES[str(ty)])
        return _int_arg
    if ty == types.float32:
        slots.append("f")
        return _float_arg
    if ty == types.float64:
        slots.append("d")
        return _float_arg
    return None


def _check(plan, args, values):
    """Assert that the parameter block of a planned launch is byte for byte what numba would pass."""
    ref = []
    ov = plan.overload
    for t, v in zip(ov.argument_types, args):
        ov._prepare_args(t, v, 0, [], ref)
    theirs = [x.value if isinstance(x, ctypes._SimpleCData) else x for x in ref]
    if len(values) != len(theirs) or plan.fmt.pack(*values) != plan.fmt.pack(*theirs):
        raise AssertionError(f"launch parameters of {ov.py_func.__qualname__} differ from numba's: "
                             f"{values} != {theirs}")


def _array_arg(a, out):
    # numba's array parameters: meminfo, parent, nitems, itemsize, data, shape..., strides...
    s = a._strided_memory_view_shim
    out += (0, 0, s.size, s.dtype.itemsize, s.ptr)
    out += s.shape
    out += s._layout.strides_in_bytes


def _tuple_arg(convs):
    def conv(a, out):
        for c, x in zip(convs, a):
            c(x, out)

    return conv


def _plain_arg(a, out):
    out.append(a)


def _int_arg(a, out):
    out.append(int(a))


def _float_arg(a, out):
    out.append(float(a))


# ---- launch configuration --------------------------------------------------------------------
_CONFIGS: dict = {}  # (grid, block[, stream, shared]) as written at the launch -> cuda.core LaunchConfig
_DRIVER: dict = {}  # numba-cuda's launch function and default stream, looked up on first use


def _launch(*args):
    fn = _DRIVER.get("launch")
    if fn is None:
        from numba.cuda import dispatcher as d

        fn = _DRIVER["launch"] = d.launch
    fn(*args)


def _stream():
    s = _DRIVER.get("stream")
    if s is None:
        from numba.cuda.cudadrv import driver

        s = _DRIVER["stream"] = driver._to_core_stream(0)
    return s


class _Config:
    __slots__ = ("dims", "_core")

    def __init__(self, cfg):
        if len(cfg) > 2 and cfg[2]:
            raise NotImplementedError("ember launches its kernels on the default stream only")
        from numba.cuda import dispatcher as d

        grid, block = d.normalize_kernel_dimensions(cfg[0], cfg[1])
        self.dims = (tuple(grid), tuple(block), cfg[3] if len(cfg) > 3 else 0)
        self._core = None

    @property
    def core(self):
        if self._core is None:
            from numba.cuda import dispatcher as d

            self._core = d.LaunchConfig(grid=self.dims[0], block=self.dims[1], shmem_size=self.dims[2])
        return self._core


def _config(cfg):
    c = _CONFIGS.get(cfg)
    if c is None:
        c = _CONFIGS[cfg] = _Config(cfg)
    return c


def _driver_launch():
    """``cuLaunchKernel`` from the driver library through ctypes, or None (then cuda.core launches)."""
    if "driver" not in _DRIVER:
        fn = None
        if os.environ.get("EMBER_CUDA_LAUNCH", "driver") == "driver":
            try:
                fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
                fn.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _DRIVER["driver"] = fn
    return _DRIVER["driver"]


def jit(fn=None, **kw):
    """``cuda.jit`` for kernels, returning a ``Kernel`` (on the simulator too, where every launch goes
    through numba: the simulator has no compiled overloads)."""
    if fn is None:
        return lambda f: jit(f, **kw)
    return Kernel(cuda.jit(fn, **kw))
