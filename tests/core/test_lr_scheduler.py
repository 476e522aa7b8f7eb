"""ember.optim.lr_scheduler against torch.optim.lr_scheduler: the same lr (and momentum) sequences."""
from __future__ import annotations

import copy
import json
import pickle
import warnings

import numpy as np
import pytest
import torch

import ember
from ember import optim
from ember.optim import lr_scheduler as sched

STEPS = 60


def _pair(e_cls=optim.SGD, t_cls=torch.optim.SGD, lrs=(0.1, 0.03), **kwargs):
    """Two optimizers (ember, torch) with one param group per lr."""
    e_groups = [{"params": [ember.tensor([1.0, 2.0], requires_grad=True)], "lr": lr} for lr in lrs]
    t_groups = [{"params": [torch.tensor([1.0, 2.0], requires_grad=True)], "lr": lr} for lr in lrs]
    return e_cls(e_groups, **kwargs), t_cls(t_groups, **kwargs)


def _same(a, b, what):
    """Exact equality: the same formulas in the same order give the same doubles."""
    assert len(a) == len(b), what
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            _same(x, y, what)
        else:
            assert x == y, f"{what}: ember {a} vs torch {b}"


def _check_groups(eo, to, step, keys=("lr",)):
    for key in keys:
        _same([g[key] for g in eo.param_groups], [g[key] for g in to.param_groups], f"step {step} {key}")


def _run(eo, to, es, ts, steps=STEPS, keys=("lr",)):
    _check_groups(eo, to, "init", keys)
    _same(es.get_last_lr(), ts.get_last_lr(), "init last_lr")
    for k in range(steps):
        eo.step()
        to.step()
        es.step()
        ts.step()
        _same(es.get_last_lr(), ts.get_last_lr(), f"step {k} last_lr")
        _check_groups(eo, to, k, keys)
        assert es.last_epoch == ts.last_epoch


SCHEDULERS = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=1, gamma=0.9)),
    ("MultiStepLR", dict(milestones=[5, 12, 12, 30], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.93)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=17)),
    ("LinearLR", dict(start_factor=0.25, end_factor=1.0, total_iters=8)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.1, total_iters=25)),
    ("LambdaLR", dict(lr_lambda=lambda e: 0.95 ** e)),
]


@pytest.mark.parametrize("name,kwargs", SCHEDULERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULERS)])
def test_matches_torch(name, kwargs):
    eo, to = _pair()
    es = getattr(sched, name)(eo, **kwargs)
    ts = getattr(torch.optim.lr_scheduler, name)(to, **kwargs)
    _run(eo, to, es, ts)


def test_lambda_lr_one_function_per_group():
    fns = [lambda e: 1.0 / (1 + e), lambda e: 0.5 if e % 3 else 1.0]
    eo, to = _pair()
    _run(eo, to, sched.LambdaLR(eo, fns), torch.optim.lr_scheduler.LambdaLR(to, fns))
    with pytest.raises(ValueError, match="Expected 2 lr_lambdas, but got 1"):
        sched.LambdaLR(_pair()[0], [fns[0]])


ONE_CYCLE = [
    dict(max_lr=1.0, total_steps=STEPS),
    dict(max_lr=[0.5, 2.0], total_steps=STEPS, anneal_strategy="linear"),
    dict(max_lr=0.8, epochs=6, steps_per_epoch=10, three_phase=True, pct_start=0.25),
    dict(max_lr=0.8, total_steps=STEPS, div_factor=10.0, final_div_factor=100.0, pct_start=0.4,
         base_momentum=[0.8, 0.7], max_momentum=0.9),
    dict(max_lr=0.3, total_steps=STEPS, cycle_momentum=False, three_phase=True, anneal_strategy="linear"),
]


@pytest.mark.parametrize("kwargs", ONE_CYCLE)
def test_one_cycle_with_sgd_momentum(kwargs):
    eo, to = _pair(momentum=0.9)
    es = sched.OneCycleLR(eo, **kwargs)
    ts = torch.optim.lr_scheduler.OneCycleLR(to, **kwargs)
    _run(eo, to, es, ts, keys=("lr", "momentum", "initial_lr", "max_lr", "min_lr"))
    # one step past total_steps is an error in both
    eo.step()
    to.step()
    with pytest.raises(ValueError, match="Tried to step"):
        es.step()
    with pytest.raises(ValueError, match="Tried to step"):
        ts.step()


