#!/usr/bin/env python
"""What the plain-layout concats (facealign.models.layers.concat_channels) cost in training: the demo's
network (hg2-d3-cab, width 64, depth 2, 64 -> 32 px, batch 16) through forward, backward and an SGD
update, with the workaround (alignment 16) and with every concat in oneDNN (alignment 1, which trains
at this width), alternating in fresh processes so both see the same machine. Prints a table, writes JSON.

    python bench/concat_speed.py --out bench/results/concat_speed.json
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
from bench.report import write_report  # noqa: E402


def worker(steps: int) -> None:
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from facealign.models import get_model, initialize

    net = initialize(get_model("hg2-d3-cab", width=64, depth=2, input_size=64, heatmap_size=32), seed=0)
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1e-3})
    x = mx.nd.array(np.random.default_rng(0).uniform(0, 255, (16, 3, 64, 64)))

    def step():
        with autograd.record():
            loss = sum((h * h).mean() for h in net(x))
        loss.backward()
        trainer.step(16)
        mx.nd.waitall()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    print(json.dumps({"images_per_s": 16 * steps / (time.perf_counter() - t)}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="bench/results/concat_speed.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.steps)
        return 0
    runs = {"16": [], "1": []}
    for _ in range(args.rounds):
        for alignment in runs:
            env = {**os.environ, "FACEALIGN_ONEDNN_CONCAT_ALIGNMENT": alignment, "OMP_NUM_THREADS": "2"}
            out = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs[alignment].append(json.loads(out.splitlines()[-1])["images_per_s"])
    rows = [{"concats": "plain layout where not whole blocks (alignment 16, the default)" if a == "16"
             else "all in oneDNN (alignment 1)", "images_per_s": round(sorted(v)[len(v) // 2], 2), "runs": v}
            for a, v in runs.items()]
    for r in rows:
        print(f"{r['concats']:<66} {r['images_per_s']:>7.2f} img/s (median of {len(r['runs'])})")
    print(f"ratio: {rows[0]['images_per_s'] / rows[1]['images_per_s']:.3f}")
    write_report("concat_speed", args.out, {"rounds": args.rounds, "steps": args.steps, "threads": 2}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
