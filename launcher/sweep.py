"""Sweeps: a grid of job-spec variants, validated together, run as ONE Slurm job array (or here, in turn).

    facealign-launch sweep jobs/sat2-d3-cab.yaml --grid optim.lr=1e-4,2e-4 --grid loss.kind=mse,awing
    facealign-launch sweep sweeps/lr-loss.yaml --max-parallel 2
    facealign-launch sweep jobs/demo.yaml --zip optim.lr=1e-3,2e-3 --zip optim.warmup_steps=0,50 --local

``--grid KEY=V1,V2,...`` (repeatable) spans the cartesian product; ``--zip KEY=V1,V2,...`` lists of
one length vary together (one axis of the product); ``--set`` fixes an override for every member.
Values are YAML (``2e-4`` a number, ``[a, b]`` a list: commas inside brackets stay). Every member is
built and checked (the spec, its record files, its model) before anything is written or submitted;
one bad member names itself and its error, and exits 2. Members land in
``<run.out_root>/<sweep>/<NN>-<short overrides>/`` (``job.yaml``, then the run), the sweep in
``<sweep dir>/sweep.json`` (facealign.runs) and ``sbatch.sh``: ``#SBATCH --array=0-(N-1)[%K]``,
each array task running its own member with its own run directory and log through
slurm/run-training.sh, so preemption and requeue work per task as for single jobs.

A sweep file (``sweeps/*.yaml``) says the same: ``base`` (the job spec, relative to the file), and
optionally ``name``, ``set`` (a list), ``grid`` and ``zip`` (mappings of key to a list of values),
``max_parallel``; an unknown key is an error.
"""
from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facealign.spec import components
from facealign.runs.layout import JOB_FILE
from facealign.spec.schema import SpecError, dump_job
from facealign.runs.status import SWEEP_FILE, read_json, write_json
from launcher import scripts

SWEEP_KEYS = ("base", "name", "set", "grid", "zip", "max_parallel")


@dataclass
class Sweep:
    base: Path
    name: str | None = None
    fixed: list = field(default_factory=list)  # --set overrides for every member
    grid: dict = field(default_factory=dict)  # key -> [values as override text]
    zipped: dict = field(default_factory=dict)
    max_parallel: int | None = None

    def members(self) -> list[list[str]]:
        """Every member's overrides, in order: the zip axis (if any) outermost, then the grid keys as given."""
        axes = []
        if self.zipped:
            lengths = {k: len(v) for k, v in self.zipped.items()}
            if len(set(lengths.values())) != 1:
                raise SpecError(f"--zip lists must be of one length, got {lengths}")
            n = next(iter(lengths.values()))
            axes.append([[f"{k}={v[i]}" for k, v in self.zipped.items()] for i in range(n)])
        for key, values in self.grid.items():
            axes.append([[f"{key}={v}"] for v in values])
        if not axes:
            raise SpecError("a sweep needs --grid or --zip")
        return [sum(combo, []) for combo in itertools.product(*axes)]


def split_values(text: str) -> list[str]:
    """``1e-4,2e-4`` -> two; commas inside brackets or braces stay (``[a,b],[c]`` -> two)."""
    out, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    values = [v.strip() for v in out]
    if any(not v for v in values):
        raise SpecError(f"{text!r}: an empty value")
    return values


def parse_axis(items, flag: str) -> dict:
    axis = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{flag} {item!r}: expected dotted.key=V1,V2,...")
        axis[key.strip()] = split_values(values)
    return axis


def _as_text(value) -> str:
    """A sweep file's YAML value as override text."""
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix(
        "\n...").strip()


def load_sweep_file(path: Path) -> Sweep:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read the sweep file: {e}")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep file is a mapping ({', '.join(SWEEP_KEYS)})")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise SpecError(f"{path}: unknown key '{unknown[0]}' (valid keys: {', '.join(SWEEP_KEYS)})")
    if "base" not in raw:
        raise SpecError(f"{path}: 'base' (the job spec) is missing")

    def axis(key):
        section = raw.get(key) or {}
        if not isinstance(section, dict) or any(not isinstance(v, list) or not v for v in section.values()):
            raise SpecError(f"{path}: '{key}' must map each dotted key to a non-empty list of values")
        return {k: [_as_text(v) for v in values] for k, values in section.items()}

    fixed = raw.get("set") or []
    if not isinstance(fixed, list):
        raise SpecError(f"{path}: 'set' must be a list of dotted.key=value")
    parallel = raw.get("max_parallel")
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
        raise SpecError(f"{path}: 'max_parallel' must be a whole number of tasks >= 1, got {parallel!r}")
    return Sweep(base=(path.parent / raw["base"]).resolve(), name=raw.get("name"), fixed=[str(x) for x in fixed],
                 grid=axis("grid"), zipped=axis("zip"), max_parallel=raw.get("max_parallel"))


