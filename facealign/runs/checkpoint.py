"""Checkpoints that lose nothing: atomic, verified, pruned only after the new one is committed.

Under ``<run>/checkpoints``: one ``ckpt-<step>/`` directory per checkpoint (its files:
facealign.runs.checkpoint_format) and ``latest``, the name of the newest committed one (replaced atomically).

Only the writer (rank 0) writes: into ``.tmp-ckpt-<step>``, fsync, then an
atomic rename and an fsync of the directory, then the ``latest`` pointer, and
only then are checkpoints outside the last ``keep_last`` and the best
``keep_best`` (by the chosen metric) deleted. Loading verifies the manifest
and falls back to the previous checkpoint when one is damaged; ``find`` picks
a run's best or latest valid checkpoint.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from facealign.errors import TrainerError
from facealign.runs.checkpoint_format import (CHECKPOINTS_DIR, LATEST, MODEL_FILE, OPTIMIZER_FILE, PREFIX,
                                              RANK_STATS_FILE, WHICH, CheckpointError, apply, average_over_ranks,
                                              decode, fsync_dir, is_checkpoint, is_run, ranking_of, read_state,
                                              verify, write_manifest, write_state)

def find(path, which: str = "best", *, log=None) -> Path:
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


class CheckpointWriteError(TrainerError, RuntimeError):
    """A checkpoint that could not be written (no room); the previous one is intact."""


class CheckpointManager:
    def __init__(self, directory, *, writer: bool, keep_last: int = 3, keep_best: int = 1,
                 metric: str | None = None, mode: str = "min", log=None):
        self.dir = Path(directory)
        self.writer, self.log = writer, log
        self.keep_last, self.keep_best = keep_last, keep_best
        self.metric, self.mode = metric, mode
        if writer:
            self.dir.mkdir(parents=True, exist_ok=True)

    # --- writing (rank 0) ------------------------------------------------------------------------

    def save(self, step: int, net, trainer, state: dict, *, running_stats: list | None = None) -> Path | None:
        """Commit checkpoint ``step``; a no-op on ranks that are not the writer.

        ``running_stats``: every rank's BatchNorm statistics (``dist.RunningStats.gather``);
        the model file gets their average, ``rank_stats.params`` each rank's own. Refuses
        (``CheckpointWriteError``, the previous checkpoint untouched, nothing half-written left)
        when the file system has not the room, checked before writing; warns through ``log``
        when the next checkpoint will not fit.
        """
        if not self.writer:
            return None
        import mxnet as mx

        from facealign.models import structural_parameters
        from facealign.runs.optimizer_state import optimizer_state

        name = f"{PREFIX}{step:09d}"
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}"
        params = {k: p.data() for k, p in structural_parameters(net).items()}
        per_rank = {}
        if running_stats:
            params.update(average_over_ranks(running_stats))
            per_rank = {f"rank{r}/{k}": v for r, stats in enumerate(running_stats) for k, v in stats.items()}
        arrays, info = optimizer_state(trainer)
        estimate = sum(a.size * np.dtype(a.dtype).itemsize for d in (params, per_rank, arrays) for a in d.values()) + (1 << 16)
        needed = max(estimate, self._size(self.checkpoints()[-1]) if self.checkpoints() else 0)
        free = shutil.disk_usage(self.dir).free
        if free < needed:
            raise CheckpointWriteError(self._no_room(final, needed, free))
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            mx.nd.save(str(tmp / MODEL_FILE), params)
            mx.nd.save(str(tmp / RANK_STATS_FILE), per_rank or {"none": mx.nd.zeros(1)})
            mx.nd.save(str(tmp / OPTIMIZER_FILE), arrays)
            ranking = {"metric": self.metric, "mode": self.mode}
            write_state(tmp, {**state, "step": step, "optimizer": info, "ranking": ranking})
            for f in (MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE):
                with open(tmp / f, "rb+") as fh:
                    os.fsync(fh.fileno())
            write_manifest(tmp)
            fsync_dir(tmp)
        except (OSError, mx.base.MXNetError) as e:  # a full disk: MXNet says "FileStream.Write incomplete"
            shutil.rmtree(tmp, ignore_errors=True)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointWriteError(self._no_room(final, needed, shutil.disk_usage(self.dir).free, reason)) from None
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        self._point_latest(name)
        self._prune()
        size, free = self._size(final), shutil.disk_usage(self.dir).free
        if free < size and self.log is not None:
            self.log(f"warning: {free:,} bytes are free under {self.dir}; the next checkpoint needs about "
                     f"{size:,} (this one's size): it will not fit. Free space or move the run")
        return final

    def _no_room(self, final: Path, needed: int, free: int, reason: str | None = None) -> str:
        previous = self.checkpoints()
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "there is no earlier checkpoint"
        what = f"writing it failed ({reason}); " if reason else ""
        return (f"cannot write checkpoint {final}: {what}it needs about {needed:,} bytes and {free:,} are free on "
                f"that file system; {kept}; nothing partial is left")

    @staticmethod
    def _size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())

    def _point_latest(self, name: str | None) -> None:
        """Replace the ``latest`` pointer atomically (remove it for None)."""
        if name is None:
            (self.dir / LATEST).unlink(missing_ok=True)
            return
        pointer = self.dir / f".{LATEST}.tmp"
        pointer.write_text(name + "\n")
        with open(pointer, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(pointer, self.dir / LATEST)
        fsync_dir(self.dir)

    def tidy(self, log) -> None:
        """At start (writer): remove the temporaries of writes that never finished, saying so."""
        if not self.writer:
            return
        for p in sorted(self.dir.glob(".tmp-*")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            log(f"removed {p}: a checkpoint write that never finished (killed, or a full disk)")

    def repoint(self, chosen: Path | None, log) -> None:
        """Make ``latest`` name the checkpoint the run resumes from, saying so when it named another."""
        if not self.writer:
            return
        pointer = self.dir / LATEST
        named = pointer.read_text().strip() if pointer.exists() else None
        want = chosen.name if chosen is not None else None
        if named != want:
            if named is not None:
                why = "is missing" if not (self.dir / named).is_dir() else "is not the checkpoint resumed from"
                log(f"{pointer} named {named}, which {why}; it now names {want or 'nothing (no valid checkpoint)'}")
            self._point_latest(want)

    def at_step(self, step: int) -> Path | None:
        path = self.dir / f"{PREFIX}{step:09d}"
        return path if path.is_dir() else None

    def set_aside(self, path: Path) -> Path:
        """Rename a committed checkpoint out of the way (``diverged-ckpt-<step>``, never resumed from) and point
        ``latest`` at the newest checkpoint left; returns the new name."""
        target = self.dir / f"diverged-{path.name}"
        n = 1
        while target.exists():
            n += 1
            target = self.dir / f"diverged-{path.name}.{n}"
        os.replace(path, target)
        fsync_dir(self.dir)
        left = self.checkpoints()
        self._point_latest(left[-1].name if left else None)
        return target

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
        for path in self.candidates(log):
            return path
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
        metric, mode = (self.metric, self.mode) if self.metric else ranking_of(entries[-1][1], self.dir)
        scored = [(s["metrics"][metric], p) for p, s in entries
                  if metric and isinstance(s.get("metrics"), dict) and metric in s["metrics"]]
        if scored:
            return sorted(scored, key=lambda t: t[0], reverse=mode == "max")[0][1]
        return entries[-1][0]

    def load(self, path: Path, net, trainer, ctx, *, fingerprint: str | None = None, rank: int | None = None) -> dict:
        """Decode then apply a checkpoint: restore parameters and optimizer state; returns the saved state."""
        return apply(Path(path), decode(path), net, trainer, ctx, fingerprint=fingerprint, rank=rank)

    def candidates(self, log=None) -> list[Path]:
        """Every checkpoint that verifies, the one ``latest`` names first, then newest to oldest;
        each damaged one skipped with a line to ``log``."""
        ordered = self.checkpoints()[::-1]
        pointer = self.dir / LATEST
        if pointer.exists():
            named = self.dir / pointer.read_text().strip()
            if named in ordered:
                ordered.remove(named)
                ordered.insert(0, named)
        out = []
        for path in ordered:
            problem = verify(path)
            if problem is None:
                out.append(path)
            elif log is not None:
                log(f"checkpoint {path} is damaged ({problem}); skipped")
        return out
