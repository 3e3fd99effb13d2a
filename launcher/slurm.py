"""Inside a Slurm allocation: start the ranks with ``srun``, never over ssh, and requeue on preemption.

    python -m launcher.slurm train --job JOB.yaml [--run-dir RUN] [--set k=v]   # in the batch script
    python -m launcher.slurm worker -- CMD ...                          # what srun runs on every task

``train`` runs in the batch shell on the job's first node. It checks the
allocation against the job spec (world size = nodes x tasks per node), logs
``SLURM_RESTART_COUNT``, then starts the ranks with one ``srun`` step:

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

Containers: with ``FACEALIGN_CONTAINER=IMAGE`` every task runs inside the image, through Pyxis
(``srun --container-image``, the default) or Apptainer (``apptainer exec --nv``, for ``.sif``
files and ``docker://``-style URIs, or ``FACEALIGN_CONTAINER_RUNTIME=apptainer``); the repository
and the submit directory are mounted at their own paths, ``FACEALIGN_CONTAINER_MOUNTS`` adds more
(comma-separated, ``src[:dst]``). The tasks' interpreter is ``FACEALIGN_TASK_PYTHON``, by default
the images' ``/usr/local/bin/facealign-python`` (docker/). ``exec -- CMD`` runs one task the same
way (slurm/eval.sh); ``--dry-run`` prints the srun command instead of running it.

Exit status: the trainer's (0, 1, 2), or 0 after a requeue was requested; 1 with one line for what
the launcher itself refuses (an allocation that does not match the spec, a bad container setting, a
task interpreter that cannot run).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

EXIT_REQUEUE = 75
IMAGE_PYTHON = "/usr/local/bin/facealign-python"  # both images of docker/ link their interpreter here
APPTAINER_SCHEMES = ("docker://", "docker-daemon://", "oras://", "library://", "shub://")


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


def interface_address(iface: str) -> str:
    import socket

    import psutil

    for addr in psutil.net_if_addrs().get(iface, []):
        if addr.family == socket.AF_INET:
            return addr.address
    raise SystemExit(f"launcher: network interface {iface!r} has no IPv4 address on {socket.gethostname()} "
                     f"(set FACEALIGN_GLOO_IFACE to an interface the nodes share)")


def default_iface(num_nodes: int) -> str:
    """``lo`` on one node; otherwise the interface of the default route (FACEALIGN_GLOO_IFACE overrides)."""
    if os.environ.get("FACEALIGN_GLOO_IFACE"):
        return os.environ["FACEALIGN_GLOO_IFACE"]
    if num_nodes == 1:
        return "lo"
    try:
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return fields[0]
    except OSError:
        pass
    raise SystemExit("launcher: cannot tell which network interface the nodes share; set FACEALIGN_GLOO_IFACE")


def container_runtime(image: str, given: str | None = None) -> str:
    """pyxis or apptainer: ``given`` (FACEALIGN_CONTAINER_RUNTIME), else from the image's form."""
    if given:
        if given not in ("pyxis", "apptainer"):
            raise SystemExit(f"launcher: FACEALIGN_CONTAINER_RUNTIME must be pyxis or apptainer, got {given!r}")
        return given
    return "apptainer" if image.endswith((".sif", ".simg")) or image.startswith(APPTAINER_SCHEMES) else "pyxis"


def container_plan(image: str | None, *, runtime: str | None = None, mounts: str = "", repo: Path,
                   workdir: Path) -> tuple[list[str], list[str]]:
    """(srun options, command prefix) that run a task inside ``image`` (none without one): the repository
    and the working directory mounted at their own paths, plus ``mounts`` ("src[:dst],...")."""
    if not image:
        return [], []
    binds = [f"{repo}:{repo}"]
    if workdir != repo and repo not in workdir.parents:
        binds.append(f"{workdir}:{workdir}")
    for m in filter(None, (x.strip() for x in mounts.split(","))):
        binds.append(m if ":" in m else f"{m}:{m}")
    if container_runtime(image, runtime) == "pyxis":
        return [f"--container-image={image}", f"--container-mounts={','.join(binds)}",
                f"--container-workdir={workdir}"], []
    return [], ["apptainer", "exec", "--nv", "--bind", ",".join(binds), "--pwd", str(workdir), image]


