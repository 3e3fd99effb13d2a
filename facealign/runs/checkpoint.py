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
(``facealign.runs.artifact.ModelInfo``), ``validation`` (the run's validation protocol,
``facealign.evaluation.scoring``) and ``ranking`` (the metric and mode that pick ``best``).

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

import numpy as np
import yaml

from facealign.errors import CannotStart, TrainerError
from facealign.runs.layout import CHECKPOINTS_DIR, JOB_FILE

LATEST = "latest"
PREFIX = "ckpt-"
MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE = "model.params", "rank_stats.params", "optimizer.params"
STATE_FILE, MANIFEST_FILE = "state.json", "MANIFEST.json"
FILES = (MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE, STATE_FILE)
WHICH = ("best", "latest")


class CheckpointError(CannotStart, RuntimeError):
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


def average_over_ranks(gathered: list[dict]) -> dict:
    """The element-wise mean of per-rank {name: array} dicts (``RunningStats.gather``'s output)."""
    return {k: sum(g[k] for g in gathered) / len(gathered) for k in gathered[0]}


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
        state = read_state(path)
    except CheckpointError as e:
        return str(e)
    if not isinstance(state.get("step"), int) or not isinstance(state.get("model"), dict):
        return f"{STATE_FILE} lacks its step or the model's structure"
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
            _write_json(tmp / STATE_FILE, {**state, "step": step, "optimizer": info, "ranking": ranking})
            for f in (MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE):
                with open(tmp / f, "rb+") as fh:
                    os.fsync(fh.fileno())
            _write_json(tmp / MANIFEST_FILE, {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                                              for f in FILES})
            _fsync_dir(tmp)
        except (OSError, mx.base.MXNetError) as e:  # a full disk: MXNet says "FileStream.Write incomplete"
            shutil.rmtree(tmp, ignore_errors=True)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointWriteError(self._no_room(final, needed, shutil.disk_usage(self.dir).free, reason)) from None
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.dir)
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
        _fsync_dir(self.dir)

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
        _fsync_dir(self.dir)
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
        metric, mode = (self.metric, self.mode) if self.metric else _ranking(entries[-1][1], self.dir)
        scored = [(s["metrics"][metric], p) for p, s in entries
                  if metric and isinstance(s.get("metrics"), dict) and metric in s["metrics"]]
        if scored:
            return sorted(scored, key=lambda t: t[0], reverse=mode == "max")[0][1]
        return entries[-1][0]

    def read(self, path: Path) -> dict:
        """Decode every file of a checkpoint without touching a network: {"state", "model", "rank_stats",
        "optimizer"}. ``CheckpointError`` naming the file when one does not decode or lacks what it
        should, so a caller can fall back to an older checkpoint with nothing half-loaded."""
        import mxnet as mx

        path = Path(path)
        state = read_state(path)
        out = {"state": state}
        for key, name in (("model", MODEL_FILE), ("rank_stats", RANK_STATS_FILE), ("optimizer", OPTIMIZER_FILE)):
            try:
                arrays = mx.nd.load(str(path / name))
            except mx.base.MXNetError as e:
                raise CheckpointError(f"{path / name} does not decode ({str(e).strip().splitlines()[0]})") from None
            if isinstance(arrays, list) and not arrays:
                arrays = {}  # mx.nd.save of an empty dict (an optimizer that has not stepped yet)
            if not isinstance(arrays, dict):
                raise CheckpointError(f"{path / name} holds unnamed arrays, not a checkpoint's")
            out[key] = arrays
        info = state.get("optimizer")
        try:
            layout = info["layout"]
            missing = [f"state_{i}_{j}" for i, kinds in layout.items() for j, kind in enumerate(kinds[:-1])
                       if kind == "array" and f"state_{i}_{j}" not in out["optimizer"]]
            info["index_update_count"], info["scalars"], info["optimizer"]  # noqa: B018 (presence)
            for key in ("epoch", "batch_in_epoch"):
                int(state[key])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path / STATE_FILE} is not a training state ({type(e).__name__}: {e})") from None
        if missing:
            raise CheckpointError(f"{path / OPTIMIZER_FILE} lacks {len(missing)} optimizer array(s), e.g. {missing[0]}")
        return out

    @staticmethod
    def rank_stats(decoded: dict, ranks) -> dict[int, dict]:
        """{rank: that rank's own BatchNorm statistics} for those of ``ranks`` the checkpoint holds (what
        ``read`` decoded): ``dist.RunningStats.start`` puts them back, so the run continues exactly."""
        out = {}
        for rank in ranks:
            prefix = f"rank{rank}/"
            own = {k[len(prefix):]: v for k, v in decoded["rank_stats"].items() if k.startswith(prefix)}
            if own:
                out[rank] = own
        return out

    def apply(self, path: Path, decoded: dict, net, trainer, ctx, *, fingerprint: str | None = None,
              rank: int | None = None) -> dict:
        """Load what ``read`` decoded into ``net`` and ``trainer``; returns the saved state.

        The network gets the rank-averaged BatchNorm statistics, or with ``rank`` that rank's own where
        the checkpoint has them. A checkpoint of another model or optimizer is a ``CheckpointError`` that
        says so (never silently mixed in).
        """
        from facealign.models import structural_parameters
        from facealign.runs.optimizer_state import load_optimizer_state

        state = decoded["state"]
        if fingerprint is not None and state.get("model_fingerprint") != fingerprint:
            raise CheckpointError(
                f"{path} was made by a different model ({state.get('model')}); this job builds another one. "
                f"Refusing to resume: use a new run directory, or restore the job's model/data sizes")
        params = structural_parameters(net)
        arrays = decoded["model"]
        if set(arrays) != set(params):
            raise CheckpointError(f"{path / MODEL_FILE} does not hold this network's parameters "
                                  f"({len(set(params) - set(arrays))} missing, {len(set(arrays) - set(params))} extra)")
        if rank is not None:
            arrays = {**arrays, **self.rank_stats(decoded, [rank]).get(rank, {})}
        for k, p in params.items():
            p.set_data(arrays[k].as_in_context(ctx))
        if trainer is not None:
            try:
                load_optimizer_state(trainer, decoded["optimizer"], state["optimizer"], ctx)
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}; resume with the same optimizer.name, or use a new run directory")
        return state

    def load(self, path: Path, net, trainer, ctx, *, fingerprint: str | None = None, rank: int | None = None) -> dict:
        """``read`` then ``apply``: restore parameters and optimizer state; returns the saved state."""
        return self.apply(Path(path), self.read(path), net, trainer, ctx, fingerprint=fingerprint, rank=rank)

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
