"""Runs tests/gpu on numba's CUDA simulator in separate pytest processes: the simulator must be chosen
before numba is imported, and this process has imported it already. One process per test file, so a
parallel run (``pytest -n auto``) spreads the simulator's ~10 minutes over its workers. On a machine
with a GPU, running ``pytest tests/gpu`` directly tests the real device instead."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p.name for p in (ROOT / "tests" / "gpu").glob("test_*.py"))


def test_every_gpu_test_file_is_run():
    assert len(FILES) >= 10, FILES  # (a moved folder would otherwise leave nothing to run)


@pytest.mark.parametrize("name", FILES)
def test_cuda_backend_on_the_simulator(name):
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONUNBUFFERED="1")
    env.pop("PYTEST_XDIST_WORKER", None)  # (the child is a plain pytest run of its own)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "--tb=short",
                           str(ROOT / "tests" / "gpu" / name)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"tests/gpu/{name} failed on the CUDA simulator:\n{tail}"
    assert " passed" in proc.stdout.strip().splitlines()[-1], tail
