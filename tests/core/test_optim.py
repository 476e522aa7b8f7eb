"""ember.optim against torch.optim: same parameters, same hand-set gradients, step both, compare weights."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import ember
from ember import optim
from ember.backends.cpu import optim_kernels
from ember.nn.parameter import Parameter

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 20
ATOL = RTOL = 1e-5


def _problem(dtype=np.float32, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return init, grads


def _params(init):
    e = [ember.tensor(a.copy(), requires_grad=True) for a in init]
    t = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    return e, t


def _groups(params, spec):
    """``spec``: None (one plain list) or a list of dicts whose 'params' are indices into ``params``."""
    if spec is None:
        return params
    return [dict(g, params=[params[i] for i in g["params"]]) for g in spec]


def _set_grads(e_params, t_params, grads, step):
    for i, (p, q, g) in enumerate(zip(e_params, t_params, grads)):
        if i == 1 and step in (3, 7):  # a parameter without a gradient is skipped (state untouched)
            p.grad, q.grad = None, None
            continue
        p.grad = ember.tensor(g)
        q.grad = torch.tensor(g)


def _assert_close(e_params, t_params, what, atol=ATOL, rtol=RTOL):
    for i, (p, q) in enumerate(zip(e_params, t_params)):
        np.testing.assert_allclose(p._data, q.detach().numpy(), atol=atol, rtol=rtol, err_msg=f"{what}: param {i}")


def _run_against_torch(e_cls, t_cls, kwargs, spec=None, dtype=np.float32, steps=STEPS):
    init, grads = _problem(dtype, steps=steps)
    e_params, t_params = _params(init)
    e_opt = e_cls(_groups(e_params, spec), **kwargs)
    t_opt = t_cls(_groups(t_params, spec), **kwargs)
    for k in range(steps):
        _set_grads(e_params, t_params, grads[k], k)
        e_opt.step()
        t_opt.step()
        _assert_close(e_params, t_params, f"{e_cls.__name__}({kwargs}) step {k}")
    return e_opt, t_opt


def _compare_state(e_opt, t_opt):
    """The optimizer state (buffers and step counts) matches torch's, key by key."""
    es, ts = e_opt.state_dict()["state"], t_opt.state_dict()["state"]
    assert sorted(es) == sorted(ts)
    for idx in ts:
        assert sorted(es[idx]) == sorted(ts[idx]), f"state keys of param {idx}"
        for key, tv in ts[idx].items():
            ev = es[idx][key]
            np.testing.assert_allclose(ev._data, tv.numpy(), atol=ATOL, rtol=RTOL, err_msg=f"state {idx}/{key}")


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.5),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, weight_decay=0.1),
    dict(lr=0.05, weight_decay=0.1, maximize=True),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True),
]
ADAM_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.01, maximize=True),
    dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6),
    dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True),
]
ADAMW_CASES = [dict(lr=0.01), dict(lr=0.01, weight_decay=0.2, amsgrad=True), dict(lr=0.01, maximize=True)]
RMSPROP_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, momentum=0.9),
    dict(lr=0.01, centered=True),
    dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1),
    dict(lr=0.01, alpha=0.9, eps=1e-6, maximize=True),
]

ALL_CASES = (
    [(optim.SGD, torch.optim.SGD, kw) for kw in SGD_CASES]
    + [(optim.Adam, torch.optim.Adam, kw) for kw in ADAM_CASES]
    + [(optim.AdamW, torch.optim.AdamW, kw) for kw in ADAMW_CASES]
    + [(optim.RMSprop, torch.optim.RMSprop, kw) for kw in RMSPROP_CASES]
)


@pytest.mark.parametrize("e_cls,t_cls,kwargs", ALL_CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_matches_torch(e_cls, t_cls, kwargs):
    e_opt, t_opt = _run_against_torch(e_cls, t_cls, kwargs)
    _compare_state(e_opt, t_opt)


GROUP_CASES = [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9),
     [{"params": [0, 1]}, {"params": [2], "lr": 0.01, "momentum": 0.5, "nesterov": True}]),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01),
     [{"params": [0]}, {"params": [2, 1], "lr": 0.05, "betas": (0.5, 0.9), "amsgrad": True}]),
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.01),
     [{"params": [1]}, {"params": [0, 2], "lr": 0.003, "weight_decay": 0.5}]),
    (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01),
     [{"params": [0, 2], "centered": True}, {"params": [1], "lr": 0.001, "momentum": 0.9}]),
]


