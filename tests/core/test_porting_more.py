"""PyTorch scripts ported by changing imports, part 2: regression and binary classification, autograd
idioms, checkpoints and Module bookkeeping, a custom Dataset. Same method as test_porting.py."""
from __future__ import annotations

import math  # noqa: F401
import types  # noqa: F401

import numpy as np
import torch

import ember

from .test_porting import E, T, _assert_states_close, _digits, _lib, _load, _np_state, _run_both  # noqa: F401


# ---- regression (MSELoss, Adam, ReduceLROnPlateau) and binary classification (BCEWithLogitsLoss) -----

def _regression(L, init):
    torch, nn, optim = L.torch, L.nn, L.optim
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (64, 3)).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 1))
    _load(L, model, init)
    init = _np_state(model)
    criterion = nn.MSELoss()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    losses, lrs = [], []
    for step in range(12):
        pred = model(X)
        loss = criterion(pred, Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        sched.step(round(loss.item(), 1))  # plateaus, so the lr drops
        lrs.append(opt.param_groups[0]["lr"])
    with torch.no_grad():
        mae = (model(X) - Y).abs().mean().item()
    return dict(init=init, losses=losses, lrs=lrs, mae=mae, state=_np_state(model))


def test_mse_regression_matches_torch():
    t, e = _run_both(_regression)
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    assert e["lrs"] == t["lrs"] and min(t["lrs"]) < 1e-2
    assert abs(e["mae"] - t["mae"]) < 1e-4
    _assert_states_close(e["state"], t["state"])


def _binary(L, init):
    torch, nn, optim = L.torch, L.nn, L.optim
    x, y = _digits(300, flatten=True)
    target = (y == 0).astype(np.float32)[:, None]  # one digit against the rest: imbalanced
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.LeakyReLU(0.1), nn.Linear(16, 1))
    _load(L, model, init)
    init = _np_state(model)
    pos_weight = torch.tensor([float((target == 0).sum() / (target == 1).sum())])
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9)
    sched = optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda step: min(1.0, (step + 1) / 4))
    loader = L.data.DataLoader(L.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(target)), batch_size=50, drop_last=True)
    losses = []
    for xb, yb in loader:
        loss = criterion(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.from_numpy(x)))
        pred = (prob > 0.5).float()
        acc = (pred == torch.from_numpy(target)).float().mean().item()
    return dict(init=init, losses=losses, prob=prob.numpy(), acc=acc, state=_np_state(model))


def test_bce_with_logits_binary_classifier_matches_torch():
    t, e = _run_both(_binary)
    assert len(e["losses"]) == len(t["losses"]) == 6
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    np.testing.assert_allclose(e["prob"], t["prob"], atol=1e-5)
    assert e["acc"] == t["acc"]
    _assert_states_close(e["state"], t["state"])


# ---- autograd as scripts use it: custom Function, manual SGD, autograd.grad, accumulation ----------

