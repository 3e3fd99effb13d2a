"""Horovod is built against this MXNet and really runs multi-process jobs with Gloo on CPU."""
import json
import subprocess

import numpy as np

from conftest import BIN, REPO


def test_check_build_shows_mxnet_and_gloo():
    out = subprocess.run([str(BIN / "horovodrun"), "--check-build"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "[X] MXNet" in out
    gloo_lines = [line for line in out.splitlines() if "Gloo" in line]
    assert gloo_lines and all("[X]" in line for line in gloo_lines)


def test_two_process_allreduce_and_distributed_trainer(horovodrun, tmp_path):
    proc = horovodrun(2, [REPO / "tests" / "horovod_allreduce_worker.py", tmp_path])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["size"] == 2
        assert r["sum"] == [3.0] * 4  # 1 + 2
        assert r["avg"] == [1.5] * 4
    # Different data on each rank, averaged gradients: the parameters are identical after the step.
    np.testing.assert_array_equal(reports[0]["weight"], reports[1]["weight"])
    np.testing.assert_array_equal(reports[0]["bias"], reports[1]["bias"])
