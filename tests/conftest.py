"""Shared fixtures: launching real horovodrun jobs on this machine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def horovodrun():
    """Run ``python ARGS`` under ``horovodrun -np N -H localhost:N`` (Gloo, CPU) and return the finished process."""

    def run(np_: int, args: list, *, timeout: float = 300, env: dict | None = None, cwd=None):
        cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
               sys.executable, *map(str, args)]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", **(env or {})}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                              cwd=cwd or REPO)

    return run