def _autograd(L, init):
    torch, nn = L.torch, L.nn
    res = {"init": None}

    class MyReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return input.clamp(min=0)

        @staticmethod
        def backward(ctx, grad_output):
            input, = ctx.saved_tensors
            grad_input = grad_output.clone()
            grad_input[input < 0] = 0
            return grad_input

    class ReverseGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, alpha):
            ctx.alpha = alpha
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad.neg() * ctx.alpha, None

    x = torch.from_numpy(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)).requires_grad_()
    ReverseGrad.apply(MyReLU.apply(x) * 3, 0.5).pow(2).sum().backward()
    res["function_grad"] = x.grad.numpy().copy()

    # linear regression with hand-written SGD updates
    w = torch.from_numpy(np.ones((4, 1), np.float32)).requires_grad_(True)
    b = torch.zeros(1, requires_grad=True)
    X = torch.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
    t = torch.from_numpy(np.array([[1.0], [2.0], [3.0]], np.float32))
    losses = []
    for _ in range(5):
        loss = ((X @ w + b - t) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= 0.1 * w.grad
            b -= 0.1 * b.grad
            w.grad.zero_()
            b.grad.zero_()
        losses.append(loss.item())
    res["manual_sgd"] = np.array(losses)

    x = torch.from_numpy(np.array([1.0, 2.0, 3.0], np.float32)).requires_grad_()
    g, = torch.autograd.grad((x ** 3).sum(), x)
    res["autograd_grad"] = g.numpy().copy()
    h = x * 2
    h.retain_grad()
    (h ** 2).sum().backward(retain_graph=True)
    res["retain_grad"] = h.grad.numpy().copy()
    (x * 3).backward(torch.from_numpy(np.array([1.0, 0.5, 2.0], np.float32)))
    res["accumulated_vjp"] = x.grad.numpy().copy()

    # gradient accumulation over micro-batches with a frozen weight
    m = nn.Linear(3, 1)
    with torch.no_grad():
        m.weight.fill_(0.5)
        m.bias.fill_(0.1)
    m.weight.requires_grad_(False)
    for i in range(2):
        (m(torch.ones(2, 3) * (i + 1)) ** 2).sum().div(2).backward()
    res["frozen"] = m.weight.grad is None
    res["accumulated_bias_grad"] = m.bias.grad.numpy().copy()

    @torch.no_grad()
    def predict(inp):
        return m(inp)
    res["no_grad_decorator"] = predict(torch.ones(1, 3)).requires_grad
    res["leaf"] = (x.is_leaf, (x * 2).is_leaf, (x * 2).grad_fn is not None)
    return res


def test_autograd_idioms_match_torch():
    t, e = _run_both(_autograd)
    for k, v in t.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_allclose(e[k], v, atol=1e-6, err_msg=k)
        else:
            assert e[k] == v, k
    np.testing.assert_array_equal(t["function_grad"][0], 0)  # the custom backward ran: zero below 0


# ---- checkpoints as dicts of numpy arrays; optimizer state; Module bookkeeping -----------------------

def _checkpoint(L, init):
    torch, nn, F, optim = L.torch, L.nn, L.F, L.optim

    def build():
        # no conv bias before BatchNorm: its true gradient is 0 and Adam's first step turns float noise
        # in it into +-lr, so it could not be compared with torch
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64, 10))

    x, y = _digits(96)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)

    def train(model, opt, batches):
        out = []
        for i in batches:
            loss = F.cross_entropy(model(X[i * 32:(i + 1) * 32]), Y[i * 32:(i + 1) * 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    torch.manual_seed(0)
    model = build()
    _load(L, model, init)
    init = _np_state(model)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    first = train(model, opt, [0, 1])
    ckpt = {"model": {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "epoch": 1}
    rest = train(model, opt, [2])

    resumed = build()
    missing = resumed.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt["model"].items()})
    opt2 = optim.Adam(resumed.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    resumed_rest = train(resumed, opt2, [2])
    model.eval()
    with torch.no_grad():
        logits = model(X)
    return dict(init=init, first=first, rest=rest, resumed_rest=resumed_rest, missing=list(missing.missing_keys),
                keys=list(ckpt["model"]), logits=logits.numpy(), n_params=sum(p.numel() for p in model.parameters()))


def test_checkpoint_roundtrip_and_resume_match_torch():
    t, e = _run_both(_checkpoint)
    np.testing.assert_allclose(e["first"] + e["rest"], t["first"] + t["rest"], atol=1e-4)
    assert e["keys"] == t["keys"] and "1.num_batches_tracked" in e["keys"]
    assert e["missing"] == t["missing"] == []
    assert e["n_params"] == t["n_params"]
    # torch's Adam.load_state_dict keeps the saved state tensors, so a resumed run there shares them
    # with the original; ember copies them: resuming must reproduce the uninterrupted step.
    np.testing.assert_allclose(e["resumed_rest"], e["rest"], atol=1e-6)
    np.testing.assert_allclose(e["logits"], t["logits"], atol=1e-4)


def _module_bookkeeping(L, init):
    torch, nn = L.torch, L.nn

    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 4, padding_idx=0)
            self.norm = nn.LayerNorm(4)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.emb.weight  # weight tying
            self.register_buffer("scale", torch.ones(1) * 2)
            self.register_buffer("cache", torch.zeros(3), persistent=False)

        def forward(self, idx):
            return self.head(self.norm(self.emb(idx)) * self.scale)

    torch.manual_seed(0)
    model = TiedLM()
    _load(L, model, init)
    init = _np_state(model)
    seen = []
    handle = model.norm.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    idx = torch.from_numpy(np.array([[0, 1, 2], [3, 4, 0]]))
    out = model(idx)
    handle.remove()
    model(idx)
    out.sum().backward()
    return dict(init=init, state_keys=list(model.state_dict()), params=[n for n, _ in model.named_parameters()],
                buffers=[n for n, _ in model.named_buffers()], modules=[n for n, _ in model.named_modules()],
                hook=seen, out=out.detach().numpy(), emb_grad=model.emb.weight.grad.numpy().copy(),
                tied=model.head.weight is model.emb.weight)


def test_module_bookkeeping_matches_torch():
    t, e = _run_both(_module_bookkeeping)
    for k in ("state_keys", "params", "buffers", "modules", "hook", "tied"):
        assert e[k] == t[k], k
    np.testing.assert_allclose(e["out"], t["out"], atol=1e-5)
    np.testing.assert_allclose(e["emb_grad"], t["emb_grad"], atol=1e-5)


# ---- a custom map-style Dataset of numpy arrays and Python ints -----------------------------------

def _custom_dataset(L, init):
    torch, nn, F, optim, data = L.torch, L.nn, L.F, L.optim, L.data

    class DigitsNumpy(data.Dataset):
        def __init__(self, n):
            self.x, self.y = _digits(n)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i] / 16.0, int(self.y[i])

    ds = DigitsNumpy(100)
    train_set, val_set = data.Subset(ds, range(80)), data.Subset(ds, range(80, 100))
    loader = data.DataLoader(train_set, batch_size=16, shuffle=False, num_workers=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    _load(L, model, init)
    init = _np_state(model)
    opt = optim.SGD(model.parameters(), lr=0.5)
    losses, dtypes = [], set()
    for xb, yb in loader:
        dtypes.add((str(xb.dtype).split(".")[-1], str(yb.dtype).split(".")[-1], tuple(xb.shape[1:])))
        loss = F.cross_entropy(model(xb.float()), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    correct = 0
    with torch.no_grad():
        for xb, yb in data.DataLoader(val_set, batch_size=8):
            correct += (model(xb.float()).argmax(dim=1) == yb).sum().item()
    return dict(init=init, losses=losses, dtypes=dtypes, n_batches=len(loader), correct=correct)


def test_custom_numpy_dataset_matches_torch():
    t, e = _run_both(_custom_dataset)
    assert e["dtypes"] == t["dtypes"] == {("float32", "int64", (1, 8, 8))}
    assert e["n_batches"] == t["n_batches"] == 5
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    assert e["correct"] == t["correct"]
