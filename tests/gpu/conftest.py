"""The CUDA backend's tests. They run where a CUDA device answers: on a real GPU, or on numba's CUDA
simulator, which must be switched on (``NUMBA_ENABLE_CUDASIM=1``) before numba is first imported, so
the main suite runs this folder in a separate process (``tests/test_cuda_simulator.py``). Where
neither is possible the folder is skipped with the reason.

Shapes stay tiny: the simulator runs one Python thread per CUDA thread."""
import numpy as np
import pytest

import ember


def pytest_collection_modifyitems(config, items):
    if ember.cuda.is_available():
        return
    from ember.cuda import _probe

    skip = pytest.mark.skip(reason=f"no CUDA device or simulator in this process ({_probe()}); "
                                   f"tests/test_cuda_simulator.py runs these under NUMBA_ENABLE_CUDASIM=1")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


def same(cpu, gpu, rtol=1e-5, atol=1e-6):
    """Assert a CUDA tensor (or tuple of them) equals the CPU backend's result: values, shape, dtype."""
    if isinstance(cpu, (tuple, list)):
        assert len(cpu) == len(gpu)
        for c, g in zip(cpu, gpu):
            same(c, g, rtol, atol)
        return
    if cpu is None:
        assert gpu is None
        return
    assert gpu.is_cuda, f"result is on {gpu.device}, expected cuda"
    assert gpu.shape == cpu.shape, f"shape {gpu.shape} != {cpu.shape}"
    assert gpu.dtype == cpu.dtype, f"dtype {gpu.dtype} != {cpu.dtype}"
    a, b = cpu.detach().numpy(), gpu.detach().cpu().numpy()
    if a.dtype.kind in "biu":
        np.testing.assert_array_equal(b, a)
    else:
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, equal_nan=True)


def grads_match(fn, *inputs, rtol=1e-4, atol=1e-5, grad=None):
    """Run ``fn`` on CPU copies and CUDA copies of ``inputs`` (float ones require grad), compare the outputs
    and the input gradients of a backward pass seeded with ``grad`` (default: a fixed random tensor)."""
    cpu_in = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    gpu_in = [x.detach().cuda().requires_grad_(x.is_floating_point()) for x in inputs]
    out_c, out_g = fn(*cpu_in), fn(*gpu_in)
    same(out_c, out_g, rtol, atol)
    if not out_c.requires_grad:
        return
    seed = grad if grad is not None else ember.from_numpy(
        np.random.default_rng(0).standard_normal(out_c.shape).astype(out_c.dtype.np))
    out_c.backward(seed)
    out_g.backward(seed.cuda())
    for c, g in zip(cpu_in, gpu_in):
        if c.requires_grad:
            assert g.grad is not None and g.grad.is_cuda
            same(c.grad, g.grad, rtol, atol)
