"""The short version of `make demo`: pack, score, train with horovodrun -np 2, score again."""
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.horovod


def test_demo_learns(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "facealign.cli.demo", "--steps", "60", "--train-faces", "300",
                           "--val-faces", "40", "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before = float(re.search(r"NME before training: ([\d.]+)%", proc.stdout).group(1))
    after = float(re.search(r"NME after training:\s+([\d.]+)%", proc.stdout).group(1))
    assert after < 0.5 * before
    assert f"two protocols, one checkpoint: {after:.2f}% is the run's own validation ('train'" in proc.stdout
    assert "the table above is facealign-eval's 'standard' + flip" in proc.stdout
    assert "--logdir" in proc.stdout and (tmp_path / "runs" / "demo" / "checkpoints" / "latest").exists()
    reports = list((tmp_path / "runs" / "demo" / "eval").glob("ckpt-*/report.json"))
    assert len(reports) == 1 and "inter_pupil" in proc.stdout
