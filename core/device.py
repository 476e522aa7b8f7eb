"""Devices: ``"cpu"`` now; ``"cuda"`` is recognised and reports that its backend is not built yet."""
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
    """Validate a device argument; CUDA raises a clear error until its backend exists."""
    if d is None:
        return CPU
    dev = d if isinstance(d, device) else device(d)
    if dev.type == "cuda":
        from . import cuda

        cuda._require()
    return CPU if dev.type == "cpu" else dev
