"""How the benchmarks train a job: ``facealign-launch local -np 2`` on packed sets, and the time it took."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(job: str, run_dir: Path, train_prefix: Path, val_prefix: Path, steps: int | None = None) -> float:
    """Train ``jobs/<job>`` on the packed sets (a finished run in ``run_dir``: no steps); its training seconds."""
    sets = [f"data.train=[{train_prefix}]", f"data.val={{synthetic: {val_prefix}}}"]
    if steps:
        sets.append(f"schedule.max_steps={steps}")
    cmd = [sys.executable, "-m", "launcher.cli", "local", str(REPO / "jobs" / job), "-np", "2", "--run-dir",
           str(run_dir)] + [a for s in sets for a in ("--set", s)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return training_seconds(run_dir / "log.txt")


def training_seconds(log: Path) -> float:
    """From the run log's first line to its "finished" line (its first start to its end, across re-runs)."""
    lines = log.read_text().splitlines()
    stamps = [int(h) * 3600 + int(m) * 60 + int(s_) for h, m, s_ in
              (line[:8].split(":") for line in (lines[0], next(x for x in lines if " finished at step " in x)))]
    return (stamps[1] - stamps[0]) % 86400
