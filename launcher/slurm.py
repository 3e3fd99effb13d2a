"""Inside a Slurm allocation: start the ranks with ``srun``, never over ssh, and requeue on preemption.

    python -m launcher.slurm train --job JOB.yaml [--run-dir RUN] [--set k=v]   # in the batch script
    python -m launcher.slurm worker -- CMD ...                          # what srun runs on every task

``train`` runs in the batch shell on the job's first node. It checks the
allocation against the job spec (from ``resources.min_nodes`` to ``nodes`` nodes),
logs ``SLURM_RESTART_COUNT``, then starts the ranks with one ``srun`` step on the
largest node count the job allows:

* Horovod built with MPI (``FACEALIGN_LAUNCH=mpi``, or auto when Horovod has MPI
  and Slurm has PMIx): ``srun --mpi=pmix python -m facealign.train ...``; MPI
  gives Horovod its ranks.
* Gloo (the default here): this process starts Horovod's rendezvous server (what
  ``horovodrun --gloo`` does on its host) and ``srun`` runs ``worker`` on every
  task, which maps ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``,
  ``SLURM_NODEID`` and the node list onto Horovod's ``HOROVOD_*`` variables and
  execs the trainer.

Slurm signals the job steps (``--signal=USR2@120``, ``scancel -s USR2``), so
every rank gets the signal; the trainer checkpoints and exits 75. On 75 this
process calls ``scontrol requeue $SLURM_JOB_ID``: Slurm restarts the batch
script with the same job id and the trainer resumes from its checkpoint.

A step that ends because a rank or node was lost (rank 0 recorded ``lost_peer``, or nothing) is started
again on the nodes still up (asked of the controller, then probed with a one-task step), from the last
checkpoint, up to ``run.max_restarts`` times; with fewer than ``min_nodes`` left the job is requeued, or
ends with 1 where it may not requeue (docs/faults.md).

Containers: with ``FACEALIGN_CONTAINER=IMAGE`` every task runs inside the image (launcher.containers);
``exec -- CMD`` runs one task the same way (slurm/eval.sh); ``--dry-run`` prints the srun command instead of
running it. The Gloo rendezvous and the tasks' Horovod variables: launcher.rendezvous.

Exit status: the trainer's (0, 1, 2), or 0 after a requeue was requested; 1 with one line for what
the launcher itself refuses (an allocation that does not match the spec, a bad container setting, a
task interpreter that cannot run) and for a lost node it cannot go on without (restarts used up, too
few nodes and no requeue).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facealign.runs import status
from facealign.runs.layout import LOG_FILE, read_json
from facealign.spec import components
from facealign.spec.schema import SpecError, load_job
from launcher.containers import container_runtime, task_setup
from launcher.rendezvous import horovod_task_env, start_rendezvous

EXIT_REQUEUE = 75


def say(msg: str) -> None:
    print(f"[launcher {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed node list (``n[1-2],gpu07``) as host names, through ``scontrol``."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def tasks_per_node(env) -> list[int]:
    """``SLURM_TASKS_PER_NODE`` (``2(x3),1``) expanded per node."""
    counts = []
    for part in env["SLURM_TASKS_PER_NODE"].split(","):
        if "(x" in part:
            n, times = part.rstrip(")").split("(x")
            counts += [int(n)] * int(times)
        else:
            counts.append(int(part))
    return counts


def horovod_has_mpi() -> bool:
    """Whether this Horovod was built with MPI. Horovod's own check loads its MXNet extension in a child
    process (as ``horovodrun --check-build`` does), so the batch step itself imports no MXNet."""
    try:
        from horovod.common.util import mpi_built

        return bool(mpi_built())
    except ImportError:
        return False


def check_allocation(job: Path, overrides, nodes: list[str], per_node: list[int] | None):
    """The job spec against the allocation, before any rank starts (no MXNet needed): from
    ``resources.min_nodes`` to ``nodes`` nodes, and ``tasks_per_node`` tasks on each where the allocation
    fixed them (``per_node``; a node range is submitted with the CPUs per node instead: launcher.scripts)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        spec = load_job(job, overrides)
    except SpecError as e:
        raise SystemExit(f"launcher: {e}")
    r = spec.resources
    span = f"{spec.min_nodes} to {r.nodes}" if spec.min_nodes < r.nodes else f"{r.nodes}"
    if (per_node and any(c != r.tasks_per_node for c in per_node)) or not spec.min_nodes <= len(nodes) <= r.nodes:
        tasks = f" and {sum(per_node)} task(s)" if per_node else ""
        raise SystemExit(
            f"launcher: {job} asks for {span} node(s) x {r.tasks_per_node} task(s) = {spec.world_size} rank(s), "
            f"but this allocation has {len(nodes)} node(s){tasks}; submit it with "
            f"facealign-launch submit (which sets --nodes/--ntasks-per-node from the spec) or fix resources")
    return spec


