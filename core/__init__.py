"""ember: a compact deep-learning core with a PyTorch-shaped API on numba kernels."""
from __future__ import annotations

from ._config import setup_numba_cache as _setup_numba_cache, setup_numba_threading as _setup_numba_threading
from ._config import setup_numba_threads as _setup_numba_threads
from ._config import tune_malloc as _tune_malloc

_setup_numba_cache()  # before numba is imported anywhere below
_setup_numba_threading()
_setup_numba_threads()
_tune_malloc()

from . import dtypes as _dtypes  # noqa: E402
from .dtypes import (  # noqa: E402,F401
    bool_ as bool, dtype, float16, float32, float64, int8, int16, int32, int64, uint8,
)
from .dtypes import float16 as half, float32 as float, float64 as double, int32 as int, int64 as long  # noqa: E402,F401
from .device import device  # noqa: E402,F401
from . import cuda  # noqa: E402,F401
from .tensor import Tensor, as_tensor, from_numpy, is_tensor, tensor  # noqa: E402,F401
from .autograd import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled  # noqa: E402,F401
from . import autograd  # noqa: E402,F401
from .random import Generator, initial_seed, manual_seed  # noqa: E402,F401
from .factories import (  # noqa: E402,F401
    arange, empty, empty_like, eye, full, full_like, linspace, ones, ones_like, rand, rand_like, randint,
    randint_like, randn, randn_like, randperm, zeros, zeros_like,
)
from . import ops  # noqa: E402,F401  (registers every primitive op)
from .ops.basic import clone  # noqa: E402,F401
from .ops.shape import *  # noqa: E402,F401,F403
from .ops.elementwise import *  # noqa: E402,F401,F403
from .ops.reduce import *  # noqa: E402,F401,F403
from .ops.linalg import *  # noqa: E402,F401,F403
from .ops.index import *  # noqa: E402,F401,F403
from .ops.sorting import *  # noqa: E402,F401,F403
from .serialization import load, save  # noqa: E402,F401
from . import nn, optim, data  # noqa: E402,F401

__version__ = "0.1.0"


def get_default_dtype():
    return _dtypes.default_float


def numel(t) -> int:
    return t.numel()
