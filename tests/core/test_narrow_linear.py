"""The dot-product kernel of layers with few outputs (backends/cpu/narrow_linear.py, the runtime's prepared
``linear`` for at most MAX_OUTPUTS outputs) against torch in float64."""
import numpy as np
import pytest
import torch

from ember.backends.cpu import narrow_linear
from ember.ops.linalg import GEMV_ROWS
from ember.ops.registry import get_op

rng = np.random.default_rng(21)
pytestmark = pytest.mark.skipif(narrow_linear.kernels(10) is None, reason="no AVX-512 or LLVM here: BLAS runs these")


def _want(x, w, b):
    return torch.nn.functional.linear(*(torch.from_numpy(a).double() for a in (x, w, b))).numpy()


@pytest.mark.parametrize("rows", [1, 2, 5, 64])
@pytest.mark.parametrize("n", [1, 3, 10, narrow_linear.MAX_OUTPUTS])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 1568])
def test_matches_torch(rows, n, k):
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    got = narrow_linear.PreparedNarrow(w, b)(x)
    assert got.dtype == np.float32 and got.shape == (rows, n)
    np.testing.assert_allclose(got, _want(x, w, b), atol=1e-5 * np.sqrt(k), rtol=1e-5)


def test_rows_split_over_threads_and_strided_input():
    """A batch big enough for the threads (PAR_MIN_MACS), taken from a strided view, and no bias."""
    x = rng.standard_normal((1200, 2 * 1568)).astype(np.float32)[:, ::2]
    w = rng.standard_normal((10, 1568)).astype(np.float32)
    assert x.size * 10 >= narrow_linear.PAR_MIN_MACS
    got = narrow_linear.PreparedNarrow(w, None)(x)
    np.testing.assert_allclose(got, _want(np.ascontiguousarray(x), w, np.zeros(10, np.float32)), atol=2e-4, rtol=1e-5)


def test_nan_and_inf_stay_in_their_rows():
    x = rng.standard_normal((6, 40)).astype(np.float32)
    x[1, 39], x[4, 0] = np.nan, np.inf
    w = np.abs(rng.standard_normal((3, 40))).astype(np.float32)
    got = narrow_linear.PreparedNarrow(w, np.zeros(3, np.float32))(x)
    assert np.isnan(got[1]).all() and np.isposinf(got[4]).all()
    np.testing.assert_allclose(got[[0, 2, 3, 5]], (x @ w.T)[[0, 2, 3, 5]], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, GEMV_ROWS, 33])
def test_prepared_linear_takes_it(rows):
    """The runtime's prepared linear of a 10-output layer: the narrow kernel from GEMV_ROWS rows, GEMV below; the
    same values either way (and the plain kernel's)."""
    w = rng.standard_normal((10, 300)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    run = get_op("linear").prepared["cpu"]([None, w, b], {})
    x = rng.standard_normal((rows, 300)).astype(np.float32)
    np.testing.assert_allclose(run(x), _want(x, w, b), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(run(x), get_op("linear").kernels["cpu"](x, w, b), atol=1e-4, rtol=1e-5)
    assert any(isinstance(c.cell_contents, narrow_linear.PreparedNarrow) for c in run.__closure__)


def test_more_outputs_keep_blas():
    assert narrow_linear.MAX_OUTPUTS < 13
    w = rng.standard_normal((13, 30)).astype(np.float32)
    run = get_op("linear").prepared["cpu"]([None, w], {})
    assert run is not None and not any(isinstance(c.cell_contents, narrow_linear.PreparedNarrow) for c in run.__closure__)
    x = rng.standard_normal((8, 30)).astype(np.float32)
    np.testing.assert_allclose(run(x), x.astype(np.float64) @ w.T.astype(np.float64), atol=1e-4, rtol=1e-5)
