#!/usr/bin/env python
"""Benchmark the data pipeline: samples/s for read + decode + augment + heatmap encode.

On 384 x 384 records cropped to 128 x 128 with 68 landmarks (64 x 64 heatmaps,
the reference's sigma 1 / peak 20 targets, the reference's augmentation):

* the whole pipeline on one core (in the calling process), with the Cython and
  with the NumPy heatmap codec;
* the whole pipeline with a worker process per core;
* the codec alone: NumPy reference vs Cython, encode and decode;
* a per-sample breakdown of the stages.

    python bench/data.py                    # packs 512 synthetic faces to a temp dir first
    python bench/data.py --rec data/train --out bench/results/data.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_report  # noqa: E402
from facealign.data.codec import HeatmapCodec  # noqa: E402
from facealign.data.loader import TrainLoader  # noqa: E402
from facealign.data.pipeline import RecordSet, SampleConfig, process_sample  # noqa: E402
from facealign.data.records import RecordFile, decode_image  # noqa: E402
from facealign.data.transforms import flip_horizontal, similarity, warp  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rec", help="record file to read (default: pack --synthetic 512 into a temp dir)")
    p.add_argument("--samples", type=int, default=2048, help="samples per pipeline measurement")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes for the all-cores run")
    p.add_argument("--out", default="bench/results/data.json")
    return p.parse_args(argv)


def pipeline_rate(rec, samples, batch, workers, codec, cfg):
    """Samples/s through TrainLoader for about ``samples`` samples (whole epochs of the record file)."""
    with TrainLoader(rec, batch_size=batch, codec=codec, cfg=cfg, workers=workers, prefetch=2 * max(workers, 1),
                     seed=0) as loader:
        next(loader.epoch(99))  # start the pool and warm caches outside the timing
        done, epoch, wait = 0, 0, 0.0
        start = time.perf_counter()
        while done < samples:
            for b in loader.epoch(epoch):
                done += len(b.indices)
                wait += b.wait_s
                if done >= samples:
                    break
            epoch += 1
        return done / (time.perf_counter() - start)


def timed(fn, n):
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main(argv=None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    tmp = None
    rec = args.rec
    if rec is None:
        from facealign.cli.pack import main as pack

        tmp = tempfile.TemporaryDirectory()
        rec = str(Path(tmp.name) / "synth")
        pack(["--synthetic", "512", "--quiet", rec])
    n_records = len(RecordFile(rec))
    cfg = SampleConfig()  # reference augmentation, full-resolution decode
    cython, numpy_codec = HeatmapCodec(), HeatmapCodec(backend="numpy")
    assert cython.native, "the Cython codec is not built: run `make setup`"

    results = {}
    print(f"records: {rec} ({n_records} x 384 x 384 JPEG), crop 128 -> heatmaps 68 x 64 x 64", flush=True)
    results["one_core_cython"] = pipeline_rate(rec, args.samples, args.batch, 0, cython, cfg)
    print(f"whole pipeline, one core, Cython codec : {results['one_core_cython']:8.0f} samples/s", flush=True)
    results["one_core_numpy"] = pipeline_rate(rec, args.samples // 4, args.batch, 0, numpy_codec, cfg)
    print(f"whole pipeline, one core, NumPy codec  : {results['one_core_numpy']:8.0f} samples/s", flush=True)
    reduced = SampleConfig(decode_reduce=2)
    results["one_core_cython_reduce2"] = pipeline_rate(rec, args.samples, args.batch, 0, cython, reduced)
    print(f"  ... with decode_reduce=2             : {results['one_core_cython_reduce2']:8.0f} samples/s", flush=True)
    results["all_cores_cython"] = pipeline_rate(rec, 2 * args.samples, args.batch, args.workers, cython, cfg)
    print(f"whole pipeline, {args.workers} worker processes    : {results['all_cores_cython']:8.0f} samples/s",
          flush=True)

    # The codec alone, per sample of 68 landmarks.
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 128, (68, 2))
    out = np.empty((68, 64, 64), np.float32)
    enc_np = timed(lambda: numpy_codec.encode(pts, out), 50)
    enc_cy = timed(lambda: cython.encode(pts, out), 2000)
    hm = cython.encode_batch(rng.uniform(0, 128, (16, 68, 2)))
    dec_np = timed(lambda: numpy_codec.decode(hm), 5) / 16
    dec_cy = timed(lambda: cython.decode(hm), 50) / 16
    results["codec"] = {"encode_ms_numpy": enc_np * 1e3, "encode_ms_cython": enc_cy * 1e3,
                        "encode_speedup": enc_np / enc_cy, "decode_ms_numpy": dec_np * 1e3,
                        "decode_ms_cython": dec_cy * 1e3, "decode_speedup": dec_np / dec_cy}
    print(f"codec encode / sample: NumPy {enc_np * 1e3:.3f} ms, Cython {enc_cy * 1e3:.4f} ms  "
          f"(x{enc_np / enc_cy:.0f})")
    print(f"codec decode / sample: NumPy {dec_np * 1e3:.3f} ms, Cython {dec_cy * 1e3:.4f} ms  "
          f"(x{dec_np / dec_cy:.0f})")

    # Per-stage breakdown on one record.
    f = RecordFile(rec)
    body = f.read(0)
    s = f.sample(0, decode=False)
    M = similarity((192, 192), (64, 64), 0.5, 17)
    img = decode_image(s.image)
    crop = warp(img, M, 128)
    records = RecordSet([rec])
    stages = {
        "read_record_ms": timed(lambda: f.read(1), 2000),
        "jpeg_decode_ms": timed(lambda: decode_image(s.image), 500),
        "jpeg_decode_reduce2_ms": timed(lambda: decode_image(s.image, 2), 500),
        "affine_warp_ms": timed(lambda: warp(img, M, 128), 2000),
        "flip_ms": timed(lambda: flip_horizontal(crop, s.landmarks, list(range(16, -1, -1)) + list(range(17, 68))), 2000),
        "encode_68_gaussians_ms": enc_cy,
        "process_sample_ms": timed(lambda: process_sample(records, 3, cfg, augment=True, seed=0, epoch=0), 500),
    }
    stages = {k: v * 1e3 if k != "encode_68_gaussians_ms" else v * 1e3 for k, v in stages.items()}
    results["stages_ms"] = stages
    print("per sample: " + ", ".join(f"{k[:-3]} {v:.3f} ms" for k, v in stages.items()))
    del body

    write_report("data", args.out, {"records": n_records, "samples": args.samples, "batch": args.batch,
                                    "workers": args.workers, "augment": "reference (rotate 40, scale 0.2, flip)"},
                 results, opencv=cv2.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
