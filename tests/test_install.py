"""install.sh (behind `make setup`) is idempotent and refuses wheels it does not know."""
import os
import subprocess
import sys
from pathlib import Path

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


def test_plan_of_the_ngc_image_uses_its_mxnet_and_horovod(tmp_path):
    plan = _plan(tmp_path, mpi=True, FACEALIGN_MXNET="preinstalled", FACEALIGN_VENV="system")
    assert "mxnet: preinstalled, must be 1.9.1 (never pip-installed over)" in plan
    assert "not built" in plan and "mxnet wheel" not in plan and "build flags" not in plan


def test_preinstalled_mxnet_is_checked_and_never_installed_over():
    """This venv as a container's interpreter: MXNet 1.9.1 and Horovod 0.28.1 with MXNet are found, checked
    and left as they are (same files); only the rest is installed. The stamp is put back after."""
    import mxnet

    stamp = Path(sys.prefix) / ".facealign-setup"
    saved = stamp.read_text() if stamp.exists() else None
    init = Path(mxnet.__file__)
    before = init.stat().st_mtime_ns
    try:
        proc = _install(FACEALIGN_MXNET="preinstalled")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "using the preinstalled mxnet 1.9.1 (CUDA: 0) and horovod 0.28.1; numpy stays 1.23.5" in proc.stdout
        assert "horovod: the preinstalled one" in proc.stdout and "building horovod" not in proc.stdout
        assert init.stat().st_mtime_ns == before
    finally:
        if saved is not None:
            stamp.write_text(saved)


def test_preinstalled_without_mxnet_is_one_line_and_exit_2(tmp_path):
    proc = _install(FACEALIGN_MXNET="preinstalled", FACEALIGN_VENV="system", FACEALIGN_PYTHON="/usr/bin/python3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().startswith("install.sh: FACEALIGN_MXNET=preinstalled, but /usr/bin/python3 cannot "
                                          "import mxnet: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_ngc_dockerfile_keeps_the_containers_mxnet_and_horovod():
    text = (REPO / "docker" / "Dockerfile.ngc").read_text()
    assert text.count("FROM nvcr.io/nvidia/mxnet:24.06-py3") == 1
    assert "FACEALIGN_MXNET=preinstalled" in text and "FACEALIGN_VENV=system" in text and "bash install.sh" in text
    assert "pip install" not in text  # everything goes through install.sh, which never names MXNet or Horovod
    assert "/usr/local/bin/facealign-python" in text and "/usr/local/bin/facealign-python" in \
        (REPO / "docker" / "Dockerfile").read_text()
    assert text.strip().splitlines()[-1] == "RUN horovodrun --check-build"
