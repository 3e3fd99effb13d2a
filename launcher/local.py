"""The one builder of local Horovod commands: ``horovodrun -np N -H localhost:N --gloo PYTHON ARGS``.

Used by ``facealign-launch local``, the demo, the benchmarks and the tests. Imports no MXNet.
"""
from __future__ import annotations

import sys
from pathlib import Path


def horovodrun_command(ranks: int, args, *, python: str | None = None) -> list[str]:
    """``python args`` as ``ranks`` Gloo ranks on this machine, through the venv's ``horovodrun``."""
    python = python or sys.executable
    horovodrun = Path(python).parent / "horovodrun"
    return [str(horovodrun), "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo", python, *map(str, args)]


def trainer_command(ranks: int, job, run_dir, overrides=(), *, script=None) -> list[str]:
    """The trainer (``python -m facealign.train``, or a script that wraps it) as ``ranks`` local ranks."""
    entry = [str(script)] if script else ["-m", "facealign.train"]
    return horovodrun_command(ranks, [*entry, "--job", job, "--run-dir", run_dir,
                                      *[a for s in overrides for a in ("--set", s)]])
