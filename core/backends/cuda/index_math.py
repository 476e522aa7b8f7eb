"""Device index math shared by the CUDA kernels: a flat element index split into (outer, row, column) of a 3-d
view. (A flat index of a MAXD-padded shape turned into a strided offset is ``launch.strided_offset``.)
"""
from __future__ import annotations

from .launch import device_fn


@device_fn
def unravel3(t, h, w):
    """``(o, i, j)`` of flat index ``t`` in a contiguous (outer, h, w) array."""
    r = t // w
    return r // h, r % h, t % w
