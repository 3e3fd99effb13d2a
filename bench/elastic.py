#!/usr/bin/env python
"""Benchmark elastic restarts: what a lost or stalled rank costs a 2-rank CPU run.

For each failure, a real run of the demo-sized job (``facealign-launch local -np 2``, checkpoints every
``--every`` steps) is started, one rank is failed once the log shows step ``--fail-at``, and the run is
resumed with one rank standing for both (``-np 1``, as after a lost node). Measured:

* detection: from the failure to the end of the 2-rank run (the job's own bound);
* restart: from that end to the resumed run's first new step (start-up, resume, the step);
* total: from the failure to the first new step;
* steps lost: the steps past the last checkpoint, which the resumed run does again, and their time at the
  speed the 2-rank run last logged.

Failures: ``kill`` (SIGKILL of rank 1: a crashed process or node), ``stall`` (SIGSTOP of rank 1, ended by
the watchdog at ``run.stall_timeout_s`` = ``--stall``), ``stall-gloo`` (SIGSTOP with the default timeout, so
Gloo's own transport timeout ends it).

    python bench/elastic.py --out bench/results/elastic.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_report  # noqa: E402
from facealign.runs import status as runs  # noqa: E402

FAILURES = {"kill": signal.SIGKILL, "stall": signal.SIGSTOP, "stall-gloo": signal.SIGSTOP}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--failures", nargs="*", default=list(FAILURES), choices=list(FAILURES))
    p.add_argument("--every", type=int, default=10, help="checkpoint.every_steps")
    p.add_argument("--fail-at", type=int, default=15, help="fail once the log shows this step")
    p.add_argument("--stall", type=float, default=20, help="run.stall_timeout_s for the 'stall' failure")
    p.add_argument("--out", default="bench/results/elastic.json")
    return p.parse_args(argv)


def rank_process(run_dir: Path, rank: int, timeout: float = 300) -> psutil.Process:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(run_dir) in " ".join(p.info["cmdline"] or []) and p.environ().get("HOROVOD_RANK") == str(rank):
                    return p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise SystemExit(f"bench/elastic: rank {rank} of {run_dir} never started")


def wait_for_step(run_dir: Path, step: int, proc, since: float = 0.0, timeout: float = 900) -> float:
    """Until progress.json, written after ``since``, shows ``step`` or later; the time it did."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        progress = runs.read_progress(run_dir)
        if (progress.get("step") or 0) >= step and progress.get("time", 0) > since:
            return time.time()
        if proc.poll() is not None:
            raise SystemExit(f"bench/elastic: the run ended before step {step}: exit {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"bench/elastic: step {step} never came")


def launch(job: Path, run_dir: Path, np_: int, *sets) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "launcher.cli", "local", str(job), "-np", str(np_), "--run-dir", str(run_dir)]
    cmd += [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def measure(job: Path, root: Path, failure: str, args) -> dict:
    run_dir = root / failure
    sets = ["schedule.max_steps=100000", f"checkpoint.every_steps={args.every}", "eval.every_steps=100000"]
    if failure == "stall":
        sets.append(f"run.stall_timeout_s={args.stall}")
    first = launch(job, run_dir, 2, *sets)
    wait_for_step(run_dir, args.fail_at, first)
    victim = rank_process(run_dir, 1)
    progress = runs.read_progress(run_dir)
    failed_at, failed_step = time.time(), progress["step"]
    step_s = 16 / progress["images_per_s"]  # the global batch (8 x 2 ranks) at the speed last logged
    victim.send_signal(FAILURES[failure])
    first.wait(timeout=600)
    ended = time.time()
    resumed_from = runs.latest_checkpoint_step(run_dir)
    second = launch(job, run_dir, 1, *sets)
    try:
        first_new = wait_for_step(run_dir, resumed_from + 1, second, since=ended)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    reason = (json.loads((run_dir / "exit.json").read_text()).get("reason") or "") if (run_dir / "exit.json").exists() \
        else ""
    return {"failure": failure, "failed_at_step": failed_step, "resumed_from": resumed_from,
            "steps_lost": failed_step - resumed_from, "step_s": round(step_s, 2),
            "redone_s": round((failed_step - resumed_from) * step_s, 1), "detection_s": round(ended - failed_at, 1),
            "restart_s": round(first_new - ended, 1), "total_s": round(first_new - failed_at, 1), "reason": reason}


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "facealign.cli.pack", "--synthetic", "256", "--seed", "1", "--quiet",
                        str(root / "train")], check=True, cwd=REPO)
        job = root / "job.yaml"
        # the demo's model and batch on 2 ranks; no validation, so only the failure is timed
        job.write_text(json.dumps({"run": {"name": "bench-elastic", "seed": 0},
                                   "data": {"train": [str(root / "train")], "batch_size": 8, "input_size": 128,
                                            "heatmap_size": 64, "workers": 1},
                                   "model": {"name": "hg2-d3-cab", "width": 64},
                                   "logging": {"every_steps": 1, "images": 0},
                                   "resources": {"nodes": 1, "tasks_per_node": 2}}))
        rows = [measure(job, root, f, args) for f in args.failures]
    print(f"{'failure':<11} {'step':>5} {'resumed':>8} {'lost':>5} {'redone s':>9} {'detect s':>9} {'restart s':>10} "
          f"{'total s':>8}")
    for r in rows:
        print(f"{r['failure']:<11} {r['failed_at_step']:>5} {r['resumed_from']:>8} {r['steps_lost']:>5} "
              f"{r['redone_s']:>9} {r['detection_s']:>9} {r['restart_s']:>10} {r['total_s']:>8}")
    write_report("elastic", args.out, {"checkpoint_every_steps": args.every, "fail_at": args.fail_at,
                                       "stall_timeout_s": args.stall}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
