"""Turning a list of samples into a batch: ``default_collate`` and ``default_convert``.

Follows ``torch.utils.data.default_collate``: tensors and numpy arrays are stacked along a new
first dimension, python numbers become 1-d tensors, strings stay lists, and mappings / namedtuples /
sequences are collated field by field (a tuple sample gives a list, as in torch). One deliberate
difference: python floats collate to float32 (ember's default float), where torch gives float64.
"""
from __future__ import annotations

import collections.abc
import copy

import numpy as np

from ..autograd.grad_mode import is_grad_enabled
from ..tensor import Tensor, from_numpy

_ERR = "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {}"


def _is_str_or_object(a: np.ndarray) -> bool:
    return a.dtype.kind in "USOV"


def _stack_tensors(batch):
    first = batch[0].shape
    for k, t in enumerate(batch):
        if not isinstance(t, Tensor):
            raise TypeError(f"default_collate: entry 0 is a Tensor but entry {k} is a {type(t).__name__}")
        if t.shape != first:
            raise RuntimeError(f"default_collate: stack expects each tensor to be equal size, but got {tuple(first)} "
                               f"at entry 0 and {tuple(t.shape)} at entry {k}")
    if is_grad_enabled() and any(t.requires_grad for t in batch):
        from .. import stack  # the autograd-aware op (ember.stack); plain arrays below are faster

        return stack(batch, 0)
    return from_numpy(np.stack([t._data for t in batch]))


def _collate_mapping(elem, values):
    try:
        if isinstance(elem, collections.abc.MutableMapping):
            clone = copy.copy(elem)  # keeps the mapping type and any extra attributes
            clone.update(values)
            return clone
        return type(elem)(values)
    except TypeError:
        return dict(values)


def _collate_sequence(elem, fields):
    if isinstance(elem, tuple):
        return fields  # torch returns a list for tuple samples
    try:
        if isinstance(elem, collections.abc.MutableSequence):
            clone = copy.copy(elem)
            for i, f in enumerate(fields):
                clone[i] = f
            return clone
        return type(elem)(fields)
    except TypeError:
        return fields


def default_collate(batch):
    """Stack a list of samples into a batch, recursing into dicts, namedtuples and sequences."""
    elem = batch[0]
    if isinstance(elem, Tensor):
        return _stack_tensors(batch)
    if isinstance(elem, np.ndarray):
        if _is_str_or_object(elem):
            raise TypeError(_ERR.format(elem.dtype))
        return _stack_tensors([from_numpy(np.asarray(b)) for b in batch])
    if isinstance(elem, np.generic) and not isinstance(elem, (np.str_, np.bytes_)):
        arr = np.array(batch)
        if _is_str_or_object(arr):
            raise TypeError(_ERR.format(arr.dtype))
        return from_numpy(arr)
    if isinstance(elem, bool):
        return from_numpy(np.array(batch, dtype=np.bool_))
    if isinstance(elem, int):
        return from_numpy(np.array(batch, dtype=np.int64))
    if isinstance(elem, float):
        return from_numpy(np.array(batch, dtype=np.float32))
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        return _collate_mapping(elem, {key: default_collate([d[key] for d in batch]) for key in elem})
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        size = len(elem)
        for k, b in enumerate(batch):
            if len(b) != size:
                raise RuntimeError(f"default_collate: each element in list of batch should be of equal size "
                                   f"(entry 0 has {size} fields, entry {k} has {len(b)})")
        return _collate_sequence(elem, [default_collate(list(s)) for s in zip(*batch)])
    raise TypeError(_ERR.format(type(elem)))


def default_convert(data):
    """What the DataLoader does to each sample when automatic batching is off (``batch_size=None``):
    numpy arrays become tensors (sharing memory), containers are converted element by element."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        return data if _is_str_or_object(data) else from_numpy(data)
    if isinstance(data, np.generic) and not isinstance(data, (np.str_, np.bytes_)):
        return from_numpy(np.asarray(data))
    if isinstance(data, collections.abc.Mapping):
        return _collate_mapping(data, {key: default_convert(data[key]) for key in data})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        return _collate_sequence(data, [default_convert(d) for d in data])
    return data
