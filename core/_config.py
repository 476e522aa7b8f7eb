"""Process-wide settings that must exist before numba is imported (its on-disk kernel cache)."""
from __future__ import annotations

import os
import sys
import tempfile


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ember", "numba")


def setup_numba_cache() -> str:
    """Point numba's cache at a writable directory: NUMBA_CACHE_DIR if set, else ~/.cache/ember/numba."""
    path = os.environ.get("NUMBA_CACHE_DIR") or _default_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
    except OSError:
        path = os.path.join(tempfile.gettempdir(), f"ember-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
        os.makedirs(path, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:  # imported before ember: tell the live config too
        import numba

        numba.config.CACHE_DIR = path
    return path
