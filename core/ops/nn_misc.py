"""Dropout and embedding: two ops whose backward reuses what the forward decided (the dropout mask,
the gathered row indices). Their small numba kernels sit here, next to the ops they serve.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .. import random as _random
from ..autograd.grad_mode import no_grad
from ..backends.cpu.jit import njit, prange_kernel
from .registry import apply, backward, kernel, register_op
from .util import same_shape

# ---- dropout -------------------------------------------------------------------------------------------


@prange_kernel()
def _dropout_fwd_f32(x, u, p, scale, y, mask):
    for i in prange(x.shape[0]):
        keep = u[i] >= p
        mask[i] = keep
        # multiply (not select) so a dropped inf/nan still gives nan, as torch's x * mask
        y[i] = x[i] * (scale if keep else np.float32(0.0))


@prange_kernel()
def _masked_scale_f32(g, mask, scale, out):
    for i in prange(g.shape[0]):
        out[i] = g[i] * (scale if mask[i] else np.float32(0.0))


_dropout = register_op(
    "dropout", attrs={"p": 0.5}, n_outputs=2, shape=lambda x, **_: (x, x), save_inputs=False, save_outputs=True,
    doc="inverted dropout: outputs (x * keep / (1 - p), keep mask); the mask comes from ember's global generator",
)
_dropout_bwd = register_op("dropout_backward", attrs={"p": 0.5}, shape=same_shape,
                           doc="grad * mask / (1 - p): inputs (grad, mask)")


@kernel("dropout")
def _dropout_cpu(x, p):
    if p >= 1.0:
        return np.zeros_like(x), np.zeros(x.shape, np.bool_)
    u = _random.default_generator().random(x.shape, dtype=np.float32)
    if x.dtype == np.float32:
        xc = np.ascontiguousarray(x).reshape(-1)
        y = np.empty_like(xc)
        mask = np.empty(xc.shape, np.bool_)
        _dropout_fwd_f32(xc.size, xc, u.reshape(-1), np.float32(p), np.float32(1.0 / (1.0 - p)), y, mask)
        return y.reshape(x.shape), mask.reshape(x.shape)
    mask = u >= np.float32(p)
    return (x * mask * x.dtype.type(1.0 / (1.0 - p))).astype(x.dtype, copy=False), mask


@backward("dropout")
def _dropout_bw(ctx, g, g_mask):
    if g is None:
        return (None,)
    return (apply(_dropout_bwd, g, ctx.outputs[1], p=ctx.attrs["p"]),)


@kernel("dropout_backward")
def _dropout_bwd_cpu(g, mask, p):
    if p >= 1.0:
        return np.zeros_like(g)
    scale = 1.0 / (1.0 - p)
    if g.dtype == np.float32:
        gc = np.ascontiguousarray(g).reshape(-1)
        out = np.empty_like(gc)
        _masked_scale_f32(gc.size, gc, np.ascontiguousarray(mask).reshape(-1), np.float32(scale), out)
        return out.reshape(g.shape)
    return (g * mask * g.dtype.type(scale)).astype(g.dtype, copy=False)


def dropout(input, p=0.5, training=True, inplace=False):
    """torch.nn.functional.dropout: zero each element with probability p, scale the rest by 1/(1-p).
    Seed with ember.manual_seed for a reproducible mask."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if not input.is_floating_point():
        raise TypeError(f"dropout: expected a floating point input, got {input.dtype}")
    if inplace:
        return input._inplace(lambda src: apply(_dropout, src, p=float(p))[0])
    return apply(_dropout, input, p=float(p))[0]


# ---- embedding -----------------------------------------------------------------------------------------


@njit
def _index_range(idx, n):
    """Position of the first index outside [0, n), or -1."""
    for i in range(idx.shape[0]):
        if idx[i] < 0 or idx[i] >= n:
            return i
    return -1


@njit
def _scatter_rows_f32(g, idx, out):
    """out[idx[i]] += g[i] row by row (serial: two rows may share an index)."""
    for i in range(idx.shape[0]):
        r = idx[i]
        for k in range(g.shape[1]):
            out[r, k] += g[i, k]


