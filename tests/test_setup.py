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