def task_setup(env=None) -> tuple[list[str], list[str], str]:
    """(srun options, command prefix, the tasks' interpreter) from FACEALIGN_CONTAINER* and
    FACEALIGN_SRUN_ARGS / FACEALIGN_TASK_PYTHON."""
    env = os.environ if env is None else env
    image = env.get("FACEALIGN_CONTAINER") or None
    options, prefix = container_plan(image, runtime=env.get("FACEALIGN_CONTAINER_RUNTIME") or None,
                                     mounts=env.get("FACEALIGN_CONTAINER_MOUNTS", ""),
                                     repo=Path(__file__).resolve().parents[1], workdir=Path.cwd().resolve())
    python = env.get("FACEALIGN_TASK_PYTHON") or (IMAGE_PYTHON if image else sys.executable)
    return options + shlex.split(env.get("FACEALIGN_SRUN_ARGS", "")), prefix, python


def horovod_has_mpi() -> bool:
    """Whether this Horovod was built with MPI. Horovod's own check loads its MXNet extension in a child
    process (as ``horovodrun --check-build`` does), so the batch step itself imports no MXNet."""
    try:
        from horovod.common.util import mpi_built

        return bool(mpi_built())
    except ImportError:
        return False


def check_world(job: Path, overrides, ntasks: int, nnodes: int):
    """The job spec's world against the allocation, before any rank starts (no MXNet needed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from facealign.spec.schema import SpecError, load_job

    try:
        spec = load_job(job, overrides)
    except SpecError as e:
        raise SystemExit(f"launcher: {e}")
    r = spec.resources
    if spec.world_size != ntasks or r.nodes != nnodes:
        raise SystemExit(
            f"launcher: {job} asks for {r.nodes} node(s) x {r.tasks_per_node} task(s) = {spec.world_size} rank(s), "
            f"but this allocation has {nnodes} node(s) and {ntasks} task(s); submit it with facealign-launch "
            f"submit (which sets --nodes/--ntasks-per-node from the spec) or fix resources")
    return spec


def train(args) -> int:
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        raise SystemExit("launcher: not inside a Slurm allocation (no SLURM_JOB_ID); use facealign-launch local")
    nodes = expand_nodelist(env["SLURM_JOB_NODELIST"])
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    restart = int(env.get("SLURM_RESTART_COUNT", "0"))
    say(f"job {env['SLURM_JOB_ID']} on {len(nodes)} node(s) {','.join(nodes)}, {ntasks} task(s); "
        f"SLURM_RESTART_COUNT={restart}")
    spec = check_world(Path(args.job), args.set, ntasks, len(nodes))
    run_dir = args.run_dir or str(Path(spec.run.out_root) / spec.run.name)
    say(f"run directory {run_dir}; TensorBoard: tensorboard --logdir {Path(run_dir) / 'tb'}")
    if not args.dry_run:  # which Slurm job this start of the run is, for facealign-launch status
        from facealign.runs import status as runs

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        runs.record_slurm(Path(run_dir))
    # Containers (docker/README.md): srun options (Pyxis) or a command prefix (Apptainer), and the
    # interpreter on the tasks (the image's)
    options, prefix, task_python = task_setup()
    if os.environ.get("FACEALIGN_CONTAINER"):
        say(f"tasks run in {os.environ['FACEALIGN_CONTAINER']} "
            f"({container_runtime(os.environ['FACEALIGN_CONTAINER'], os.environ.get('FACEALIGN_CONTAINER_RUNTIME'))})")
    train_cmd = [task_python, "-m", "facealign.train", "--job", args.job, "--run-dir", run_dir]
    for s in args.set:
        train_cmd += ["--set", s]
    srun = ["srun", "--kill-on-bad-exit=1", "--export=ALL", f"--ntasks={ntasks}", *options]
    mode = os.environ.get("FACEALIGN_LAUNCH", "auto")
    if mode == "auto":
        mode = "mpi" if horovod_has_mpi() and "pmix" in _srun_mpi_types() else "gloo"
    from facealign.spec import components

    child_env = {**env, **components.runtime_env(spec)}  # the spec's Horovod/MXNet knobs, before any rank
    server = None
    if mode == "mpi":
        cmd = srun + ["--mpi=pmix"] + prefix + train_cmd
    elif mode == "gloo":
        from horovod.runner.common.util import hosts
        from horovod.runner.http.http_server import RendezvousServer

        per_node = tasks_per_node(env)
        cmd = srun + prefix + [task_python, "-m", "launcher.slurm", "worker", "--"] + train_cmd
        if args.dry_run:  # before the rendezvous server starts
            print(shlex.join(cmd))
            return 0
        iface = default_iface(len(nodes))
        addr = interface_address(iface)
        plan = hosts.get_host_assignments(hosts.parse_hosts(",".join(f"{n}:{c}" for n, c in zip(nodes, per_node))),
                                          ntasks)
        server = RendezvousServer(verbose=0)
        port = server.start()
        server.init(plan)
        child_env.update({"HOROVOD_GLOO_RENDEZVOUS_ADDR": addr, "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
                          "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo",
                          "HOROVOD_GLOO_IFACE": iface, "NCCL_SOCKET_IFNAME": iface,
                          "FACEALIGN_NODES": ",".join(nodes), "FACEALIGN_TASKS_PER_NODE": ",".join(map(str, per_node))})
        say(f"Gloo rendezvous at {addr}:{port} on {iface}")
    else:
        raise SystemExit(f"launcher: FACEALIGN_LAUNCH must be auto, gloo or mpi, got {mode!r}")
    child_env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    say(f"{mode}: {shlex.join(cmd)}")
    proc = subprocess.Popen(cmd, env=child_env)
    code = proc.wait()
    if server is not None:
        server.stop()
    if code == EXIT_REQUEUE:
        say(f"the ranks checkpointed and stopped (exit {EXIT_REQUEUE}); requeueing job {env['SLURM_JOB_ID']}")
        requeue = subprocess.run(["scontrol", "requeue", env["SLURM_JOB_ID"]], capture_output=True, text=True)
        if requeue.returncode != 0:
            say(f"scontrol requeue failed: {requeue.stderr.strip()}; resubmit to resume")
            return EXIT_REQUEUE
        time.sleep(30)  # Slurm ends this script when the requeue takes effect
        return 0
    say(f"training exited with {code}")
    return code


def _srun_mpi_types() -> str:
    try:  # srun prints the list on stdout or stderr depending on the version
        out = subprocess.run(["srun", "--mpi=list"], capture_output=True, text=True, timeout=30)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def worker(argv) -> int:
    """On every task: SLURM_* -> HOROVOD_*, then exec the command (signals reach it directly)."""
    env = os.environ
    rank, local_rank = int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"])
    node = int(env["SLURM_NODEID"])
    nodes = env["FACEALIGN_NODES"].split(",")
    per_node = [int(c) for c in env["FACEALIGN_TASKS_PER_NODE"].split(",")]
    # Horovod's plan gives each host a block of ranks in node order: the same as Slurm's block distribution.
    first = sum(per_node[:node])
    if not first <= rank < first + per_node[node]:
        raise SystemExit(f"launcher: task {rank} on node {node} is outside that node's block of ranks "
                         f"{first}..{first + per_node[node] - 1}; use the default block distribution")
    env.update({"HOROVOD_RANK": str(rank), "HOROVOD_SIZE": env["SLURM_NTASKS"], "HOROVOD_LOCAL_RANK": str(local_rank),
                "HOROVOD_LOCAL_SIZE": str(per_node[node]), "HOROVOD_CROSS_RANK": str(node),
                "HOROVOD_CROSS_SIZE": str(len(nodes)), "HOROVOD_HOSTNAME": nodes[node]})
    os.execvpe(argv[0], argv, env)
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
