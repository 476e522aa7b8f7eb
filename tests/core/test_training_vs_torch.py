"""Whole training loops against PyTorch: same initial weights, same batches, 20 optimizer steps.

Losses and weights must stay within 1e-4 of torch's at every step (fp32 on both sides).
"""
import numpy as np
import pytest
import torch

import ember
import ember.nn as nn
import ember.nn.functional as F


def _models():
    # No conv bias before BatchNorm: its true gradient is 0, and Adam would amplify float noise in it.
    torch.manual_seed(0)
    t = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 16), torch.nn.GELU(), torch.nn.LayerNorm(16),
        torch.nn.Linear(16, 10),
    )
    e = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.GELU(), nn.LayerNorm(16),
        nn.Linear(16, 10),
    )
    e.load_state_dict({k: v.detach().numpy().copy() for k, v in t.state_dict().items()})
    return t, e


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_twenty_steps_match_torch(opt_name):
    t, e = _models()
    if opt_name == "sgd":
        topt = torch.optim.SGD(t.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        eopt = ember.optim.SGD(e.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        topt = torch.optim.Adam(t.parameters(), lr=1e-3)
        eopt = ember.optim.Adam(e.parameters(), lr=1e-3)
    rng = np.random.default_rng(1)
    for step in range(20):
        x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, 8)
        tl = torch.nn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
        el = F.cross_entropy(e(ember.from_numpy(x)), ember.from_numpy(y))
        topt.zero_grad()
        tl.backward()
        topt.step()
        eopt.zero_grad()
        el.backward()
        eopt.step()
        assert abs(el.item() - tl.item()) < 1e-4, f"step {step}: loss {el.item()} vs torch {tl.item()}"
    tstate = t.state_dict()
    for k, v in e.state_dict().items():
        np.testing.assert_allclose(v.numpy(), tstate[k].numpy(), atol=1e-4, rtol=1e-4, err_msg=k)


def test_eval_mode_outputs_match_after_training():
    t, e = _models()
    t.eval()
    e.eval()
    x = np.random.default_rng(2).standard_normal((5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad(), ember.no_grad():
        np.testing.assert_allclose(e(ember.from_numpy(x)).numpy(), t(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-4)
