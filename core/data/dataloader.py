"""``DataLoader``: iterate a dataset in batches, with torch's options and semantics.

Batches are loaded in the main process. For a ``TensorDataset`` (or a ``Subset`` of one) with the
default collate, each batch is one fancy-index of the underlying arrays instead of per-sample
``__getitem__`` plus a stack: the training loops iterate the digits set this way every epoch.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..tensor import from_numpy
from .collate import default_collate, default_convert
from .dataset import IterableDataset, Subset, TensorDataset
from .sampler import BatchSampler, RandomSampler, SequentialSampler


class DataLoader:
    """Batches of ``dataset`` in the order given by ``shuffle`` / ``sampler`` / ``batch_sampler``.

    ``shuffle=True`` draws a new permutation each epoch from ``generator`` (an ``ember.Generator``)
    or, when None, from ember's global generator (so ``ember.manual_seed`` makes epochs reproducible).
    ``batch_size=None`` turns automatic batching off: samples come one by one through ``default_convert``.
    ``pin_memory`` is accepted and ignored (there is no accelerator memory to pin yet).
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None, num_workers=0,
                 collate_fn=None, pin_memory=False, drop_last=False, timeout=0, worker_init_fn=None,
                 generator=None, *, prefetch_factor=None, persistent_workers=False):
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"DataLoader: num_workers option should be a non-negative int, got {num_workers!r}; "
                             f"use num_workers=0 to load in the main process")
        if num_workers > 0:
            warnings.warn(
                f"DataLoader: ember loads batches in the main process; num_workers={num_workers} is ignored "
                f"(for in-memory TensorDatasets each batch is a single gather)", stacklevel=2)
        if timeout < 0:
            raise ValueError(f"DataLoader: timeout option should be non-negative, got {timeout!r}")
        if num_workers == 0 and (prefetch_factor is not None or persistent_workers):
            raise ValueError("DataLoader: prefetch_factor and persistent_workers need num_workers > 0 "
                             "(as in torch); ember then ignores them, since it loads in the main process")

        if isinstance(dataset, IterableDataset):
            for name, value in (("shuffle", shuffle), ("sampler", sampler), ("batch_sampler", batch_sampler)):
                if value not in (None, False):
                    raise ValueError(f"DataLoader with IterableDataset: expected unspecified {name} option, "
                                     f"but got {name}={value!r}")
        elif batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("DataLoader: batch_size=None option disables auto-batching and is mutually "
                             "exclusive with drop_last")

        if isinstance(dataset, IterableDataset):
            if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size <= 0):
                raise ValueError(f"DataLoader: batch_size should be a positive integer value, but got "
                                 f"batch_size={batch_size!r}")
        elif sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        elif shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        if batch_size is not None and batch_sampler is None and not isinstance(dataset, IterableDataset):
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)

        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.generator = generator
        self.collate_fn = collate_fn or (default_collate if self._auto_collation else default_convert)

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None or (isinstance(self.dataset, IterableDataset)
                                                  and self.batch_size is not None)

    def __iter__(self):
        """One epoch (a new shuffle order each time ``iter`` is called)."""
        if isinstance(self.dataset, IterableDataset):
            return self._iter_stream()
        if self.batch_sampler is None:
            return (self.collate_fn(self.dataset[i]) for i in self.sampler)
        fast = self._tensor_source() if self.collate_fn is default_collate else None
        if fast is not None:
            return self._iter_gather(*fast)
        return self._iter_samples()

    def _iter_samples(self):
        getitems = getattr(self.dataset, "__getitems__", None)
        for batch_idx in self.batch_sampler:
            samples = getitems(batch_idx) if getitems else [self.dataset[i] for i in batch_idx]
            yield self.collate_fn(samples)

    def _iter_gather(self, arrays, index_map):
        batches = getattr(self.batch_sampler, "_index_batches", None)
        batches = batches() if batches else (np.asarray(b, dtype=np.int64) for b in self.batch_sampler)
        for idx in batches:
            if index_map is not None:
                idx = index_map[idx]
            # Same result as default_collate of the samples: a list with one stacked tensor per field.
            yield [from_numpy(a[idx]) for a in arrays]

    def _iter_stream(self):
        if self.batch_size is None:
            for sample in self.dataset:
                yield self.collate_fn(sample)
            return
        batch = []
        for sample in self.dataset:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate_fn(batch)
                batch = []
        if batch and not self.drop_last:
            yield self.collate_fn(batch)

    def _tensor_source(self):
        """``(arrays, index_map)`` when the dataset is a TensorDataset, possibly behind Subsets
        (``index_map`` maps loader indices to rows, None for the identity); else None."""
        ds, index_map = self.dataset, None
        while type(ds) is Subset:  # subclasses may override __getitem__
            local = np.asarray(ds.indices, dtype=np.int64)
            if local.ndim != 1:
                return None
            index_map = local if index_map is None else local[index_map]
            ds = ds.dataset
        if type(ds) is not TensorDataset or any(t.requires_grad for t in ds.tensors):
            return None
        return [t._data for t in ds.tensors], index_map

    def __len__(self):
        if isinstance(self.dataset, IterableDataset):
            n = len(self.dataset)  # TypeError if the stream has no length, as in torch
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.batch_sampler is None:
            return len(self.sampler)
        return len(self.batch_sampler)