@pytest.mark.parametrize("kwargs", ONE_CYCLE[:3])
def test_one_cycle_with_adam_beta1(kwargs):
    eo, to = _pair(optim.Adam, torch.optim.Adam, betas=(0.9, 0.99))
    es = sched.OneCycleLR(eo, **kwargs)
    ts = torch.optim.lr_scheduler.OneCycleLR(to, **kwargs)
    _run(eo, to, es, ts, keys=("lr", "betas"))


def test_one_cycle_errors():
    eo, _ = _pair()
    with pytest.raises(ValueError, match="either total_steps OR"):
        sched.OneCycleLR(eo, max_lr=1.0)
    with pytest.raises(ValueError, match="positive integer total_steps"):
        sched.OneCycleLR(eo, max_lr=1.0, total_steps=0)
    with pytest.raises(ValueError, match="pct_start"):
        sched.OneCycleLR(eo, max_lr=1.0, total_steps=10, pct_start=1.5)
    with pytest.raises(ValueError, match="anneal_strategy"):
        sched.OneCycleLR(eo, max_lr=1.0, total_steps=10, anneal_strategy="step")
    with pytest.raises(ValueError, match="max_lr must have the same length"):
        sched.OneCycleLR(eo, max_lr=[1.0], total_steps=10)


def test_chained_schedulers_compose_like_torch():
    """Two schedulers on one optimizer: the recursive forms chain their effects."""
    eo, to = _pair()
    e1, e2 = sched.LinearLR(eo, start_factor=0.1, total_iters=5), sched.CosineAnnealingLR(eo, T_max=12)
    t1, t2 = torch.optim.lr_scheduler.LinearLR(to, start_factor=0.1, total_iters=5), \
        torch.optim.lr_scheduler.CosineAnnealingLR(to, T_max=12)
    for k in range(40):
        eo.step()
        to.step()
        for s in (e1, e2, t1, t2):
            s.step()
        _check_groups(eo, to, k)


@pytest.mark.parametrize("name,kwargs", [s for s in SCHEDULERS if s[0] != "LambdaLR"])
def test_step_with_epoch_uses_closed_form(name, kwargs):
    eo, to = _pair()
    es, ts = getattr(sched, name)(eo, **kwargs), getattr(torch.optim.lr_scheduler, name)(to, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in (3, 10, 4, 25, 31):
            eo.step()
            to.step()
            es.step(epoch)
            ts.step(epoch)
            _check_groups(eo, to, epoch)
    with pytest.warns(UserWarning, match="epoch parameter"):
        es.step(7)


PLATEAU = [
    dict(),
    dict(mode="max", patience=2, factor=0.5),
    dict(patience=1, threshold=0.05, threshold_mode="abs", cooldown=2, min_lr=[0.01, 0.0]),
    dict(mode="max", patience=0, threshold_mode="abs", min_lr=0.02, factor=0.3, eps=1e-3),
]


@pytest.mark.parametrize("kwargs", PLATEAU)
def test_reduce_lr_on_plateau(kwargs):
    rng = np.random.default_rng(0)
    metrics = np.concatenate([np.linspace(1.0, 0.5, 10), 0.5 + 0.02 * rng.standard_normal(50)])
    eo, to = _pair()
    es = sched.ReduceLROnPlateau(eo, **kwargs)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(to, **kwargs)
    for k, m in enumerate(metrics):
        eo.step()
        to.step()
        es.step(float(m))
        ts.step(float(m))
        _check_groups(eo, to, k)
        _same(es.get_last_lr(), ts.get_last_lr(), f"step {k}")
        assert (es.num_bad_epochs, es.cooldown_counter, es.best) == (ts.num_bad_epochs, ts.cooldown_counter, ts.best)
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        sched.ReduceLROnPlateau(eo, factor=1.0)
    with pytest.raises(ValueError, match="mode 'avg' is unknown"):
        sched.ReduceLROnPlateau(eo, mode="avg")


@pytest.mark.parametrize("make", [
    lambda o: sched.CosineAnnealingLR(o, T_max=9, eta_min=0.01),
    lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=50),
    lambda o: sched.MultiStepLR(o, milestones=[3, 8, 15], gamma=0.5),
    lambda o: sched.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    lambda o: sched.ReduceLROnPlateau(o, patience=1),
], ids=["cosine", "onecycle", "multistep", "lambda", "plateau"])
def test_state_dict_round_trip(make):
    """Save optimizer + scheduler after 20 steps, restore both into fresh objects: same continuation."""
    def metric(k):
        return 1.0 / (1 + min(k, 10))

    eo, _ = _pair(momentum=0.9)
    es = make(eo)
    for k in range(20):
        eo.step()
        es.step(metric(k)) if isinstance(es, sched.ReduceLROnPlateau) else es.step()
    opt_sd, sched_sd = eo.state_dict(), es.state_dict()
    assert "optimizer" not in sched_sd
    eo2, _ = _pair(momentum=0.9)
    es2 = make(eo2)
    eo2.load_state_dict(opt_sd)
    es2.load_state_dict(sched_sd)
    for k in range(20, 45):
        for o, s in ((eo, es), (eo2, es2)):
            o.step()
            s.step(metric(k)) if isinstance(s, sched.ReduceLROnPlateau) else s.step()
        assert es.get_last_lr() == es2.get_last_lr()
        assert [g["lr"] for g in eo.param_groups] == [g["lr"] for g in eo2.param_groups]


