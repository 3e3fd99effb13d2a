"""install.sh (behind `make setup`) is idempotent and refuses wheels it does not know."""
import os
import subprocess
import sys

from conftest import REPO


def _install(**env):
    return subprocess.run(["bash", str(REPO / "install.sh")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "FACEALIGN_VENV": sys.prefix, **env})


def test_second_run_is_a_no_op():
    first = _install()
    assert first.returncode == 0, first.stderr
    again = _install()
    assert again.returncode == 0, again.stderr
    assert "environment up to date" in again.stdout
    assert "building horovod" not in again.stdout


def test_unknown_mxnet_wheel_is_refused():
    proc = _install(FACEALIGN_MXNET="mxnet-rocm")
    assert proc.returncode == 2
    assert "FACEALIGN_MXNET=mxnet-rocm" in proc.stderr


def _plan(tmp_path, *, mpi: bool, **env):
    path = os.environ["PATH"]
    if mpi:  # an MPI compiler on the PATH, as in docker/ (OpenMPI)
        (tmp_path / "mpicxx").write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / "mpicxx").chmod(0o755)
        path = f"{tmp_path}:{path}"
    proc = _install(FACEALIGN_SETUP_PLAN="1", PATH=path, **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_plan_of_the_gpu_image_builds_horovod_with_nccl_and_mpi(tmp_path):
    # docker/Dockerfile's branch, checked without CUDA: the CUDA wheel, NCCL (HOROVOD_NCCL_HOME), MPI.
    plan = _plan(tmp_path, mpi=True, FACEALIGN_MXNET="mxnet-cu112", HOROVOD_NCCL_HOME="/usr")
    assert "mxnet-cu112==1.9.1" in plan
    for flag in ("HOROVOD_WITH_MXNET=1", "HOROVOD_WITH_GLOO=1", "HOROVOD_WITH_MPI=1", "HOROVOD_GPU_OPERATIONS=NCCL"):
        assert flag in plan


def test_plan_on_cpu_never_asks_for_nccl(tmp_path):
    plan = _plan(tmp_path, mpi=False, HOROVOD_NCCL_HOME="/usr")  # the CPU wheel ignores a visible NCCL
    assert "mxnet==1.9.1" in plan and "HOROVOD_WITHOUT_MPI=1" in plan and "NCCL" not in plan


def test_dockerfile_uses_the_one_setup_script():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "FACEALIGN_MXNET=mxnet-cu112" in text and "bash install.sh" in text
    assert "cudnn8" in text and "11.2" in text and "libopenmpi-dev" in text
    assert text.strip().splitlines()[-1] == "RUN horovodrun --check-build"
