"""``ember.nn.functional``: the stateless layer functions under torch.nn.functional's names.

The ops themselves live in ``ember/ops`` (one file per family); this module re-exports them and
adds the thin argument conventions torch's functional API has on top (``inplace=``, the legacy
softmax dim, ``dtype=``).
"""
from __future__ import annotations

import warnings

from ..ops import elementwise as E
from ..ops.conv import conv2d  # noqa: F401
from ..ops.elementwise import gelu, sigmoid, tanh  # noqa: F401
from ..ops.elementwise import leaky_relu as _leaky_relu, relu as _relu, silu as _silu
from ..ops.gather import one_hot  # noqa: F401
from ..ops.join import pad  # noqa: F401
from ..ops.linalg import linear  # noqa: F401
from ..ops.linalg import norm as _norm
from ..ops.loss import (  # noqa: F401
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss, kl_div, l1_loss, mse_loss,
    nll_loss, smooth_l1_loss,
)
from ..ops.nn_misc import dropout, embedding  # noqa: F401
from ..ops.norm import batch_norm, group_norm, layer_norm  # noqa: F401
from ..ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d  # noqa: F401
from ..ops.reduce import log_softmax as _log_softmax, logsumexp, softmax as _softmax  # noqa: F401
from ..ops.util import broadcast_shapes, norm_dim


def _in_place(input, fn, method):
    """Apply ``fn`` to ``input`` in place: the tensor's own ``method`` when it has one, otherwise
    through the tensor in-place protocol (so autograd sees the overwrite as torch does)."""
    bound = getattr(input, method, None)
    if bound is not None:
        return bound()
    return input._inplace(fn)


def relu(input, inplace=False):
    """max(x, 0); ``inplace=True`` overwrites ``input``."""
    return _in_place(input, _relu, "relu_") if inplace else _relu(input)


def relu_(input):
    return relu(input, inplace=True)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    if inplace:
        return input._inplace(lambda src: _leaky_relu(src, negative_slope))
    return _leaky_relu(input, negative_slope)


def silu(input, inplace=False):
    """x * sigmoid(x)."""
    return _in_place(input, _silu, "silu_") if inplace else _silu(input)


def _softmax_dim(name, ndim):
    """torch's implicit-dim rule for softmax(dim=None), kept for old code: 0 for 0-D/1-D/3-D inputs, else 1."""
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_args(name, input, dim, dtype):
    """torch's shared prologue: the legacy implicit dim, then the optional cast."""
    if dim is None:
        dim = _softmax_dim(name, input.ndim)
    return (input if dtype is None else input.to(dtype)), dim


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim``; ``dtype`` casts the input first (e.g. to float64)."""
    return _softmax(*_softmax_args("softmax", input, dim, dtype))


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """log(softmax(x)) along ``dim``, computed stably."""
    return _log_softmax(*_softmax_args("log_softmax", input, dim, dtype))


def softmin(input, dim=None, _stacklevel=3, dtype=None):
    """softmax(-x) along ``dim``."""
    input, dim = _softmax_args("softmin", input, dim, dtype)
    return _softmax(-input, dim)


# ---- activations composed from elementwise ops --------------------------------------------------------
# Each runs the unused branch of a where() on a clamped input, so it cannot overflow to inf and turn the
# zero gradient of the unselected side into NaN (0 * inf).

def _maybe_inplace(input, inplace, fn):
    return input._inplace(fn) if inplace else fn(input)


def elu(input, alpha=1.0, inplace=False):
    """x if x > 0 else alpha * (exp(x) - 1)."""
    def fn(x):
        return E.where(x > 0, x, E.expm1(E.clamp(x, max=0.0)) * alpha)

    return _maybe_inplace(input, inplace, fn)


def softplus(input, beta=1.0, threshold=20.0):
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold (as torch, for stability)."""
    bx = input * beta
    return E.where(bx > threshold, input, E.log1p(E.exp(E.clamp(bx, max=float(threshold)))) / beta)


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """clamp(x, min_val, max_val); the gradient is 0 at the bounds themselves, as torch's hardtanh."""
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) cannot be greater than max_val ({max_val})")

    def fn(x):
        # clamp's own gradient includes the bounds; torch's hardtanh excludes them
        inside = E.logical_and(x > min_val, x < max_val)
        return E.where(inside, x, E.clamp(x.detach(), float(min_val), float(max_val)))

    return _maybe_inplace(input, inplace, fn)


def relu6(input, inplace=False):
    """min(max(x, 0), 6): hardtanh(x, 0, 6)."""
    return hardtanh(input, 0.0, 6.0, inplace)


def logsigmoid(input):
    """log(sigmoid(x)), stable on both sides: -log1p(exp(-x)) for x >= 0, x - log1p(exp(x)) below."""
    pos = E.clamp(input, min=0.0)
    neg = E.clamp(input, max=0.0)
    return E.where(input >= 0, -E.log1p(E.exp(-pos)), neg - E.log1p(E.exp(neg)))


def mish(input, inplace=False):
    """x * tanh(softplus(x))."""
    return _maybe_inplace(input, inplace, lambda x: x * E.tanh(softplus(x)))


def hardswish(input, inplace=False):
    """x * relu6(x + 3) / 6, with torch's gradient at the kinks (0 at x = -3, 1 at x = 3)."""
    def fn(x):
        return E.where(x <= -3.0, 0.0, E.where(x < 3.0, x * (x + 3.0) / 6.0, x))

    return _maybe_inplace(input, inplace, fn)


# ---- normalize, cosine_similarity --------------------------------------------------------------------

def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):
    """x / max(||x||_p along dim, eps): unit vectors along ``dim``."""
    if out is not None:
        raise NotImplementedError("normalize: out= is not supported in ember; use the returned tensor")
    denom = _norm(input, p, dim, keepdim=True).clamp_min(eps)
    return input / denom


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """sum(x1 * x2) / (max(||x1||, eps) * max(||x2||, eps)) along ``dim``, after broadcasting x1 and x2."""
    shape = broadcast_shapes("cosine_similarity", x1.shape, x2.shape)
    x1, x2 = x1.expand(shape), x2.expand(shape)
    if not x1.dtype.is_floating_point:
        x1, x2 = x1.float(), x2.float()
    d = norm_dim(dim, len(shape), "cosine_similarity")
    n1 = _norm(x1, 2.0, d, keepdim=True).clamp_min(eps)
    n2 = _norm(x2, 2.0, d, keepdim=True).clamp_min(eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim=d)
