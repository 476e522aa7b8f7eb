"""``ember.cuda``: availability queries. The CUDA backend (numba.cuda kernels) is a later milestone."""
from __future__ import annotations

_NOT_BUILT = (
    "ember's CUDA backend is not built yet: only device 'cpu' is supported in this version "
    "(tensors and modules stay on 'cpu'; ember.cuda.is_available() returns False)"
)


def is_available() -> bool:
    """False until ember ships a CUDA backend, whatever the machine has."""
    return False


def device_count() -> int:
    return 0


def synchronize() -> None:
    _require()


def _require() -> None:
    raise RuntimeError(_NOT_BUILT)
