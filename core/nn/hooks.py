"""Forward-hook bookkeeping: the ordered hook tables and the handles that remove hooks."""
from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict


class RemovableHandle:
    """Returned by ``register_*_hook``: ``handle.remove()`` unregisters the hook (also a context manager)."""

    _next_id = itertools.count()

    def __init__(self, *hook_dicts):
        self.id = next(RemovableHandle._next_id)
        self._dicts = [weakref.ref(d) for d in hook_dicts]

    def remove(self):
        for ref in self._dicts:
            d = ref()
            if d is not None:
                d.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class _HookDict(OrderedDict):
    """An OrderedDict that can be weak-referenced by handles."""
