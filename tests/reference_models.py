"""Models shared by the end-to-end tests (serialize round trips, ONNX export): an MLP with dropout and
GELU, a CNN with BatchNorm and pooling, and a small transformer block with a causal mask."""
from __future__ import annotations

import numpy as np

import ember
import ember.nn as nn
import ember.nn.functional as F


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc3(F.gelu(self.fc2(x)) + x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.pool, self.avg = nn.MaxPool2d(2), nn.AvgPool2d(2)
        self.fc = nn.Linear(12 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.avg(F.relu(self.bn2(self.conv2(x))))
        return self.fc(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    """Embedding, pre-LayerNorm causal self-attention from matmul/softmax, GELU MLP, residuals."""

    def __init__(self, vocab=23, d=16, heads=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab)
        self.heads = heads

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        h = self.ln1(x)
        hd = x.shape[-1] // self.heads
        q, k, v = (lin(h).reshape(b, t, self.heads, hd).permute(0, 2, 1, 3) for lin in (self.q, self.k, self.v))
        att = q @ k.transpose(-2, -1) / hd ** 0.5
        mask = ember.tril(ember.ones(t, t)) == 0
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).permute(0, 2, 1, 3).reshape(b, t, -1))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def warm_batchnorm(model, shape, rng):
    """A few training-mode passes so the running statistics are not the trivial 0 / 1."""
    model.train()
    for _ in range(3):
        model(ember.from_numpy(rng.standard_normal(shape).astype(np.float32) * 2 + 0.5))
    model.eval()
