"""``facealign-launch``: check, render, submit or run a training job. Imports no MXNet (login nodes).

    facealign-launch validate jobs/sat2-d3-cab.yaml [--set k=v ...]    # the spec, its files, its world size
    facealign-launch render   jobs/sat2-d3-cab.yaml                     # the sbatch script submit would use
    facealign-launch submit   jobs/sat2-d3-cab.yaml [--set k=v] [--sbatch=--dependency=afterok:123]
    facealign-launch submit   jobs/sat2-d3-cab.yaml --container nvcr.io#nvidia/mxnet:24.06-py3 ...  # Hopper: docker/
    facealign-launch local    jobs/demo.yaml -np 2                      # the same run through horovodrun here
    facealign-launch sweep    jobs/demo.yaml --grid optim.lr=1e-3,2e-3 --grid loss.kind=mse,awing [--local]
    facealign-launch status   [runs/ | RUN | SWEEP ...] [--json] [--watch 10]   # how every run stands

``submit`` creates the run directory, writes the resolved spec there
(``job.yaml``, every ``--set`` applied) and the script (``sbatch.sh``, its
#SBATCH lines from the spec's resources), submits it, and prints the job id and
where the log and TensorBoard events go. Inside the allocation the script runs
``slurm/run-training.sh``: ranks start with srun (launcher/slurm.py), never ssh.

``sweep`` validates every member of a grid first, writes them and submits one job array
(launcher/sweep.py); ``status`` prints a row per run from its directory and Slurm
(facealign.runs.status).

Exit status: validate, render, submit and sweep 0 or 2 (a bad spec or member; sbatch's failure is
1); ``local`` the trainer's own status as its rank 0 recorded it (0, 1, 2, 75: see facealign.train),
printed last with its reason, where horovodrun alone would say 1 (``sweep --local``: the first
member's failure, after running the rest); status 0, or 2 for a path that is no run or sweep.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facealign.spec import components  # noqa: E402  (no MXNet)
from launcher import scripts  # noqa: E402
from launcher.local import trainer_command  # noqa: E402
from facealign.runs import status as run_status  # noqa: E402
from facealign.runs.layout import EXIT_FILE, JOB_FILE, SBATCH_FILE  # noqa: E402
from facealign.spec.schema import SpecError, dump_job, load_job  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-launch", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("validate", "check a job spec and its record files"),
                        ("render", "print the sbatch script for a job spec"),
                        ("submit", "create the run directory and submit the job to Slurm"),
                        ("local", "run the job with horovodrun on this machine"),
                        ("sweep", "a grid of variants of a job spec, validated, as one Slurm job array")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("job", help="job spec (YAML)" if name != "sweep" else "job spec, or a sweep file (sweeps/)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
        if name == "sweep":
            s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                           help="vary KEY over the values: the members are the cartesian product (repeatable)")
            s.add_argument("--zip", action="append", default=[], metavar="KEY=V1,V2",
                           help="vary these keys together, value by value (lists of one length; repeatable)")
            s.add_argument("--name", help="the sweep's name (default: <run.name>-sweep): runs/<name>/")
            s.add_argument("--max-parallel", type=int, metavar="K", help="at most K array tasks at once (K >= 1)")
            s.add_argument("--out-root", help="where the sweep directory goes (default: the spec's run.out_root)")
            s.add_argument("--local", action="store_true", help="run the members one after another here")
        elif name != "validate":
            s.add_argument("--run-dir", help="run directory (default: <run.out_root>/<run.name>)")
        if name in ("render", "submit", "sweep"):
            s.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                           help="extra sbatch option, e.g. --sbatch=--dependency=afterok:123 (repeatable)")
            s.add_argument("--container", metavar="IMAGE",
                           help="run the ranks in this image: Pyxis (--container-image) or, for .sif files and "
                                "docker:// URIs, Apptainer (see docker/README.md)")
            s.add_argument("--container-mount", action="append", default=[], metavar="SRC[:DST]",
                           help="another directory to mount in the container (repeatable; the repository and "
                                "the working directory always are)")
            s.add_argument("--container-runtime", choices=("pyxis", "apptainer"),
                           help="default: apptainer for .sif and docker://... images, else pyxis")
        if name == "local":
            s.add_argument("-np", type=int, required=True, help="number of ranks")
    st = sub.add_parser("status", help="one row per run: state, step, best metric, images/s, ETA, restarts")
    st.add_argument("paths", nargs="*", default=["runs"], help="run or sweep directories, or directories of them "
                                                              "(default: runs)")
    st.add_argument("--json", action="store_true", help="the rows as JSON")
    st.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until interrupted")
    st.add_argument("--no-slurm", action="store_true", help="do not ask squeue/sacct (the run directories only)")
    return p.parse_args(argv)


def run_dir_of(spec, given) -> Path:
    return Path(given or Path(spec.run.out_root) / spec.run.name).resolve()


def render(spec, job: Path, overrides, run_dir: Path, extra=(), container=None, mounts=(), runtime=None) -> str:
    lines = ["#!/bin/bash", f"# Written by facealign-launch for {job} (run directory {run_dir})."]
    lines += scripts.sbatch_lines(spec, f"facealign-{spec.run.name}", f"{run_dir}/slurm-%j.out", extra)
    args = " ".join(shlex.quote(a) for o in overrides for a in ("--set", o))
    lines += [f"export FACEALIGN_LAUNCH_PYTHON={shlex.quote(sys.executable)}",
              f"export FACEALIGN_RUN_DIR={shlex.quote(str(run_dir))}",
              f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    lines += scripts.container_exports(container, mounts, runtime)
    lines.append(f"exec bash {shlex.quote(str(REPO / 'slurm' / 'run-training.sh'))} {shlex.quote(str(job))} {args}".rstrip())
    return "\n".join(lines) + "\n"


def failure_cost(spec, run_dir: Path) -> str:
    """What a lost node leaves and costs: the world sizes the job may go on with, and the work redone after a
    restart (the checkpoint interval, in minutes at the speed the run last logged when it exists)."""
    counts, per_node = spec.node_counts(), spec.resources.tasks_per_node
    fewer = " or ".join(f"{n} node(s) = {n * per_node} rank(s)" for n in counts[1:])
    elastic = (f"on a lost node it goes on with {fewer}, the same training" if fewer
               else "a lost node requeues it (resources.min_nodes allows no fewer nodes)")
    global_batch = spec.data.batch_size * spec.world_size * spec.optim.grad_accumulation
    every = spec.checkpoint.every_steps or components.epoch_steps(spec)
    interval = (f"{every} step(s)" if spec.checkpoint.every_steps else
                f"one epoch ({every} steps)" if every else "one epoch")
    ips = run_status.read_progress(run_dir).get("images_per_s")
    if every and ips:
        interval += f", {every * global_batch / ips / 60:.1f} min at the {ips:.1f} img/s {run_dir.name} last logged"
    stall = f"a rank silent for {spec.run.stall_timeout_s:g} s ends the step" if spec.run.stall_timeout_s \
        else "no stall timeout"
    return (f"  world sizes: {', '.join(map(str, spec.world_sizes()))} rank(s); {elastic}; up to "
            f"{spec.run.max_restarts} restart(s) in the allocation; a failure redoes at most the checkpoint "
            f"interval, {interval}; {stall}")


def run_local(spec, job: Path, overrides, run_dir: Path, np_: int, output=None) -> int:
    """The job through horovodrun here; the trainer's own exit status as rank 0 recorded it. ``output``: a file
    for the ranks' output (default: this process's)."""
    r = spec.resources
    cmd = trainer_command(np_, job, run_dir, overrides)
    threads = str(r.cpus_per_task)
    # the spec's Horovod and MXNet knobs, before any rank starts (components.runtime_env)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MXNET_CPU_WORKER_NTHREADS": threads,
           **components.runtime_env(spec)}
    print("facealign-launch: " + shlex.join(cmd), flush=True)
    # horovodrun turns any rank's failure into its own exit 1: rank 0 writes the ranks' own status here
    with tempfile.TemporaryDirectory(prefix="facealign-launch-") as tmp:
        exit_file = Path(tmp) / EXIT_FILE
        code = subprocess.run(cmd, env={**env, "FACEALIGN_EXIT_FILE": str(exit_file)}, stdout=output,
                              stderr=subprocess.STDOUT if output else None).returncode
        try:
            ended = json.loads(exit_file.read_text())
        except (OSError, ValueError):
            print(f"facealign-launch: horovodrun exited {code}; rank 0 recorded no exit status (killed before "
                  f"it could)", file=sys.stderr)
            return code
    print(f"facealign-launch: rank 0 exited {ended['code']}: {ended['reason']}", file=sys.stderr, flush=True)
    return int(ended["code"])


def sbatch(script: Path) -> tuple[int, str]:
    """(0, job id) or (exit status, message) of submitting ``script``."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        return 2, "sbatch not found: is this a Slurm login node? (facealign-launch local runs here)"
    if out.returncode != 0:
        return 1, f"sbatch failed: {out.stderr.strip()}"
    return 0, out.stdout.strip().split(";")[0]


