#!/usr/bin/env python
"""Benchmark training throughput: images/s per rank with 1 and 2 Horovod processes, float32 and bfloat16.

Each configuration runs real training steps (hybridised network, MSE over the
stacks, Nadam through Horovod's DistributedTrainer) on random batches of 16
in worker processes started by horovodrun, and reports rank 0's images/s:

* 1 process x 2 threads, float32 and bfloat16 (MXNet AMP);
* 1 process x 1 thread and 2 processes x 1 thread each, float32, giving the
  scaling efficiency = throughput(2 ranks) / (2 x throughput(1 rank)).

    python bench/train.py                         # Hourglass2(d=3)-CAB
    python bench/train.py --models hg2-d3-cab sat2-d3-cab --steps 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facealign.platform import cpu_isa  # noqa: E402
from launcher.local import horovodrun_command  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["hg2-d3-cab"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 1 warm-up step)")
    p.add_argument("--out", default="bench/results/train.json")
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "DTYPE", "BATCH"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(model: str, dtype: str, batch: int, steps: int) -> None:
    import horovod.mxnet as hvd
    import mxnet as mx

    if dtype == "bfloat16":
        from facealign.train import amp

        amp.init("bfloat16")  # as the trainer
    from mxnet import autograd

    from facealign.models import get_model, initialize

    hvd.init()
    net = initialize(get_model(model))
    net.hybridize(static_alloc=True)
    hvd.broadcast_parameters(net.collect_params(), root_rank=0)
    trainer = hvd.DistributedTrainer(net.collect_params(), mx.optimizer.Nadam(learning_rate=1e-4))
    spec = net.spec
    x = mx.nd.random.uniform(0, 255, (batch, 3, spec.input_size, spec.input_size))
    y = mx.nd.random.uniform(0, 1, (batch, spec.num_landmarks, spec.heatmap_size, spec.heatmap_size))
    for i in range(steps + 1):
        if i == 1:
            mx.nd.waitall()
            start = time.perf_counter()
        with autograd.record():
            loss = sum(mx.nd.square(h.astype("float32") - y).mean() for h in net(x))  # as the trainer
        loss.backward()
        trainer.step(1)
        loss.asscalar()
    mx.nd.waitall()  # the last step's backward and update run asynchronously
    ips = batch * steps / (time.perf_counter() - start)
    if hvd.rank() == 0:
        print("RESULT " + json.dumps({"images_per_s_per_rank": ips}), flush=True)


def measure(model, dtype, ranks, threads, args) -> float:
    env = {"HOROVOD_CYCLE_TIME": "10", **os.environ, "OMP_NUM_THREADS": str(threads),
           "MXNET_CPU_WORKER_NTHREADS": str(threads)}  # the trainer's CPU default (facealign.train.dist.init)
    cmd = horovodrun_command(ranks, [__file__, "--steps", args.steps, "--worker", model, dtype, args.batch])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if "RESULT " in ln]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{model} {dtype} x{ranks} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(lines[0].split("RESULT ", 1)[1])["images_per_s_per_rank"]


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them (FACEALIGN_CPU_ISA)
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]), args.steps)
        return 0
    from bench.report import write_report

    results = []
    print(f"{'model':<16} {'fp32 1x2thr':>11} {'bf16 1x2thr':>11} {'fp32 1x1thr':>11} {'fp32 2x1thr':>11} "
          f"{'scaling':>8}   (images/s per rank, batch {args.batch})", flush=True)
    for model in args.models:
        row = {"model": model, "batch": args.batch,
               "fp32_1proc_2threads": measure(model, "float32", 1, 2, args),
               "bf16_1proc_2threads": measure(model, "bfloat16", 1, 2, args),
               "fp32_1proc_1thread": measure(model, "float32", 1, 1, args),
               "fp32_2proc_1thread": measure(model, "float32", 2, 1, args)}
        row["scaling_efficiency"] = row["fp32_2proc_1thread"] / row["fp32_1proc_1thread"]
        results.append(row)
        print(f"{model:<16} {row['fp32_1proc_2threads']:>11.2f} {row['bf16_1proc_2threads']:>11.2f} "
              f"{row['fp32_1proc_1thread']:>11.2f} {row['fp32_2proc_1thread']:>11.2f} "
              f"{100 * row['scaling_efficiency']:>7.1f}%", flush=True)
    write_report("train", args.out, {"batch": args.batch, "steps": args.steps, "optimizer": "nadam",
                                     "hybridize": "static_alloc", "HOROVOD_CYCLE_TIME": "10 ms"}, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
