"""Devices: ``"cpu"`` and ``"cuda"`` (``"cuda:N"``); naming CUDA loads its backend on first use."""
from __future__ import annotations


class device:
    """``ember.device("cpu")``; equal to the string of its name."""

    __slots__ = ("type", "index")

    def __init__(self, spec="cpu", index=None):
        if isinstance(spec, device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {type(spec).__name__}")
        name, _, idx = spec.partition(":")
        if name not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {spec!r}; valid devices: 'cpu', 'cuda', 'cuda:N'")
        self.type = name
        self.index = int(idx) if idx else index

    def __repr__(self):
        return f"device(type={self.type!r})" if self.index is None else f"device(type={self.type!r}, index={self.index})"

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other):
        if isinstance(other, str):
            other = device(other)
        return isinstance(other, device) and self.type == other.type and (self.index or 0) == (other.index or 0)

    def __hash__(self):
        return hash((self.type, self.index or 0))


CPU = device("cpu")


def as_device(d) -> device:
    """Validate a device argument; ``"cuda"`` loads the CUDA backend, or raises saying why it is unavailable."""
    if d is None:
        return CPU
    if d.__class__ is str and d == "cpu":
        return CPU
    dev = d if isinstance(d, device) else device(d)
    if dev.type == "cpu":
        return CPU
    from . import cuda

    cuda._backend()
    idx = dev.index or 0
    n = cuda.device_count()
    if idx >= n:
        raise RuntimeError(f"CUDA device {idx} does not exist: this machine has {n} (valid: 'cuda:0'..'cuda:{n - 1}')")
    return CUDA


CUDA = device("cuda", 0)
