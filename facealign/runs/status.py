"""How a run stands, from its directory and Slurm: the small files rank 0 and the launchers keep there,
and the status `facealign-launch status` prints. Imports no MXNet (login nodes).

    record_progress(run_dir, {"step": 10, "last_step": 372, ...})   # the trainer's rank 0, at each progress line
    status = run_status(Path("runs/demo"))                     # RunStatus: state, step / total, best, ETA, ...
    members = sweep_members(Path("runs/lr-sweep"))             # [(run dir, overrides)] of a sweep

Files (each written whole, atomically; a damaged one reads as missing):
  progress.json        step, last step, epoch, images/s, ETA, best metric and its step, restarts, time
  slurm.json           the Slurm job of the run's latest start (job id, array job and task, requeues, and the
                       restarts inside the allocation after a lost rank or node)
  sweep.json           in a sweep directory: base spec, grid, zip, fixed overrides, members, array job id
Run states: queued, running, requeued, finished, failed, cancelled (from squeue/sacct when the run
has a Slurm job, else from ``exit.json`` and the run lock), or "new" for a run not started yet.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from facealign.runs.layout import (EXIT_FILE, JOB_FILE, LOG_FILE, PROGRESS_FILE, SLURM_FILE, SWEEP_FILE,  # noqa: F401
                                   read_json, write_json)
from facealign.runs.lock import RunLock
STATES = ("new", "queued", "running", "requeued", "finished", "failed", "cancelled")


def read_progress(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / PROGRESS_FILE) or {}


def record_progress(run_dir: Path, progress: dict) -> None:
    """The trainer's rank 0: where the run is (it keeps ``progress`` and writes it whole)."""
    write_json(Path(run_dir) / PROGRESS_FILE, {**progress, "time": time.time()})


def record_slurm(run_dir: Path, environ=None) -> None:
    """launcher.slurm at each start of a run in an allocation: which Slurm job it is."""
    env = os.environ if environ is None else environ
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    earlier = read_json(Path(run_dir) / SLURM_FILE) or {}  # a requeued job keeps its restarts in the allocation
    write_json(Path(run_dir) / SLURM_FILE,
               {"job_id": env.get("SLURM_JOB_ID"), "array_job_id": array, "array_task_id": task,
                "query_id": f"{array}_{task}" if array and task else env.get("SLURM_JOB_ID"),
                "restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0), "nodes": env.get("SLURM_JOB_NODELIST"),
                "restarts": earlier.get("restarts", []) if earlier.get("job_id") == env.get("SLURM_JOB_ID") else [],
                "time": time.time()})


def record_restart(run_dir: Path, restart: dict) -> None:
    """launcher.slurm, at each restart inside the allocation: what was lost, the new world size, the step."""
    record = read_json(Path(run_dir) / SLURM_FILE) or {}
    record["restarts"] = [*record.get("restarts", []), restart]
    write_json(Path(run_dir) / SLURM_FILE, record)


def latest_checkpoint_step(run_dir: Path) -> int:
    """The step of the checkpoint a restart resumes from (``latest``), 0 for none. No MXNet."""
    from facealign.runs.layout import CHECKPOINTS_DIR

    try:
        return int((Path(run_dir) / CHECKPOINTS_DIR / "latest").read_text().strip().rsplit("-", 1)[1])
    except (OSError, ValueError, IndexError):
        return 0


def record_submitted(run_dir: Path, job_id: str) -> None:
    """facealign-launch submit/sweep: the Slurm job (or array task ``A_i``) that will run it, until it starts."""
    write_json(Path(run_dir) / SLURM_FILE, {"job_id": job_id, "query_id": job_id, "restart_count": 0,
                                            "time": time.time()})


@dataclass
class RunStatus:
    name: str
    path: str
    state: str
    overrides: list = field(default_factory=list)
    step: int | None = None
    last_step: int | None = None
    epoch: int | None = None
    metric: str | None = None
    best: float | None = None
    best_step: int | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    restarts: int = 0  # Slurm requeues plus restarts inside the allocation
    world_sizes: list = field(default_factory=list)  # the ranks that ran, in order (a lost node shrinks it)
    job: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# Slurm's job states -> ours
SLURM_STATES = {"PENDING": "queued", "CONFIGURING": "queued", "RUNNING": "running", "COMPLETING": "running",
                "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued", "SUSPENDED": "running",
                "RESIZING": "running", "COMPLETED": "finished", "FAILED": "failed", "TIMEOUT": "failed",
                "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed", "DEADLINE": "failed",
                "PREEMPTED": "requeued", "CANCELLED": "cancelled"}