def test_warns_when_scheduler_steps_before_optimizer():
    eo, _ = _pair()
    es = sched.StepLR(eo, step_size=2)
    with pytest.warns(UserWarning, match=r"`lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
        es.step()
    eo, _ = _pair()
    es = sched.StepLR(eo, step_size=2)
    eo.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        es.step()
        eo.step()
        es.step()


def test_resume_with_last_epoch_needs_initial_lr():
    eo, to = _pair()
    with pytest.raises(KeyError, match="initial_lr"):
        sched.StepLR(eo, step_size=3, last_epoch=4)
    for g, tg in zip(eo.param_groups, to.param_groups):
        g["initial_lr"] = tg["initial_lr"] = g["lr"]
    es = sched.CosineAnnealingLR(eo, T_max=10, last_epoch=4)
    ts = torch.optim.lr_scheduler.CosineAnnealingLR(to, T_max=10, last_epoch=4)
    _run(eo, to, es, ts, steps=30)


def test_not_an_optimizer():
    with pytest.raises(TypeError, match="is not an Optimizer"):
        sched.StepLR(object(), step_size=1)


def test_state_dict_survives_json():
    """Checkpoints store scheduler state as JSON: MultiStepLR's milestone keys come back as strings."""
    eo, _ = _pair()
    es = sched.MultiStepLR(eo, milestones=[3, 6, 6], gamma=0.5)
    ref_o, _ = _pair()
    ref = sched.MultiStepLR(ref_o, milestones=[3, 6, 6], gamma=0.5)
    for _ in range(2):
        for o, s in ((eo, es), (ref_o, ref)):
            o.step()
            s.step()
    eo2, _ = _pair()
    es2 = sched.MultiStepLR(eo2, milestones=[100])
    eo2.load_state_dict(json.loads(json.dumps(eo.state_dict())))
    es2.load_state_dict(json.loads(json.dumps(es.state_dict())))
    for k in range(8):
        for o, s in ((eo2, es2), (ref_o, ref)):
            o.step()
            s.step()
        assert es2.get_last_lr() == ref.get_last_lr(), f"step {k}"


def test_optimizer_copies_after_a_scheduler_wrapped_its_step():
    eo, _ = _pair(momentum=0.9)
    sched.StepLR(eo, step_size=2)
    clone = copy.deepcopy(eo)
    assert "step" not in clone.__dict__ and clone.param_groups[0]["initial_lr"] == 0.1
    restored = pickle.loads(pickle.dumps(eo))
    assert len(restored.param_groups) == 2
    restored.step()


# ---- ConstantLR, PolynomialLR, CosineAnnealingWarmRestarts, SequentialLR ------------------------------

EXTRA = [
    ("ConstantLR", {}),
    ("ConstantLR", dict(factor=0.5, total_iters=12)),
    ("PolynomialLR", {}),
    ("PolynomialLR", dict(total_iters=40, power=2.0)),
    ("PolynomialLR", dict(total_iters=70, power=0.5)),
    ("CosineAnnealingWarmRestarts", dict(T_0=10)),
    ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2, eta_min=0.002)),
]


