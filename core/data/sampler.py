"""Samplers: which dataset indices an epoch visits, and how they are grouped into batches.

torch semantics. Besides ``__iter__`` (python ints), the built-in samplers offer ``_index_array()``:
the epoch's indices as one int64 numpy array, which ``BatchSampler`` slices into index batches so
the DataLoader's fast path never builds per-sample python lists.
"""
from __future__ import annotations

import numpy as np

from ..random import rng_of


class Sampler:
    """Base class: subclasses define ``__iter__`` over dataset indices (and usually ``__len__``)."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")


class SequentialSampler(Sampler):
    """Indices ``0 .. len(data_source) - 1`` in order."""

    def __init__(self, data_source):
        self.data_source = data_source

    def _index_array(self) -> np.ndarray:
        return np.arange(len(self.data_source), dtype=np.int64)

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """A fresh random permutation each epoch (or ``num_samples`` draws with replacement).

    The generator is looked up at each epoch, so ``ember.manual_seed`` before iterating makes the
    order reproducible when no ``generator`` is given.
    """

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        if not isinstance(replacement, bool):
            raise TypeError(f"RandomSampler: replacement should be a boolean value, but got replacement={replacement!r}")
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = generator
        n = self.num_samples
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"RandomSampler: num_samples should be a positive integer value, but got num_samples={n!r}")

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def _index_array(self) -> np.ndarray:
        rng = rng_of(self.generator)
        n, m = len(self.data_source), self.num_samples
        if self.replacement:
            return rng.integers(0, n, size=m, dtype=np.int64)
        # More samples than items without replacement: whole permutations, then part of one.
        parts = [rng.permutation(n) for _ in range(m // n)]
        parts.append(rng.permutation(n)[: m % n])
        return np.concatenate(parts).astype(np.int64, copy=False)

    def __iter__(self):
        return iter(self._index_array().tolist())

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given indices in a fresh random order each epoch."""

    def __init__(self, indices, generator=None):
        self.indices = indices
        self.generator = generator

    def _index_array(self) -> np.ndarray:
        order = rng_of(self.generator).permutation(len(self.indices))
        return np.asarray(self.indices, dtype=np.int64)[order]

    def __iter__(self):
        return iter(self._index_array().tolist())

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices drawn with probability proportional to ``weights``."""

    def __init__(self, weights, num_samples, replacement=True, generator=None):
        if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"WeightedRandomSampler: num_samples should be a positive integer value, "
                             f"but got num_samples={num_samples!r}")
        w = np.asarray(weights.numpy() if hasattr(weights, "numpy") else weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"WeightedRandomSampler: weights must be a non-empty 1-d sequence of finite "
                             f"non-negative numbers with a positive sum, got shape {w.shape}")
        if not replacement and num_samples > np.count_nonzero(w):
            raise ValueError(f"WeightedRandomSampler: cannot draw {num_samples} samples without replacement from "
                             f"{np.count_nonzero(w)} indices with non-zero weight")
        self.weights = w
        self.num_samples = int(num_samples)
        self.replacement = replacement
        self.generator = generator

    def _index_array(self) -> np.ndarray:
        p = self.weights / self.weights.sum()
        rng = rng_of(self.generator)
        return rng.choice(len(p), size=self.num_samples, replace=self.replacement, p=p).astype(np.int64)

    def __iter__(self):
        return iter(self._index_array().tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Groups the indices of ``sampler`` into lists of ``batch_size`` (the last one shorter
    unless ``drop_last``)."""

    def __init__(self, sampler, batch_size, drop_last):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"BatchSampler: batch_size should be a positive integer value, but got "
                             f"batch_size={batch_size!r}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"BatchSampler: drop_last should be a boolean value, but got drop_last={drop_last!r}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __iter__(self):
        if hasattr(self.sampler, "_index_array"):
            for idx in self._sliced():
                yield idx.tolist()
            return
        batch = []  # any index type a custom sampler yields (ints, keys ...)
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def _sliced(self):
        order = self.sampler._index_array()
        bs = self.batch_size
        stop = len(order) - len(order) % bs if self.drop_last else len(order)
        for start in range(0, stop, bs):
            yield order[start:start + bs]

    def _index_batches(self):
        """The epoch's batches as int64 numpy arrays (sliced from one array when the sampler has one)."""
        if hasattr(self.sampler, "_index_array"):
            return self._sliced()
        return (np.asarray(b, dtype=np.int64) for b in self)

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
