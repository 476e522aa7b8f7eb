"""The reference workloads of BENCHMARKS.md, defined identically in ember and PyTorch."""
from __future__ import annotations

import numpy as np


def build(nn, name):
    """The workload's model from ``nn`` — ``ember.nn`` or ``torch.nn``: the same code builds both."""
    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(1568, 10),
        )
    raise ValueError(f"unknown workload {name!r}; valid: mlp, cnn")


def ember_model(name):
    import ember.nn

    return build(ember.nn, name)


def torch_model(name):
    import torch.nn

    return build(torch.nn, name)


def input_shape(name, batch):
    return (batch, 784) if name == "mlp" else (batch, 1, 28, 28)


def batches(name, batch, n, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(input_shape(name, batch)).astype(np.float32) for _ in range(n)]
    ys = [rng.integers(0, 10, size=batch).astype(np.int64) for _ in range(n)]
    return xs, ys


def copy_torch_weights(tmodel, emodel):
    """Start both sides from identical weights."""
    state = {k: v.detach().numpy().copy() for k, v in tmodel.state_dict().items()}
    emodel.load_state_dict(state)