@pytest.mark.parametrize("e_cls,t_cls,kwargs,spec", GROUP_CASES, ids=lambda x: getattr(x, "__name__", None))
def test_param_groups_match_torch(e_cls, t_cls, kwargs, spec):
    _run_against_torch(e_cls, t_cls, kwargs, spec=spec)


@pytest.mark.parametrize("e_cls,t_cls,kwargs", [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (optim.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.9)),
], ids=lambda x: getattr(x, "__name__", None))
def test_float64_matches_torch(e_cls, t_cls, kwargs):
    e_opt, _ = _run_against_torch(e_cls, t_cls, kwargs, dtype=np.float64)
    p = e_opt.param_groups[0]["params"][0]
    assert p._data.dtype == np.float64
    for st in e_opt.state.values():
        for k, v in st.items():
            assert v._data.dtype == (np.float32 if k == "step" else np.float64)


@pytest.mark.parametrize("threshold", [0, 1 << 62], ids=["parallel", "serial"])
def test_parallel_and_serial_kernels_match_torch(monkeypatch, threshold):
    """Both compiled copies of each kernel (prange-parallel and serial) give torch's result."""
    for k in (optim_kernels.sgd_update, optim_kernels.adam_update, optim_kernels.rmsprop_update):
        monkeypatch.setattr(k, "threshold", threshold)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((30, 20)).astype(np.float32)
    for e_cls, t_cls, kw in [(optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
                             (optim.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
                             (optim.RMSprop, torch.optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.5))]:
        p, q = ember.tensor(a.copy(), requires_grad=True), torch.tensor(a.copy(), requires_grad=True)
        eo, to = e_cls([p], **kw), t_cls([q], **kw)
        for _ in range(3):
            g = rng.standard_normal(a.shape).astype(np.float32)
            p.grad, q.grad = ember.tensor(g), torch.tensor(g)
            eo.step()
            to.step()
        _assert_close([p], [q], e_cls.__name__)


def test_noncontiguous_param_and_grad():
    """A transposed parameter and a broadcast gradient are updated in place like torch's."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4, 3)).astype(np.float32)
    p = Parameter(base.copy().T)  # shares a non-C-contiguous array
    assert not p._data.flags.c_contiguous
    buffer_before = p._data
    q = torch.tensor(base.copy().T, requires_grad=True)
    eo, to = optim.Adam([p], lr=0.05), torch.optim.Adam([q], lr=0.05)
    row = rng.standard_normal((1, 4)).astype(np.float32)
    for _ in range(5):
        p.grad = ember.from_numpy(np.broadcast_to(row, (3, 4)))
        q.grad = torch.tensor(np.broadcast_to(row, (3, 4)).copy())
        eo.step()
        to.step()
    assert p._data is buffer_before
    _assert_close([p], [q], "non-contiguous")


def test_float16_param_goes_through_float32():
    init = np.linspace(-1, 1, 6, dtype=np.float16)
    p = ember.tensor(init.copy(), dtype=ember.float16, requires_grad=True)
    ref = ember.tensor(init.astype(np.float32), requires_grad=True)
    eo, ro = optim.SGD([p], lr=0.1, momentum=0.9), optim.SGD([ref], lr=0.1, momentum=0.9)
    for k in range(3):
        g = np.full(6, 0.5 + k, np.float32)
        p.grad, ref.grad = ember.tensor(g.astype(np.float16), dtype=ember.float16), ember.tensor(g)
        eo.step()
        ro.step()
    assert p._data.dtype == np.float16
    assert eo.state[p]["momentum_buffer"]._data.dtype == np.float16
    np.testing.assert_allclose(p._data.astype(np.float32), ref._data, atol=1e-2)


def test_step_bumps_version_and_skips_params_without_grad():
    a, b = ember.tensor([1.0, 2.0], requires_grad=True), ember.tensor([3.0], requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = ember.tensor([1.0, 1.0])
    v_a, v_b = a._version, b._version
    opt.step()
    assert a._version == v_a + 1 and b._version == v_b
    assert b not in opt.state and float(opt.state[a]["step"]) == 1.0
    np.testing.assert_array_equal(b._data, [3.0])


def test_closure_is_evaluated_with_grad_enabled():
    w0 = np.array([[0.5, -1.0], [2.0, 0.3]], np.float32)
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], np.float32)
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    w, tw = ember.tensor(w0.copy(), requires_grad=True), torch.tensor(w0.copy(), requires_grad=True)
    eo, to = optim.SGD([w], lr=0.05, momentum=0.9), torch.optim.SGD([tw], lr=0.05, momentum=0.9)

    def e_closure():
        eo.zero_grad()
        loss = ((ember.tensor(x) @ w - ember.tensor(y)) ** 2).mean()
        loss.backward()
        return loss

    def t_closure():
        to.zero_grad()
        loss = ((torch.tensor(x) @ tw - torch.tensor(y)) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(10):
        with ember.no_grad():
            el = eo.step(e_closure)
        tl = to.step(t_closure)
        assert abs(float(el) - float(tl.detach())) < 1e-5
    _assert_close([w], [tw], "closure")


def test_zero_grad():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([a], lr=0.1)
    a.grad = ember.tensor([3.0, 4.0])
    g = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is g
    np.testing.assert_array_equal(a.grad._data, [0.0, 0.0])
    a.grad = ember.from_numpy(np.broadcast_to(np.float32(1.0), (2,)))  # read-only view
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad._data, [0.0, 0.0])
    opt.zero_grad()
    assert a.grad is None


# ---- state dicts -------------------------------------------------------------------------------
ROUND_TRIP_CASES = [
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.9)),
]


@pytest.mark.parametrize("cls,kwargs", ROUND_TRIP_CASES, ids=lambda x: getattr(x, "__name__", None))
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    init, grads = _problem(steps=20)
    straight = [ember.tensor(a.copy(), requires_grad=True) for a in init]
    opt = cls(_groups(straight, [{"params": [0, 1]}, {"params": [2], "lr": 0.002}]), **kwargs)
    first = [ember.tensor(a.copy(), requires_grad=True) for a in init]
    opt_first = cls(_groups(first, [{"params": [0, 1]}, {"params": [2], "lr": 0.002}]), **kwargs)
    for k in range(10):
        for p, q, g in zip(straight, first, grads[k]):
            p.grad, q.grad = ember.tensor(g), ember.tensor(g)
        opt.step()
        opt_first.step()
    saved = copy.deepcopy(opt_first.state_dict())
    snapshot = copy.deepcopy(saved)
    resumed = [ember.tensor(p._data.copy(), requires_grad=True) for p in first]
    opt_resumed = cls(_groups(resumed, [{"params": [0, 1]}, {"params": [2]}]), **kwargs)
    opt_resumed.load_state_dict(saved)
    assert opt_resumed.param_groups[1]["lr"] == 0.002
    for k in range(10, 20):
        for p, q, g in zip(straight, resumed, grads[k]):
            p.grad, q.grad = ember.tensor(g), ember.tensor(g)
        opt.step()
        opt_resumed.step()
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p._data, q._data)
    # loading copied the buffers: stepping did not write into the saved dict
    for idx, entry in saved["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(value._data, snapshot["state"][idx][key]._data)


def test_state_dict_format_matches_torch():
    init, grads = _problem(steps=3)
    e_params, t_params = _params(init)
    spec = [{"params": [0, 1]}, {"params": [2], "lr": 0.5}]
    eo, to = optim.Adam(_groups(e_params, spec), lr=0.01), torch.optim.Adam(_groups(t_params, spec), lr=0.01)
    for k in range(3):
        _set_grads(e_params, t_params, grads[k], 0)
        eo.step()
        to.step()
    es, ts = eo.state_dict(), to.state_dict()
    assert [g["params"] for g in es["param_groups"]] == [g["params"] for g in ts["param_groups"]] == [[0, 1], [2]]
    for eg, tg in zip(es["param_groups"], ts["param_groups"]):
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert eg[key] == tg[key]
    assert es["state"][0]["step"]._data.dtype == np.float32 and es["state"][0]["step"].ndim == 0
    _compare_state(eo, to)


def test_load_state_dict_from_json_like_checkpoint():
    """Checkpoints keep nesting as JSON: string state keys, lists for tuples, numpy arrays, numbers."""
    init, grads = _problem(steps=4)
    a = [ember.tensor(x.copy(), requires_grad=True) for x in init]
    opt = optim.Adam(a, lr=0.01, betas=(0.8, 0.9))
    for k in range(2):
        for p, g in zip(a, grads[k]):
            p.grad = ember.tensor(g)
        opt.step()
    sd = opt.state_dict()
    groups = json.loads(json.dumps([{k: v for k, v in g.items()} for g in sd["param_groups"]]))
    state = {str(i): {k: (float(v) if k == "step" else np.array(v._data)) for k, v in s.items()}
             for i, s in sd["state"].items()}
    b = [ember.tensor(p._data.copy(), requires_grad=True) for p in a]
    opt2 = optim.Adam(b, lr=0.01)
    opt2.load_state_dict({"state": state, "param_groups": groups})
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)
    for k in range(2, 4):
        for p, q, g in zip(a, b, grads[k]):
            p.grad, q.grad = ember.tensor(g), ember.tensor(g)
        opt.step()
        opt2.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p._data, q._data)


def test_load_state_dict_errors():
    a, b = ember.tensor([1.0], requires_grad=True), ember.tensor([2.0, 3.0], requires_grad=True)
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = ember.tensor([1.0]), ember.tensor([1.0, 1.0])
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        optim.SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"has shape \(1,\), but the parameter has shape \(2,\)"):
        optim.SGD([b, a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


# ---- construction errors -----------------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda p: optim.SGD(p, lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda p: optim.SGD(p, momentum=-1.0), "Invalid momentum value: -1.0"),
    (lambda p: optim.SGD(p, weight_decay=-1e-2), "Invalid weight_decay value: -0.01"),
    (lambda p: optim.SGD(p, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (lambda p: optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov momentum requires"),
    (lambda p: optim.Adam(p, lr=-1.0), "Invalid learning rate: -1.0"),
    (lambda p: optim.Adam(p, eps=-1.0), "Invalid epsilon value: -1.0"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (lambda p: optim.AdamW(p, betas=(0.9, -0.1)), r"Invalid beta parameter at index 1: -0.1"),
    (lambda p: optim.RMSprop(p, alpha=-0.5), "Invalid alpha value: -0.5"),
    (lambda p: optim.RMSprop(p, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda p: optim.SGD([{"params": p}, {"params": [ember.tensor([1.0], requires_grad=True)], "lr": -2.0}]),
     "Invalid learning rate: -2.0"),
])
def test_invalid_hyper_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make([ember.tensor([1.0], requires_grad=True)])


def test_invalid_params():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="single Tensor"):
        optim.SGD(a, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        optim.SGD({a}, lr=0.1)
    with pytest.raises(ValueError, match="appears twice"):
        optim.SGD([a, a], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([a * 2.0], lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([np.zeros(2)], lr=0.1)
    opt = optim.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_add_param_group_and_named_params():
    a = ember.tensor([1.0], requires_grad=True)
    b = ember.tensor([2.0], requires_grad=True)
    opt = optim.SGD([("w", a)], lr=0.1, momentum=0.9)
    assert opt.param_groups[0]["param_names"] == ["w"]
    opt.add_param_group({"params": [("b", b)], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.9
    a.grad, b.grad = ember.tensor([1.0]), ember.tensor([1.0])
    opt.step()
    np.testing.assert_allclose(a._data, [0.9])
    np.testing.assert_allclose(b._data, [1.5])
    assert "Parameter Group 1" in repr(opt) and "lr: 0.5" in repr(opt)


def test_gradient_shape_mismatch_is_an_error():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    a.grad = ember.tensor([1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match=r"gradient has shape \(3,\) but its parameter has shape \(2,\)"):
        optim.SGD([a], lr=0.1).step()


def test_read_only_parameter_is_a_clear_error():
    arr = np.ones(3, np.float32)
    arr.flags.writeable = False
    p = Parameter(arr)
    p.grad = ember.ones(3)
    with pytest.raises(RuntimeError, match="read-only"):
        optim.SGD([p], lr=0.1).step()


def test_zero_denominator_gives_nan_like_torch():
    """eps=0 with a zero gradient divides 0 by 0: torch yields nan, it must not raise."""
    for e_cls, t_cls in [(optim.Adam, torch.optim.Adam), (optim.RMSprop, torch.optim.RMSprop)]:
        p, q = ember.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 2.0], requires_grad=True)
        p.grad, q.grad = ember.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])
        with np.errstate(divide="ignore", invalid="ignore"):  # NUMBA_DISABLE_JIT runs numpy scalars
            e_cls([p], lr=0.1, eps=0.0).step()
        t_cls([q], lr=0.1, eps=0.0).step()
        assert np.isnan(q.detach().numpy()[0])
        np.testing.assert_allclose(p._data, q.detach().numpy(), atol=ATOL, rtol=RTOL)
