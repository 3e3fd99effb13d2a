"""One checkpoint on disk: its files, how it is verified, and how it is decoded and applied to a network.

    ckpt-000001200/            one directory per checkpoint (the optimizer step)
        model.params           parameters by structural name (MXNet's NDArray format, as save_parameters),
                               BatchNorm statistics averaged over the ranks
        rank_stats.params      each rank's own BatchNorm statistics ("rank<r>/<name>"): exact resume
        optimizer.params       optimizer state tensors (mx.nd.save: no pickle, nothing executes on load)
        state.json             step, epoch, position in the epoch, optimizer scalars, metrics,
                               the model's fingerprint and the spec's hash, versions
        MANIFEST.json          SHA-256 and size of every file above

``state.json`` also records what serving needs without the job spec: ``model_info``
(``facealign.runs.artifact.ModelInfo``), ``validation`` (the run's validation protocol,
``facealign.evaluation.scoring``) and ``ranking`` (the metric and mode that pick ``best``).
How checkpoints are committed, kept and chosen under ``<run>/checkpoints``: facealign.runs.checkpoint.
MXNet is imported by the functions that decode or apply arrays, so a login node can verify and read states.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml

from facealign.errors import CannotStart
from facealign.runs.layout import CHECKPOINTS_DIR, JOB_FILE, write_json

LATEST = "latest"
PREFIX = "ckpt-"
MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE = "model.params", "rank_stats.params", "optimizer.params"
STATE_FILE, MANIFEST_FILE = "state.json", "MANIFEST.json"
FILES = (MODEL_FILE, RANK_STATS_FILE, OPTIMIZER_FILE, STATE_FILE)
WHICH = ("best", "latest")



class CheckpointError(CannotStart, RuntimeError):
    """No usable checkpoint, or one that belongs to another model."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def average_over_ranks(gathered: list[dict]) -> dict:
    """The element-wise mean of per-rank {name: array} dicts (``RunningStats.gather``'s output)."""
    return {k: sum(g[k] for g in gathered) / len(gathered) for k in gathered[0]}


# --- what a path is -------------------------------------------------------------------------------

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
        if p.stat().st_size != entry["bytes"] or sha256(p) != entry["sha256"]:
            return f"{f} does not match its SHA-256 in the manifest"
    try:
        state = read_state(path)
    except CheckpointError as e:
        return str(e)
    if not isinstance(state.get("step"), int) or not isinstance(state.get("model"), dict):
        return f"{STATE_FILE} lacks its step or the model's structure"
    return None


def ranking_of(newest: dict | None, directory: Path) -> tuple[str | None, str]:
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




def write_state(directory: Path, state: dict) -> None:
    """``state.json`` of a checkpoint being written, synced to disk."""
    write_json(directory / STATE_FILE, state, sort_keys=True, sync=True)


def write_manifest(directory: Path) -> None:
    """``MANIFEST.json``: the SHA-256 and size of every file of a checkpoint being written, synced to disk."""
    write_json(directory / MANIFEST_FILE, {f: {"sha256": sha256(directory / f), "bytes": (directory / f).stat().st_size}
                                           for f in FILES}, sort_keys=True, sync=True)


# --- decoding and applying (MXNet) ---------------------------------------------------------------

def decode(path: Path) -> dict:
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

def rank_stats(decoded: dict, ranks) -> dict[int, dict]:
    """{rank: that rank's own BatchNorm statistics} for those of ``ranks`` the checkpoint holds (what
    ``decode`` decoded): ``dist.RunningStats.start`` puts them back, so the run continues exactly."""
    out = {}
    for rank in ranks:
        prefix = f"rank{rank}/"
        own = {k[len(prefix):]: v for k, v in decoded["rank_stats"].items() if k.startswith(prefix)}
        if own:
            out[rank] = own
    return out

def apply(path: Path, decoded: dict, net, trainer, ctx, *, fingerprint: str | None = None,
          rank: int | None = None) -> dict:
    """Load what ``decode`` decoded into ``net`` and ``trainer``; returns the saved state.

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
        arrays = {**arrays, **rank_stats(decoded, [rank]).get(rank, {})}
    for k, p in params.items():
        p.set_data(arrays[k].as_in_context(ctx))
    if trainer is not None:
        try:
            load_optimizer_state(trainer, decoded["optimizer"], state["optimizer"], ctx)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; resume with the same optimizer.name, or use a new run directory")
    return state
