"""Elastic by restart: a run resumed at another rank count keeps the nominal world's training.

Real horovodrun jobs through ``facealign-launch local -np N``; the checkpoints are read back."""
import json

import mxnet as mx
import numpy as np
import pytest

from conftest import assert_same_training, pack_synthetic_sets, run_cli, write_tiny_job
from facealign.data.sampler import ShardedSampler
from facealign.runs.checkpoint import CheckpointManager
from facealign.spec.schema import SpecError, load_job
from facealign.train.world import NominalWorld, Shares, deal, process_part
from tb_events import scalars

pytestmark = pytest.mark.horovod


@pytest.fixture(scope="module")
def nominal_two(tmp_path_factory):
    """The tiny job for a nominal world of 2 ranks, with BatchNorm statistics that differ by rank: 8 steps an
    epoch, a checkpoint every 2 steps."""
    root = pack_synthetic_sets(tmp_path_factory.mktemp("elastic"), train=64, val=16)
    return write_tiny_job(root / "tiny.yaml", root, data={"workers": 1, "prefetch": 3},
                          checkpoint={"every_steps": 2, "keep_last": 10}, eval={"every_steps": 4, "batch_size": 8},
                          logging={"every_steps": 1, "images": 0}, resources={"tasks_per_node": 2})


def _local(job, run_dir, np_, steps):
    proc = run_cli("facealign-launch", "local", job, "-np", np_, "--run-dir", run_dir, "--set",
                   f"schedule.max_steps={steps}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _arrays(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def test_a_run_shrunk_to_one_rank_and_grown_back_matches_the_uninterrupted_one(nominal_two, tmp_path):
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    _local(nominal_two, straight, 2, 10)
    _local(nominal_two, elastic, 2, 3)  # 2 ranks to step 3
    one = _local(nominal_two, elastic, 1, 7)  # 1 rank standing for both, across no epoch end
    _local(nominal_two, elastic, 2, 10)  # 2 again, across the epoch end at step 8
    assert "standing for the nominal 2" in one.stdout

    a = CheckpointManager(straight / "checkpoints", writer=False)
    b = CheckpointManager(elastic / "checkpoints", writer=False)
    for step in (4, 6, 10):  # written at 1 rank (4, 6) and at 2 again (10)
        # within 1e-5 as the nominal world's sums in another order would be; for 2 ranks the order is the
        # same (facealign.train.world.RankGradients) and so are the bits
        assert_same_training(a.at_step(step), b.at_step(step), exact=True)
    stats = _arrays(b.at_step(6) / "rank_stats.params")  # the two nominal ranks kept their own statistics
    assert any(k.startswith("rank1/") for k in stats)
    assert any(not np.array_equal(stats[k], stats["rank1/" + k[len("rank0/"):]]) for k in stats if k.startswith("rank0/"))

    state = json.loads((b.at_step(10) / "state.json").read_text())
    assert state["nominal_world_size"] == 2 and state["processes"] == 2
    assert state["world_history"] == [[0, 2], [3, 1], [7, 2]] and state["samples_seen"] == 10 * 4 * 2
    alone = json.loads((b.at_step(6) / "state.json").read_text())  # one process standing for the nominal two
    assert alone["nominal_world_size"] == 2 and alone["processes"] == 1 and alone["samples_seen"] == 6 * 4 * 2
    progress = json.loads((elastic / "progress.json").read_text())
    assert progress["nominal_world_size"] == 2 and progress["processes"] == 2 and "world_size" not in progress
    assert progress["world_history"] == [[0, 2], [3, 1], [7, 2]]
    log = (elastic / "log.txt").read_text()
    assert "world sizes so far 2 from step 0, 1 from step 3" in log

    # the loss curve is the global batch's at every rank count: it continues without a fold
    curve_a = scalars(straight / "tb")["train/loss"]
    curve_b = scalars(elastic / "tb")["train/loss"]
    assert [s for s, _ in curve_b] == [s for s, _ in curve_a] == list(range(1, 11))
    np.testing.assert_allclose([v for _, v in curve_b], [v for _, v in curve_a], rtol=1e-5)


def test_with_gradient_accumulation_a_run_shrunk_to_one_rank_matches_too(nominal_two, tmp_path):
    """2 nominal ranks x 2 micro-batches: one process then runs 4 micro-batches a step, each rank's in order."""
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    acc = "optim.grad_accumulation=2"
    for run_dir, np_, steps in ((straight, 2, 4), (elastic, 2, 1), (elastic, 1, 4)):
        proc = run_cli("facealign-launch", "local", nominal_two, "-np", np_, "--run-dir", run_dir, "--set",
                       f"schedule.max_steps={steps}", "--set", acc, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 micro-batches a step" in (elastic / "log.txt").read_text()
    a = CheckpointManager(straight / "checkpoints", writer=False)
    b = CheckpointManager(elastic / "checkpoints", writer=False)
    for step in (2, 4):  # an epoch is 4 steps of 2 x 2 x 4 faces: step 4 ends it
        assert_same_training(a.at_step(step), b.at_step(step), exact=True)


def test_a_rank_count_that_does_not_divide_the_nominal_world_is_one_line(nominal_two, tmp_path):
    proc = run_cli("facealign-launch", "local", nominal_two, "-np", 3, "--run-dir", tmp_path / "r")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "-np 3: 3 rank(s) were started, but the job's nominal world is 1 node(s) x 2 task(s) = 2 rank(s), and only "
        "a rank count that divides it keeps the same training; start 2 or 1 rank(s), or change resources")


# --- the arithmetic, without processes -------------------------------------------------------------

def test_a_process_deals_its_nominal_ranks_batches_in_their_own_order():
    assert deal([0], 1, 0, 4) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert deal([2, 3], 2, 2, 7) == [(2, 2), (2, 3), (3, 2), (3, 3), (2, 4), (2, 5), (3, 4), (3, 5)]
    # the batches one process draws for ranks 0 and 1 are those the two processes would each draw
    one = ShardedSampler(100, 4, 0, 2, seed=7)
    two = [ShardedSampler(100, 4, r, 2, seed=7) for r in (0, 1)]
    for rank, step in deal([0, 1], 1, 0, one.steps_per_epoch):
        np.testing.assert_array_equal(one.batch_indices(3, step, rank), two[rank].batch_indices(3, step))


class _Switch:
    """Records which nominal rank's BatchNorm statistics the network holds (dist.RunningStats.select's effect)."""

    def __init__(self):
        self.selected = []

    def select(self, rank):
        self.selected.append(rank)


class _Batch:
    def __init__(self, rank):
        self.rank = rank


def test_the_nominal_world_sums_each_ranks_gradients_apart_and_says_when_the_step_is_in():
    """One process standing for nominal ranks 2 and 3 with 2 micro-batches each: the deal order, the BatchNorm
    switch before each micro-batch, the per-rank sums ``(a + b) + (c + d)``, the step's end and the mean."""
    params = mx.gluon.ParameterDict()
    w = params.get("w", shape=(3,))
    w.initialize(ctx=mx.cpu())
    nominal = NominalWorld(Shares(rank=1, size=2, nominal=4, accumulation=2), [w], _Switch())
    assert w.grad_req == "add" and nominal.size == 4 and nominal.processes == 2
    assert nominal.deal(1, 6) == [(2, 2), (2, 3), (3, 2), (3, 3), (2, 4), (2, 5), (3, 4), (3, 5)]
    grads = [np.float32(1e8), np.float32(1.0), np.float32(-1e8), np.float32(1.0)]
    done = []
    for (rank, _), g in zip(nominal.deal(0, 2), grads):
        nominal.before(_Batch(rank))
        w.list_grad()[0][:] += g  # what backward adds under grad_req "add"
        done.append(nominal.after(_Batch(rank)))
    assert nominal.stats.selected == [2, 2, 3, 3] and done == [False, False, False, True]
    # summed per rank first: (1e8 + 1) + (-1e8 + 1) = 0 in float32, where the running sum would give 1
    assert w.list_grad()[0].asnumpy().tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(nominal.mean([8.0, 4.0]), [1.0, 0.5])
    assert nominal.samples_per_step(5) == 5 * 4 * 2
    nominal.clear()
    assert not w.list_grad()[0].asnumpy().any()


def test_shares_of_a_nominal_world(tmp_path):
    (tmp_path / "t.yaml").write_text("data: {train: [x]}\noptim: {grad_accumulation: 3}\n"
                                     "resources: {nodes: 4, tasks_per_node: 2, min_nodes: 2}\n")
    spec = load_job(tmp_path / "t.yaml")
    assert spec.node_counts() == [4, 2] and spec.world_sizes() == [8, 4]  # 3 nodes would not divide 4
    s = process_part(spec, 1, 4)
    assert s.ranks == [2, 3] and s.micro_batches == 6 and s.per_process == 2
    assert process_part(spec, 0, 8).ranks == [0]
    with pytest.raises(SpecError, match="start 8 or 4 or 2 or 1 rank"):
        process_part(spec, 0, 6)


# --- a rank that stops but does not die ---------------------------------------------------------------

def test_a_stopped_rank_is_named_and_the_job_ends_then_resumes(nominal_two, tmp_path, timeout=8):
    """The watchdog fires first here; where Gloo's own transport timeout (about 30 s) comes first, rank 0's line
    starts 'a collective failed (Horovod has been shut down)' and names the rank the same way (docs/faults.md)."""
    import os
    import signal
    import subprocess
    import time

    from conftest import BIN, REPO, rank_process, wait_for_step

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "facealign-launch"), "local", str(nominal_two), "-np", "2", "--run-dir",
                             str(run_dir), "--set", "schedule.max_steps=400", "--set", f"run.stall_timeout_s={timeout}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        wait_for_step(run_dir, 3, proc)
        victim = rank_process(run_dir, 1)
        victim.send_signal(signal.SIGSTOP)
        stopped = time.time()
        out, err = proc.communicate(timeout=180)
        took = time.time() - stopped
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 1
    assert took < min(timeout, 30) + 25, took  # the bound, plus the census and horovodrun's clean-up
    assert not victim.is_running() or victim.status() == "zombie"
    ended = json.loads((run_dir / "exit.json").read_text())
    host = os.uname().nodename
    assert ended["lost_peer"] is True and ended["reason"].endswith(f": rank 1 on {host} stopped answering")
    assert err.strip().splitlines()[-1] == f"facealign-launch: rank 0 exited 1: {ended['reason']}"
    assert ended["reason"].startswith("no progress on rank 0 for 8 s (run.stall_timeout_s)")
    assert ended["reason"] in (run_dir / "log.txt").read_text()
    assert "[0]<stderr>:Traceback" not in err  # rank 0 says one line, not a traceback
    step = CheckpointManager(run_dir / "checkpoints", writer=False).latest_valid().name
    resumed = _local(nominal_two, run_dir, 2, int(step.split("-")[1]) + 2)
    assert f"resumed from {run_dir / 'checkpoints' / step}" in resumed.stdout
