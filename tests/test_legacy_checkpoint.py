"""A run directory written by an older facealign (tests/data/legacy-run-bb133a6, see its README) still
loads, evaluates to the figure its trainer logged, exports, and resumes bitwise."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import BIN, REPO, run_cli
from facealign.runs import artifact
from facealign.serve import loading
from facealign.runs import checkpoint, checkpoint_format
from facealign.cli.pack import main as pack_main

FIXTURE = REPO / "tests" / "data" / "legacy-run-bb133a6"
STEP2_NME = 2.7575447066184466  # what that trainer logged at step 2
STEP4_NME = 2.7109286116408438  # ... and at step 4, resuming from step 2
STEP4_PARAMS_SHA256 = "ab8a3802d573b6900f70d752d65e20f3db297635d884b6932e52ffb9fe601e39"
# Bitwise equality holds on the kind of CPU that made the fixture (oneDNN picks kernels by ISA);
# elsewhere the resumed run must match that code's result to float32 rounding.
FIXTURE_CPU = ("Intel(R) Xeon(R) Processor", {"avx512f", "avx512_bf16", "amx_tile"})


def _same_cpu():
    from facealign.platform.cpu_isa import cpu_flags, cpu_model

    return cpu_model() == FIXTURE_CPU[0] and FIXTURE_CPU[1] <= cpu_flags()


@pytest.fixture
def legacy(tmp_path):
    """The run copied into a working directory holding the data it was trained on (re-packed: the
    procedural faces are a pure function of seed and index; it trained on the flat style, the default then);
    job.yaml names data/ relative to it."""
    shutil.copytree(FIXTURE, tmp_path / "run")
    for name, n, seed in (("train", "32", "1"), ("val", "8", "2")):
        assert pack_main(["--synthetic", n, "--seed", seed, "--style", "flat", "--quiet",
                          str(tmp_path / "data" / name)]) == 0
    return tmp_path


def test_it_predates_the_recorded_model_info():
    state = json.loads((FIXTURE / "checkpoints" / "ckpt-000000002" / "state.json").read_text())
    assert not {"model_info", "validation", "ranking"} & set(state)


def test_it_loads_and_describes_itself(legacy):
    source = artifact.resolve(legacy / "run")
    assert source.kind == "run" and source.location.name == "ckpt-000000002"
    info = source.info
    assert (info.name, info.input_size, info.heatmap_size, info.num_landmarks, info.scheme) == \
        ("hg2-d3-cab", 32, 16, 68, "ibug68")
    assert info.crop_framing == pytest.approx(256 / 384 * 2.25)
    import mxnet as mx

    net = loading.load_network(source, mx.cpu())
    out = net(mx.nd.zeros((1, 3, 32, 32)))
    assert out[-1].shape == (1, 68, 16, 16)


def test_it_evaluates_to_the_figure_its_trainer_logged(legacy):
    proc = run_cli("facealign-eval", "run", "--protocol", "train", "--out", "eval", "--quiet", cwd=legacy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((legacy / "eval" / "report.json").read_text())["results"][0]
    assert result["images"] == 8
    assert abs(result["by_norm"]["eye_centre"]["nme"] - STEP2_NME) < (1e-9 if _same_cpu() else 1e-5)
    proc = run_cli("facealign-eval", "run", "--data", "data/val", "--protocol", "both", "--out", "eval2", "--quiet",
                   cwd=legacy)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_it_exports(legacy):
    proc = run_cli("facealign-export", legacy / "run", legacy / "pkg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert artifact.read_package_info(legacy / "pkg").input_size == 32


def test_it_resumes_bitwise(legacy):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", "run/job.yaml", "--run-dir", "run"],
                          capture_output=True, text=True, timeout=600, cwd=legacy, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resumed from run/checkpoints/ckpt-000000002: step 2" in proc.stdout
    ckpt = checkpoint.find(legacy / "run", "latest")
    assert ckpt.name == "ckpt-000000004"
    state = checkpoint_format.read_state(ckpt)
    if _same_cpu():
        assert hashlib.sha256(checkpoint_format.model_file(ckpt).read_bytes()).hexdigest() == STEP4_PARAMS_SHA256
        assert state["metrics"]["nme/synth"] == STEP4_NME
    import mxnet as mx

    expected = mx.nd.load(str(FIXTURE / "expected-step4-model.params"))
    got = mx.nd.load(str(checkpoint_format.model_file(ckpt)))
    assert expected.keys() == got.keys()
    for k in expected:
        np.testing.assert_allclose(got[k].asnumpy(), expected[k].asnumpy(), rtol=1e-4, atol=1e-6, err_msg=k)
    assert abs(state["metrics"]["nme/synth"] - STEP4_NME) < 1e-4 and np.isfinite(state["lr"])
    assert {"model_info", "validation", "ranking"} <= set(state)  # the new checkpoint describes itself
