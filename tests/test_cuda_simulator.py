"""Runs tests/gpu on numba's CUDA simulator in a separate pytest process: the simulator must be chosen
before numba is imported, and this process has imported it already. On a machine with a GPU, running
``pytest tests/gpu`` directly tests the real device instead."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_backend_on_the_simulator():
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "--tb=short",
                           str(ROOT / "tests" / "gpu")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"tests/gpu failed on the CUDA simulator:\n{tail}"
    assert " passed" in proc.stdout.strip().splitlines()[-1], tail
