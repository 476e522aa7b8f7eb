"""The same training code on "cpu" and "cuda": a few steps of the MLP and the CNN (dropout, BatchNorm in
train mode, cross-entropy, each optimizer) end with the same weights on both devices."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.data import DataLoader, TensorDataset
from tests.reference_models import MLP

RNG = np.random.default_rng(0)


def _train(make, x, y, device, opt_fn, steps=3, loss_fn=F.cross_entropy, dtype=ember.float32):
    ember.manual_seed(0)
    model = make().to(device, dtype)
    opt = opt_fn(model.parameters())
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=ember.Generator().manual_seed(1))
    losses = []
    model.train()
    for step, (xb, yb) in zip(range(steps), loader):
        xb, yb = xb.to(device, dtype), yb.to(device)
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def _compare(make, x, y, opt_fn, rtol=2e-4, atol=2e-5, **kw):
    mc, lc = _train(make, x, y, "cpu", opt_fn, **kw)
    mg, lg = _train(make, x, y, "cuda", opt_fn, **kw)
    np.testing.assert_allclose(lg, lc, rtol=rtol, atol=atol)
    sc, sg = mc.state_dict(), mg.state_dict()
    assert list(sc) == list(sg)
    for k in sc:
        assert sg[k].is_cuda, k
        np.testing.assert_allclose(sg[k].cpu().numpy(), sc[k].numpy(), rtol=rtol, atol=atol, err_msg=k)
    return mg


class SmallCNN(nn.Module):
    """Conv + BatchNorm + ReLU + max pool + Linear, small enough for the CUDA simulator."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv(x))))
        return self.fc(x.reshape(x.shape[0], -1))


_OPTS = {
    "sgd_momentum": lambda p: ember.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: ember.optim.Adam(p, lr=0.01),
    "adamw_amsgrad": lambda p: ember.optim.AdamW(p, lr=0.01, amsgrad=True),
    "rmsprop_centered": lambda p: ember.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("opt", ["sgd_momentum", "adamw_amsgrad", "rmsprop_centered"])
def test_mlp_trains_the_same_on_cuda(opt):
    # float64, so summation-order differences between the devices stay far below the tolerance
    x = ember.from_numpy(RNG.standard_normal((12, 20)))
    y = ember.from_numpy(RNG.integers(0, 6, 12))
    _compare(MLP, x, y, _OPTS[opt], rtol=1e-9, atol=1e-11, dtype=ember.float64)


def test_mlp_trains_the_same_on_cuda_in_float32():
    x = ember.from_numpy(RNG.standard_normal((12, 20)).astype(np.float32))
    y = ember.from_numpy(RNG.integers(0, 6, 12))
    _compare(MLP, x, y, _OPTS["adam"])


def test_cnn_trains_the_same_on_cuda_and_keeps_running_stats():
    x = ember.from_numpy(RNG.standard_normal((8, 2, 6, 6)).astype(np.float32))
    y = ember.from_numpy(RNG.integers(0, 4, 8))
    mg = _compare(SmallCNN, x, y, _OPTS["sgd_momentum"], steps=2)
    assert mg.bn1.running_mean.is_cuda and int(mg.bn1.num_batches_tracked.item()) == 2
    mg.eval()
    with ember.no_grad():
        out = mg(x[:3].cuda())
    assert out.is_cuda and out.shape == (3, 4)


def test_optimizer_state_dict_round_trip_on_cuda():
    x = ember.from_numpy(RNG.standard_normal((8, 20)).astype(np.float32))
    y = ember.from_numpy(RNG.integers(0, 6, 8))
    model, _ = _train(MLP, x, y, "cuda", _OPTS["adam"], steps=2)
    opt = ember.optim.Adam(model.parameters(), lr=0.01)
    (F.cross_entropy(model(x.cuda()), y.cuda())).backward()
    opt.step()
    state = opt.state_dict()
    opt2 = ember.optim.Adam(model.parameters(), lr=0.01)
    opt2.load_state_dict(state)
    st = next(iter(opt2.state.values()))
    assert st["exp_avg"].is_cuda and not st["step"].is_cuda


def test_mixing_devices_in_training_says_which():
    model = nn.Linear(4, 2).cuda()
    with pytest.raises(RuntimeError, match="same device.*cuda:0 and cpu|same device.*cpu and cuda:0"):
        model(ember.ones(3, 4))