def usable_nodes(spec, nodes: list[str]) -> list[str]:
    """The first of ``nodes`` in a count the job can run on (facealign.spec: a count that divides ``nodes``)."""
    fits = [k for k in spec.node_counts() if k <= len(nodes)]
    return nodes[:fits[0]] if fits else []


# sinfo's node states that cannot run a step (a "*" suffix: the node does not respond)
DEAD_STATES = ("down", "drain", "drained", "draining", "fail", "failing", "future", "unknown", "powered_down",
               "powering_down", "maint", "reboot", "not_responding")


def nodes_still_up(job_id: str, nodes: list[str]) -> list[str]:
    """Which of the allocation's ``nodes`` the controller still gives this job and reports usable (the batch
    environment keeps naming a node after it failed)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    held = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv).get("NodeList")
    held = set(expand_nodelist(held)) if held and held != "(null)" else set(nodes)
    states = subprocess.run(["sinfo", "-h", "-N", "-n", ",".join(nodes), "-o", "%N %T"], capture_output=True,
                            text=True).stdout.split("\n")
    state = dict(line.split(None, 1) for line in states if line.strip())
    up = []
    for n in nodes:
        word = state.get(n, "unknown").strip().lower()
        if n in held and not word.endswith("*") and not any(word.startswith(d) for d in DEAD_STATES):
            up.append(n)
    return up


def answering(nodes: list[str], timeout_s: float = 30) -> list[str]:
    """Those of ``nodes`` that run a one-task step in ``timeout_s``: a host that crashed looks up to the
    controller until its SlurmdTimeout, and a step started there would wait for it."""
    probes = {n: subprocess.Popen(["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={n}", "--export=ALL",
                                   "--cpus-per-task=1", "true"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in nodes}
    deadline, alive = time.time() + timeout_s, []
    for n, probe in probes.items():
        try:
            if probe.wait(timeout=max(0.1, deadline - time.time())) == 0:
                alive.append(n)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.wait()
    return alive


def may_requeue(job_id: str) -> bool:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return "Requeue=1" in out


def requeue(job_id: str) -> int:
    requeued = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if requeued.returncode != 0:
        say(f"scontrol requeue failed: {requeued.stderr.strip()}; resubmit to resume")
        return EXIT_REQUEUE
    time.sleep(30)  # Slurm ends this script when the requeue takes effect
    return 0


def train(args) -> int:
    """Start the ranks, and after a lost rank or node start them again on what is left of the allocation,
    from the last checkpoint, up to ``run.max_restarts`` times (docs/faults.md)."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        raise SystemExit("launcher: not inside a Slurm allocation (no SLURM_JOB_ID); use facealign-launch local")
    job_id = env["SLURM_JOB_ID"]
    allocated = expand_nodelist(env["SLURM_JOB_NODELIST"])
    per_node = tasks_per_node(env)
    fixed = per_node if env.get("SLURM_NTASKS_PER_NODE") else None  # submitted with --ntasks-per-node
    restart = int(env.get("SLURM_RESTART_COUNT", "0"))
    say(f"job {job_id} on {len(allocated)} node(s) {','.join(allocated)}, {sum(per_node)} task(s); "
        f"SLURM_RESTART_COUNT={restart}")
    spec = check_allocation(Path(args.job), args.set, allocated, fixed)
    run_dir = Path(args.run_dir or Path(spec.run.out_root) / spec.run.name)
    say(f"run directory {run_dir}; TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    if not args.dry_run:  # which Slurm job this start of the run is, for facealign-launch status
        run_dir.mkdir(parents=True, exist_ok=True)
        status.record_slurm(run_dir)
    nodes = usable_nodes(spec, allocated)
    if len(nodes) < len(allocated):
        say(f"{len(allocated)} node(s) allocated; the job runs on node counts {spec.node_counts()}: using "
            f"{','.join(nodes)}")
    restarts = 0
    while True:
        code, ended, failed_at = run_step(spec, args, run_dir, nodes, overlap=restarts > 0)
        if args.dry_run:
            return code
        outcome = step_outcome(code, ended)
        if outcome == 0:
            return 0
        if outcome == EXIT_REQUEUE:
            say(f"the ranks checkpointed and stopped (exit {EXIT_REQUEUE}"
                + (f"; srun returned {code}" if code != EXIT_REQUEUE else "") + f"); requeueing job {job_id}")
            note(run_dir, f"the ranks checkpointed and stopped on a signal; requeueing Slurm job {job_id}")
            return requeue(job_id)
        if ended is not None and not ended.get("lost_peer"):  # the trainer's own word: nothing a restart mends
            say(f"training exited with {code}: {ended.get('reason')}")
            return code
        up = answering(nodes_still_up(job_id, allocated))
        lost = [n for n in nodes if n not in up]
        why = (ended or {}).get("reason") or f"the step ended with {code} and rank 0 recorded no exit"
        if restarts >= spec.run.max_restarts:
            say(f"a rank or node was lost again ({why}), after {restarts} restart(s): run.max_restarts = "
                f"{spec.run.max_restarts} reached; exit 1")
            return 1
        following = usable_nodes(spec, up)
        if len(up) < spec.min_nodes or not following:
            if may_requeue(job_id):
                say(f"{len(up)} node(s) left ({','.join(lost)} lost), fewer than resources.min_nodes = "
                    f"{spec.min_nodes}; requeueing job {job_id}")
                return requeue(job_id)
            say(f"{len(up)} node(s) left ({','.join(lost)} lost), fewer than resources.min_nodes = {spec.min_nodes}, "
                f"and the job may not requeue; exit 1")
            return 1
        restarts += 1
        step = status.latest_checkpoint_step(run_dir)
        record = {"restart": restarts, "lost_nodes": lost, "reason": why, "nodes": following,
                  "processes": len(following) * spec.resources.tasks_per_node,
                  "was": len(nodes) * spec.resources.tasks_per_node, "from_step": step,
                  "seconds": round(time.time() - failed_at, 1), "time": time.time()}
        status.record_restart(run_dir, record)
        line = (f"restart {restarts} of {spec.run.max_restarts}: " + (f"lost node(s) {','.join(lost)}" if lost else
                "a rank was lost, its node is still up") + f"; {record['was']} -> {record['processes']} process(es) "
                f"on {','.join(following)}; resuming from step {step}; {record['seconds']:.0f} s since the step ended "
                f"({why})")
        say(line)
        note(run_dir, line)
        nodes = following


def step_outcome(code: int, ended: dict | None) -> int:
    """How a step ended: rank 0's record where it made one (0 finished, 75 stopped for a requeue), whatever srun
    returned. srun kills the other ranks on the first non-zero exit (``--kill-on-bad-exit``): on a preemption the
    rank that exits 75 first gets the others killed, and srun may report their SIGTERM (143) although every rank
    checkpointed and rank 0 recorded the requeue."""
    recorded = (ended or {}).get("code")
    return recorded if recorded in (0, EXIT_REQUEUE) and not (ended or {}).get("lost_peer") else code


def note(run_dir: Path, line: str) -> None:
    """A launcher's line in the run's log.txt too, the file users read (no trainer writes it meanwhile)."""
    with contextlib.suppress(OSError), open(run_dir / LOG_FILE, "a") as fh:
        fh.write(time.strftime("%H:%M:%S ") + f"launcher: {line}\n")


def run_step(spec, args, run_dir: Path, nodes: list[str], overlap: bool = False) -> tuple[int, dict | None, float]:
    """One srun step of the ranks on ``nodes``: (its exit status, rank 0's exit record or None, when it ended).
    ``overlap``: a restart's step may share the CPUs of the failed one, which Slurm holds as long as that step
    has a part on a lost node (its tasks on the nodes left are gone)."""
    env = os.environ
    ntasks = len(nodes) * spec.resources.tasks_per_node
    # Containers (docker/README.md): srun options (Pyxis) or a command prefix (Apptainer), and the
    # interpreter on the tasks (the image's)
    options, prefix, task_python = task_setup()
    if os.environ.get("FACEALIGN_CONTAINER"):
        say(f"tasks run in {os.environ['FACEALIGN_CONTAINER']} "
            f"({container_runtime(os.environ['FACEALIGN_CONTAINER'], os.environ.get('FACEALIGN_CONTAINER_RUNTIME'))})")
    train_cmd = [task_python, "-m", "facealign.train", "--job", args.job, "--run-dir", str(run_dir)]
    for s in args.set:
        train_cmd += ["--set", s]
    srun = ["srun", "--kill-on-bad-exit=1", "--export=ALL", f"--nodes={len(nodes)}", f"--nodelist={','.join(nodes)}",
            f"--ntasks={ntasks}", f"--ntasks-per-node={spec.resources.tasks_per_node}",
            f"--cpus-per-task={spec.resources.cpus_per_task}", *(["--overlap"] if overlap else []), *options]
    mode = os.environ.get("FACEALIGN_LAUNCH", "auto")
    if mode == "auto":
        mode = "mpi" if horovod_has_mpi() and "pmix" in _srun_mpi_types() else "gloo"
    child_env = {**env, **components.runtime_env(spec)}  # the spec's Horovod/MXNet knobs, before any rank
    child_env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    server = None
    if mode == "mpi":
        cmd = srun + ["--mpi=pmix"] + prefix + train_cmd
    elif mode == "gloo":
        cmd = srun + prefix + [task_python, "-m", "launcher.slurm", "worker", "--"] + train_cmd
        if not args.dry_run:  # the rendezvous server starts only for a real step
            server, gloo_env = start_rendezvous(nodes, spec.resources.tasks_per_node)
            say(f"Gloo rendezvous at {gloo_env['HOROVOD_GLOO_RENDEZVOUS_ADDR']}:"
                f"{gloo_env['HOROVOD_GLOO_RENDEZVOUS_PORT']} on {gloo_env['HOROVOD_GLOO_IFACE']}")
            child_env.update(gloo_env)
    else:
        raise SystemExit(f"launcher: FACEALIGN_LAUNCH must be auto, gloo or mpi, got {mode!r}")
    if args.dry_run:
        print(shlex.join(cmd))
        return 0, None, time.time()
    say(f"{mode}: {shlex.join(cmd)}")
    # rank 0's own word on how the ranks ended (srun reports any task's failure as its own)
    with tempfile.TemporaryDirectory(prefix="facealign-step-") as tmp:
        exit_file = Path(tmp) / "exit.json"
        child_env["FACEALIGN_EXIT_FILE"] = str(exit_file)
        try:
            code = wait_for_step(subprocess.Popen(cmd, env=child_env), exit_file)
        finally:
            if server is not None:
                server.stop()
        ended = time.time()
        wait_for_steps_to_end(env["SLURM_JOB_ID"])
        return code, read_json(exit_file), ended


def wait_for_step(proc: subprocess.Popen, exit_file: Path, grace_s: float = 10) -> int:
    """srun's exit status. Once rank 0 has recorded that a peer was lost, srun gets ``grace_s`` to end the
    step, then is stopped: on a crashed host it would otherwise wait for Slurm to notice (SlurmdTimeout)."""
    lost_since = None
    while True:
        try:
            return proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if lost_since is None and (read_json(exit_file) or {}).get("lost_peer"):
            lost_since = time.time()
        if lost_since is not None and time.time() - lost_since > grace_s:
            say(f"rank 0 reported a lost peer {grace_s:g} s ago and the step has not ended: stopping it")
            proc.terminate()  # srun passes it to the tasks it can still reach
            try:
                return proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


def wait_for_steps_to_end(job_id: str, timeout_s: float = 20) -> None:
    """Until the job's steps (but the batch script's own) are gone, so the next one gets their CPUs; a step
    with a part on a lost node stays until Slurm notices the node, so not for longer than ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-s", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
        if out.returncode != 0 or not [s for s in out.stdout.split() if not s.endswith((".batch", ".extern"))]:
            return
        time.sleep(1)


def _srun_mpi_types() -> str:
    try:  # srun prints the list on stdout or stderr depending on the version
        out = subprocess.run(["srun", "--mpi=list"], capture_output=True, text=True, timeout=30)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def worker(argv) -> int:
    """On every task: SLURM_* -> HOROVOD_*, then exec the command (signals reach it directly)."""
    env = os.environ
    env.update(horovod_task_env(env))
    os.execvpe(argv[0], argv, env)
    return 1  # not reached    os.execvpe(argv[0], argv, env)
    return 1  # not reached


def exec_task(argv, dry_run: bool = False) -> int:
    """One task of ``argv`` (``python`` as its first word means the tasks' interpreter), in the container
    when FACEALIGN_CONTAINER names one (srun), else here as it is."""
    options, prefix, python = task_setup()
    argv = [python if a == "python" and i == 0 else a for i, a in enumerate(argv)]
    cmd = (["srun", "--ntasks=1", "--export=ALL", *options] + prefix + argv) if os.environ.get("FACEALIGN_CONTAINER") \
        else argv
    if dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        raise SystemExit(f"launcher: cannot run {cmd[0]}: {e.strerror} (FACEALIGN_TASK_PYTHON, FACEALIGN_CONTAINER "
                         f"and the PATH decide it)")
    return 1  # not reached


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("worker", "exec"):
        rest, dry_run = argv[1:], False
        if argv[0] == "exec" and rest and rest[0] == "--dry-run":
            rest, dry_run = rest[1:], True
        if rest and rest[0] == "--":
            rest = rest[1:]
        return worker(rest) if argv[0] == "worker" else exec_task(rest, dry_run)
    p = argparse.ArgumentParser(prog="python -m launcher.slurm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="start the ranks of a training job with srun (in the batch script)")
    t.add_argument("--job", required=True)
    t.add_argument("--run-dir", help="default: <run.out_root>/<run.name> of the spec")
    t.add_argument("--set", action="append", default=[])
    t.add_argument("--dry-run", action="store_true", help="print the srun command instead of running it")
    args = p.parse_args(argv)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
