"""Porting real PyTorch scripts to ember by changing the imports.

Each scenario is written once, the way people write PyTorch training code, against a namespace
`L` that holds either torch (torch, nn, F, optim, data) or ember under the same names. It runs
with torch first; ember then starts from torch's initial weights (copied through numpy) and sees
the same batches, and losses, outputs and final weights must agree to float32 rounding.
"""
from __future__ import annotations

import math
import types

import numpy as np
import torch

import ember
from ember.data.datasets import digits


def _lib(name):
    """The names a script imports (`import torch`, `import torch.nn as nn`, ...) for one library."""
    if name == "torch":
        import torch.nn as nn
        import torch.nn.functional as F
        import torch.utils.data as data
        return types.SimpleNamespace(torch=torch, nn=nn, F=F, optim=torch.optim, data=data)
    import ember.data as data
    import ember.nn as nn
    import ember.nn.functional as F
    return types.SimpleNamespace(torch=ember, nn=nn, F=F, optim=ember.optim, data=data)


T, E = _lib("torch"), _lib("ember")


def _np_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _load(L, model, state):
    if state is not None:
        model.load_state_dict({k: L.torch.from_numpy(v.copy()) for k, v in state.items()})


def _digits(n, flatten=False, offset=0):
    x, y = digits("train", flatten=flatten).tensors
    return x.numpy()[offset:offset + n].copy(), y.numpy()[offset:offset + n].copy()


def _assert_states_close(e_state, t_state, atol=1e-5):
    assert list(e_state) == list(t_state)
    for k, v in t_state.items():
        np.testing.assert_allclose(e_state[k], v, atol=atol, rtol=1e-4, err_msg=k)


def _run_both(scenario, **kw):
    """Run a scenario with torch, then with ember from torch's initial weights."""
    t = scenario(T, None, **kw)
    e = scenario(E, t["init"], **kw)
    return t, e


# ---- an MLP classifier on digits: BatchNorm, Dropout, param groups, clipping, StepLR ---------------

def _mlp_digits(L, init):
    torch, nn, F, optim = L.torch, L.nn, L.F, L.optim

    class MLP(nn.Module):
        def __init__(self, d_in=64, hidden=32, n_cls=10, p=0.0):
            super().__init__()
            self.fc1 = nn.Linear(d_in, hidden)
            self.bn = nn.BatchNorm1d(hidden)
            self.drop = nn.Dropout(p)
            self.fc2 = nn.Linear(hidden, n_cls)

        def forward(self, x):
            x = x.view(x.size(0), -1)
            x = F.relu(self.bn(self.fc1(x)))
            return self.fc2(self.drop(x))

    torch.manual_seed(0)
    model = MLP()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    _load(L, model, init)
    init = _np_state(model)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "bn" in name else decay).append(p)
    opt = optim.SGD([{"params": decay, "weight_decay": 1e-3},
                     {"params": no_decay, "weight_decay": 0.0, "lr": 0.05}], lr=0.1, momentum=0.9, nesterov=True)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x, y = _digits(384, flatten=True)
    loader = L.data.DataLoader(L.data.TensorDataset(torch.from_numpy(x[:256]), torch.from_numpy(y[:256])), batch_size=64)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    losses, norms = [], []
    for epoch in range(3):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)))
            opt.step()
            losses.append(loss.item())
        sched.step()
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x[256:]))
        acc = (out.argmax(1) == torch.from_numpy(y[256:])).float().mean().item()
        probs = F.softmax(out, dim=-1)
    return dict(init=init, losses=losses, norms=norms, acc=acc, probs=probs.numpy(),
                lrs=[g["lr"] for g in opt.param_groups], state=_np_state(model))


def test_mlp_digits_training_matches_torch():
    t, e = _run_both(_mlp_digits)
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    np.testing.assert_allclose(e["norms"], t["norms"], rtol=1e-4)
    assert e["lrs"] == t["lrs"] == [0.05, 0.025]
    assert e["acc"] == t["acc"]
    np.testing.assert_allclose(e["probs"], t["probs"], atol=1e-5)
    _assert_states_close(e["state"], t["state"])


# ---- a ResNet-style CNN: `out += identity`, ReLU(inplace=True), BatchNorm2d, AdaptiveAvgPool2d --------

