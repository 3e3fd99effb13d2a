#!/usr/bin/env python
"""Benchmark the zoo: parameters, size, training and inference throughput on the current device.

For each model: parameter counts, the reference's size figure, images/s for a
full training step (forward, backward, Nadam update; MSE summed over stacks)
at batch 16, images/s for inference (hybridised, static memory) at batch 1
and 16, and the process's peak memory. Prints a table and writes JSON with the
machine and thread settings. Each model runs in its own process: MXNet's
memory pool keeps a model's buffers until the process exits.

    python bench/models.py                         # every model, CPU, all cores
    python bench/models.py --models hg2-d3-cab --threads 1 --out bench/results/one.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_report  # noqa: E402
from facealign.platform import cpu_isa  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="model names (default: all of list_models())")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="OMP / MXNet CPU worker threads (default: all cores)")
    p.add_argument("--gpu", type=int, default=None, help="run on this GPU instead of the CPU")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-iters", type=int, default=3, help="timed training steps per model")
    p.add_argument("--infer-iters", type=int, default=5, help="timed inference batches per model and batch size")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before each measurement")
    p.add_argument("--out", default="bench/results/models.json", help="where to write the JSON results")
    p.add_argument("--one", metavar="MODEL", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    return p.parse_args(argv)


def measure_one(name: str, args) -> dict:
    """Throughput of one model, measured in this process."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from facealign.models import count_parameters, get_model, initialize

    ctx = mx.gpu(args.gpu) if args.gpu is not None else mx.cpu()

    def images_per_s(step, batch, iters):
        for _ in range(args.warmup):
            step()
        mx.nd.waitall()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        mx.nd.waitall()
        return batch * iters / (time.perf_counter() - start)

    net = initialize(get_model(name), ctx=ctx, seed=0)
    spec = net.spec
    counts = count_parameters(net)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "nadam", {"learning_rate": 1e-4})
    size, hm, k = spec.input_size, spec.heatmap_size, spec.num_landmarks
    x_train = mx.nd.random.uniform(0, 255, (args.train_batch, 3, size, size), ctx=ctx)
    y_train = mx.nd.random.uniform(0, 1, (args.train_batch, k, hm, hm), ctx=ctx)

    def train_step():
        with autograd.record():
            loss = sum(mx.nd.square(h - y_train).mean() for h in net(x_train))
        loss.backward()
        trainer.step(1)

    train_ips = images_per_s(train_step, args.train_batch, args.train_iters)
    infer = {}
    for batch in (1, 16):
        x = mx.nd.random.uniform(0, 255, (batch, 3, size, size), ctx=ctx)
        infer[batch] = images_per_s(lambda: net(x)[-1].wait_to_read(), batch, args.infer_iters)
    return {"model": name, "params_trainable": counts["trainable"], "params_total": counts["total"],
            "size_mb": counts["size_mb"], "train_images_per_s_b16": round(train_ips, 3),
            "infer_images_per_s_b1": round(infer[1], 3), "infer_images_per_s_b16": round(infer[16], 3),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them (FACEALIGN_CPU_ISA)
    # Thread counts must be in the environment before MXNet is imported.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MXNET_CPU_WORKER_NTHREADS"] = str(args.threads)
    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return 0

    import mxnet as mx

    from facealign.models import list_models

    names = args.models or list_models()
    shared = ["--threads", str(args.threads), "--train-batch", str(args.train_batch),
              "--train-iters", str(args.train_iters), "--infer-iters", str(args.infer_iters),
              "--warmup", str(args.warmup)] + (["--gpu", str(args.gpu)] if args.gpu is not None else [])
    results = []
    print(f"{'model':<18} {'params':>10} {'size MB':>8} {'train b16':>10} {'infer b1':>9} {'infer b16':>10} "
          f"{'peak GB':>8}   (images/s)", flush=True)
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name, *shared], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name:<18} FAILED (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
            results.append({"model": name, "error": proc.stderr.strip()[-2000:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{name:<18} {row['params_trainable']:>10,} {row['size_mb']:>8} {row['train_images_per_s_b16']:>10.2f} "
              f"{row['infer_images_per_s_b1']:>9.2f} {row['infer_images_per_s_b16']:>10.2f} "
              f"{row['peak_rss_gb']:>8.2f}", flush=True)

    write_report("models", args.out, {"train_batch": args.train_batch, "train_iters": args.train_iters,
                                      "infer_iters": args.infer_iters, "warmup": args.warmup, "optimizer": "nadam"},
                 results, mxnet=mx.__version__, device=f"gpu({args.gpu})" if args.gpu is not None else "cpu",
                 threads=args.threads, OMP_NUM_THREADS=os.environ["OMP_NUM_THREADS"],
                 MXNET_CPU_WORKER_NTHREADS=os.environ["MXNET_CPU_WORKER_NTHREADS"])
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
