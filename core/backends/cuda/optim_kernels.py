"""CUDA versions of the fused optimizer updates (``backends/cpu/optim_kernels.py``): one thread per
element reads the gradient and state and writes both back, in place on the device buffers. The
formulas are the CPU kernels' term by term; hyper-parameters arrive as a tuple kernel argument in the
parameter's dtype (no host->device copy per step)."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..cpu import optim_kernels as _cpu
from .kernel import jit
from .launch import TPB, blocks


@jit
def _sgd(n, p, g, buf, hp, nesterov, maximize, first):
    i = cuda.grid(1)
    if i >= n:
        return
    lr, weight_decay, momentum, damp_keep = hp[0], hp[1], hp[2], hp[3]
    d = g[i]
    if maximize:
        d = -d
    x = p[i]
    if weight_decay != 0:
        d = d + weight_decay * x
    if momentum != 0:
        if first:
            b = d
        else:
            b = momentum * buf[i] + damp_keep * d
        buf[i] = b
        if nesterov:
            d = d + momentum * b
        else:
            d = b
    p[i] = x - lr * d


@jit
def _adam(n, p, g, m, v, vmax, hp, decoupled, amsgrad, maximize):
    i = cuda.grid(1)
    if i >= n:
        return
    weight_decay, decay, beta1_w, beta2, beta2_w = hp[0], hp[1], hp[2], hp[3], hp[4]
    step_size, bc2_sqrt, eps = hp[5], hp[6], hp[7]
    d = g[i]
    if maximize:
        d = -d
    x = p[i]
    if weight_decay != 0:
        if decoupled:
            x = x * decay
        else:
            d = d + weight_decay * x
    mi = m[i]
    mi = mi + beta1_w * (d - mi)
    m[i] = mi
    vi = beta2 * v[i] + beta2_w * (d * d)
    v[i] = vi
    if amsgrad:
        vm = vmax[i]
        if vm > vi:
            vi = vm
        vmax[i] = vi
    denom = math.sqrt(vi) / bc2_sqrt + eps
    p[i] = x - step_size * (mi / denom)


@jit
def _rmsprop(n, p, g, sq, gavg, buf, hp, centered, maximize):
    i = cuda.grid(1)
    if i >= n:
        return
    lr, alpha, alpha_w, eps, weight_decay, momentum = hp[0], hp[1], hp[2], hp[3], hp[4], hp[5]
    d = g[i]
    if maximize:
        d = -d
    x = p[i]
    if weight_decay != 0:
        d = d + weight_decay * x
    s = alpha * sq[i] + alpha_w * (d * d)
    sq[i] = s
    if centered:
        a = gavg[i]
        a = a + alpha_w * (d - a)
        gavg[i] = a
        avg = math.sqrt(s - a * a)
    else:
        avg = math.sqrt(s)
    avg = avg + eps
    if momentum > 0:
        b = momentum * buf[i] + d / avg
        buf[i] = b
        p[i] = x - lr * b
    else:
        p[i] = x - lr * (d / avg)


_KERNELS = {id(_cpu.sgd_update): _sgd, id(_cpu.adam_update): _adam, id(_cpu.rmsprop_update): _rmsprop}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def fused_update(cpu_kernel, pa, grad, states, scalars, flags):
    """The CUDA twin of ``optim.optimizer.fused_update``'s kernel call, on CudaArrays (all one dtype)."""
    k = _KERNELS.get(id(cpu_kernel))
    if k is None:
        raise NotImplementedError(f"optimizer kernel {getattr(cpu_kernel, '__name__', cpu_kernel)!r} has no CUDA version")
    if pa.dtype not in _FLOATS:
        raise TypeError(f"CUDA optimizer updates support float32 and float64 parameters, got {pa.dtype}")
    if grad.dtype != pa.dtype:
        from .launch import cast

        grad = cast(grad, pa.dtype)
    n = pa.size
    bufs = [pa.d if s is None else s.d for s in states]
    hp = tuple(pa.dtype.type(v) for v in scalars)
    if n:
        k[blocks(n), TPB](n, pa.d, grad.d, *bufs, hp, *flags)
