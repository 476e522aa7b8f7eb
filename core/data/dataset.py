"""Map-style datasets (``Dataset``, ``TensorDataset``, ``Subset``, ``ConcatDataset``) and ``random_split``.

Same contracts as ``torch.utils.data``: a dataset is anything with ``__getitem__(i)`` and ``__len__``.
"""
from __future__ import annotations

import bisect
import math
import warnings

import numpy as np

from ..random import rng_of
from ..tensor import Tensor, from_numpy


class Dataset:
    """Base class of map-style datasets: subclasses define ``__getitem__`` and ``__len__``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __add__(self, other: "Dataset") -> "ConcatDataset":
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A stream of samples: subclasses define ``__iter__`` (the DataLoader batches it in order)."""

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")

    def __add__(self, other):
        raise TypeError("IterableDataset does not support '+' (ConcatDataset needs map-style datasets)")


class TensorDataset(Dataset):
    """Sample ``i`` is ``tuple(t[i] for t in tensors)``; all tensors share their first dimension."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: needs at least one tensor")
        converted = []
        for k, t in enumerate(tensors):
            if isinstance(t, np.ndarray):
                t = from_numpy(t)
            if not isinstance(t, Tensor):
                raise TypeError(f"TensorDataset: argument {k} is a {type(t).__name__}, expected an ember Tensor "
                                f"(or a numpy array)")
            if t.ndim == 0:
                raise ValueError(f"TensorDataset: argument {k} is a 0-d tensor; every tensor needs a first "
                                 f"(sample) dimension")
            converted.append(t)
        sizes = [t.shape[0] for t in converted]
        if any(s != sizes[0] for s in sizes):
            shapes = ", ".join(str(tuple(t.shape)) for t in converted)
            raise ValueError(f"TensorDataset: size mismatch between tensors: first dimensions {sizes} must all be "
                             f"equal (shapes {shapes})")
        self.tensors = tuple(converted)

    def __getitem__(self, index):
        return tuple(_take(t, index) for t in self.tensors)

    def __len__(self):
        return self.tensors[0].shape[0]


def _take(t: Tensor, index) -> Tensor:
    """``t[index]``: a view sharing storage (and version counter) like torch's basic indexing;
    tensors that require grad go through the autograd-aware indexing op."""
    if t.requires_grad:
        return t[index]
    out = Tensor._wrap(t._data[index])
    if np.may_share_memory(out._data, t._data):
        out._vbox = t._vbox
    return out


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return self.dataset[[self.indices[i] for i in idx]]
        return self.dataset[self.indices[idx]]

    def __len__(self):
        return len(self.indices)


class ConcatDataset(Dataset):
    """Several map-style datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for k, d in enumerate(self.datasets):
            if isinstance(d, IterableDataset):
                raise TypeError(f"ConcatDataset: dataset {k} is an IterableDataset; only map-style datasets "
                                f"can be concatenated")
        self.cumulative_sizes = list(np.cumsum([len(d) for d in self.datasets]).tolist())

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx):
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"ConcatDataset: index {idx} is out of range for a dataset of length {n}")
        if idx < 0:
            idx += n
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[which - 1] if which > 0 else 0
        return self.datasets[which][idx - start]


def random_split(dataset, lengths, generator=None):
    """Split ``dataset`` into non-overlapping random ``Subset``s of the given lengths.

    ``lengths`` are counts summing to ``len(dataset)``, or fractions summing to 1 (each gets
    ``floor(n * frac)`` and the remainder is dealt one by one from the first split, as torch does).
    The permutation comes from ``generator`` (an ``ember.Generator``) or ember's global generator.
    """
    n = len(dataset)
    lengths = list(lengths)
    total = sum(lengths)
    if lengths and math.isclose(total, 1) and total <= 1:
        for i, frac in enumerate(lengths):
            if not 0 <= frac <= 1:
                raise ValueError(f"random_split: fraction at index {i} is {frac}, not between 0 and 1")
        counts = [int(math.floor(n * frac)) for frac in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        for i, c in enumerate(counts):
            if c == 0:
                warnings.warn(f"random_split: length of split at index {i} is 0; this split will be empty",
                              stacklevel=2)
        lengths = counts
    for i, c in enumerate(lengths):
        if not isinstance(c, (int, np.integer)) or c < 0:
            raise ValueError(f"random_split: lengths must be non-negative ints or fractions summing to 1, "
                             f"got {lengths!r} (entry {i} is {c!r})")
    if sum(lengths) != n:
        raise ValueError(f"random_split: sum of input lengths {lengths} is {sum(lengths)}, which does not equal "
                         f"the length of the dataset ({n})")
    perm = rng_of(generator).permutation(n).tolist()
    out, offset = [], 0
    for c in lengths:
        out.append(Subset(dataset, perm[offset:offset + c]))
        offset += c
    return out
