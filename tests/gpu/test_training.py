"""The same training code on "cpu" and "cuda": a few steps of the MLP and the CNN (dropout, BatchNorm in
train mode, cross-entropy, each optimizer) end with the same weights on both devices."""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.data import DataLoader, TensorDataset
from tests.reference_models import CNN, MLP

RNG = np.random.default_rng(0)


def _train(make, x, y, device, opt_fn, steps=3, loss_fn=F.cross_entropy):
    ember.manual_seed(0)
    model = make().to(device)
    opt = opt_fn(model.parameters())
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=ember.Generator().manual_seed(1))
    losses = []
    model.train()
    for step, (xb, yb) in zip(range(steps), loader):
        xb, yb = xb.to(device), yb.to(device)
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


_OPTS = {
    "sgd_momentum": lambda p: ember.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: ember.optim.Adam(p, lr=0.01),
    "adamw_amsgrad": lambda p: ember.optim.AdamW(p, lr=0.01, amsgrad=True),
    "rmsprop_centered": lambda p: ember.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("opt", sorted(_OPTS))
def test_mlp_trains_the_same_on_cuda(opt):
    x = ember.from_numpy(RNG.standard_normal((12, 20)).astype(np.float32))
    y = ember.from_numpy(RNG.integers(0, 6, 12))
    _compare(MLP, x, y, _OPTS[opt])


def test_cnn_trains_the_same_on_cuda_and_keeps_running_stats():
    x = ember.from_numpy(RNG.standard_normal((8, 3, 8, 8)).astype(np.float32))
    y = ember.from_numpy(RNG.integers(0, 10, 8))
    mg = _compare(CNN, x, y, _OPTS["sgd_momentum"], steps=2)
    assert mg.bn1.running_mean.is_cuda and int(mg.bn1.num_batches_tracked.item()) == 2
    mg.eval()
    with ember.no_grad():
        out = mg(x[:3].cuda())
    assert out.is_cuda and out.shape == (3, 10)


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
