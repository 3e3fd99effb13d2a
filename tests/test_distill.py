"""Distillation (``loss.distill``): the teacher term against a NumPy reference, a teacher that does not fit
refused at validate with one line, and a distilled run that resumes bit for bit and learns from its teacher."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
import yaml

from conftest import BIN, REPO, assert_same_training, write_tiny_job
from facealign.runs.checkpoint import CheckpointManager
from facealign.train.losses import LossSettings, distill_loss, stacked_loss


def test_the_teacher_term_matches_numpy_on_every_stack_and_only_on_the_teachers_channels():
    rng = np.random.default_rng(0)
    outputs = [rng.normal(size=(2, 6, 8, 8)).astype(np.float32) for _ in range(2)]  # 3 heatmaps + 3 depth maps
    target = rng.uniform(0, 20, size=(2, 3, 8, 8)).astype(np.float32)
    soft = rng.uniform(0, 20, size=(2, 3, 8, 8)).astype(np.float32)  # a teacher without depth maps
    heat = [o[:, :3] for o in outputs]
    settings = LossSettings(kind="mse", distill_weight=0.25)
    total, per_stack = stacked_loss([mx.nd.array(h) for h in heat], mx.nd.array(target), settings=settings,
                                    soft=mx.nd.array(soft))
    expected = [((h - target) ** 2).mean() + 0.25 * ((h - soft) ** 2).mean() for h in heat]
    np.testing.assert_allclose([s.asscalar() for s in per_stack], expected, rtol=1e-5)
    np.testing.assert_allclose(total.asscalar(), sum(expected), rtol=1e-5)
    # a student with depth maps learns only its heatmaps from a teacher that has none
    term = distill_loss(mx.nd, mx.nd.array(outputs[0]), mx.nd.array(soft)).asscalar()
    np.testing.assert_allclose(term, ((outputs[0][:, :3] - soft) ** 2).mean(), rtol=1e-5)
    # no teacher, no term: the reference's loss unchanged
    plain, _ = stacked_loss([mx.nd.array(h) for h in heat], mx.nd.array(target), settings=settings)
    np.testing.assert_allclose(plain.asscalar(), sum(((h - target) ** 2).mean() for h in heat), rtol=1e-5)


def test_under_adaptive_wing_the_teacher_term_is_adaptive_wing_against_the_teachers_heatmaps():
    from test_losses import awing_numpy, loss_map_numpy

    rng = np.random.default_rng(1)
    pred = rng.uniform(-2, 22, size=(2, 3, 8, 8))
    target = np.zeros((2, 3, 8, 8))
    target[:, :, 3:5, 3:5] = 20.0
    soft = np.clip(target * 0.8 + rng.normal(0, 1, target.shape), 0, None)  # a teacher's softer peaks
    settings = LossSettings(kind="awing", distill_weight=0.5)
    term = distill_loss(mx.nd, mx.nd.array(pred, dtype="float64"), mx.nd.array(soft, dtype="float64"), settings)
    np.testing.assert_allclose(term.asscalar(), awing_numpy(pred, soft, loss_map_numpy(soft)), rtol=1e-6)
    total, _ = stacked_loss([mx.nd.array(pred)], mx.nd.array(target), settings=settings, soft=mx.nd.array(soft))
    expected = awing_numpy(pred, target, loss_map_numpy(target)) + 0.5 * awing_numpy(pred, soft, loss_map_numpy(soft))
    np.testing.assert_allclose(total.asscalar(), expected, rtol=1e-4)


def _student(trained_run, synth_sets, path, **data):
    """The light model on the teacher's data settings (trained_run: 64 -> 32 px, sigma 2, base size 256)."""
    return write_tiny_job(path, synth_sets, run={"name": "student", "seed": 4},
                          data={"input_size": 64, "heatmap_size": 32, "sigma": 2.0, "target": "subpixel",
                                "augment": {"base_size": 256, "rotate": 20}, **data},
                          model={"name": "hg1-d3-mobile", "width": 32, "depth": 2},
                          loss={"distill": {"teacher": str(trained_run), "weight": 1.0}},
                          checkpoint={"every_steps": 2, "keep_last": 10}, eval={"every_steps": 100},
                          logging={"every_steps": 1})


