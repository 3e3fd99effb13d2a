"""Cluster launch on a real Slurm: slurm/local-cluster.sh starts munge, slurmctld and slurmd on this
machine (and two test hosts in network namespaces), and the tests sbatch the real templates."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from conftest import BIN, REPO, assert_same_training, pack_synthetic_sets, rank_process, write_tiny_job
from tb_events import scalars

pytestmark = pytest.mark.slurm
CLUSTER = REPO / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests start slurmctld and slurmd: run them as root (CI does)")
    proc = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    return {"pair": "pair" in partitions, "up": proc.stdout}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return pack_synthetic_sets(tmp_path_factory.mktemp("slurmdata"), train=64, val=16)


def tiny_job(data, path, **resources):
    return write_tiny_job(path, data, data={"workers": 1, "prefetch": 2, "augment": {"base_size": 256}},
                          schedule={"kind": "cosine", "unit": "epoch", "length": 2},
                          checkpoint={"every_steps": 4, "keep_last": 2}, eval={"every_steps": 8, "batch_size": 8},
                          logging={"every_steps": 2},
                          resources={"tasks_per_node": 2, "cpus_per_task": 1, "time": "00:10:00", **resources})


ENV = {**os.environ, "FACEALIGN_LAUNCH_PYTHON": sys.executable}


def sbatch(*args, env=None):
    proc = subprocess.run(["sbatch", "--parsable", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env={**ENV, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_info(job_id) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job_id, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"),
             timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job_id)
        if info.get("JobState") in states:
            return info
        if info.get("Reason") in ("PartitionConfig", "BadConstraints", "PartitionNodeLimit"):
            subprocess.run(["scancel", job_id])
            pytest.fail(f"job {job_id} can never run here: {info.get('Reason')}")
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    pytest.fail(f"job {job_id} did not reach {states} in {timeout} s: {job_info(job_id)}")


def _cpu(tasks=2):
    return ["--gres=none", f"--ntasks-per-node={tasks}", "--cpus-per-task=1"]


def test_launcher_validates_and_renders_without_slurm(data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml", gpus_per_node=0)
    run = [str(BIN / "facealign-launch")]
    ok = subprocess.run(run + ["validate", job], capture_output=True, text=True)
    assert ok.returncode == 0 and "2 rank(s)" in ok.stdout, ok.stderr
    (tmp_path / "bad.yaml").write_text(job.read_text().replace("lr:", "lrr:"))
    bad = subprocess.run(run + ["validate", tmp_path / "bad.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown key 'optim.lrr'" in bad.stderr and "bad.yaml" in bad.stderr
    missing = subprocess.run(run + ["validate", job, "--set", f"data.train=[{tmp_path / 'nope'}]"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr
    script = subprocess.run(run + ["render", job, "--set", "resources.nodes=2", "--set", "resources.gpus_per_node=4",
                                   "--set", "resources.tasks_per_node=4"], capture_output=True, text=True).stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:4", "#SBATCH --signal=USR2@120",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert line in script
    assert "--set resources.nodes=2" in script and "run-training.sh" in script and "#SBATCH --no-kill" in script
    ranged = subprocess.run(run + ["render", job, "--set", "resources.nodes=4", "--set", "resources.min_nodes=2"],
                            capture_output=True, text=True).stdout
    assert "#SBATCH --nodes=2-4" in ranged and "#SBATCH --no-kill" in ranged and "#SBATCH --mincpus=2" in ranged
    assert "--ntasks-per-node" not in ranged  # Slurm would allocate the fewest nodes (launcher.scripts)
    elastic = subprocess.run(run + ["validate", job, "--set", "resources.nodes=4", "--set", "resources.min_nodes=2"],
                             capture_output=True, text=True)
    assert elastic.returncode == 0, elastic.stderr
    assert ("world sizes: 8, 4 rank(s); on a lost node it goes on with 2 node(s) = 4 rank(s), the same training; up "
            "to 3 restart(s) in the allocation; a failure redoes at most the checkpoint interval, 4 step(s)") \
        in elastic.stdout
    local = subprocess.run(run + ["local", job, "-np", "3"], capture_output=True, text=True)
    assert local.returncode == 2 and "start 2 or 1 rank(s)" in local.stderr


def test_a_cluster_brought_up_again_starts_without_the_jobs_it_had(cluster):
    # A controller stopped with a job on the node (a machine restart, a killed CI run) saves it; the next "up"
    # must not bring it back holding the node, or every test after it waits for resources.
    held = sbatch("--partition=local", "--cpus-per-task=1", "--output=/dev/null", "--wrap=sleep 600")
    assert wait_for(held, states=("RUNNING",), timeout=60)["JobState"] == "RUNNING"
    subprocess.run(["pkill", "-x", "slurmctld"], check=True)
    for _ in range(60):
        if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode != 0:
            break
        time.sleep(0.5)
    proc = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""
    assert "local* 1 idle" in proc.stdout, proc.stdout


def test_train_template_runs_and_chained_eval_reports(cluster, data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml")
    run_dir = tmp_path / "run"
    train = sbatch(*_cpu(), f"--output={tmp_path}/train-%j.out", "slurm/train_sat.sh", job,
                   env={"FACEALIGN_RUN_DIR": str(run_dir)})
    evaluate = sbatch(f"--dependency=afterok:{train}", "--gres=none", "--cpus-per-task=2",
                      f"--output={tmp_path}/eval-%j.out",
                      "slurm/eval.sh", run_dir, f"synth={data / 'val'}", env={"FACEALIGN_EVAL_ARGS": "--protocol standard"})
    info = wait_for(train)
    log = (tmp_path / f"train-{train}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "SLURM_RESTART_COUNT=0" in log and "Gloo rendezvous" in log and "finished at step 16" in log
    info = wait_for(evaluate)
    eval_log = (tmp_path / f"eval-{evaluate}.out").read_text()
    assert info["JobState"] == "COMPLETED", eval_log[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "ckpt-000000016"
    assert "train/loss" in scalars(run_dir / "tb") and "step 16/16" in (run_dir / "log.txt").read_text()
    report = json.loads(next((run_dir / "eval").glob("ckpt-*/report.json")).read_text())
    assert report["results"][0]["set"] == "synth" and report["results"][0]["images"] == 16
    assert "eval/synth_standard/nme_eye_centre" in scalars(run_dir / "tb")


def test_launcher_submit_writes_the_run_and_completes(cluster, data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml")
    run_dir = tmp_path / "submitted"
    proc = subprocess.run([str(BIN / "facealign-launch"), "submit", job, "--run-dir", run_dir, "--set",
                           "schedule.length=1"], capture_output=True, text=True, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr
    job_id = re.search(r"submitted job (\d+)", proc.stdout).group(1)
    assert str(run_dir / "tb") in proc.stdout
    assert yaml.safe_load((run_dir / "job.yaml").read_text())["schedule"]["length"] == 1
    info = wait_for(job_id)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "finished at step 8" in log and (run_dir / "checkpoints" / "latest").exists()


def test_world_size_mismatch_stops_before_training(cluster, data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml")  # asks for 2 ranks
    job_id = sbatch(*_cpu(tasks=1), f"--output={tmp_path}/mismatch-%j.out", "slurm/train_hourglass.sh", job,
                    env={"FACEALIGN_RUN_DIR": str(tmp_path / "mismatch")})
    info = wait_for(job_id)
    log = (tmp_path / f"mismatch-{job_id}.out").read_text()
    assert info["JobState"] == "FAILED"
    assert "asks for 1 node(s) x 2 task(s) = 2 rank(s), but this allocation has 1 node(s) and 1 task(s)" in log
    assert not (tmp_path / "mismatch" / "checkpoints").exists()


def test_a_step_ends_as_rank_zero_recorded_whatever_srun_returned():
    from launcher.slurm import step_outcome

    assert step_outcome(143, {"code": 75, "lost_peer": False}) == 75  # the other rank's 75 got rank 0 killed
    assert step_outcome(137, {"code": 0, "lost_peer": False}) == 0  # finished, then killed on the way out
    assert step_outcome(1, {"code": 1, "lost_peer": True}) == 1  # a lost peer: the restart logic decides
    assert step_outcome(75, {"code": 75, "lost_peer": True}) == 75
    assert step_outcome(143, None) == 143 and step_outcome(75, None) == 75  # no record: srun's word


# Rank 0 slow to exit after its exit record, and killed by srun's SIGTERM meanwhile: what a busy node does when
# the other rank exits 75 first and srun (--kill-on-bad-exit) ends the step. Only the first start of the job.
SLOW_RANK_ZERO = """import atexit, multiprocessing, os, signal, time
if os.environ.get("HOROVOD_RANK") == "0" and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
    def _slow_exit():
        if multiprocessing.current_process().name == "MainProcess":
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(30)
    atexit.register(_slow_exit)
