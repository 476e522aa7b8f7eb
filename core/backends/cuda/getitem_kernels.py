"""CUDA kernels of basic indexing, getitem (``x[index]``), and of getitem_backward, the gradient of both
getitem and the advanced ``index`` op (whose forward is in index_kernels.py).

An index is planned on the host by ``index_plan.plan`` (a base offset and per-dim strides into ``x`` and into
the index tensors' broadcast offsets). A basic index is then one ``launch.strided_copy``. The gradient runs the
map backwards into zeros: a plain store for a basic index (no two elements share a target) and an atomic add
when index tensors may repeat a position.

Index tensors are integer CUDA arrays (boolean masks become positions in ``masks_to_positions`` first).
Their values are not bounds-checked on the device (that would need a host sync); an out-of-range
position is dropped from the gradient instead of touching memory outside the array.
"""
from __future__ import annotations

from numba import cuda

from ...ops.registry import kernel
from .index_kernels import _ATOMIC
from .index_plan import plan, plan_pos, pos_args
from .kernel import jit
from .launch import TPB, blocks, device_fn, full, strided_copy


def _scatter_kernel(store):
    """``store(out, p, g[i])`` at the x position of each selected element i."""
    store = device_fn(store)

    @jit
    def k(g, out, n, shape, xs, ls, base, lin):
        i = cuda.grid(1)
        if i < n:
            p = plan_pos(i, shape, xs, ls, base, lin)
            if p >= 0:
                store(out, p, g[i])

    return k


def _set(out, p, v):
    out[p] = v


_put_k = _scatter_kernel(_set)
_add_k = _scatter_kernel(lambda out, p, v: cuda.atomic.add(out, p, v))


@kernel("getitem", "cuda")
def _getitem(x, *tensors, index):
    if tensors:
        raise NotImplementedError("getitem on CUDA takes basic indices only; index tensors go to the index op")
    shape, xs, _, base, _ = plan(x.shape, index, ())
    return strided_copy(x, shape, xs, base)


@kernel("getitem_backward", "cuda")
def _getitem_backward(g, *tensors, index, shape):
    p = plan(tuple(shape), index, tensors)
    out = full(tuple(shape), 0, g.dtype)
    if not g.size:
        return out
    basic = p[4] is None
    if not basic and g.dtype not in _ATOMIC:
        raise NotImplementedError(f"getitem_backward with index tensors on CUDA needs atomic adds, which numba "
                                  f"supports for float32/float64/int32/int64/uint32/uint64, not {g.dtype}")
    (_put_k if basic else _add_k)[blocks(g.size), TPB](g.d, out.d, g.size, *pos_args(*p))
    return out