def sweep_command(args) -> int:
    from launcher import sweep as sweeps

    try:
        if sweeps.is_sweep_file(Path(args.job)):
            sw = sweeps.load_sweep_file(Path(args.job))
            sw.fixed += args.set
            sw.grid.update(sweeps.parse_axis(args.grid, "--grid"))
            sw.zipped.update(sweeps.parse_axis(args.zip, "--zip"))
        else:
            sw = sweeps.Sweep(base=Path(args.job).resolve(), fixed=list(args.set),
                              grid=sweeps.parse_axis(args.grid, "--grid"), zipped=sweeps.parse_axis(args.zip, "--zip"))
        sw.name = args.name or sw.name
        if args.max_parallel is not None and args.max_parallel < 1:
            raise SpecError(f"--max-parallel {args.max_parallel}: at least 1 array task at once")
        sw.max_parallel = args.max_parallel or sw.max_parallel
        name, root, members = sweeps.plan(sw, args.out_root)
        sweeps.write(sw, name, root, members)
    except SpecError as e:
        print(f"facealign-launch: {e}", file=sys.stderr)
        return 2
    print(f"sweep {name}: {len(members)} members in {root}")
    for m in members:
        print(f"  {m.index:>3}  {m.dir.name}")
    if args.local:
        first_failure = 0
        for m in members:
            print(f"facealign-launch: member {m.index} of {len(members)}: {' '.join(m.overrides)}", flush=True)
            code = run_local(m.spec, m.dir / JOB_FILE, [], m.dir, m.spec.world_size)
            first_failure = first_failure or code
        print(f"  status:      facealign-launch status {root}")
        print(f"  hparams:     tensorboard --logdir {root}  (HParams tab)")
        return first_failure
    script = root / SBATCH_FILE
    script.write_text(sweeps.render_array(members[0].spec, name, root, members, REPO, sys.executable, sw.max_parallel,
                                          args.sbatch, args.container, args.container_mount, args.container_runtime))
    code, said = sbatch(script)
    if code:
        print(f"facealign-launch: {said}", file=sys.stderr)
        return code
    sweeps.record_array(root, said)
    for m in members:
        run_status.record_submitted(m.dir, f"{said}_{m.index}")
    print(f"submitted job array {said} (tasks 0-{len(members) - 1}"
          f"{f', at most {sw.max_parallel} at once' if sw.max_parallel else ''})")
    print(f"  logs:        {root}/slurm-{said}_<task>.out (and each member's log.txt)")
    print(f"  status:      facealign-launch status {root}")
    print(f"  hparams:     tensorboard --logdir {root}  (HParams tab)")
    return 0