@pytest.mark.parametrize("name,kwargs", EXTRA, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXTRA)])
def test_extra_schedulers_match_torch(name, kwargs):
    eo, to = _pair()
    _run(eo, to, getattr(sched, name)(eo, **kwargs), getattr(torch.optim.lr_scheduler, name)(to, **kwargs))


def _sequential(lib_sched, opt, kind):
    S = lib_sched
    if kind == "warmup_cosine":
        return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=5),
                                    S.CosineAnnealingLR(opt, T_max=20, eta_min=0.001)], milestones=[5])
    if kind == "three":
        return S.SequentialLR(opt, [S.ConstantLR(opt, factor=0.25, total_iters=4), S.ExponentialLR(opt, gamma=0.9),
                                    S.StepLR(opt, step_size=6, gamma=0.5)], milestones=[4, 20])
    if kind == "restarts":
        return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.5, total_iters=3),
                                    S.CosineAnnealingWarmRestarts(opt, T_0=7, T_mult=2)], milestones=[3])
    if kind == "poly":
        return S.SequentialLR(opt, [S.ExponentialLR(opt, gamma=0.8), S.PolynomialLR(opt, total_iters=30, power=1.5)],
                              milestones=[10])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["warmup_cosine", "three", "restarts", "poly"])
def test_sequential_lr_matches_torch(kind):
    eo, to = _pair()
    es, ts = _sequential(sched, eo, kind), _sequential(torch.optim.lr_scheduler, to, kind)
    _run(eo, to, es, ts)


def test_cosine_warm_restarts_fractional_epochs():
    eo, to = _pair()
    es = sched.CosineAnnealingWarmRestarts(eo, T_0=4, T_mult=2, eta_min=0.01)
    ts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(to, T_0=4, T_mult=2, eta_min=0.01)
    for epoch in range(12):
        for i in range(5):
            es.step(epoch + i / 5)
            ts.step(epoch + i / 5)
            _same(es.get_last_lr(), ts.get_last_lr(), f"epoch {epoch} batch {i}")
            assert es.last_epoch == ts.last_epoch and es.T_i == ts.T_i
    with pytest.raises(ValueError, match="Expected non-negative epoch"):
        es.step(-1)


def test_sequential_lr_state_dict_resume():
    eo, to = _pair()
    es = _sequential(sched, eo, "warmup_cosine")
    ts = _sequential(torch.optim.lr_scheduler, to, "warmup_cosine")
    for _ in range(8):
        eo.step()
        to.step()
        es.step()
        ts.step()
    sd = es.state_dict()
    assert len(sd["_schedulers"]) == 2 and "optimizer" not in sd
    eo2, to2 = _pair()
    for g2, g in zip(eo2.param_groups, eo.param_groups):
        g2.update(lr=g["lr"], initial_lr=g["initial_lr"])
    es2 = _sequential(sched, eo2, "warmup_cosine")
    es2.load_state_dict(copy.deepcopy(sd))
    for g2, g in zip(eo2.param_groups, eo.param_groups):
        g2["lr"] = g["lr"]
    eo2.step()
    for k in range(10):
        es.step()
        es2.step()
        ts.step()
        _same(es2.get_last_lr(), ts.get_last_lr(), f"resumed step {k}")


def test_extra_scheduler_errors():
    eo, _ = _pair()
    with pytest.raises(ValueError, match="between 0 and 1"):
        sched.ConstantLR(eo, factor=1.5)
    with pytest.raises(ValueError, match="Expected positive integer T_0"):
        sched.CosineAnnealingWarmRestarts(eo, T_0=0)
    with pytest.raises(ValueError, match="Expected integer T_mult >= 1"):
        sched.CosineAnnealingWarmRestarts(eo, T_0=2, T_mult=0)
    s1 = sched.StepLR(eo, 3)
    with pytest.raises(ValueError, match="one more than the number of milestone points"):
        sched.SequentialLR(eo, [s1], milestones=[2])
    with pytest.raises(ValueError, match="does not support `ReduceLROnPlateau`"):
        sched.SequentialLR(eo, [s1, sched.ReduceLROnPlateau(eo)], milestones=[2])
    with pytest.raises(ValueError, match="same optimizer"):
        sched.SequentialLR(eo, [s1, sched.StepLR(_pair()[0], 3)], milestones=[2])
