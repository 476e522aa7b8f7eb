"""Bundled datasets. ``digits``: the UCI handwritten digits (1797 8x8 images, 10 classes).

The file ``digits/digits.csv.gz`` (see ``digits/README.md`` for source and licence) has one row per
image: 64 pixel values 0..16 (row-major 8x8) then the label. It is parsed once per process with
numpy and kept read-only in memory; every call returns fresh arrays.
"""
from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from ..tensor import from_numpy
from .dataset import TensorDataset

DIGITS_CLASSES = tuple(range(10))
DIGITS_IMAGE_SHAPE = (1, 8, 8)
DIGITS_NUM_SAMPLES = 1797
DIGITS_SPLITS = ("train", "test", "all")
DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits", "digits.csv.gz")


@functools.lru_cache(maxsize=None)
def _digits_raw():
    """(pixels uint8 (1797, 64), labels int64 (1797,)), read-only, in file order."""
    if not os.path.exists(DIGITS_PATH):
        raise FileNotFoundError(f"digits: data file {DIGITS_PATH} is missing; it ships with the ember package "
                                f"(package data 'ember.data' = ['digits/*'])")
    with gzip.open(DIGITS_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (DIGITS_NUM_SAMPLES, 65):
        raise ValueError(f"digits: {DIGITS_PATH} has shape {table.shape}, expected ({DIGITS_NUM_SAMPLES}, 65) "
                         f"(64 pixels then the label per row)")
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"digits: {DIGITS_PATH} has values outside pixels 0..16 / labels 0..9")
    pixels = pixels.astype(np.uint8)
    labels = np.ascontiguousarray(labels)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


@functools.lru_cache(maxsize=None)
def _split_indices(test_fraction: float, seed: int):
    labels = _digits_raw()[1]
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(labels), dtype=bool)
    for c in DIGITS_CLASSES:
        members = np.flatnonzero(labels == c)
        # Round half up, and keep at least one image of every class on each side.
        n_test = min(max(int(np.floor(test_fraction * len(members) + 0.5)), 1), len(members) - 1)
        in_test[rng.permutation(members)[:n_test]] = True
    train, test = np.flatnonzero(~in_test), np.flatnonzero(in_test)
    train.flags.writeable = False
    test.flags.writeable = False
    return train, test


def digits_split_indices(test_fraction: float = 0.2, seed: int = 0):
    """Row indices (ascending file order) of the train and test splits of ``digits``.

    Stratified: for each class in 0..9, ``numpy.random.default_rng(seed)`` permutes that class's rows
    (classes in order, one generator) and the first ``round(test_fraction * count)`` (half up, at least
    one, at most count - 1) go to test. numpy's PCG64 stream makes this the same on every machine.
    """
    _check_split_args("digits_split_indices", test_fraction, seed)
    train, test = _split_indices(float(test_fraction), int(seed))
    return train.copy(), test.copy()


def _check_split_args(fn, test_fraction, seed):
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"{fn}: test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative int, got {seed!r}")


def digits(split: str = "train", normalize: bool = True, flatten: bool = False, test_fraction: float = 0.2,
           seed: int = 0) -> TensorDataset:
    """The UCI handwritten digits as a ``TensorDataset`` of (images, labels).

    images: float32 ``(N, 1, 8, 8)`` (``(N, 64)`` with ``flatten``), pixel counts 0..16 divided by 16
    when ``normalize`` (so in [0, 1]); labels: int64 ``(N,)`` in 0..9. ``split`` is "train", "test"
    (a fixed stratified split, see ``digits_split_indices``) or "all" (all 1797 rows in file order,
    the same order as ``sklearn.datasets.load_digits``).
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits: unknown split {split!r}; valid splits: {', '.join(map(repr, DIGITS_SPLITS))}")
    _check_split_args("digits", test_fraction, seed)
    pixels, labels = _digits_raw()
    if split == "all":
        rows = slice(None)
    else:
        rows = _split_indices(float(test_fraction), int(seed))[0 if split == "train" else 1]
    x = pixels[rows].astype(np.float32)  # a fresh array: the cached one stays untouched
    if normalize:
        x *= np.float32(1.0 / 16.0)  # a power of two, so exactly pixel / 16
    x = x.reshape((-1, 64) if flatten else (-1,) + DIGITS_IMAGE_SHAPE)
    y = np.array(labels[rows], dtype=np.int64)
    return TensorDataset(from_numpy(x), from_numpy(y))