def status_command(args) -> int:
    import time

    while True:
        try:
            found = run_status.expand(args.paths)
        except FileNotFoundError as e:
            print(f"facealign-launch: {e}", file=sys.stderr)
            return 2
        rows = [run_status.run_status(path, overrides, query_slurm=not args.no_slurm) for path, overrides in found]
        if args.json:
            print(json.dumps([r.to_dict() for r in rows], indent=1))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print(run_status.format_table(rows) if rows else f"no runs under {' '.join(args.paths)}")
            if rows:
                print(f"\ncompare: tensorboard --logdir {' --logdir '.join(args.paths)}  (HParams tab: a sweep's runs "
                      f"side by side)")
        if not args.watch:
            return 0
        time.sleep(args.watch)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "status":
        return status_command(args)
    if args.command == "sweep":
        return sweep_command(args)
    job = Path(args.job)
    try:
        spec = components.load(job, args.set, check_files=args.command in ("validate", "submit", "local"))
    except SpecError as e:
        print(f"facealign-launch: {e}", file=sys.stderr)
        return 2
    r = spec.resources
    if args.command == "validate":
        print(f"{job}: ok. {spec.model.name}; world {r.nodes} node(s) x {r.tasks_per_node} task(s) = "
              f"{spec.world_size} rank(s), {r.gpus_per_node} GPU(s)/node, {r.cpus_per_task} CPU(s)/task, "
              f"time {r.time}; batch {spec.data.batch_size} per rank")
        print(failure_cost(spec, run_dir_of(spec, None)))
        return 0
    run_dir = run_dir_of(spec, args.run_dir)
    if args.command == "render":
        sys.stdout.write(render(spec, job.resolve(), args.set, run_dir, args.sbatch, args.container,
                                args.container_mount, args.container_runtime))
        return 0
    if args.command == "local":
        try:  # fewer ranks than the nominal world go on with the same training (docs/faults.md)
            spec.check_ranks(args.np)
        except SpecError as e:
            print(f"facealign-launch: {job}: -np {args.np}: {e}", file=sys.stderr)
            return 2
        return run_local(spec, job, args.set, run_dir, args.np)
    # submit
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_dir / JOB_FILE
    if resolved.exists() and resolved.resolve() != job.resolve():
        previous = load_job(resolved)
        if previous != spec:
            print(f"facealign-launch: {run_dir} holds a run of another spec ({resolved}); pass --run-dir for a new run "
                  f"or submit {resolved} to continue it", file=sys.stderr)
            return 2
    if resolved.resolve() != job.resolve():
        dump_job(spec, resolved)
    script = run_dir / SBATCH_FILE
    script.write_text(render(spec, resolved, [], run_dir, args.sbatch, args.container, args.container_mount,
                             args.container_runtime))
    code, job_id = sbatch(script)
    if code:
        print(f"facealign-launch: {job_id}", file=sys.stderr)
        return code
    run_status.record_submitted(run_dir, job_id)
    print(f"submitted job {job_id}")
    print(f"  spec:        {resolved}")
    print(f"  log:         {run_dir}/slurm-{job_id}.out (and {run_dir}/log.txt)")
    print(f"  tensorboard: tensorboard --logdir {run_dir / 'tb'}")
    print(f"  status:      facealign-launch status {run_dir}")
    print(f"  evaluate:    sbatch --dependency=afterok:{job_id} slurm/eval.sh {run_dir} <test sets>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