def _resnet_digits(L, init):
    torch, nn, F, optim = L.torch, L.nn, L.F, L.optim

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super(BasicBlock, self).__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            out = self.relu(out)
            return out

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
            self.layer1 = BasicBlock(8, 8)
            down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
            self.layer2 = BasicBlock(8, 16, stride=2, downsample=down)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(16 * BasicBlock.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def forward(self, x):
            x = self.layer2(self.layer1(self.stem(x)))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    torch.manual_seed(0)
    model = Net()
    _load(L, model, init)
    init = _np_state(model)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    x, y = _digits(128)
    loader = L.data.DataLoader(L.data.TensorDataset(torch.from_numpy(x[:96]), torch.from_numpy(y[:96])), batch_size=32)
    losses, epoch_acc = [], []
    for epoch in range(2):
        model.train()
        correct = total = 0
        for inputs, targets in loader:
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _, predicted = outputs.max(1)
            total += targets.size(0)
            correct += predicted.eq(targets).sum().item()
            losses.append(loss.item())
        epoch_acc.append(correct / total)
        sched.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x[96:]))
    return dict(init=init, losses=losses, epoch_acc=epoch_acc, logits=logits.numpy(),
                last_lr=sched.get_last_lr(), state=_np_state(model))


def test_resnet_block_cnn_matches_torch():
    t, e = _run_both(_resnet_digits)
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    assert e["epoch_acc"] == t["epoch_acc"]
    np.testing.assert_allclose(e["last_lr"], t["last_lr"], rtol=1e-12)
    np.testing.assert_allclose(e["logits"], t["logits"], atol=1e-4)
    _assert_states_close(e["state"], t["state"], atol=1e-5)


# ---- a tiny causal transformer: Embedding, LayerNorm, GELU, masked_fill(-inf) attention, AdamW ------

def _gpt(L, init, mask_with_tril=False, sample_topk=False):
    torch, nn, F, optim = L.torch, L.nn, L.F, L.optim

    class CausalSelfAttention(nn.Module):
        def __init__(self, d_model, n_head, block_size):
            super().__init__()
            assert d_model % n_head == 0
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.n_head = n_head
            self.attn_drop = nn.Dropout(0.0)
            if mask_with_tril:
                mask = torch.tril(torch.ones(block_size, block_size))
            else:
                mask = (torch.arange(block_size)[None, :] <= torch.arange(block_size)[:, None]).float()
            self.register_buffer("mask", mask.view(1, 1, block_size, block_size))

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.qkv(x).split(C, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
            att = self.attn_drop(F.softmax(att, dim=-1))
            y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
            return self.proj(y)

    class Block(nn.Module):
        def __init__(self, d, h, block_size):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = CausalSelfAttention(d, h, block_size)
            self.ln2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(0.0))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self, vocab=17, d=16, h=2, block_size=8, n_layer=2):
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.zeros(1, block_size, d))
            self.blocks = nn.ModuleList([Block(d, h, block_size) for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab, bias=False)
            self.apply(self._init_weights)

        def _init_weights(self, module):
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_(mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.data.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.bias.data.zero_()
                module.weight.data.fill_(1.0)

        def forward(self, idx, targets=None):
            b, t = idx.size()
            x = self.tok(idx) + self.pos[:, :t, :]
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss

    torch.manual_seed(0)
    model = GPT()
    _load(L, model, init)
    init = _np_state(model)
    decay, no_decay = set(), set()
    for mn, m in model.named_modules():
        for pn, p in m.named_parameters():
            fpn = f"{mn}.{pn}" if mn else pn
            if pn.endswith("bias"):
                no_decay.add(fpn)
            elif pn.endswith("weight") and isinstance(m, nn.Linear):
                decay.add(fpn)
            elif pn.endswith("weight") and isinstance(m, (nn.LayerNorm, nn.Embedding)):
                no_decay.add(fpn)
    no_decay.add("pos")
    params = dict(model.named_parameters())
    assert decay | no_decay == set(params) and not decay & no_decay
    opt = optim.AdamW([{"params": [params[n] for n in sorted(decay)], "weight_decay": 0.1},
                       {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.95))
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(5):
        data = rng.integers(0, 17, (4, 9))
        x, y = torch.from_numpy(data[:, :-1]), torch.from_numpy(data[:, 1:].copy())
        y[0, :2] = -1
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        idx = torch.zeros((1, 1), dtype=torch.long)
        last = None
        for _ in range(6):
            logits, _ = model(idx[:, -8:])
            logits = logits[:, -1, :] / 0.8
            if sample_topk:
                v, _ = torch.topk(logits, 3)
                logits[logits < v[:, [-1]]] = -float("Inf")
            last = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.argmax(last, dim=-1, keepdim=True)), dim=1)
    return dict(init=init, losses=losses, idx=idx.numpy(), probs=last.numpy(), state=_np_state(model))


def test_causal_transformer_matches_torch():
    t, e = _run_both(_gpt)
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    np.testing.assert_array_equal(e["idx"], t["idx"])
    np.testing.assert_allclose(e["probs"], t["probs"], atol=1e-5)
    _assert_states_close(e["state"], t["state"])
