"""Every differentiable primitive op in the registry has a float64 central-difference gradcheck.

The samples live in ``op_samples.py``; the coverage test fails as soon as an op with a backward is
registered without a sample there, so the guarantee holds as ops are added.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.ops import registry

from .op_samples import SAMPLES
from .oracle import gradcheck

_CASES = [(name, k, s) for name, samples in sorted(SAMPLES.items()) for k, s in enumerate(samples)]


def _differentiable_ops():
    return sorted(name for name, op in registry._REGISTRY.items() if op.backward is not None)


def _reached_ops(fn, arrays, grad_inputs=None):
    """Names of the ops ``fn`` applies on float64 inputs (as gradcheck calls it), from the trace hook."""
    seen = []
    ins = []
    for i, a in enumerate(np.asarray(a) for a in arrays):
        floating = a.dtype.kind == "f"
        t = ember.tensor(a.astype(np.float64) if floating else a.copy())
        differentiate = floating if grad_inputs is None else i in grad_inputs
        ins.append(t.requires_grad_(True) if differentiate else t)
    prev = registry.set_trace_hook(lambda op, inputs, attrs, outputs: seen.append(op.name))
    try:
        fn(*ins)
    finally:
        registry.set_trace_hook(prev)
    return seen


@pytest.mark.parametrize("name,k,sample", _CASES, ids=[f"{n}-{k}" for n, k, _ in _CASES])
def test_gradcheck(name, k, sample):
    reached = _reached_ops(sample.fn, sample.inputs, sample.options.get("grad_inputs"))
    assert name in reached, (
        f"sample {k} of {name!r} never applies {name!r}; it reaches {sorted(set(reached))}. "
        f"Fix the row in tests/core/op_samples.py"
    )
    gradcheck(sample.fn, sample.inputs, **{"eps": 1e-6, **sample.options})


def test_every_differentiable_op_has_a_sample():
    missing = [name for name in _differentiable_ops() if not SAMPLES.get(name)]
    assert not missing, (
        f"differentiable ops without a gradcheck sample: {', '.join(missing)}; "
        f"add a row for each to SAMPLES in tests/core/op_samples.py"
    )


def test_no_stale_samples():
    stale = sorted(set(SAMPLES) - set(registry._REGISTRY))
    assert not stale, f"SAMPLES rows for ops that are not registered: {', '.join(stale)}; remove or rename them"
    no_grad = sorted(name for name in SAMPLES if registry._REGISTRY[name].backward is None)
    assert not no_grad, f"SAMPLES rows for ops without a backward (nothing to gradcheck): {', '.join(no_grad)}"
