"""The distributed trainer, with real 2-process horovodrun jobs on CPU."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import psutil
import pytest
import yaml

from conftest import REPO, pack_synthetic_sets, rank_process, wait_for_step, write_tiny_job
from facealign.runs.checkpoint import CheckpointManager
from tb_events import images, read_events, scalars
from launcher.local import horovodrun_command

pytestmark = pytest.mark.horovod
PROBE = REPO / "tests" / "train_probe.py"


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """64 synthetic training faces, 16 for validation, a small 2-stack hourglass at 32 -> 16: 8 steps an epoch."""
    root = pack_synthetic_sets(tmp_path_factory.mktemp("tinyjob"), train=64, val=16)
    return write_tiny_job(root / "tiny.yaml", root,
                          data={"workers": 1, "prefetch": 2, "augment": {"base_size": 256, "color": 0.2}},
                          schedule={"kind": "cosine", "unit": "epoch", "length": 50},
                          checkpoint={"every_steps": 2, "keep_last": 2}, eval={"every_steps": 4, "batch_size": 8},
                          logging={"every_steps": 1, "images": 2}, resources={"tasks_per_node": 2})


def _cmd(job, run_dir, probe_dir, *sets):
    probe_dir.mkdir(parents=True, exist_ok=True)
    return horovodrun_command(2, [PROBE, probe_dir, "--job", job, "--run-dir", run_dir,
                                  *[a for s in sets for a in ("--set", s)]])


ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "PYTHONPATH": str(REPO / "tests")}


def _start(job, run_dir, probe_dir, *sets):
    # A session of its own: on failure the test kills horovodrun *and* its ranks (killpg).
    return subprocess.Popen(_cmd(job, run_dir, probe_dir, *sets), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **ENV}, start_new_session=True)


def _stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _run(job, run_dir, probe_dir, *sets, timeout=300):
    proc = _start(job, run_dir, probe_dir, *sets)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _report(probe_dir, rank):
    return json.loads((probe_dir / f"rank{rank}.json").read_text())


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_ranks_train_identically_and_only_rank_0_writes(tiny_job, tmp_path):
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    proc = _run(tiny_job, run_dir, probe, "schedule.max_steps=10")
    assert proc.returncode == 0, proc.stdout[-3000:] + _said(proc)
    r0, r1 = _report(probe, 0), _report(probe, 1)
    assert r0["exit"] == r1["exit"] == 0
    assert r1["writes"] == [], r1["writes"]  # every rank reads; only rank 0 writes
    assert any("checkpoints" in w for w in r0["writes"]) and any("log.txt" in w for w in r0["writes"])
    final0, final1 = _params(probe / "rank0.params"), _params(probe / "rank1.params")
    stat_keys = {k for k in final0 if k.endswith(("running_mean", "running_var"))}
    trainable = lambda p: {k: v for k, v in p.items() if k not in stat_keys}  # noqa: E731
    _assert_same(trainable(final0), trainable(final1))  # identical trainable parameters on both ranks
    assert any(not np.array_equal(final0[k], final1[k]) for k in stat_keys)  # BN statistics follow each rank's data
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoints", "exit.json", "job.yaml", "log.txt",
                                                          "progress.json", "tb"]
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["step"] == progress["last_step"] == 10 and progress["metric"] == "nme/synth"
    assert progress["best"] == pytest.approx(min(v for _, v in scalars(run_dir / "tb")["val/nme_eye_centre/synth"]), rel=1e-6)
    ckpt = CheckpointManager(run_dir / "checkpoints", writer=False)
    assert [p.name for p in ckpt.checkpoints()] == ["ckpt-000000008", "ckpt-000000010"]  # keep_last 2
    saved = _params(ckpt.latest_valid() / "model.params")
    for k in final0:  # the checkpoint: rank 0's weights, BN statistics averaged over the ranks
        expected = (final0[k] + final1[k]) / 2 if k in stat_keys else final0[k]
        np.testing.assert_allclose(saved[k], expected, rtol=1e-6, err_msg=k)
    per_rank = _params(ckpt.latest_valid() / "rank_stats.params")
    for k in stat_keys:
        np.testing.assert_array_equal(per_rank[f"rank1/{k}"], final1[k])
    log = (run_dir / "log.txt").read_text()
    assert "rank 0 of 2" in log and "step 10/10" in log and "img/s" in log and "data-wait" in log
    assert re.search(r"validation at step 4: nme/synth [\d.]+% \(eye-centre NME\)", log), log  # the normaliser named
    assert "oneDNN ISA " in log.splitlines()[0]  # the start-up line says which ISA oneDNN may use
    assert yaml.safe_load((run_dir / "job.yaml").read_text())["schedule"]["max_steps"] == 10

    # TensorBoard events, read back
    tb = scalars(run_dir / "tb")
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 11))
    assert {"train/loss_stack0", "train/loss_stack1", "train/lr", "perf/images_per_s", "perf/data_wait",
            "val/nme_eye_centre/synth"} <= set(tb) and "val/nme/synth" not in tb
    assert [s for s, _ in tb["val/nme_eye_centre/synth"]] == [0, 4, 8, 10]
    assert {"val/faces", "val/heatmaps"} <= images(run_dir / "tb")


def test_a_rank_count_that_does_not_divide_the_nominal_world_is_refused(tiny_job, tmp_path):
    """2 processes cannot stand for a nominal world of 3 (facealign.train.world); fewer that divide it can
    (tests/test_elastic.py)."""
    proc = _run(tiny_job, tmp_path / "run", tmp_path / "p", "resources.tasks_per_node=3", timeout=120)
    assert proc.returncode != 0
    assert "2 rank(s) were started, but the job's nominal world is 1 node(s) x 3 task(s) = 3 rank(s)" in proc.stderr


def _said(proc, chars: int = 2000) -> str:
    """The end of what each rank printed (horovodrun prefixes its lines with [r]<stderr>:), for assertion messages:
    a rank that died first is seen beside the one whose error it caused."""
    by_source = {}
    for line in proc.stderr.splitlines():
        found = re.match(r"\[(\d+)\]<std(?:err|out)>:", line)
        by_source.setdefault(f"rank {found.group(1)}" if found else "horovodrun", []).append(line)
    return "\n".join(f"--- {source}:\n" + "\n".join(lines)[-chars:] for source, lines in by_source.items())


@pytest.mark.parametrize("amp", ["off", "bfloat16"])
def test_exact_resume_is_bitwise(tiny_job, tmp_path, amp):
    sets = [f"optim.amp={amp}"]
    straight = _run(tiny_job, tmp_path / "a", tmp_path / "pa", "schedule.max_steps=12", *sets)
    assert straight.returncode == 0, _said(straight)
    first = _run(tiny_job, tmp_path / "b", tmp_path / "pb1", "schedule.max_steps=5", *sets)
    assert first.returncode == 0, _said(first)
    second = _run(tiny_job, tmp_path / "b", tmp_path / "pb2", "schedule.max_steps=12", *sets)
    assert second.returncode == 0, _said(second)
    if amp == "bfloat16":  # bfloat16's loss curve is float32's, within bfloat16's precision
        fp32 = _run(tiny_job, tmp_path / "f", tmp_path / "pf", "schedule.max_steps=12")
        assert fp32.returncode == 0, _said(fp32)
        curve = [v for _, v in scalars(tmp_path / "a" / "tb")["train/loss"]]
        reference = [v for _, v in scalars(tmp_path / "f" / "tb")["train/loss"]]
        assert len(curve) == len(reference) == 12 and curve != reference
        np.testing.assert_allclose(curve, reference, rtol=0.03)
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "resumed from" in log and "step 5, epoch 0, batch 5 of the epoch" in log
    for rank in (0, 1):  # crosses an epoch boundary (8 steps) after the resume
        _assert_same(_params(tmp_path / "pa" / f"rank{rank}.params"), _params(tmp_path / "pb2" / f"rank{rank}.params"))
    a = CheckpointManager(tmp_path / "a" / "checkpoints", writer=False).latest_valid()
    b = CheckpointManager(tmp_path / "b" / "checkpoints", writer=False).latest_valid()
    _assert_same(_params(a / "optimizer.params"), _params(b / "optimizer.params"))  # Nadam moments, bit for bit
    opt_a, opt_b = (json.loads((c / "state.json").read_text())["optimizer"] for c in (a, b))
    assert opt_a["scalars"] == opt_b["scalars"] and opt_a["index_update_count"] == opt_b["index_update_count"]
    # The resumed writer starts with a purge at the checkpoint's step, so curves never fold back.
    purges = [ev.step for ev in read_events(tmp_path / "b" / "tb") if ev.HasField("session_log")
              and ev.session_log.status == ev.session_log.START]
    assert 5 in purges


def test_a_signal_stops_every_rank_at_a_checkpoint_and_the_run_resumes(tiny_job, tmp_path):
    run_dir, probe = tmp_path / "run", tmp_path / "p1"
    proc = _start(tiny_job, run_dir, probe, "schedule.max_steps=400", "optim.fp16_allreduce=true")
    try:
        wait_for_step(run_dir, 3, proc)
        rank_process(run_dir, 1).send_signal(signal.SIGUSR2)  # to one rank only: the vote tells the other
        proc.communicate(timeout=120)
    finally:
        _stop(proc)
    assert _report(probe, 0)["exit"] == 75 and _report(probe, 1)["exit"] == 75
    log = (run_dir / "log.txt").read_text()
    stopped = int(log.split("stopping at step ")[1].split()[0])
    assert "on another rank's signal" in log or "on SIGUSR2's signal" in log
    ckpt = CheckpointManager(run_dir / "checkpoints", writer=False)
    assert ckpt.latest_valid().name == f"ckpt-{stopped:09d}"  # checkpointed at the stop: nothing lost

    resumed = _run(tiny_job, run_dir, tmp_path / "p2", f"schedule.max_steps={stopped + 2}")
    assert resumed.returncode == 0, _said(resumed)
    log = (run_dir / "log.txt").read_text()
    assert f"resumed from {run_dir / 'checkpoints' / f'ckpt-{stopped:09d}'}: step {stopped}" in log
    assert f"step {stopped + 2}/{stopped + 2}" in log


def test_a_killed_rank_makes_the_others_exit(tiny_job, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(tiny_job, run_dir, tmp_path / "p", "schedule.max_steps=400")
    try:
        wait_for_step(run_dir, 3, proc)
        victim = rank_process(run_dir, 1)
        survivor = rank_process(run_dir, 0)
        victim.kill()
        killed_at = time.time()
        proc.communicate(timeout=300)  # a hang shows as the assertion below, not as a timeout
        waited = time.time() - killed_at
    finally:
        _stop(proc)
    assert proc.returncode != 0
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
    assert waited < 60, waited  # bounded: no hang in an allreduce the dead rank never joins


def test_a_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_job, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(tiny_job, run_dir, tmp_path / "p", "optim.lr=1.0e+12", "optim.name=sgd", "checkpoint.every_steps=1",
                "schedule.max_steps=50")
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    # the whole tail on failure: a rank's native crash (exit 134) prints its threads' stacks there (faulthandler)
    assert "non-finite" in text and " at step " in text and "stopped before the update" in text, text[-6000:]
    step = int(text.split(" at step ")[1].split()[0])
    # the checkpoint of the step before holds the weights that gave the non-finite loss: set aside
    assert (run_dir / "checkpoints" / f"diverged-ckpt-{step - 1:09d}").is_dir()
    ckpt = CheckpointManager(run_dir / "checkpoints", writer=False)
    good = ckpt.latest_valid()
    if step >= 3:  # the checkpoint two steps back survives, verified
        assert good is not None and ckpt.verify(good) is None and good.name == f"ckpt-{step - 2:09d}"
    else:  # step 2 diverged: ckpt-1 was set aside and none is left
        assert good is None and ckpt.checkpoints() == []


def test_single_process_with_bfloat16_amp_and_gradient_accumulation(tiny_job, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(tiny_job), "--run-dir", str(run_dir),
                           "--set", "resources.tasks_per_node=1", "--set", "optim.amp=bfloat16",
                           "--set", "optim.grad_accumulation=2", "--set", "schedule.max_steps=3"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    assert proc.returncode == 0, _said(proc)
    log = (run_dir / "log.txt").read_text()
    assert "batch 4 x 1 rank(s) x 2" in log and "step 3/3" in log and "finished at step 3" in log
    losses = [v for _, v in scalars(run_dir / "tb")["train/loss"]]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_the_loader_writer_and_log_are_closed_on_an_error(tiny_job, tmp_path):
    """train() in this process, stopped by a non-finite loss mid-run: its loader workers are gone and
    its log and TensorBoard files are closed, as on every way out of train()."""
    from facealign.spec import components
    from facealign.train.faults import NonFiniteLoss
    from facealign.train.loop import train

    spec = components.load(tiny_job, ["resources.tasks_per_node=1", "optim.lr=1.0e+12", "optim.name=sgd",
                                      "schedule.max_steps=50", "eval.every_steps=50"])
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(NonFiniteLoss, match="non-finite (loss|gradients) at step"):
        train(spec, tmp_path / "run")
    workers = [p for p in me.children(recursive=True) if p.pid not in before and p.is_running()
               and p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())]
    assert not workers, [p.cmdline() for p in workers]
    open_files = {Path(f.path).resolve() for f in me.open_files()}
    assert (tmp_path / "run" / "log.txt").resolve() not in open_files
    assert not [f for f in open_files if str(f).startswith(str((tmp_path / "run" / "tb").resolve()))]
    assert "step 1/50" in (tmp_path / "run" / "log.txt").read_text()  # it did train before stopping


# --- dynamic loss scaling: the skip decision is collective ----------------------------------------------

def _trainable(params):
    return {k: v for k, v in params.items() if not k.endswith(("running_mean", "running_var"))}


def _state(run_dir):
    ckpt = CheckpointManager(run_dir / "checkpoints", writer=False)
    return json.loads((ckpt.latest_valid() / "state.json").read_text())


def _run_env(job, run_dir, probe_dir, env, *sets, timeout=300):
    proc = subprocess.Popen(_cmd(job, run_dir, probe_dir, *sets), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **ENV, **env}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _stop(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("accumulation, call, extra", [(1, 3, []), (2, 5, ["optim.amp=bfloat16"])],
                         ids=["plain", "accumulation-amp"])
def test_an_overflow_on_one_rank_skips_that_update_on_every_rank(tiny_job, tmp_path, accumulation, call, extra):
    """+inf in one gradient of rank 1 alone at step 3 (as a float16 overflow there would leave it): both
    ranks skip the same update and halve the scale, stay bitwise identical, and the weights after step 3
    are those after step 2 of the same run without the overflow. The scale resumes from the checkpoint."""
    sets = ["optim.loss_scaling=dynamic", f"optim.grad_accumulation={accumulation}", *extra]
    run_dir = tmp_path / "run"
    proc = _run_env(tiny_job, run_dir, tmp_path / "p", {"FACEALIGN_PROBE_INF_GRAD": f"1:{call}"}, *sets,
                    "schedule.max_steps=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + _said(proc)
    assert "+inf gradient after backward call" in proc.stderr
    final0, final1 = _params(tmp_path / "p" / "rank0.params"), _params(tmp_path / "p" / "rank1.params")
    _assert_same(_trainable(final0), _trainable(final1))
    log = (run_dir / "log.txt").read_text()
    assert "dynamic loss scale 65536 (skips agreed by all ranks)" in log
    assert "overflow at step 3 (1 non-finite gradient arrays over the ranks): update skipped on every rank; " \
           "loss scale 65536 -> 32768" in log
    assert log.count("overflow at step") == 1
    assert _state(run_dir)["loss_scale"] == {"value": 32768.0, "clean": 0, "skipped": 1}
    assert [v for _, v in scalars(run_dir / "tb")["train/loss_scale"]] == [65536.0, 65536.0, 32768.0]

    clean = _run(tiny_job, tmp_path / "clean", tmp_path / "pc", *sets, "schedule.max_steps=2")
    assert clean.returncode == 0, _said(clean)
    _assert_same(_trainable(final0), _trainable(_params(tmp_path / "pc" / "rank0.params")))

    resumed = _run(tiny_job, run_dir, tmp_path / "p2", *sets, "schedule.max_steps=5")
    assert resumed.returncode == 0, _said(resumed)
    assert _state(run_dir)["loss_scale"] == {"value": 32768.0, "clean": 2, "skipped": 1}