def _validate(job):
    return subprocess.run([str(BIN / "facealign-launch"), "validate", str(job)], capture_output=True, text=True,
                          cwd=REPO)


def test_a_teacher_that_does_not_fit_is_refused_at_validate_with_one_line(trained_run, synth_sets, tmp_path):
    ok = _validate(_student(trained_run, synth_sets, tmp_path / "ok.yaml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    small = _validate(_student(trained_run, synth_sets, tmp_path / "small.yaml", input_size=32, heatmap_size=16))
    assert small.returncode == 2 and "Traceback" not in small.stderr
    line = small.stderr.strip().splitlines()[-1]
    assert "loss.distill.teacher:" in line and "has input size 64, this job's model has 32" in line, small.stderr
    job = yaml.safe_load((tmp_path / "ok.yaml").read_text())
    job["loss"]["distill"]["teacher"] = str(tmp_path / "nowhere")
    (tmp_path / "none.yaml").write_text(yaml.safe_dump(job))
    none = _validate(tmp_path / "none.yaml")
    assert none.returncode == 2 and "loss.distill.teacher:" in none.stderr and "Traceback" not in none.stderr


def _train(job, run_dir, *sets):
    env = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
    return subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(job), "--run-dir", str(run_dir),
                           *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env={**os.environ, **env})


def test_a_distilled_run_resumes_bit_for_bit_and_its_teacher_changes_what_it_learns(trained_run, synth_sets,
                                                                                     tmp_path):
    job = _student(trained_run, synth_sets, tmp_path / "job.yaml")
    straight = _train(job, tmp_path / "a", "schedule.max_steps=6")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _train(job, tmp_path / "b", "schedule.max_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train(job, tmp_path / "b", "schedule.max_steps=6")
    assert second.returncode == 0, second.stderr[-3000:]
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "distilling from run/ckpt-" in log and "(hg2-d3-cab)" in log and "resumed from" in log
    a, b = (CheckpointManager(tmp_path / r / "checkpoints", writer=False).latest_valid() for r in ("a", "b"))
    assert a.name == b.name == "ckpt-000000006"
    assert_same_training(a, b, exact=True)
    alone = _train(job, tmp_path / "c", "schedule.max_steps=6", "loss.distill.teacher=null")
    assert alone.returncode == 0, alone.stderr[-3000:]
    c = CheckpointManager(tmp_path / "c" / "checkpoints", writer=False).latest_valid()
    # the teacher is no part of the checkpoint: the student's parameters only, as without a teacher
    assert set(mx.nd.load(str(a / "model.params"))) == set(mx.nd.load(str(c / "model.params")))
    with pytest.raises(AssertionError):
        assert_same_training(a, c, exact=True)


@pytest.mark.horovod
def test_a_distilled_run_shrunk_to_one_rank_matches_the_uninterrupted_one(trained_run, synth_sets, tmp_path):
    """Every rank runs its own teacher: one process standing for the nominal two gives the same bits."""
    from conftest import run_cli

    job = _student(trained_run, synth_sets, tmp_path / "job.yaml", workers=1)
    spec = yaml.safe_load(job.read_text())
    spec["resources"] = {**spec.get("resources", {}), "tasks_per_node": 2}
    job.write_text(yaml.safe_dump(spec))
    for run_dir, ranks, steps in (("straight", 2, 4), ("elastic", 2, 2), ("elastic", 1, 4)):
        proc = run_cli("facealign-launch", "local", job, "-np", ranks, "--run-dir", tmp_path / run_dir, "--set",
                       f"schedule.max_steps={steps}", timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "standing for the nominal 2" in (tmp_path / "elastic" / "log.txt").read_text()
    a, b = (CheckpointManager(tmp_path / r / "checkpoints", writer=False).at_step(4) for r in ("straight", "elastic"))
    assert_same_training(a, b, exact=True)