"""


def test_preemption_checkpoints_requeues_and_resumes(cluster, data, tmp_path):
    """Preempted (USR2) while rank 0 is slow to exit after recording the requeue: srun reports its SIGTERM, not 75,
    and the job is requeued all the same, from what rank 0 recorded (launcher.slurm.step_outcome)."""
    job = tiny_job(data, tmp_path / "tiny.yaml")
    run_dir = tmp_path / "preempted"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_RANK_ZERO)
    job_id = sbatch(*_cpu(), f"--output={tmp_path}/pre-%j.out", "slurm/train_sat.sh", job, "--set",
                    "schedule.length=6", env={"FACEALIGN_RUN_DIR": str(run_dir), "PYTHONPATH": f"{hooks}:{REPO}"})
    out = tmp_path / f"pre-{job_id}.out"
    deadline = time.time() + 240
    while time.time() < deadline and not (out.exists() and re.search(r"step 1\d/48", out.read_text())):
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what --signal=USR2@120 sends every step
    deadline = time.time() + 120
    while time.time() < deadline:
        info = job_info(job_id)
        if info.get("JobState") == "PENDING" and info.get("Restarts") == "1":
            break
        time.sleep(1)
    else:
        pytest.fail(f"the job was not requeued: {job_info(job_id)}\n{out.read_text()[-3000:]}")
    # Slurm holds a requeued job for the credential lifetime (AuthInfo=cred_expire: 10 s on the test
    # cluster, 120 s by default), then starts it again by itself.
    info = wait_for(job_id)
    log = out.read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    stopped = int(re.search(r"stopping at step (\d+) on SIGUSR2", log).group(1))
    assert f"resumed from {run_dir}/checkpoints/ckpt-{stopped:09d}: step {stopped}" in log
    assert "SLURM_RESTART_COUNT=1" in log and "finished at step 48" in log
    assert re.search(r"the ranks checkpointed and stopped \(exit 75; srun returned (143|137|15|9)\); requeueing job", log), log
    assert "launcher: the ranks checkpointed and stopped on a signal; requeueing" in (run_dir / "log.txt").read_text()
    # no step lost or repeated past the checkpoint: the loss curve has every logged step once
    steps = [s for s, _ in scalars(run_dir / "tb")["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 48 and (stopped + 2) - (stopped + 2) % 2 in steps


def test_two_node_job_allreduces_across_hosts(cluster, data, tmp_path):
    if not cluster["pair"]:
        pytest.skip(f"no two-host partition on this machine: {cluster['up']}")
    job = tiny_job(data, tmp_path / "tiny.yaml", nodes=2, tasks_per_node=1)
    run_dir = tmp_path / "twonode"
    job_id = sbatch("-p", "pair", "--nodes=2", *_cpu(tasks=1), f"--output={tmp_path}/two-%j.out",
                    "slurm/train_sat.sh", job, "--set", "schedule.length=1", env={"FACEALIGN_RUN_DIR": str(run_dir)})
    info = wait_for(job_id)
    log = (tmp_path / f"two-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert info["NodeList"] == "n[1-2]"
    assert "on 2 node(s) n1,n2" in log and "Gloo rendezvous at 10.77.0.11" in log and "on fa0" in log
    assert "rank 0 of 2" in log and "finished at step 8" in log


# --- containers: Pyxis options or an Apptainer prefix, from FACEALIGN_CONTAINER ------------------------

def test_container_plans_mount_the_repository_and_pick_the_runtime(tmp_path):
    sys.path.insert(0, str(REPO))
    from launcher.containers import container_plan, task_setup

    options, prefix = container_plan("nvcr.io#nvidia/mxnet:24.06-py3", repo=REPO, workdir=REPO, mounts="/data,/s:/x")
    assert options == ["--container-image=nvcr.io#nvidia/mxnet:24.06-py3",
                       f"--container-mounts={REPO}:{REPO},/data:/data,/s:/x", f"--container-workdir={REPO}"]
    assert prefix == []
    for image in ("docker://nvcr.io/nvidia/mxnet:24.06-py3", "/images/facealign-ngc.sif"):
        options, prefix = container_plan(image, repo=REPO, workdir=tmp_path)
        assert options == [] and prefix == ["apptainer", "exec", "--nv", "--bind", f"{REPO}:{REPO},{tmp_path}:{tmp_path}",
                                            "--pwd", str(tmp_path), image]
    assert container_plan("facealign.sqsh", runtime="apptainer", repo=REPO, workdir=REPO)[1][0] == "apptainer"
    assert container_plan(None, repo=REPO, workdir=REPO) == ([], [])
    assert task_setup({"FACEALIGN_CONTAINER": "img.sqsh"})[2] == "/usr/local/bin/facealign-python"
    assert task_setup({"FACEALIGN_CONTAINER": "img.sqsh", "FACEALIGN_TASK_PYTHON": "/opt/venv/bin/python"})[2] \
        == "/opt/venv/bin/python"
    assert task_setup({})[:2] == ([], []) and task_setup({})[2] == sys.executable
    with pytest.raises(SystemExit, match="FACEALIGN_CONTAINER_RUNTIME must be pyxis or apptainer"):
        container_plan("img", runtime="docker", repo=REPO, workdir=REPO)
    missing = subprocess.run([sys.executable, "-m", "launcher.slurm", "exec", "--", "python", "-c", "1"], cwd=REPO,
                             capture_output=True, text=True, env={**ENV, "FACEALIGN_TASK_PYTHON": "/nowhere/python"})
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "launcher: cannot run /nowhere/python: No such file or directory (FACEALIGN_TASK_PYTHON, FACEALIGN_CONTAINER "
        "and the PATH decide it)")


def test_submit_writes_the_container_into_the_script(data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml", gpus_per_node=0)
    script = subprocess.run([str(BIN / "facealign-launch"), "render", job, "--container", "nvcr.io#nvidia/mxnet:24.06-py3",
                             "--container-mount", "/datasets", "--container-mount", "/scratch:/s"],
                            capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    assert "export FACEALIGN_CONTAINER='nvcr.io#nvidia/mxnet:24.06-py3'" in script.stdout
    assert "export FACEALIGN_CONTAINER_MOUNTS=/datasets,/scratch:/s" in script.stdout
    plain = subprocess.run([str(BIN / "facealign-launch"), "render", job], capture_output=True, text=True).stdout
    assert "FACEALIGN_CONTAINER" not in plain
    apptainer = subprocess.run([str(BIN / "facealign-launch"), "render", job, "--container", "x.sqsh",
                                "--container-runtime", "apptainer"], capture_output=True, text=True).stdout
    assert "export FACEALIGN_CONTAINER_RUNTIME=apptainer" in apptainer


def test_inside_an_allocation_the_ranks_and_eval_are_started_in_the_container(cluster, data, tmp_path):
    """A real allocation: the launcher's srun command (--dry-run) for the training ranks and for eval.sh's task,
    with a Pyxis image and with an Apptainer one."""
    job = tiny_job(data, tmp_path / "tiny.yaml")
    py = sys.executable
    wrap = (f"{py} -m launcher.slurm train --job {job} --dry-run && "
            f"{py} -m launcher.slurm exec --dry-run -- python -m facealign.cli.eval {tmp_path / 'run'} --data x")
    outputs = {}
    for image in ("nvcr.io#nvidia/mxnet:24.06-py3", "docker://nvcr.io/nvidia/mxnet:24.06-py3"):
        out = tmp_path / f"{len(outputs)}.out"
        job_id = sbatch(*_cpu(), f"--output={out}", "--wrap", wrap,
                        env={"FACEALIGN_CONTAINER": image, "FACEALIGN_CONTAINER_MOUNTS": "/datasets"})
        info = wait_for(job_id, timeout=120)
        outputs[image] = out.read_text()
        assert info["JobState"] == "COMPLETED", outputs[image][-3000:]
    import shlex

    lines = outputs["nvcr.io#nvidia/mxnet:24.06-py3"].splitlines()
    train = shlex.split(next(line for line in lines if line.startswith("srun --kill-on-bad-exit=1")))
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert train[:11] == ["srun", "--kill-on-bad-exit=1", "--export=ALL", "--nodes=1", f"--nodelist={host}",
                          "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                          "--container-image=nvcr.io#nvidia/mxnet:24.06-py3",
                          f"--container-mounts={REPO}:{REPO},/datasets:/datasets", f"--container-workdir={REPO}"]
    assert train[11:16] == ["/usr/local/bin/facealign-python", "-m", "launcher.slurm", "worker", "--"]
    assert train[16:19] == ["/usr/local/bin/facealign-python", "-m", "facealign.train"]
    evaluate = shlex.split(next(line for line in lines if line.startswith("srun --ntasks=1")))
    assert "--container-image=nvcr.io#nvidia/mxnet:24.06-py3" in evaluate
    assert evaluate[-6:-3] == ["/usr/local/bin/facealign-python", "-m", "facealign.cli.eval"]
    assert any("tasks run in nvcr.io#nvidia/mxnet:24.06-py3 (pyxis)" in line for line in lines)
    apptainer = outputs["docker://nvcr.io/nvidia/mxnet:24.06-py3"]
    train = shlex.split(next(line for line in apptainer.splitlines() if line.startswith("srun --kill-on-bad-exit=1")))
    assert train[8:18] == ["apptainer", "exec", "--nv", "--bind", f"{REPO}:{REPO},/datasets:/datasets", "--pwd",
                           str(REPO), "docker://nvcr.io/nvidia/mxnet:24.06-py3", "/usr/local/bin/facealign-python",
                           "-m"]
    assert "--container-image" not in apptainer


# --- sweeps: one job array, a status table, HParams ---------------------------------------------------

def _launch(*args, cwd=None):
    return subprocess.run([str(BIN / "facealign-launch"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV)


def _crash_excerpt(stderr):
    """Where a rank died (its fatal error and the stack Python printed), which the tail of a long log cuts off."""
    start = max(stderr.find("Fatal Python error"), stderr.find("terminate called"))
    return stderr[max(0, start - 500):start + 4000] + "\n...\n" if start >= 0 else ""


def test_a_sweep_with_a_bad_member_submits_nothing(data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml")
    proc = _launch("sweep", job, "--grid", "optim.lr=1e-3,fast", "--grid", "loss.kind=mse,awing", "--name", "bad",
                   "--out-root", tmp_path / "runs")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"facealign-launch: sweep member 2 (optim.lr=fast loss.kind=mse): {job}: optim.lr: "
                                   f"expected a number, got 'fast' (str)")
    assert not (tmp_path / "runs").exists()
    unknown = _launch("sweep", job, "--grid", "optim.lrr=1e-3,2e-3", "--out-root", tmp_path / "runs")
    assert unknown.returncode == 2 and "unknown key 'optim.lrr'" in unknown.stderr and "sweep member 0" in unknown.stderr
    (tmp_path / "s.yaml").write_text(f"base: {job.name}\ngrid: {{optim.lr: [1.0e-3]}}\nzap: 1\n")
    bad_file = _launch("sweep", tmp_path / "s.yaml")
    assert bad_file.returncode == 2 and "s.yaml: unknown key 'zap'" in bad_file.stderr
    (tmp_path / "p.yaml").write_text(f"base: {job.name}\ngrid: {{optim.lr: [1.0e-3]}}\nmax_parallel: two\n")
    parallel = _launch("sweep", tmp_path / "p.yaml")
    assert parallel.returncode == 2 and "p.yaml: 'max_parallel' must be a whole number of tasks >= 1, got 'two'" \
        in parallel.stderr
    zero = _launch("sweep", job, "--grid", "optim.lr=1e-3", "--max-parallel", "0", "--out-root", tmp_path / "runs")
    assert zero.returncode == 2 and "--max-parallel 0: at least 1 array task at once" in zero.stderr
    zipped = _launch("sweep", job, "--zip", "optim.lr=1e-3,2e-3", "--zip", "loss.kind=mse", "--out-root",
                     tmp_path / "runs")
    assert zipped.returncode == 2 and "--zip lists must be of one length" in zipped.stderr
    missing = _launch("status", tmp_path / "nowhere")
    assert missing.returncode == 2 and missing.stderr.strip() == f"facealign-launch: {tmp_path / 'nowhere'}: no run or " \
                                                                 f"sweep directory"


def test_a_sweep_runs_as_one_array_and_status_and_hparams_report_every_member(cluster, data, tmp_path):
    """2 x 2 tiny jobs as ONE job array; member 1 (the long one) is preempted with USR2, requeues itself and
    resumes while the others are untouched; status --json reports all four finished with their best metric;
    TensorBoard's HParams events are read back for all four."""
    job = tiny_job(data, tmp_path / "tiny.yaml")
    (tmp_path / "sweep.yaml").write_text(
        f"base: {job.name}\nname: grid\nmax_parallel: 2\ngrid:\n  optim.lr: [1.0e-3, 2.0e-3]\n"
        f"  schedule.length: [1, 4]\n")
    proc = _launch("sweep", tmp_path / "sweep.yaml", "--out-root", tmp_path / "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    array = re.search(r"submitted job array (\d+) \(tasks 0-3, at most 2 at once\)", proc.stdout).group(1)
    root = tmp_path / "runs" / "grid"
    script = (root / "sbatch.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script and script.count("#SBATCH --array") == 1
    members = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert members == ["00-lr0.001-length1", "01-lr0.001-length4", "02-lr0.002-length1", "03-lr0.002-length4"]
    assert yaml.safe_load((root / members[1] / "job.yaml").read_text())["schedule"]["length"] == 4

    # preempt member 1 once it is past step 10 of 32
    log1 = root / members[1] / "log.txt"
    deadline = time.time() + 300
    while time.time() < deadline and not (log1.exists() and re.search(r"step 1\d/32", log1.read_text())):
        time.sleep(0.5)
    # USR2 to the task's training step (what --signal=USR2@120 does): scancel of the whole array task was
    # answered "Job can not be altered now" after delivering it, and its retries preempted the requeued task again
    own_id = json.loads((root / members[1] / "slurm.json").read_text())["job_id"]
    subprocess.run(["scancel", "--signal=USR2", f"{own_id}.0"], check=True)  # its srun step: the ranks
    for task in range(4):
        info = wait_for(f"{array}_{task}", timeout=600)
        assert info["JobState"] == "COMPLETED", (root / f"slurm-{array}_{task}.out").read_text()[-3000:]
    text = log1.read_text()
    assert "stopping at step" in text and "resumed from" in text and "finished at step 32" in text
    for task, name in enumerate(members):
        out = (root / f"slurm-{array}_{task}.out").read_text()
        assert f"SLURM_RESTART_COUNT={1 if task == 1 else 0}" in out
        if task != 1:
            assert "requeueing" not in out and "stopping at step" not in (root / name / "log.txt").read_text()

    status = _launch("status", root, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["name"] for r in rows] == members
    assert [r["state"] for r in rows] == ["finished"] * 4
    assert [r["step"] for r in rows] == [8, 32, 8, 32] and [r["last_step"] for r in rows] == [8, 32, 8, 32]
    assert [r["restarts"] for r in rows] == [0, 1, 0, 0]
    assert [r["job"] for r in rows] == [f"{array}_{t}" for t in range(4)]
    assert rows[1]["overrides"] == ["optim.lr=0.001", "schedule.length=4"]
    for r in rows:
        assert r["metric"] == "nme/synth" and 0 < r["best"] < 10 and r["best_step"] is not None
    table = _launch("status", tmp_path / "runs").stdout
    assert "finished" in table and "01-lr0.001-length4" in table and "tensorboard --logdir" in table

    from tensorboardX.proto import plugin_hparams_pb2
    from tb_events import read_events

    for name, length in zip(members, (1, 4, 1, 4)):
        events = read_events(root / name / "tb" / "hparams")
        session = [v for ev in events for v in ev.summary.value if v.tag == "_hparams_/session_start_info"]
        assert session, name
        plugin = plugin_hparams_pb2.HParamsPluginData.FromString(session[0].metadata.plugin_data.content)
        hp = {k: (v.number_value if v.HasField("number_value") else v.string_value)
              for k, v in plugin.session_start_info.hparams.items()}
        assert hp["schedule.length"] == length and hp["optim.lr"] in (1e-3, 2e-3) and hp["model.name"] == "hg2-d3-cab"
        assert hp["nominal_world_size"] == 2
        assert "hparam/nme/synth" in scalars(root / name / "tb" / "hparams")

    compare = subprocess.run([str(BIN / "facealign-eval"), root, "--data", f"synth={data / 'val'}", "--protocol",
                              "standard", "--out", tmp_path / "compare", "--quiet", "--no-tensorboard"],
                             capture_output=True, text=True, timeout=600)
    assert compare.returncode == 0, compare.stderr[-3000:]
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert all(name in table for name in members) and (tmp_path / "compare" / "ced_synth_standard.png").exists()


def test_a_local_sweep_runs_each_member_here_and_status_reads_the_directories(data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml")
    proc = _launch("sweep", job, "--zip", "loss.kind=mse,awing", "--zip", "eval.decode=subpixel,dark", "--set",
                   "schedule.max_steps=4", "--name", "pair", "--out-root", tmp_path / "runs", "--local")
    assert proc.returncode == 0, _crash_excerpt(proc.stderr) + proc.stderr[-3000:]
    assert proc.stdout.count("rank 0 exited 0: finished at step 4") == 0  # that line goes to stderr
    assert proc.stderr.count("rank 0 exited 0: finished at step 4") == 2
    rows = json.loads(_launch("status", tmp_path / "runs", "--json", "--no-slurm").stdout)
    assert [(r["name"], r["state"], r["step"], r["job"]) for r in rows] == [
        ("00-kindmse-decodesubpixel", "finished", 4, None), ("01-kindawing-decodedark", "finished", 4, None)]
    assert rows[1]["overrides"] == ["loss.kind=awing", "eval.decode=dark"]
    job1 = yaml.safe_load((tmp_path / "runs" / "pair" / "01-kindawing-decodedark" / "job.yaml").read_text())
    assert job1["loss"]["kind"] == "awing" and job1["eval"]["decode"] == "dark" and job1["schedule"]["max_steps"] == 4


# --- a job that loses a node finishes on the others (docs/faults.md) -------------------------------------

def _submit(job, run_dir, *sets):
    proc = subprocess.run([str(BIN / "facealign-launch"), "submit", job, "--run-dir", run_dir,
                           *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"submitted job (\d+)", proc.stdout).group(1)


def _wait_for_log(path, pattern, job_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and re.search(pattern, path.read_text()):
            return
        if job_info(job_id).get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            break
        time.sleep(0.5)
    pytest.fail(f"{pattern!r} never showed in {path}: {job_info(job_id)}")


def _pair_job(data, path):
    """2 nodes, 1 rank each, going on with 1: 32 steps (4 epochs) on the test hosts."""
    job = tiny_job(data, path, nodes=2, tasks_per_node=1, min_nodes=1, partition="pair")
    text = job.read_text().replace("length: 2", "length: 4")
    assert text != job.read_text()
    job.write_text(text)
    return job


def _same_training(a_run, b_run, step):
    assert_same_training(*(r / "checkpoints" / f"ckpt-{step:09d}" for r in (a_run, b_run)))


@pytest.fixture(scope="module")
def two_node_reference(cluster, data, tmp_path_factory):
    """The uninterrupted 2-node run the elastic ones must match."""
    if not cluster["pair"]:
        pytest.skip(f"no two-host partition on this machine: {cluster['up']}")
    root = tmp_path_factory.mktemp("reference")
    run_dir = root / "run"
    job_id = _submit(_pair_job(data, root / "tiny.yaml"), run_dir)
    info = wait_for(job_id)
    assert info["JobState"] == "COMPLETED", (run_dir / f"slurm-{job_id}.out").read_text()[-3000:]
    assert info["NodeList"] == "n[1-2]"
    return run_dir


def _crash_host(host, run_dir):
    """What a host crash does to the job: its slurmd, the step's slurmstepd and the rank die at once."""
    rank = rank_process(run_dir, host=host)
    stepd = rank.parent()
    subprocess.run(["pkill", "-9", "-f", f"slurmd -N {host}"])
    for p in (stepd, rank):
        p.kill()


@pytest.mark.parametrize("failure", ["crash", "down"])
def test_a_two_node_job_that_loses_a_node_finishes_on_the_other(two_node_reference, data, tmp_path, failure):
    run_dir = tmp_path / "elastic"
    job_id = _submit(_pair_job(data, tmp_path / "tiny.yaml"), run_dir)
    out = run_dir / f"slurm-{job_id}.out"
    try:
        _wait_for_log(run_dir / "log.txt", r"step 1\d/32", job_id)
        if failure == "crash":
            _crash_host("n2", run_dir)
        else:
            subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=facealign-test"], check=True)
        info = wait_for(job_id, timeout=400)
    finally:
        subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, timeout=300)  # n2 back for the next test
    log = out.read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    restart = re.search(r"restart 1 of 3: lost node\(s\) n2; 2 -> 1 process\(es\) on n1; resuming from step (\d+); "
                        r"\d+ s since the step ended", log)
    assert restart, log[-4000:]
    assert "finished at step 32" in log
    # the file users read has the fault and the restart too: the launcher's line with the reason it restarted on,
    # and rank 0's own line before it where rank 0 lived to record the lost peer (a crashed host may take the
    # step down first: then the reason is the step's end)
    run_log = (run_dir / "log.txt").read_text()
    reason = json.loads((run_dir / "slurm.json").read_text())["restarts"][0]["reason"]
    launcher_line = next(line for line in run_log.splitlines() if "launcher: restart 1 of 3" in line)
    assert restart.group(0) in launcher_line and f"({reason})" in launcher_line, run_log[-3000:]
    if not reason.startswith("the step ended with"):
        assert "rank 1 on n2" in reason and run_log.index(reason) < run_log.index("launcher: restart 1 of 3")
    _same_training(two_node_reference, run_dir, 32)
    status = json.loads(_launch("status", run_dir, "--json").stdout)[0]
    assert status["restarts"] == 1 and status["world_sizes"] == [2, 1] and status["state"] == "finished"
    table = _launch("status", run_dir).stdout.splitlines()
    assert table[0].split()[-2:] == ["restarts", "ranks"] and table[1].split()[-2:] == ["1", "2->1"]
    record = json.loads((run_dir / "slurm.json").read_text())["restarts"]
    assert [(r["lost_nodes"], r["processes"], r["from_step"]) for r in record] == [(["n2"], 1, int(restart.group(1)))]


def test_a_requeued_job_comes_back_on_fewer_nodes_and_resumes(two_node_reference, data, tmp_path):
    run_dir = tmp_path / "requeued"
    job_id = _submit(_pair_job(data, tmp_path / "tiny.yaml"), run_dir)
    try:
        _wait_for_log(run_dir / "log.txt", r"step 1\d/32", job_id)
        subprocess.run(["scontrol", "update", "nodename=n2", "state=drain", "reason=facealign-test"], check=True)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # preempted: checkpoint, requeue
        info = wait_for(job_id, timeout=400)
    finally:
        subprocess.run(["scontrol", "update", "nodename=n2", "state=resume"])
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert "SLURM_RESTART_COUNT=1" in log and "on 1 node(s) n1" in log and "finished at step 32" in log
    _same_training(two_node_reference, run_dir, 32)
    status = json.loads(_launch("status", run_dir, "--json").stdout)[0]
    assert status["restarts"] == 1 and status["world_sizes"] == [2, 1]


def test_a_job_left_below_min_nodes_that_may_not_requeue_ends_with_one_line_and_keeps_its_checkpoints(
        cluster, data, tmp_path):
    if not cluster["pair"]:
        pytest.skip(f"no two-host partition on this machine: {cluster['up']}")
    job = tiny_job(data, tmp_path / "tiny.yaml", nodes=2, tasks_per_node=1, min_nodes=2, partition="pair")
    run_dir = tmp_path / "stranded"
    job_id = _submit(job, run_dir, "schedule.length=4")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "requeue=0"], check=True)  # as sbatch --no-requeue
    try:
        _wait_for_log(run_dir / "log.txt", r"step 1\d/32", job_id)
        subprocess.run(["scontrol", "update", "nodename=n2", "state=down", "reason=facealign-test"], check=True)
        info = wait_for(job_id, timeout=400)
    finally:
        subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, timeout=300)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", log[-4000:]
    assert re.search(r"\[launcher [\d:]+\] 1 node\(s\) left \(n2 lost\), fewer than resources.min_nodes = 2, "
                     r"and the job may not requeue; exit 1\n", log), log[-4000:]
    assert "Traceback" not in log and "restart 1 of" not in log
    status = json.loads(_launch("status", run_dir, "--json").stdout)[0]
    assert status["state"] == "failed" and status["step"] >= 8 and status["restarts"] == 0  # checkpoints kept


def test_a_crashed_rank_on_a_live_node_restarts_on_the_same_nodes(cluster, data, tmp_path):
    job = tiny_job(data, tmp_path / "tiny.yaml")  # one node, two ranks
    run_dir = tmp_path / "crashed"
    job_id = _submit(job, run_dir, "schedule.length=4")
    _wait_for_log(run_dir / "log.txt", r"step 1\d/32", job_id)
    rank_process(run_dir, 1).kill()  # the process, not the node
    info = wait_for(job_id, timeout=400)
    log = (run_dir / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert re.search(r"restart 1 of 3: a rank was lost, its node is still up; 2 -> 2 process\(es\) on \S+; resuming from "
                     r"step \d+", log), log[-4000:]
    assert "finished at step 32" in log
    status = json.loads(_launch("status", run_dir, "--json").stdout)[0]
    assert status["restarts"] == 1 and status["world_sizes"] == [2]
