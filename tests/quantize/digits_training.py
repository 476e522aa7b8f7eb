"""Training and scoring on the bundled digits, shared by the quantization tests' accuracy checks."""
from __future__ import annotations

import ember
import ember.nn.functional as F
from ember.data import DataLoader
from ember.data.datasets import digits


def train(model, epochs, lr, flatten=True, seed=1, adam=False):
    """``epochs`` of SGD with momentum (or Adam) on the training split, batches of 32; returns the model in
    eval mode."""
    loader = DataLoader(digits("train", flatten=flatten), batch_size=32, shuffle=True, generator=ember.Generator(seed))
    opt = (ember.optim.Adam(model.parameters(), lr=lr) if adam
           else ember.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model, flatten=True) -> float:
    """Top-1 accuracy on the test split."""
    x, y = digits("test", flatten=flatten).tensors
    with ember.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean().item())
