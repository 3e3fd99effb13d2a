"""Checkpoints that lose nothing: atomic, verified, pruned only after the new one is committed.

Layout under ``<run>/checkpoints``::

    ckpt-000001200/            one directory per checkpoint (the optimizer step)
        model.params           parameters by structural name (MXNet's NDArray format, as save_parameters),
                               BatchNorm statistics averaged over the ranks
        rank_stats.params      each rank's own BatchNorm statistics ("rank<r>/<name>"): exact resume
        optimizer.params       optimizer state tensors (mx.nd.save: no pickle, nothing executes on load)
        state.json             step, epoch, position in the epoch, optimizer scalars, metrics,
                               the model's fingerprint and the spec's hash, versions
        MANIFEST.json          SHA-256 and size of every file above
    latest                     the name of the newest committed checkpoint (replaced atomically)

``state.json`` also records what serving needs without the job spec: ``model_info``
(``facealign.artifact.ModelInfo``), ``validation`` (the run's validation protocol,
``facealign.scoring``) and ``ranking`` (the metric and mode that pick ``best``).

Only the writer (rank 0) writes: into ``.tmp-ckpt-<step>``, fsync, then an
atomic rename and an fsync of the directory, then the ``latest`` pointer, and
only then are checkpoints outside the last ``keep_last`` and the best
``keep_best`` (by the chosen metric) deleted. Loading verifies the manifest
and falls back to the previous checkpoint when one is damaged.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import yaml

from facealign.config import JOB_FILE
from facealign.dist import average_over_ranks

CHECKPOINTS_DIR = "checkpoints"  # inside a run directory
LATEST = "latest"
PREFIX = "ckpt-"
MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE = "model.params", "rank_stats.params", "optimizer.params"
STATE_FILE, MANIFEST_FILE = "state.json", "MANIFEST.json"
FILES = (MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE, STATE_FILE)
WHICH = ("best", "latest")


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that belongs to another model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


# --- what a path is --------------------------------------------------------------------------------

def is_run(path) -> bool:
    """A run directory: it holds ``checkpoints/``."""
    return (Path(path) / CHECKPOINTS_DIR).is_dir()


def is_checkpoint(path) -> bool:
    """One checkpoint directory (``ckpt-<step>``)."""
    path = Path(path)
    return (path / STATE_FILE).is_file() and (path / MODEL_FILE).is_file()


def run_of(checkpoint) -> Path:
    """The run directory a checkpoint belongs to."""
    return Path(checkpoint).parent.parent


def model_file(checkpoint) -> Path:
    """The parameters of a checkpoint (MXNet's NDArray format, structural names)."""
    return Path(checkpoint) / MODEL_FILE


def read_state(checkpoint) -> dict:
    """The checkpoint's ``state.json``; ``CheckpointError`` naming the file if it does not parse."""
    f = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: not a JSON object")
    return state


def verify(checkpoint) -> str | None:
    """None if every file matches the manifest and the state parses, else what is wrong."""
    path = Path(checkpoint)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict):
        return "the manifest is not a JSON object"
    for f in FILES:
        p = path / f
        entry = manifest.get(f)
        if not isinstance(entry, dict) or "bytes" not in entry or "sha256" not in entry:
            return f"the manifest has no entry for {f}"
        if not p.exists():
            return f"{f} is missing"
        if p.stat().st_size != entry["bytes"] or _sha256(p) != entry["sha256"]:
            return f"{f} does not match its SHA-256 in the manifest"
    try:
        read_state(path)
    except CheckpointError as e:
        return str(e)
    return None