def is_sweep_file(path: Path) -> bool:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "base" in raw


def short_name(overrides) -> str:
    """``optim.lr=2e-4 loss.kind=awing`` -> ``lr2e-4-kind_awing``-style text safe in a path."""
    parts = []
    for o in overrides:
        key, _, value = o.partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}{re.sub(r'[^A-Za-z0-9.+-]+', '_', value).strip('_')}")
    return "-".join(parts)[:80] or "base"


@dataclass
class Member:
    index: int
    overrides: list
    spec: object
    dir: Path


def plan(sweep: Sweep, out_root: Path | None = None) -> tuple[str, Path, list[Member]]:
    """(sweep name, sweep directory, members), every member built and checked; SpecError names the first bad one."""
    members = []
    base_spec = components.load(sweep.base, sweep.fixed, check_files=True)
    name = sweep.name or f"{base_spec.run.name}-sweep"
    root = Path(out_root or base_spec.run.out_root).resolve() / name
    for i, overrides in enumerate(sweep.members()):
        try:
            spec = components.load(sweep.base, sweep.fixed + overrides, check_files=True)
        except SpecError as e:
            raise SpecError(f"sweep member {i} ({' '.join(overrides)}): {e}") from None
        if spec.resources != base_spec.resources:
            raise SpecError(f"sweep member {i} ({' '.join(overrides)}): varies resources; one job array has one "
                            f"resource request: sweep resources.* in separate sweeps")
        members.append(Member(i, overrides, spec, root / f"{i:02d}-{short_name(overrides)}"))
    return name, root, members


def write(sweep: Sweep, name: str, root: Path, members: list[Member]) -> None:
    """Each member's job.yaml and the sweep's record (refusing a directory that holds another sweep)."""
    record_path = root / SWEEP_FILE
    record = {"name": name, "base": str(sweep.base), "set": sweep.fixed, "grid": sweep.grid, "zip": sweep.zipped,
              "max_parallel": sweep.max_parallel,
              "members": [{"index": m.index, "dir": m.dir.name, "overrides": m.overrides} for m in members],
              "array_job_id": None}
    if record_path.exists():
        old = read_json(record_path) or {}
        if [m["overrides"] for m in old.get("members", [])] != [m.overrides for m in members] \
                or old.get("set") != sweep.fixed or old.get("base") != str(sweep.base):
            raise SpecError(f"{root} holds another sweep ({record_path}); pass --name for a new one")
    root.mkdir(parents=True, exist_ok=True)
    for m in members:
        m.dir.mkdir(parents=True, exist_ok=True)
        dump_job(m.spec, m.dir / JOB_FILE)
    write_json(record_path, record)


def record_array(root: Path, array_job_id: str) -> None:
    """The job array that runs the sweep, once submitted."""
    write_json(root / SWEEP_FILE, {**(read_json(root / SWEEP_FILE) or {}), "array_job_id": array_job_id})


def render_array(spec, name: str, root: Path, members: list[Member], repo: Path, python: str, max_parallel=None,
                 extra=(), container=None, mounts=(), runtime=None) -> str:
    """The sbatch script of the array: task i runs member i (its own run directory and log)."""
    parallel = f"%{max_parallel}" if max_parallel else ""
    lines = ["#!/bin/bash", f"# Written by facealign-launch sweep: {len(members)} members of {name} ({root})."]
    lines += scripts.sbatch_lines(spec, f"facealign-{name}", f"{root}/slurm-%A_%a.out", extra,
                                  array=f"0-{len(members) - 1}{parallel}")
    lines += ["MEMBERS=(" + " ".join(shlex.quote(m.dir.name) for m in members) + ")",
              f'RUN={shlex.quote(str(root))}/"${{MEMBERS[$SLURM_ARRAY_TASK_ID]}}"',
              f"export FACEALIGN_LAUNCH_PYTHON={shlex.quote(python)}",
              'export FACEALIGN_RUN_DIR="$RUN"',
              f"export PYTHONPATH={shlex.quote(str(repo))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    lines += scripts.container_exports(container, mounts, runtime)
    lines.append(f'exec bash {shlex.quote(str(repo / "slurm" / "run-training.sh"))} "$RUN/{JOB_FILE}"')
    return "\n".join(lines) + "\n"