def _check_indices(flat, n):
    bad = _index_range(flat, n)
    if bad >= 0:
        raise IndexError(
            f"embedding: index {int(flat[bad])} is out of range for num_embeddings={n} "
            f"(valid indices are 0..{n - 1})"
        )


def _embedding_rule(w, idx, **attrs):
    if len(w) != 2:
        raise RuntimeError(f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(w)}")
    return tuple(idx) + (w[1],)


_embedding = register_op(
    "embedding", attrs={"padding_idx": -1, "scale_grad_by_freq": False}, shape=_embedding_rule,
    doc="gather rows: inputs (weight (num_embeddings, dim), indices int) -> indices.shape + (dim,)",
)
_embedding_bwd = register_op(
    "embedding_backward", attrs={"num_embeddings": 0, "padding_idx": -1, "scale_grad_by_freq": False},
    shape=lambda g, idx, num_embeddings, **_: (num_embeddings, g[-1]),
    doc="scatter-add of the output gradient into weight rows: inputs (grad, indices)",
)


def _flat_indices(idx):
    return np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)


@kernel("embedding")
def _embedding_cpu(w, idx, padding_idx, scale_grad_by_freq):
    flat = _flat_indices(idx)
    _check_indices(flat, w.shape[0])
    return np.take(w, flat, axis=0).reshape(idx.shape + (w.shape[1],))


@backward("embedding")
def _embedding_bw(ctx, g):
    if not ctx.needs_input_grad[0]:
        return None, None
    _, idx = ctx.inputs
    gw = apply(_embedding_bwd, g, idx, num_embeddings=ctx.input_shapes[0][0], padding_idx=ctx.attrs["padding_idx"],
               scale_grad_by_freq=ctx.attrs["scale_grad_by_freq"])
    return gw, None


@kernel("embedding_backward")
def _embedding_bwd_cpu(g, idx, num_embeddings, padding_idx, scale_grad_by_freq):
    flat = _flat_indices(idx)
    g2 = np.ascontiguousarray(g).reshape(flat.size, -1)
    if scale_grad_by_freq:
        counts = np.bincount(flat, minlength=num_embeddings)
        g2 = g2 / counts[flat][:, None].astype(g2.dtype)
    out = np.zeros((num_embeddings, g2.shape[1]), g.dtype)
    if g.dtype == np.float32:
        _scatter_rows_f32(np.ascontiguousarray(g2, dtype=np.float32), flat, out)
    else:
        np.add.at(out, flat, g2)
    if padding_idx >= 0:
        out[padding_idx] = 0
    return out


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """torch.nn.functional.embedding: rows of ``weight`` picked by the integer ``input``; the
    ``padding_idx`` row gets no gradient; ``max_norm`` renormalises the picked rows in place first."""
    if input.is_floating_point():
        raise TypeError(f"embedding: indices must be an integer tensor, got {input.dtype}")
    if weight.ndim != 2:
        raise RuntimeError(
            f"embedding: weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}"
        )
    if sparse:
        raise NotImplementedError("embedding: sparse gradients are not supported yet; use sparse=False")
    n = weight.shape[0]
    if padding_idx is None:
        padding_idx = -1
    else:
        if not -n <= padding_idx < n:
            raise ValueError(f"embedding: padding_idx {padding_idx} must be within num_embeddings={n}")
        padding_idx = int(padding_idx) % n
    if max_norm is not None:
        _renorm_rows_(weight, input, float(max_norm), float(norm_type))
    return apply(_embedding, weight, input, padding_idx=padding_idx, scale_grad_by_freq=bool(scale_grad_by_freq))


def _renorm_rows_(weight, input, max_norm, norm_type):
    """torch's embedding_renorm_: rows referenced by ``input`` with norm > max_norm are scaled down
    in place to norm max_norm (outside autograd, as torch)."""
    flat = _flat_indices(input._data)
    _check_indices(flat, weight.shape[0])
    rows = np.unique(flat)
    w = weight._data
    with no_grad():
        norms = np.linalg.norm(w[rows].astype(np.float64), ord=norm_type, axis=1)
        over = norms > max_norm
        if over.any():
            scale = max_norm / (norms[over] + 1e-7)
            w[rows[over]] = (w[rows[over]] * scale[:, None]).astype(w.dtype)
            weight._bump_version()


__all__ = []
