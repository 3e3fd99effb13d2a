"""``make demo``: train the demo job on the embedded synthetic faces and show that it learned.

    python -m facealign.cli.demo                       # about 5 minutes on 2 CPU cores
    python -m facealign.cli.demo --steps 60 --train-faces 300 --workdir /tmp/demo   # the short version (a test)
    python -m facealign.cli.demo --job jobs/demo-3d.yaml   # make demo-3d: the same model predicting z too

Steps: pack procedural faces (if not packed yet), score the untrained network
on the validation faces, train jobs/demo.yaml with ``horovodrun -np 2`` on
CPU, score the best checkpoint the same way, run ``facealign-eval`` on the run
(its report goes to runs/<run.name>/eval/), and print both NMEs and the TensorBoard
command. Exits 1 if training did not at least halve the error.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m facealign.cli.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=".", help="where data/ and runs/ go (default: the current directory)")
    p.add_argument("--job", default=str(REPO / "jobs" / "demo.yaml"))
    p.add_argument("--train-faces", type=int, default=2000)
    p.add_argument("--val-faces", type=int, default=200)
    p.add_argument("--steps", type=int, help="stop after this many steps (default: the job's schedule)")
    p.add_argument("--np", type=int, default=2, help="ranks (default 2)")
    return p.parse_args(argv)


def score(checkpoint, spec, val_prefix) -> float:
    """Mean NME on the validation faces under the run's own validation protocol (facealign.evaluation.scoring, as the
    trainer scores): of the demo model freshly initialised as the trainer does, or of a checkpoint."""
    import mxnet as mx

    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.spec import components
    from facealign.evaluation.backends import MXNetBackend
    from facealign.data.loader import RecordSet
    from facealign.evaluation.metrics import primary_norm
    from facealign.models import build_model, initialize
    from facealign.evaluation.scoring import score as score_records

    info = components.model_info(spec)
    if checkpoint is None:
        net = initialize(build_model(components.model_spec(spec)), ctx=mx.cpu(), seed=spec.run.seed)
        net.hybridize(static_alloc=True)
    else:
        net = loading.load_network(artifact.resolve(checkpoint), mx.cpu())
    result = score_records(MXNetBackend(net, mx.cpu()), info, RecordSet([val_prefix]),
                           components.validation_protocol(spec), set_name="synthetic",
                           batch_size=spec.eval.batch_size, pad=True)
    return float(result.nme[primary_norm(info.landmark_dims)].mean())


def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign.platform import cpu_isa

    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them
    work = Path(args.workdir).resolve()
    bin_dir = Path(sys.executable).parent

    from facealign.runs import checkpoint
    from facealign.spec import components

    data = work / "data"
    run_dir = work / "runs" / components.load(args.job).run.name  # runs/demo, runs/demo-3d

    # 1. Data: procedural faces with exact landmarks (x, y and z).
    for name, n, seed in (("synth_train", args.train_faces, 1), ("synth_val", args.val_faces, 2)):
        prefix = data / name
        if not prefix.with_suffix(".rec").exists():
            print(f"[demo] packing {n} synthetic faces into {prefix}.rec", flush=True)
            subprocess.run([str(bin_dir / "facealign-pack"), "--synthetic", str(n), "--seed", str(seed), "--quiet",
                            str(prefix)], check=True)
    sets = [f"data.train=[{data / 'synth_train'}]", f"data.val={{synthetic: {data / 'synth_val'}}}"]
    if args.steps:
        sets.append(f"schedule.max_steps={args.steps}")
    sets.append(f"resources.tasks_per_node={args.np}")

    spec = components.load(args.job, sets)
    before = score(None, spec, data / "synth_val")
    print(f"[demo] untrained NME on {args.val_faces} validation faces: {100 * before:.2f}%", flush=True)

    # 2. Training: horovodrun, one core per rank.
    from launcher.local import trainer_command

    cmd = trainer_command(args.np, args.job, run_dir, sets)
    print("[demo] " + " ".join(cmd), flush=True)
    started = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        print(f"[demo] training failed (exit {proc.returncode})", file=sys.stderr)
        return 1

    # 3. Evaluation of the best checkpoint, exactly as before training.
    best = checkpoint.resolve(run_dir, "best")
    after = score(best, spec, data / "synth_val")

    # 4. The evaluation tool on the run: every normalisation, AUC, failure rates, CED curves.
    subprocess.run([str(bin_dir / "facealign-eval"), str(run_dir), "--data", f"synthetic={data / 'synth_val'}",
                    "--protocol", "standard", "--flip", "--quiet"], check=True)
    print(f"\n[demo] trained for {time.time() - started:.0f} s; best checkpoint {best}")
    print(f"[demo] NME before training: {100 * before:.2f}%")
    print(f"[demo] NME after training:  {100 * after:.2f}%  ({before / max(after, 1e-9):.1f}x lower)")
    print(f"[demo] two protocols, one checkpoint: {100 * after:.2f}% is the run's own validation ('train': the "
          f"centre crop of the stored canvas, {spec.eval.decode} decoding, no flip; what the trainer logged); the "
          f"table above is facealign-eval's 'standard' + flip (a crop of the true landmark box, averaged with the "
          f"mirrored crop's prediction), which reads lower")
    print(f"[demo] watch or review the run: {bin_dir / 'tensorboard'} --logdir {run_dir / 'tb'}")
    return 0 if after < 0.5 * before else 1


if __name__ == "__main__":
    sys.exit(main())
