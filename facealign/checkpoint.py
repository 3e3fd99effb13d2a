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

LATEST = "latest"
PREFIX = "ckpt-"
FILES = ("model.params", "rank_stats.params", "optimizer.params", "state.json")


def _average(gathered: list[dict]) -> dict:
    return {k: sum(g[k] for g in gathered) / len(gathered) for k in gathered[0]}


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

        from facealign.optim import optimizer_state

        name = f"{PREFIX}{step:09d}"
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        params = {k: p.data() for k, p in net._collect_params_with_prefix().items()}
        per_rank = {}
        if running_stats:
            params.update(_average(running_stats))
            per_rank = {f"rank{r}/{k}": v for r, stats in enumerate(running_stats) for k, v in stats.items()}
        mx.nd.save(str(tmp / "model.params"), params)
        mx.nd.save(str(tmp / "rank_stats.params"), per_rank or {"none": mx.nd.zeros(1)})
        arrays, info = optimizer_state(trainer)
        mx.nd.save(str(tmp / "optimizer.params"), arrays)
        _write_json(tmp / "state.json", {**state, "step": step, "optimizer": info})
        for f in ("model.params", "rank_stats.params", "optimizer.params"):
            with open(tmp / f, "rb+") as fh:
                os.fsync(fh.fileno())
        _write_json(tmp / "MANIFEST.json", {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
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
            return json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def verify(self, path: Path) -> str | None:
        """None if every file matches the manifest, else what is wrong."""
        try:
            manifest = json.loads((path / "MANIFEST.json").read_text())
        except (OSError, ValueError) as e:
            return f"unreadable manifest ({e})"
        for f in FILES:
            p = path / f
            if not p.exists():
                return f"{f} is missing"
            if p.stat().st_size != manifest[f]["bytes"] or _sha256(p) != manifest[f]["sha256"]:
                return f"{f} does not match its SHA-256 in the manifest"
        return None

    def latest_valid(self, log=print) -> Path | None:
        """The newest checkpoint that verifies: ``latest`` first, then older ones."""
        candidates = self.checkpoints()[::-1]
        pointer = self.dir / LATEST
        if pointer.exists():
            named = self.dir / pointer.read_text().strip()
            if named in candidates:
                candidates.remove(named)
                candidates.insert(0, named)
        for path in candidates:
            problem = self.verify(path)
            if problem is None:
                return path
            log(f"checkpoint {path} is damaged ({problem}); falling back to the previous one")
        return None

    def best(self) -> Path | None:
        """The best valid checkpoint by the metric (or the latest, without one)."""
        entries = [(p, self._read_state(p)) for p in self.checkpoints() if self.verify(p) is None]
        scored = [(s["metrics"][self.metric], p) for p, s in entries
                  if self.metric and s and self.metric in s.get("metrics", {})]
        if scored:
            return sorted(scored, key=lambda t: t[0], reverse=self.mode == "max")[0][1]
        return entries[-1][0] if entries else None

    def load(self, path: Path, net, trainer, ctx, *, fingerprint: str | None = None, rank: int | None = None) -> dict:
        """Restore parameters and optimizer state; returns the saved state (step, epoch, ...).

        With ``rank``, that rank's own BatchNorm statistics replace the averaged ones
        when the checkpoint has them (same world size): the run continues exactly.
        """
        import mxnet as mx

        from facealign.optim import load_optimizer_state

        state = json.loads((path / "state.json").read_text())
        if fingerprint is not None and state.get("model_fingerprint") != fingerprint:
            raise CheckpointError(
                f"{path} was made by a different model ({state.get('model')}); this job builds another one. "
                f"Refusing to resume: use a new run directory, or restore the job's model/data sizes")
        net.load_parameters(str(path / "model.params"), ctx=ctx)
        if rank is not None:
            own = {k.split("/", 1)[1]: v for k, v in mx.nd.load(str(path / "rank_stats.params")).items()
                   if k.startswith(f"rank{rank}/")}
            params = net._collect_params_with_prefix()
            for k, v in own.items():
                params[k].set_data(v.as_in_context(ctx))
        if trainer is not None:
            load_optimizer_state(trainer, mx.nd.load(str(path / "optimizer.params")), state["optimizer"], ctx)
        return state
