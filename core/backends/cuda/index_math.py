"""Device index math shared by the CUDA kernels: a flat element index split into (outer, row, column) of a 3-d
view, and a flat index of a MAXD-padded shape turned into a strided offset (the gather / broadcast pattern).
"""
from __future__ import annotations

from .launch import MAXD, device_fn


@device_fn
def unravel3(t, h, w):
    """``(o, i, j)`` of flat index ``t`` in a contiguous (outer, h, w) array."""
    r = t // w
    return r // h, r % h, t % w


@device_fn
def strided_offset(i, shape, st, base):
    """``base + sum(idx[d] * st[d])`` over the multi-index ``idx`` of flat index ``i`` in the MAXD-padded
    ``shape`` (``st`` padded alike: element strides, 0 on broadcast dims)."""
    r = i
    p = base
    for d in range(MAXD - 1, -1, -1):
        s = shape[d]
        p += (r % s) * st[d]
        r //= s
    return p
