"""Tasks inside a container image (docker/README.md): through Pyxis (``srun --container-image``, the default)
or Apptainer (``apptainer exec --nv``, for ``.sif`` files and ``docker://``-style URIs, or
``FACEALIGN_CONTAINER_RUNTIME=apptainer``). The repository and the submit directory are mounted at their own
paths, ``FACEALIGN_CONTAINER_MOUNTS`` adds more (comma-separated, ``src[:dst]``). The tasks' interpreter is
``FACEALIGN_TASK_PYTHON``, by default the images' ``/usr/local/bin/facealign-python``.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

IMAGE_PYTHON = "/usr/local/bin/facealign-python"  # both images of docker/ link their interpreter here
APPTAINER_SCHEMES = ("docker://", "docker-daemon://", "oras://", "library://", "shub://")


def container_runtime(image: str, given: str | None = None) -> str:
    """pyxis or apptainer: ``given`` (FACEALIGN_CONTAINER_RUNTIME), else from the image's form."""
    if given:
        if given not in ("pyxis", "apptainer"):
            raise SystemExit(f"launcher: FACEALIGN_CONTAINER_RUNTIME must be pyxis or apptainer, got {given!r}")
        return given
    return "apptainer" if image.endswith((".sif", ".simg")) or image.startswith(APPTAINER_SCHEMES) else "pyxis"


def container_plan(image: str | None, *, runtime: str | None = None, mounts: str = "", repo: Path,
                   workdir: Path) -> tuple[list[str], list[str]]:
    """(srun options, command prefix) that run a task inside ``image`` (none without one): the repository
    and the working directory mounted at their own paths, plus ``mounts`` ("src[:dst],...")."""
    if not image:
        return [], []
    binds = [f"{repo}:{repo}"]
    if workdir != repo and repo not in workdir.parents:
        binds.append(f"{workdir}:{workdir}")
    for m in filter(None, (x.strip() for x in mounts.split(","))):
        binds.append(m if ":" in m else f"{m}:{m}")
    if container_runtime(image, runtime) == "pyxis":
        return [f"--container-image={image}", f"--container-mounts={','.join(binds)}",
                f"--container-workdir={workdir}"], []
    return [], ["apptainer", "exec", "--nv", "--bind", ",".join(binds), "--pwd", str(workdir), image]


def task_setup(env=None) -> tuple[list[str], list[str], str]:
    """(srun options, command prefix, the tasks' interpreter) from FACEALIGN_CONTAINER* and
    FACEALIGN_SRUN_ARGS / FACEALIGN_TASK_PYTHON."""
    env = os.environ if env is None else env
    image = env.get("FACEALIGN_CONTAINER") or None
    options, prefix = container_plan(image, runtime=env.get("FACEALIGN_CONTAINER_RUNTIME") or None,
                                     mounts=env.get("FACEALIGN_CONTAINER_MOUNTS", ""),
                                     repo=Path(__file__).resolve().parents[1], workdir=Path.cwd().resolve())
    python = env.get("FACEALIGN_TASK_PYTHON") or (IMAGE_PYTHON if image else sys.executable)
    return options + shlex.split(env.get("FACEALIGN_SRUN_ARGS", "")), prefix, python
