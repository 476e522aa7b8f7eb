"""More PyTorch script idioms, ported by changing imports: each of these failed when first written
(set_grad_enabled blocks, f-string formatting, tril masks and top-k sampling, loss modules, warm-up
schedules, num_workers, creation idioms) and now runs like torch."""
from __future__ import annotations

import numpy as np
import torch

import ember

from .test_porting import E, T, _assert_states_close, _digits, _gpt, _lib, _load, _np_state, _run_both  # noqa: F401


def _train_val_phases(L, init):
    """The torchvision fine-tuning tutorial loop: `with torch.set_grad_enabled(phase == "train")`."""
    torch, nn, optim = L.torch, L.nn, L.optim
    x, y = _digits(64, flatten=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10))
    _load(L, model, init)
    init = _np_state(model)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    phases = {"train": (torch.from_numpy(x[:32]), torch.from_numpy(y[:32])),
              "val": (torch.from_numpy(x[32:]), torch.from_numpy(y[32:]))}
    log = []
    for epoch in range(2):
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            inputs, labels = phases[phase]
            opt.zero_grad()
            with torch.set_grad_enabled(phase == "train"):
                outputs = model(inputs)
                loss = criterion(outputs, labels)
                if phase == "train":
                    loss.backward()
                    opt.step()
            log.append((phase, round(loss.item(), 5), outputs.requires_grad))
    return dict(init=init, log=log, grad_enabled_after=torch.is_grad_enabled())


def test_set_grad_enabled_as_context_manager():
    t, e = _run_both(_train_val_phases)
    assert e["log"] == t["log"]
    assert e["grad_enabled_after"] is True


def test_scalar_tensor_in_format_string():
    # print(f"epoch {epoch} loss {loss:.4f}") is in most training loops
    for L in (T, E):
        loss = L.F.mse_loss(L.torch.ones(3), L.torch.zeros(3))
        assert f"loss {loss:.4f}" == "loss 1.0000"
        assert "{:.2f}".format(loss) == "1.00"


def test_to_device_non_blocking():
    for L in (T, E):
        device = L.torch.device("cuda" if L.torch.cuda.is_available() else "cpu")
        x = L.torch.ones(2, 3).to(device, non_blocking=True)
        y = L.torch.zeros(2, dtype=L.torch.long).to(device=device, non_blocking=True)
        assert tuple(x.shape) == (2, 3) and tuple(y.shape) == (2,)


def test_causal_transformer_with_tril_mask_and_topk_sampling():
    t, e = _run_both(_gpt, mask_with_tril=True, sample_topk=True)
    np.testing.assert_allclose(e["losses"], t["losses"], atol=1e-4)
    np.testing.assert_array_equal(e["idx"], t["idx"])
    np.testing.assert_allclose(e["probs"], t["probs"], atol=1e-5)


def test_loss_modules_that_exist_as_functions():
    # F.smooth_l1_loss, F.huber_loss and F.kl_div exist; their nn.Module wrappers do not
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    for make in (lambda nn: nn.SmoothL1Loss(beta=0.5), lambda nn: nn.HuberLoss(delta=0.7),
                 lambda nn: nn.KLDivLoss(reduction="batchmean")):
        ins = [(L.F.log_softmax(L.torch.from_numpy(a), 1), L.F.softmax(L.torch.from_numpy(b), 1)) for L in (T, E)]
        t_val = make(T.nn)(*ins[0]).item()
        assert abs(make(E.nn)(*ins[1]).item() - t_val) < 1e-6


def test_warmup_then_cosine_with_sequential_lr():
    def lrs(L):
        opt = L.optim.SGD([L.nn.Parameter(L.torch.zeros(2))], lr=0.1)
        S = L.optim.lr_scheduler
        sched = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=2), S.CosineAnnealingLR(opt, T_max=4)],
                               milestones=[2])
        out = []
        for _ in range(6):
            opt.step()
            sched.step()
            out.append(opt.param_groups[0]["lr"])
        return out
    np.testing.assert_allclose(lrs(E), lrs(T), rtol=1e-12)


def test_common_tensor_creation_idioms():
    for L in (T, E):
        torch = L.torch
        x = torch.randn(4, 3)
        assert tuple(torch.randint(10, (5,)).shape) == (5,)  # randint(high, size)
        assert torch.as_tensor(np.array([1.0, 2.0])).dtype == torch.float64
        assert tuple(x.new_zeros(2, 3).shape) == (2, 3) and x.new_zeros(1).dtype == torch.float32
        assert x.new_ones((2,)).sum().item() == 2
        assert x.new_full((2,), 3.0).tolist() == [3.0, 3.0]
        assert x.new_tensor([1.0, 2.0]).tolist() == [1.0, 2.0]


def test_dataloader_num_workers_in_script():
    # nearly every script passes num_workers=2/4; torch runs them, ember raises NotImplementedError
    for L in (T, E):
        ds = L.data.TensorDataset(L.torch.arange(10).float(), L.torch.arange(10))
        batches = [yb.tolist() for _, yb in L.data.DataLoader(ds, batch_size=4, num_workers=2)]
        assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_normalize_and_cosine_similarity_embeddings():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    out = []
    for L in (T, E):
        za = L.F.normalize(L.torch.from_numpy(a).requires_grad_(), dim=1)
        zb = L.torch.from_numpy(b)
        logits = za @ L.F.normalize(zb, p=2, dim=-1).t() / 0.1
        loss = L.F.cross_entropy(logits, L.torch.arange(4)) + (1 - L.F.cosine_similarity(za, zb, dim=1)).mean()
        out.append(loss.item())
    assert abs(out[1] - out[0]) < 1e-5
