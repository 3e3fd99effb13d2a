#!/usr/bin/env python
"""Benchmark inference: latency and faces/s of the reference models, MXNet and onnxruntime, and the detectors.

For each model (exported to a package and to ONNX first, in a temporary
directory), for each backend, batch size (1, 8, 32) and flip test (off, on):
the latency of ``Predictor.predict`` on one image with that many given face
boxes (crop, network, decode, map back; no detection, no refinement pass),
p50 and p90 over the timed repetitions, and faces/s = batch / p50. Then the
detectors alone (BlazeFace, dlib HOG, OpenCV Haar) on procedural faces placed in
640 x 480 and 1280 x 720 frames. Each model runs in its own process (MXNet's
memory pool keeps buffers until exit). Prints tables and writes JSON.

    python bench/infer.py                                   # the seven reference models (long on CPU)
    python bench/infer.py --models hg2-d3-cab --reps 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_report  # noqa: E402
from facealign.platform import cpu_isa  # noqa: E402

REFERENCE_MODELS = ["hg2-d4-resnet", "hg2-d3-hpm", "hg2-d4-cab", "sat2-d3-cab", "hg2-d3-cab", "hg2-d3-cab-3d",
                    "sat2-d3-cab-3d"]
BATCHES = (1, 8, 32)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=REFERENCE_MODELS)
    p.add_argument("--backends", nargs="*", default=["mxnet", "onnxruntime"])
    p.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per configuration (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP / MXNet / onnxruntime threads")
    p.add_argument("--out", default="bench/results/infer.json")
    p.add_argument("--one", metavar="MODEL", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def scene(size, faces=1, seed=0):
    """Procedural faces pasted into a grey frame of ``size`` (w, h): (image, face boxes)."""
    import cv2

    from facealign.synth.faces import render_face

    w, h = size
    image = np.full((h, w, 3), 110, np.uint8)
    boxes = []
    for i in range(faces):
        face = render_face(seed, i, 384)
        side = h // 2
        x0 = (i * side) % max(w - side, 1)
        image[h // 4:h // 4 + side, x0:x0 + side] = cv2.resize(face.image, (side, side))
        pts = face.landmarks[:, :2] * side / 384 + [x0, h // 4]
        boxes.append([*pts.min(0), *pts.max(0)])
    return image, np.array(boxes)


def measure_one(name: str, args) -> list[dict]:
    import mxnet as mx

    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.serve import export
    from facealign.data.schemes import scheme_for
    from facealign.data.transforms import crop_framing
    from facealign.serve.predictor import Predictor
    from facealign.models import get_model, initialize

    net = initialize(get_model(name), seed=0)
    spec = net.spec
    info = artifact.ModelInfo.of(name, spec, scheme=scheme_for(spec.num_landmarks).name,
                                 crop_framing=crop_framing("center"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export.export_package(net, info, tmp, onnx="onnxruntime" in args.backends, log=lambda m: None)
        image, box = scene((640, 480))
        for backend in args.backends:
            runner = loading.load_backend(artifact.resolve(tmp), backend)
            for batch in args.batches:
                boxes = np.repeat(box, batch, 0)
                for flip in (False, True):
                    predictor = Predictor(runner, info, flip=flip, refine=0, batch_size=batch)
                    predictor.predict(image, boxes)  # warm-up (and MXNet's shape-specific graph)
                    times = []
                    for _ in range(args.reps):
                        t = time.perf_counter()
                        predictor.predict(image, boxes)
                        times.append(time.perf_counter() - t)
                    p50 = percentile(times, 50)
                    rows.append({"model": name, "backend": backend, "batch": batch, "flip": flip,
                                 "p50_ms": round(1000 * p50, 2), "p90_ms": round(1000 * percentile(times, 90), 2),
                                 "faces_per_s": round(batch / p50, 2)})
                    print(json.dumps(rows[-1]), flush=True)
    del mx
    return rows


def measure_detectors(reps: int) -> list[dict]:
    from facealign.serve.detect import make_detector

    rows = []
    for size in ((640, 480), (1280, 720)):
        image, _ = scene(size, faces=2)
        for name in ("blazeface", "dlib", "haar"):
            detector = make_detector(name)
            detector(image)
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                boxes, _ = detector(image)
                times.append(time.perf_counter() - t)
            rows.append({"detector": name, "frame": f"{size[0]}x{size[1]}", "faces_found": int(len(boxes)),
                         "p50_ms": round(1000 * percentile(times, 50), 2),
                         "p90_ms": round(1000 * percentile(times, 90), 2)})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    engine = cpu_isa.serve_synchronously()  # as facealign-infer and facealign-eval serve
    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them (FACEALIGN_CPU_ISA)
    for var in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS"):
        os.environ[var] = str(args.threads)
    if args.one:
        measure_one(args.one, args)
        return 0
    import mxnet as mx

    shared = ["--reps", str(args.reps), "--threads", str(args.threads), "--backends", *args.backends,
              "--batches", *map(str, args.batches)]
    results, failed = [], []
    print(f"{'model':<16} {'backend':<12} {'batch':>5} {'flip':>5} {'p50 ms':>9} {'p90 ms':>9} {'faces/s':>8}",
          flush=True)
    for name in args.models:
        proc = subprocess.run([sys.executable, __file__, "--one", name, *shared], capture_output=True, text=True)
        rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0:
            failed.append(name)
            print(f"{name:<16} FAILED (exit {proc.returncode}): {proc.stderr.strip()[-800:]}", flush=True)
        for r in rows:
            print(f"{r['model']:<16} {r['backend']:<12} {r['batch']:>5} {'yes' if r['flip'] else 'no':>5} "
                  f"{r['p50_ms']:>9.1f} {r['p90_ms']:>9.1f} {r['faces_per_s']:>8.2f}", flush=True)
        results += rows
    detectors = measure_detectors(args.reps)
    print(f"\n{'detector':<8} {'frame':>10} {'faces':>6} {'p50 ms':>9} {'p90 ms':>9}")
    for r in detectors:
        print(f"{r['detector']:<8} {r['frame']:>10} {r['faces_found']:>6} {r['p50_ms']:>9.1f} {r['p90_ms']:>9.1f}")
    import onnxruntime

    write_report("infer", args.out, {"reps": args.reps, "batches": args.batches, "backends": args.backends,
                                     "mxnet_engine": engine,
                                     "what": "Predictor.predict with given boxes, refine=0; detectors separate"},
                 {"models": results, "detectors": detectors}, mxnet=mx.__version__,
                 onnxruntime=onnxruntime.__version__, threads=args.threads)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