def slurm_state(job_id: str) -> str | None:
    """Our state of a Slurm job (``123`` or an array task ``123_4``): squeue while Slurm holds it, then sacct;
    None when neither knows it (no Slurm here, or the job aged out)."""
    for cmd in (["squeue", "-h", "-j", job_id, "-o", "%T"], ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        words = out.stdout.split()
        if out.returncode == 0 and words:
            state = words[-1].split()[0].rstrip("+")  # sacct: "CANCELLED by 0" -> CANCELLED
            return SLURM_STATES.get(state, state.lower())
    return None


def _local_state(run_dir: Path) -> str:
    ended = read_json(run_dir / EXIT_FILE)
    if (run_dir / ".lock").exists() and RunLock(run_dir).is_held():
        return "running"
    if ended is not None:
        code = ended.get("code")
        return "finished" if code == 0 else "requeued" if code == 75 else "failed"
    return "new" if not (run_dir / PROGRESS_FILE).exists() else "failed"  # stopped without a word: killed


def last_error(run_dir: Path) -> str | None:
    """The reason rank 0 recorded, else the last line of log.txt."""
    ended = read_json(run_dir / EXIT_FILE)
    if ended and ended.get("code") not in (0, 75):
        return str(ended.get("reason"))
    try:
        lines = (run_dir / LOG_FILE).read_text().strip().splitlines()
        return lines[-1] if lines else None
    except OSError:
        return None


def run_status(run_dir: Path, overrides=None, query_slurm: bool = True) -> RunStatus:
    run_dir = Path(run_dir)
    progress = read_progress(run_dir)
    slurm = read_json(run_dir / SLURM_FILE) or {}
    job = slurm.get("query_id")
    state = None
    if job and query_slurm:
        state = slurm_state(job)
        ended = read_json(run_dir / EXIT_FILE)
        # the trainer's own word where the batch script's status hides it (exit 75 then a requeue)
        if state == "finished" and ended and ended.get("code") not in (0, None):
            state = "failed" if ended["code"] != 75 else "requeued"
    if state is None:
        state = _local_state(run_dir)
    status = RunStatus(name=run_dir.name, path=str(run_dir), state=state, overrides=list(overrides or []),
                       step=progress.get("step"), last_step=progress.get("last_step"), epoch=progress.get("epoch"),
                       metric=progress.get("metric"), best=progress.get("best"), best_step=progress.get("best_step"),
                       images_per_s=progress.get("images_per_s"),
                       eta_s=progress.get("eta_s") if state in ("running", "requeued", "queued") else None,
                       restarts=int(slurm.get("restart_count", progress.get("restarts", 0)) or 0)
                       + len(slurm.get("restarts", [])),
                       world_sizes=[size for _, size in progress.get("world_history", [])], job=job)
    if state == "failed":
        status.error = last_error(run_dir)
    return status


def sweep_members(sweep_dir: Path) -> list[tuple[Path, list]]:
    record = read_json(Path(sweep_dir) / SWEEP_FILE) or {}
    return [(Path(sweep_dir) / m["dir"], m["overrides"]) for m in record.get("members", [])]


def sweep_overrides(run_dir: Path) -> list:
    """The overrides of a sweep member (from its sweep's sweep.json), or []."""
    run_dir = Path(run_dir)
    for path, overrides in sweep_members(run_dir.parent):
        if path.name == run_dir.name:
            return list(overrides)
    return []


def expand(paths) -> list[tuple[Path, list]]:
    """Run directories (with their sweep overrides) under the given run, sweep or parent directories."""
    out = []
    for path in map(Path, paths):
        if (path / SWEEP_FILE).exists():
            out += sweep_members(path)
        elif (path / JOB_FILE).exists():
            out.append((path, []))
        elif path.is_dir():
            for child in sorted(p for p in path.iterdir() if p.is_dir()):
                out += expand([child]) if (child / SWEEP_FILE).exists() or (child / JOB_FILE).exists() else []
        else:
            raise FileNotFoundError(f"{path}: no run or sweep directory")
    return out


def _eta(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_table(statuses: list[RunStatus]) -> str:
    heads = ["run", "overrides", "state", "step", "epoch", "best", "at step", "img/s", "ETA", "restarts", "ranks"]
    rows = []
    for s in statuses:
        rows.append([s.name, " ".join(s.overrides) or "-", s.state,
                     f"{s.step if s.step is not None else '-'}/{s.last_step if s.last_step is not None else '-'}",
                     "-" if s.epoch is None else str(s.epoch),
                     "-" if s.best is None else f"{s.metric} {100 * s.best:.2f}%",
                     "-" if s.best_step is None else str(s.best_step),
                     "-" if s.images_per_s is None else f"{s.images_per_s:.1f}", _eta(s.eta_s), str(s.restarts),
                     "->".join(map(str, s.world_sizes)) or "-"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for s in statuses:
        if s.error:
            lines.append(f"{s.name}: {s.error}")
    return "\n".join(lines)
