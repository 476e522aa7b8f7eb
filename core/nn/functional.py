"""``ember.nn.functional``: the stateless layer functions under torch.nn.functional's names.

The ops themselves live in ``ember/ops`` (one file per family); this module re-exports them and
adds the thin argument conventions torch's functional API has on top (``inplace=``, the legacy
softmax dim, ``dtype=``).
"""
from __future__ import annotations

import warnings

from ..ops.conv import conv2d  # noqa: F401
from ..ops.elementwise import gelu, sigmoid, tanh  # noqa: F401
from ..ops.elementwise import leaky_relu as _leaky_relu, relu as _relu, silu as _silu
from ..ops.gather import one_hot  # noqa: F401
from ..ops.join import pad  # noqa: F401
from ..ops.linalg import linear  # noqa: F401
from ..ops.loss import (  # noqa: F401
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss, kl_div, l1_loss, mse_loss,
    nll_loss, smooth_l1_loss,
)
from ..ops.nn_misc import dropout, embedding  # noqa: F401
from ..ops.norm import batch_norm, group_norm, layer_norm  # noqa: F401
from ..ops.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d  # noqa: F401
from ..ops.reduce import log_softmax as _log_softmax, logsumexp, softmax as _softmax  # noqa: F401


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


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """exp(x) / sum(exp(x)) along ``dim``; ``dtype`` casts the input first (e.g. to float64)."""
    if dim is None:
        dim = _softmax_dim("softmax", input.ndim)
    if dtype is not None:
        input = input.to(dtype)
    return _softmax(input, dim)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """log(softmax(x)) along ``dim``, computed stably."""
    if dim is None:
        dim = _softmax_dim("log_softmax", input.ndim)
    if dtype is not None:
        input = input.to(dtype)
    return _log_softmax(input, dim)


def softmin(input, dim=None, _stacklevel=3, dtype=None):
    """softmax(-x) along ``dim``."""
    if dim is None:
        dim = _softmax_dim("softmin", input.ndim)
    if dtype is not None:
        input = input.to(dtype)
    return _softmax(-input, dim)