def resolve(path, which: str = "best", *, log=None) -> Path:
    """The checkpoint a path means, verified: a checkpoint directory itself, or a run's (or its
    ``checkpoints/`` directory's) ``best`` or ``latest`` valid checkpoint. Damaged checkpoints on
    the way are skipped with a line to ``log``; ``CheckpointError`` when nothing usable is left."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    path = Path(path)
    if is_checkpoint(path):
        problem = verify(path)
        if problem:
            raise CheckpointError(f"{path}: damaged checkpoint ({problem})")
        return path
    directory = path / CHECKPOINTS_DIR if is_run(path) else path
    if not directory.is_dir():
        raise CheckpointError(f"{path}: not a run directory or a checkpoint")
    manager = CheckpointManager(directory, writer=False)
    found = manager.best(log=log) if which == "best" else manager.latest_valid(log=log)
    if found is None:
        raise CheckpointError(f"{path}: no valid checkpoint under {directory}")
    return found


def _ranking(newest: dict | None, directory: Path) -> tuple[str | None, str]:
    """(metric, mode) by which a run ranks its checkpoints, as its trainer recorded it."""
    if newest and isinstance(newest.get("ranking"), dict):
        return newest["ranking"].get("metric"), newest["ranking"].get("mode", "min")
    # Checkpoints written before state.json recorded the ranking: read it from the run's job.yaml,
    # leniently (raw YAML, not the schema), so a spec that no longer validates still serves.
    try:
        raw = yaml.safe_load((directory.parent / JOB_FILE).read_text()) or {}
        section = raw.get("checkpoint") or {}
        val = (raw.get("data") or {}).get("val") or {}
        metric = section.get("metric") or (f"nme/{next(iter(val))}" if val else None)
        return metric, section.get("mode") or "min"
    except (OSError, yaml.YAMLError, AttributeError):
        return None, "min"


class CheckpointManager:
    def __init__(self, directory, *, writer: bool, keep_last: int = 3, keep_best: int = 1,
                 metric: str | None = None, mode: str = "min"):
        self.dir = Path(directory)
        self.writer = writer
        self.keep_last, self.keep_best = keep_last, keep_best
        self.metric, self.mode = metric, mode
        if writer:
            self.dir.mkdir(parents=True, exist_ok=True)

    # --- writing (rank 0) ------------------------------------------------------------------------

    def save(self, step: int, net, trainer, state: dict, *, running_stats: list | None = None) -> Path | None:
        """Commit checkpoint ``step``; a no-op on ranks that are not the writer.

        ``running_stats``: every rank's BatchNorm statistics (``dist.RunningStats.gather``);
        the model file gets their average, ``rank_stats.params`` each rank's own.
        """
        if not self.writer:
            return None
        import mxnet as mx

        from facealign.models import structural_parameters
        from facealign.optim import optimizer_state

        name = f"{PREFIX}{step:09d}"
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        params = {k: p.data() for k, p in structural_parameters(net).items()}
        per_rank = {}
        if running_stats:
            params.update(average_over_ranks(running_stats))
            per_rank = {f"rank{r}/{k}": v for r, stats in enumerate(running_stats) for k, v in stats.items()}
        mx.nd.save(str(tmp / MODEL_FILE), params)
        mx.nd.save(str(tmp / RANK_STATS_FILE), per_rank or {"none": mx.nd.zeros(1)})
        arrays, info = optimizer_state(trainer)
        mx.nd.save(str(tmp / OPTIMIZER_FILE), arrays)
        ranking = {"metric": self.metric, "mode": self.mode}
        _write_json(tmp / STATE_FILE, {**state, "step": step, "optimizer": info, "ranking": ranking})
        for f in (MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE):
            with open(tmp / f, "rb+") as fh:
                os.fsync(fh.fileno())
        _write_json(tmp / MANIFEST_FILE, {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                                          for f in FILES})
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        pointer = self.dir / f".{LATEST}.tmp"
        pointer.write_text(name + "\n")
        with open(pointer, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(pointer, self.dir / LATEST)
        _fsync_dir(self.dir)
        self._prune()
        return final

    def _prune(self) -> None:
        entries = [(p, self._read_state(p)) for p in self.checkpoints()]
        keep = {p for p, _ in entries[-self.keep_last:]} if self.keep_last > 0 else set()
        if self.metric and self.keep_best > 0:
            scored = [(s["metrics"][self.metric], p) for p, s in entries
                      if s and self.metric in s.get("metrics", {})]
            scored.sort(key=lambda t: t[0], reverse=self.mode == "max")
            keep |= {p for _, p in scored[:self.keep_best]}
        if entries:
            keep.add(entries[-1][0])  # never the newest
        for p, _ in entries:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    # --- reading (every rank) --------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Committed checkpoint directories, oldest first."""
        if not self.dir.exists():
            return []
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    @staticmethod
    def _read_state(path: Path) -> dict | None:
        try:
            return read_state(path)
        except CheckpointError:
            return None

    def verify(self, path: Path) -> str | None:
        return verify(path)

    def latest_valid(self, log=None) -> Path | None:
        """The newest checkpoint that verifies: ``latest`` first, then older ones."""
        candidates = self.checkpoints()[::-1]
        pointer = self.dir / LATEST
        if pointer.exists():
            named = self.dir / pointer.read_text().strip()
            if named in candidates:
                candidates.remove(named)
                candidates.insert(0, named)
        for path in candidates:
            problem = verify(path)
            if problem is None:
                return path
            if log is not None:
                log(f"checkpoint {path} is damaged ({problem}); falling back to the previous one")
        return None

    def best(self, log=None) -> Path | None:
        """The best valid checkpoint by the run's metric (or the latest, without one)."""
        entries = []
        for p in self.checkpoints():
            problem = verify(p)
            if problem is None:
                entries.append((p, self._read_state(p)))
            elif log is not None:
                log(f"checkpoint {p} is damaged ({problem}); skipped")
        if not entries:
            return None
        metric, mode = (self.metric, self.mode) if self.metric else _ranking(entries[-1][1], self.dir)
        scored = [(s["metrics"][metric], p) for p, s in entries
                  if metric and isinstance(s.get("metrics"), dict) and metric in s["metrics"]]
        if scored:
            return sorted(scored, key=lambda t: t[0], reverse=mode == "max")[0][1]
        return entries[-1][0]

    def load(self, path: Path, net, trainer, ctx, *, fingerprint: str | None = None, rank: int | None = None) -> dict:
        """Restore parameters and optimizer state; returns the saved state (step, epoch, ...).

        With ``rank``, that rank's own BatchNorm statistics replace the averaged ones
        when the checkpoint has them (same world size): the run continues exactly.
        """
        import mxnet as mx

        from facealign.models import structural_parameters
        from facealign.optim import load_optimizer_state

        state = read_state(path)
        if fingerprint is not None and state.get("model_fingerprint") != fingerprint:
            raise CheckpointError(
                f"{path} was made by a different model ({state.get('model')}); this job builds another one. "
                f"Refusing to resume: use a new run directory, or restore the job's model/data sizes")
        net.load_parameters(str(path / MODEL_FILE), ctx=ctx)
        if rank is not None:
            own = {k.split("/", 1)[1]: v for k, v in mx.nd.load(str(path / RANK_STATS_FILE)).items()
                   if k.startswith(f"rank{rank}/")}
            params = structural_parameters(net)
            for k, v in own.items():
                params[k].set_data(v.as_in_context(ctx))
        if trainer is not None:
            load_optimizer_state(trainer, mx.nd.load(str(path / OPTIMIZER_FILE)), state["optimizer"], ctx)
        return state
