"""``facealign-infer``: landmarks for the faces in images, folders and videos.

    facealign-infer runs/demo photo.jpg faces/ --out out/                 # BlazeFace detector, annotated images
    facealign-infer exported/hg2 clip.mp4 --out out/                      # video: per-frame JSON + annotated video
    facealign-infer exported/hg2/model.onnx faces/ --backend onnxruntime --boxes my_boxes.json --out out/

MODEL is anything facealign-eval takes. Faces come from a detector (``--detector
blazeface``: MediaPipe's BlazeFace, the default, about 2 ms a 640 x 480 frame on 2 cores of an Intel Xeon, and turned faces too;
``dlib``: dlib's HOG detector; ``haar``: OpenCV's cascade; ``none``: the whole image is one face) or from ``--boxes FILE.json`` written by your own detector
(``{"photo.jpg": [[x0, y0, x1, y1], ...]}``; for a video, keys are frame indices).

Writes to --out: ``predictions.json`` (per image: faces with box, box score,
landmarks x, y in image pixels, per-landmark scores; for a model that predicts z, each landmark's z and
the head pose: yaw, pitch, roll in degrees) and, unless --no-draw, the annotated images (the head's axes
drawn from the nose tip for a model that predicts z); per video ``<name>.json`` (per frame) and ``<name>_landmarks.avi``.
In videos the detector runs every --detect-every frames and the faces are
tracked from their landmarks in between; a face whose landmark scores fall below --track-min-score, or
that leaves the frame, is lost and the detector runs on the next frame. --smooth steadies each face's landmarks over
the frames: one-euro (the default; the One Euro filter, facealign.serve.smoothing: --min-cutoff
Hz at rest, --beta for how fast it follows motion), ema A (A the weight of the previous
frame) or off. Each face's filter starts afresh when its track is lost. Detections
scoring below --min-box-score (the detector's score: dlib's HOG margin, BlazeFace's confidence; default 0) are dropped; every kept
face's score is in the JSON.

Images that cannot be read are skipped, each with a line, and counted; the others
are written. Exit status: 0 done (images skipped included, unless --strict); 1 nothing
to do (no image or video among the inputs), or --strict and an image was skipped;
2 a model, input or boxes file that cannot be used (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from facealign.serve.detect import DEFAULT_DETECTOR, DETECTORS
from facealign.serve.drawing import draw
from facealign.serve.smoothing import BETA, D_CUTOFF, MIN_CUTOFF
from facealign.serve.tracking import FaceTracker, follow

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-infer", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run dir, checkpoint dir, export package, .onnx file or reference release")
    p.add_argument("inputs", nargs="+", help="images, folders (searched recursively) and video files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                   help="blazeface: MediaPipe's BlazeFace (default); dlib: dlib's HOG detector; haar: OpenCV's "
                        "cascade; none: whole image")
    p.add_argument("--boxes", help="JSON of face boxes from your own detector (replaces --detector)")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    p.add_argument("--scales", default="1", metavar="S[,S...]|tta",
                   help="multi-scale test: also crop each face this many times as wide and average the landmarks; "
                        "'tta': seven crops (0.85 to 1.32) and the flip test, 14 network passes a face")
    p.add_argument("--decode", choices=("subpixel", "dark", "reference"), default="subpixel",
                   help="heatmap decoding: subpixel (default), dark (DARK) or reference (integer argmax)")
    p.add_argument("--refine", type=int, default=1, help="re-crop around the prediction this many times (default 1)")
    p.add_argument("--gpu", type=int, default=None, help="GPU index (default: CPU)")
    p.add_argument("--backend", choices=("mxnet", "onnxruntime"), default="mxnet")
    p.add_argument("--model-name", help="zoo model of a reference release whose directory name does not say")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (their faces share the network)")
    p.add_argument("--smooth", nargs="+", default=["one-euro"], metavar="KIND",
                   help="video: one-euro (default), ema A (A: the previous frame's weight, 0..1) or off")
    p.add_argument("--min-cutoff", type=float, default=MIN_CUTOFF,
                   help=f"one-euro: cut-off frequency at rest, Hz ({MIN_CUTOFF})")
    p.add_argument("--beta", type=float, default=BETA, help=f"one-euro: cut-off increase per pixel/s of speed ({BETA})")
    p.add_argument("--d-cutoff", type=float, default=D_CUTOFF,
                   help=f"one-euro: cut-off of the speed estimate, Hz ({D_CUTOFF})")
    p.add_argument("--min-box-score", type=float, default=0.0,
                   help="drop detections scoring below this (the detector's score; default 0)")
    p.add_argument("--detect-every", type=int, default=5, help="video: run the detector every N frames")
    p.add_argument("--track-min-score", type=float, default=2.0,
                   help="video: a face whose mean landmark score (heatmap peak; about 20 when confident) falls below "
                        "this is lost and the detector runs on the next frame (default 2)")
    p.add_argument("--no-draw", action="store_true", help="write JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true", help="exit 1 when any image could not be read")
    return p.parse_args(argv)


def collect_inputs(items) -> tuple[list[Path], list[Path]]:
    images, videos = [], []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.suffix.lower() in VIDEO_EXTENSIONS:
            videos.append(path)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            raise ValueError(f"{path}: not an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) or a video "
                             f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return images, videos


def read_rgb(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path}: cannot decode the image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def box_key(boxes: dict, path: Path):
    for key in (str(path), path.name):
        if key in boxes:
            return boxes[key]
    return None


def run_images(predictor, images, args, boxes, out: Path) -> tuple[dict, list]:
    from tqdm import tqdm

    results = {}
    start, faces = time.perf_counter(), 0
    bar = tqdm(total=len(images), desc="[infer] images", unit="image", file=sys.stderr,
               disable=args.quiet or not sys.stderr.isatty())
    skipped = []
    for first in range(0, len(images), args.batch_size):
        paths, pixels = [], []
        for p in images[first:first + args.batch_size]:
            try:
                pixels.append(read_rgb(p))
                paths.append(p)
            except ValueError as e:  # one bad file costs that file only
                skipped.append(str(p))
                print(f"[infer] skipped {e}", file=sys.stderr, flush=True)
        given = [box_key(boxes, p) for p in paths] if boxes is not None else None
        if given is not None:
            given = [g if g is not None else np.zeros((0, 4)) for g in given]
        for path, image, pred in zip(paths, pixels, predictor.predict_batch(pixels, given) if pixels else []):
            results[str(path)] = pred.to_json()
            faces += len(pred)
            if not args.no_draw:
                name = out / (path.stem + "_landmarks.jpg")
                cv2.imwrite(str(name), draw(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), pred))
        bar.update(len(images[first:first + args.batch_size]))
        bar.set_postfix(faces=faces)
    bar.close()
    if images:
        print(f"[infer] {len(results)} images, {faces} faces in {time.perf_counter() - start:.1f} s"
              + (f"; {len(skipped)} could not be read" if skipped else ""), flush=True)
    return results, skipped


def smoothing_of(args):
    """A factory of per-track filters from --smooth (and a legacy bare number: an EMA weight, 0 = off)."""
    from facealign.serve.smoothing import make_filter

    kind, *rest = args.smooth
    try:
        weight = float(kind)
        kind, rest = ("ema", [str(weight)]) if weight > 0 else ("off", [])
    except ValueError:
        pass
    if kind == "ema" and len(rest) != 1:
        raise ValueError("--smooth ema takes the previous frame's weight, e.g. --smooth ema 0.6")
    if kind != "ema" and rest:
        raise ValueError(f"--smooth {kind} takes no value")
    ema = float(rest[0]) if rest else 0.6
    make_filter(kind, ema=ema, min_cutoff=args.min_cutoff, beta=args.beta, d_cutoff=args.d_cutoff)  # checks them
    return lambda: make_filter(kind, ema=ema, min_cutoff=args.min_cutoff, beta=args.beta, d_cutoff=args.d_cutoff)


def run_video(predictor, path: Path, args, boxes, out: Path) -> dict:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path}: cannot open the video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    writer, frames, index, last_t = None, [], 0, -1.0
    tracker = FaceTracker(smoothing_of(args), args.detect_every, args.track_min_score)
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=total or None, desc=f"[infer] {path.name}", unit="frame", file=sys.stderr,
               disable=args.quiet or not sys.stderr.isatty())
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        # a timestamp per frame (the container's, or the frame rate's where it has none)
        stamp = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        t = stamp if stamp > last_t else (last_t + 1.0 / fps if last_t > -1 else 0.0)
        last_t = t
        pred = follow(predictor, tracker, rgb, index, t,
                      None if boxes is None else boxes.get(str(index), np.zeros((0, 4))))
        frames.append({"frame": index, "faces": pred.to_json()})
        if not args.no_draw:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(out / f"{path.stem}_landmarks.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                                         fps, (w, h))
            writer.write(draw(frame, pred))
        index += 1
        bar.update(1)
    bar.close()
    cap.release()
    if writer is not None:
        writer.release()
    (out / f"{path.stem}.json").write_text(json.dumps({"video": str(path), "fps": fps, "frames": frames}))
    seconds = time.perf_counter() - start
    print(f"[infer] {path}: {index} frames in {seconds:.1f} s ({index / max(seconds, 1e-9):.1f} frames/s)",
          flush=True)
    return {"frames": index, "json": str(out / f"{path.stem}.json")}


def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign.platform import cpu_isa

    cpu_isa.serve_synchronously(args.gpu)  # before MXNet is imported
    from facealign.runs.artifact import ArtifactError
    from facealign.platform.gpu_probe import GPUProbeFailed
    from facealign.serve.detect import load_boxes, make_detector
    from facealign.serve.predictor import Predictor
    from facealign.evaluation.scoring import parse_test_time

    out = Path(args.out)
    try:
        images, videos = collect_inputs(args.inputs)
        if not images and not videos:
            print(f"facealign-infer: no images or videos in {', '.join(args.inputs)} (images: "
                  f"{', '.join(sorted(IMAGE_EXTENSIONS))}; videos: {', '.join(sorted(VIDEO_EXTENSIONS))})",
                  file=sys.stderr)
            return 1
        boxes = load_boxes(args.boxes) if args.boxes else None
        if videos:
            smoothing_of(args)  # a bad --smooth before any work
        flip, scales = parse_test_time(args.scales, args.flip)
        predictor = Predictor.load(args.model, backend=args.backend, gpu=args.gpu, model=args.model_name,
                                   detector=None if boxes is not None else make_detector(args.detector),
                                   flip=flip, scales=scales, refine=args.refine, batch_size=max(args.batch_size, 1),
                                   min_box_score=args.min_box_score, decode=args.decode,
                                   log=lambda m: print(f"[infer] {m}", file=sys.stderr))
        out.mkdir(parents=True, exist_ok=True)
        results, skipped = run_images(predictor, images, args, boxes, out)
        videos_done = {str(v): run_video(predictor, v, args, boxes, out) for v in videos}
    except (ArtifactError, GPUProbeFailed, FileNotFoundError, ValueError) as e:
        print(f"facealign-infer: {e}", file=sys.stderr)
        return 2
    (out / "predictions.json").write_text(json.dumps({"model": str(args.model), "images": results,
                                                      "skipped": skipped, "videos": videos_done}, indent=1))
    print(f"[infer] predictions in {out / 'predictions.json'}")
    if skipped and args.strict:
        print(f"facealign-infer: --strict: {len(skipped)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
