"""The `mlp` training step written by hand on ember's kernels: no Tensor, autograd, module or optimizer code.

bench_train.py times it next to ember's and torch's steps. It is the floor of any Python framework that runs
these kernels (the same BLAS GEMMs with the same thread choice, the fused bias + ReLU and mask + column-sum
passes, the cross-entropy kernels and the fused SGD update): what ember's step costs above it is the framework's
own overhead. ``check`` verifies it computes ember's step: the same parameters after one step from the same
weights, to float32 rounding.
"""
from __future__ import annotations

import numpy as np


def mlp_kernel_step(model, lr, momentum):
    """A ``step(x, y)`` (numpy float32 (B, 784) and int64 (B,)) training ``model`` (the mlp workload's
    ember Sequential) with SGD + momentum in place, as ``ember.optim.SGD(model.parameters(), lr, momentum)``."""
    from ember.backends.cpu import blas
    from ember.backends.cpu import loss_kernels as L
    from ember.backends.cpu.optim_kernels import sgd_update
    from ember.ops.linear_relu import _bias_relu_, _mask_colsum

    params = [p._data for p in model.parameters()]  # w1, b1, w2, b2, w3, b3
    bufs = [np.zeros_like(p) for p in params]
    hp = np.array([lr, 0.0, momentum, 1.0], np.float32)
    one = np.ones(1, np.float32)
    mm = blas.matmul
    first = True  # (the momentum buffer starts as the first gradient, as in torch)

    def step(x, t):
        nonlocal first
        w1, b1, w2, b2, w3, b3 = params
        n = x.shape[0]
        h1 = np.empty((n, w1.shape[0]), np.float32)
        _bias_relu_(mm(x, w1.T, h1), b1)
        h2 = np.empty((n, w2.shape[0]), np.float32)
        _bias_relu_(mm(h1, w2.T, h2), b2)
        z = np.empty((n, w3.shape[0]), np.float32)
        np.add(mm(h2, w3.T, z), b3, out=z)
        L.ce_forward(z.size, z, t, L.NO_WEIGHT, False, -100, 0.0, np.empty(n, np.float32))
        gz = np.empty_like(z)
        L.ce_backward(z.size, z, t, L.NO_WEIGHT, False, -100, 0.0, one, 0, 1.0 / n, gz)
        gw3 = mm(gz.T, h2, np.empty_like(w3))
        gb3 = gz.sum(0)
        g2, gb2 = np.empty_like(h2), np.empty_like(b2)
        _mask_colsum(mm(gz, w3), h2, g2, gb2)
        gw2 = mm(g2.T, h1, np.empty_like(w2))
        g1, gb1 = np.empty_like(h1), np.empty_like(b1)
        _mask_colsum(mm(g2, w2), h1, g1, gb1)
        gw1 = mm(g1.T, x, np.empty_like(w1))
        for p, g, buf in zip(params, (gw1, gb1, gw2, gb2, gw3, gb3), bufs):
            sgd_update(p.size, p.reshape(-1), g.reshape(-1), buf.reshape(-1), hp, False, False, first)
        first = False

    return step


def check(make_model, x, y, lr=0.01, momentum=0.9):
    """Two steps of the hand-written step and of ember's (from the same weights, on the same batch) must leave
    the same parameters; raises AssertionError otherwise."""
    import ember
    import ember.nn.functional as F

    ours, theirs = make_model(), make_model()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        a._data[...] = b._data
    step = mlp_kernel_step(ours, lr, momentum)
    opt = ember.optim.SGD(theirs.parameters(), lr=lr, momentum=momentum)
    for _ in range(2):
        step(x, y)
        opt.zero_grad()
        F.cross_entropy(theirs(ember.from_numpy(x)), ember.from_numpy(y)).backward()
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        if not np.allclose(a._data, b._data, rtol=1e-5, atol=1e-6):
            raise AssertionError(f"hand-written mlp step differs from ember's: max abs diff "
                                 f"{np.abs(a._data - b._data).max()} in a parameter of shape {a.shape}")
