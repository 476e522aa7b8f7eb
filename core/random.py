"""The global random generator behind rand/randn/randint, initialisers, dropout and shuffling."""
from __future__ import annotations

import numpy as np

_gen = np.random.default_rng()
_seed = None


def manual_seed(seed: int):
    """Seed ember's global generator (reproducible rand/randn/init/dropout/DataLoader shuffle)."""
    global _gen, _seed
    if not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed expects an int, got {type(seed).__name__}")
    _seed = int(seed)
    _gen = np.random.default_rng(_seed)
    return Generator(_seed)


def initial_seed():
    return _seed


def default_generator() -> np.random.Generator:
    return _gen


class Generator:
    """A seedable generator object, like ``torch.Generator`` (for DataLoader shuffling)."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def manual_seed(self, seed: int):
        self._rng = np.random.default_rng(int(seed))
        return self

    @property
    def rng(self) -> np.random.Generator:
        return self._rng


def rng_of(generator) -> np.random.Generator:
    if generator is None:
        return _gen
    if isinstance(generator, Generator):
        return generator.rng
    if isinstance(generator, np.random.Generator):
        return generator
    raise TypeError(f"generator must be an ember.Generator, got {type(generator).__name__}")
