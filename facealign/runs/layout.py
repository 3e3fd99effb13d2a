"""What a run directory holds: the one place that names its files, and the one atomic JSON writer.

    <run>/job.yaml          the resolved job spec (every --set applied)            the trainer, the launcher
    <run>/log.txt           rank 0's log                                           the trainer
    <run>/tb/               TensorBoard events (training, HParams, evaluation)      rank 0, facealign-eval
    <run>/checkpoints/      ckpt-<step>/, latest, diverged-ckpt-<step>/             facealign.runs.checkpoint
    <run>/.lock             one trainer per run directory                          facealign.runs.lock
    <run>/progress.json     where the run stands (step, best, ETA, restarts)      rank 0
    <run>/exit.json         how the last trainer ended (code, reason)              rank 0
    <run>/slurm.json        the Slurm job of the run's latest start               the launcher
    <run>/sbatch.sh         the batch script submit wrote                          the launcher
    <run>/eval/             facealign-eval's reports, one directory per checkpoint facealign-eval
    <sweep>/sweep.json      a sweep's base spec, grid, members and array job       facealign-launch sweep

Imports nothing heavier than the standard library (login nodes read runs too).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

JOB_FILE = "job.yaml"
LOG_FILE = "log.txt"
TB_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".lock"
PROGRESS_FILE = "progress.json"
EXIT_FILE = "exit.json"
SLURM_FILE = "slurm.json"
SBATCH_FILE = "sbatch.sh"
EVAL_DIR = "eval"
SWEEP_FILE = "sweep.json"


def write_json(path, obj, *, indent: int | None = 1, sort_keys: bool = False, sync: bool = False) -> None:
    """Write ``obj`` as JSON whole or not at all: a reader never sees half a file (a temporary beside it,
    then an atomic rename). ``sync``: on disk before the rename (what a checkpoint's commit needs)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path):
    """The JSON in ``path``, or None where it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
