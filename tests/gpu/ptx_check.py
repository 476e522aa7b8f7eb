"""Compile every CUDA kernel that ``tests/gpu`` launches to PTX for a real GPU, on a machine without one.

The CUDA simulator runs kernels as Python, so it never sees numba-cuda's typing and lowering rules
(a shared-array shape that is not a compile-time constant, an int stored into a bool array...), and
``NUMBA_ENABLE_CUDASIM`` also switches the backend to its simulator launch geometry (64 threads per
block, small GEMM tiles). This script runs the tests without the simulator switch: device memory is
faked by host arrays, and every launch is compiled by ``cuda.compile_ptx`` for the launch's argument
types (compute capability 9.0, an H100) and then executed by the simulator's kernel executor with the
GPU's launch geometry (256 threads per block, 64x64 GEMM tiles). The tests must pass, and the report
lists every kernel that did not compile (``EMBER_PTX_RUN=0`` compiles only: faster, but a test stops
at its first comparison). It needs numba-cuda's NVVM library:

    pip install --target /tmp/nvsite nvidia-nvvm nvidia-cuda-nvrtc    # once, outside the venv
    LD_LIBRARY_PATH=/tmp/nvsite/nvidia/cu13/lib PYTHONPATH=/tmp/nvsite python tests/gpu/ptx_check.py [-k expr]
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

import numba  # noqa: E402
from numba import cuda  # noqa: E402
from numba.cuda import dispatcher as _disp  # noqa: E402
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray  # noqa: E402
from numba.cuda.simulator.kernel import FakeCUDAKernel  # noqa: E402


class HostArray(np.ndarray):
    """A host array standing in for a device array (the methods ember's CUDA backend calls)."""

    def copy_to_device(self, src, stream=0):
        self[...] = np.asarray(src).reshape(self.shape)

    def copy_to_host(self, ary=None, stream=0):
        return np.array(self)


def _device_array(shape, dtype=np.float64, **_):
    return np.zeros(shape, dtype).view(HostArray)


cuda.device_array = _device_array
cuda.to_device = lambda a, **_: np.array(a).view(HostArray)
cuda.is_available = lambda: True
cuda.synchronize = lambda: None

_DONE: dict = {}
_ERRORS: dict = {}


class _Launch:
    def __init__(self, dispatcher, cfg):
        self.dispatcher = dispatcher
        self.cfg = cfg

    count = 0  # launches seen (benchmarks/cuda_launches.py counts a training step's)

    def __call__(self, *args):
        _Launch.count += 1
        argtys = tuple(numba.typeof(a) for a in args)
        key = (id(self.dispatcher), argtys)
        fn = self.dispatcher.py_func
        if key not in _DONE:
            name = f"{fn.__module__}.{fn.__qualname__}"
            try:
                cuda.compile_ptx(fn, argtys, cc=(9, 0))
                _DONE[key] = True
            except Exception as e:  # a typing or lowering error: what this script is for
                _DONE[key] = False
                _ERRORS.setdefault(name, (argtys, " ".join(str(e).split())[:600]))
        if RUN:  # then run it as the simulator would, so the test goes on to its next kernels
            # (arrays wrapped as the simulator's device arrays: passed as plain ndarrays they would be
            # copied in and written back one by one, and an array passed twice would lose its writes)
            args = [FakeCUDAArray(a) if isinstance(a, np.ndarray) and a.ndim else a for a in args]
            with _python_libdevice(fn.__globals__):
                FakeCUDAKernel(fn, device=False)[self.cfg](*args)


class _FakeDevice:
    compute_capability = (9, 0)


# libdevice functions are stubs in Python (they return None): the executor runs these equivalents
_LIBDEVICE_PY = {"fmul_rn": lambda a, b: a * b, "fadd_rn": lambda a, b: a + b}


@contextlib.contextmanager
def _python_libdevice(g):
    swapped = {k: v for k, v in g.items() if getattr(v, "__module__", None) == "numba.cuda.libdevice"}
    missing = [v.__name__ for v in swapped.values() if v.__name__ not in _LIBDEVICE_PY]
    if missing:
        raise NotImplementedError(f"ptx_check: add a Python version of libdevice {missing} to _LIBDEVICE_PY")
    g.update({k: _LIBDEVICE_PY[v.__name__] for k, v in swapped.items()})
    try:
        yield
    finally:
        g.update(swapped)


RUN = os.environ.get("EMBER_PTX_RUN", "1") != "0"
_disp.CUDADispatcher.__getitem__ = lambda self, cfg: _Launch(self, cfg)
# a device function called from a kernel body that the simulator runs in Python
_disp.CUDADispatcher.__call__ = lambda self, *args: FakeCUDAKernel(self.py_func, device=True)(*args)
_disp.get_current_device = lambda: _FakeDevice()  # device functions compile for "the current device"


def main(argv):
    import pytest

    import ember.cuda as ec

    ec.device_count = lambda: 1
    ec.get_device_name = lambda device=None: "PTX check (no GPU)"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(os.path.dirname(here)))  # the repo root, for tests.reference_models
    paths = [a for a in argv if not a.startswith("-") and os.path.exists(a.split("::")[0])]
    pytest.main(["-q", "-rN", "-p", "no:cacheprovider", "--tb=no", "-W", "ignore", *argv, *([] if paths else [here])])
    ok = sum(1 for v in _DONE.values() if v)
    print(f"\nPTX check: {ok} kernel specialisations compiled for sm_90, {len(_ERRORS)} kernels failed")
    for name, (argtys, err) in sorted(_ERRORS.items()):
        print(f"- {name}{argtys}:\n    {err}")
    return 1 if _ERRORS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
