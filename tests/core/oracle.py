"""Independent references for op tests: PyTorch (forward and gradients) and float64 central differences.

``check_against_torch(ember_fn, torch_fn, arrays)`` runs the same numpy inputs through both
libraries, compares the forward outputs, then the gradients of a scalar loss ``sum(out * w)`` with
a fixed random weight ``w`` (so every output element matters, with distinct weights).
"""
from __future__ import annotations

import numpy as np
import torch

import ember

FWD_ATOL, FWD_RTOL = 1e-5, 1e-4
GRAD_ATOL, GRAD_RTOL = 1e-4, 1e-3


def _to_ember(a, requires_grad):
    t = ember.tensor(np.array(a, copy=True), dtype=ember.dtypes.from_numpy_dtype(np.asarray(a).dtype))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _outs(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_against_torch(ember_fn, torch_fn, arrays, grad=True, atol=FWD_ATOL, rtol=FWD_RTOL,
                        grad_atol=GRAD_ATOL, grad_rtol=GRAD_RTOL, grad_inputs=None, seed=0):
    """Compare forward (and gradients w.r.t. floating inputs) of ``ember_fn`` and ``torch_fn``.

    ``arrays``: numpy arrays passed positionally to both functions (as ember / torch tensors).
    ``grad_inputs``: indices of inputs to differentiate (default: all floating inputs).
    """
    arrays = [np.asarray(a) for a in arrays]
    if grad_inputs is None:
        grad_inputs = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"] if grad else []
    e_in = [_to_ember(a, i in grad_inputs) for i, a in enumerate(arrays)]
    t_in = [torch.tensor(np.array(a, copy=True), requires_grad=(i in grad_inputs)) for i, a in enumerate(arrays)]
    e_out = _outs(ember_fn(*e_in))
    t_out = _outs(torch_fn(*t_in))
    assert len(e_out) == len(t_out), f"ember gave {len(e_out)} outputs, torch {len(t_out)}"
    for k, (eo, to) in enumerate(zip(e_out, t_out)):
        en = eo.detach().numpy()
        tn = to.detach().numpy()
        assert en.shape == tn.shape, f"output {k}: ember shape {en.shape} vs torch {tn.shape}"
        assert en.dtype == tn.dtype, f"output {k}: ember dtype {en.dtype} vs torch {tn.dtype}"
        np.testing.assert_allclose(en, tn, atol=atol, rtol=rtol, err_msg=f"forward output {k}")
    if not grad_inputs:
        return
    rng = np.random.default_rng(seed)
    e_loss, t_loss = None, None
    for eo, to in zip(e_out, t_out):
        if not to.requires_grad:
            continue
        w = rng.standard_normal(tuple(to.shape)).astype(to.detach().numpy().dtype)
        el = (eo * ember.tensor(w)).sum()
        tl = (to * torch.tensor(w)).sum()
        e_loss = el if e_loss is None else e_loss + el
        t_loss = tl if t_loss is None else t_loss + tl
    assert t_loss is not None, "no differentiable output"
    e_loss.backward()
    t_loss.backward()
    for i in grad_inputs:
        tg = t_in[i].grad
        eg = e_in[i].grad
        if tg is None:
            assert eg is None or np.all(eg.numpy() == 0), f"input {i}: torch has no grad but ember does"
            continue
        assert eg is not None, f"input {i}: ember produced no gradient"
        assert eg.shape == tuple(tg.shape), f"input {i}: grad shape {eg.shape} vs torch {tuple(tg.shape)}"
        np.testing.assert_allclose(eg.numpy(), tg.numpy(), atol=grad_atol, rtol=grad_rtol, err_msg=f"grad of input {i}")


def gradcheck(fn, arrays, eps=1e-6, atol=1e-5, rtol=1e-4, grad_inputs=None, seed=0):
    """float64 central differences vs ember's backward, for ``loss = sum(fn(*inputs) * w)``."""
    arrays = [np.asarray(a) for a in arrays]
    if grad_inputs is None:
        grad_inputs = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    rng = np.random.default_rng(seed)
    ws = None

    def loss_of(arrs, requires_grad=False):
        nonlocal ws
        ins = [_to_ember(a, requires_grad and i in grad_inputs) for i, a in enumerate(arrs)]
        outs = [o for o in _outs(fn(*ins)) if o.dtype.is_floating_point]
        if ws is None:
            ws = [rng.standard_normal(o.shape) for o in outs]
        total = None
        for o, w in zip(outs, ws):
            term = (o * ember.tensor(w, dtype=ember.float64)).sum()
            total = term if total is None else total + term
        return total, ins

    loss, ins = loss_of(arrays, requires_grad=True)
    loss.backward()
    for i in grad_inputs:
        analytic = ins[i].grad.numpy() if ins[i].grad is not None else np.zeros_like(arrays[i])
        numeric = np.zeros_like(arrays[i])
        flat = numeric.reshape(-1)
        for j in range(arrays[i].size):
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[i].reshape(-1)[j] += eps
            minus[i].reshape(-1)[j] -= eps
            with ember.no_grad():
                lp = loss_of(plus)[0].item()
                lm = loss_of(minus)[0].item()
            flat[j] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, atol=atol, rtol=rtol, err_msg=f"gradcheck of input {i}")
