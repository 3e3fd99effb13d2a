#!/usr/bin/env python
"""Benchmark reduced precision for inference: float32, bfloat16 and int8, on MXNet and onnxruntime.

For the model (default hg2-d3-cab, 128 x 128; random weights: speed does not depend on them), each
precision is exported as facealign-export does (int8 calibrated on procedural faces) and timed
through ``Predictor.predict`` with given boxes: batch 1 p50 / p90 latency, batch 8 and 32 faces/s,
in the same run, so the speed-ups are against the float32 rows above them. Then the accuracy cost on
a trained model (default runs/demo, what ``make demo`` trains): NME of each precision against
float32 on held-out procedural faces. Prints tables and writes JSON with the CPU and oneDNN's ISA.

    python bench/precision.py
    python bench/precision.py --model sat2-d3-cab --trained runs/sat --reps 10
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_report  # noqa: E402
from facealign.platform import cpu_isa  # noqa: E402

CONFIGS = [("float32", "mxnet"), ("bfloat16", "mxnet"), ("int8", "mxnet"), ("float32", "onnxruntime"),
           ("int8", "onnxruntime")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hg2-d3-cab")
    p.add_argument("--trained", default="runs/demo", help="a trained model for the accuracy rows (skipped if absent)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions at batch 1 (fewer at 8 and 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default="bench/results/precision.json")
    return p.parse_args(argv)


def _args(precision, check, calibration, onnx, max_drift, check_samples=64):
    """The export facealign-export's command line would ask for."""
    from facealign.serve.export import ReducedExport

    return ReducedExport(precision=precision, check=str(check), calibration=str(calibration), onnx=onnx,
                         calibration_samples=32, calib_mode="entropy", check_samples=check_samples,
                         max_drift=max_drift)


def packages(net, info, root: Path, faces: Path, max_drift: float, log) -> dict:
    """{precision: package directory} as facealign-export writes them (int8 and float32 with model.onnx)."""
    from facealign.serve import export

    out = {"float32": root / "float32"}
    export.export_package(net, info, out["float32"], onnx=True, log=log)
    for precision in ("bfloat16", "int8"):
        out[precision] = root / precision
        export.export_reduced(net, info, out[precision], _args(precision, faces, faces, precision == "int8",
                                                               max_drift), log=log)
    return out


def timed(predictor, image, boxes, reps):
    predictor.predict(image, boxes)  # warm-up (and MXNet's graph for this shape)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        predictor.predict(image, boxes)
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    engine = cpu_isa.serve_synchronously()  # as facealign-infer and facealign-eval serve
    isa = cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them (FACEALIGN_CPU_ISA)
    for var in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS"):
        os.environ[var] = str(args.threads)
    import mxnet as mx
    import onnxruntime

    from bench.infer import scene
    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.cli.pack import main as pack
    from facealign.data.schemes import scheme_for
    from facealign.data.transforms import crop_framing
    from facealign.serve.predictor import Predictor
    from facealign.models import get_model, initialize

    print(f"{cpu_isa.cpu_model()}; {isa.describe()}; {args.threads} threads; MXNet {engine}", flush=True)
    quiet = lambda m: None  # noqa: E731
    speed, accuracy = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        assert pack(["--synthetic", "64", "--seed", "9", "--quiet", str(tmp / "faces")]) == 0
        net = initialize(get_model(args.model), seed=0)
        net.hybridize(static_alloc=True)
        spec = net.spec
        info = artifact.ModelInfo.of(args.model, spec, scheme=scheme_for(spec.num_landmarks).name,
                                     crop_framing=crop_framing("center"))
        made = packages(net, info, tmp / "speed", tmp / "faces", float("inf"), quiet)
        image, box = scene((640, 480))
        print(f"\n{'precision':<9} {'backend':<12} {'b1 p50 ms':>10} {'b1 p90 ms':>10} {'b8 faces/s':>11} "
              f"{'b32 faces/s':>12} {'b1 speed-up':>12}")
        base = None
        for precision, backend in CONFIGS:
            path = made[precision] / "model.onnx" if backend == "onnxruntime" else made[precision]
            runner = loading.load_backend(artifact.resolve(path), backend)
            row = {"model": args.model, "precision": precision, "backend": backend}
            for batch, reps in ((1, args.reps), (8, max(3, args.reps // 3)), (32, max(2, args.reps // 5))):
                predictor = Predictor(runner, info, refine=0, batch_size=batch)
                t = timed(predictor, image, np.repeat(box, batch, 0), reps)
                if batch == 1:
                    row["b1_p50_ms"] = round(1000 * float(np.percentile(t, 50)), 1)
                    row["b1_p90_ms"] = round(1000 * float(np.percentile(t, 90)), 1)
                else:
                    row[f"b{batch}_faces_per_s"] = round(batch / float(np.percentile(t, 50)), 2)
            base = base or row["b1_p50_ms"]
            row["b1_speedup_vs_mxnet_float32"] = round(base / row["b1_p50_ms"], 2)
            speed.append(row)
            print(f"{precision:<9} {backend:<12} {row['b1_p50_ms']:>10.1f} {row['b1_p90_ms']:>10.1f} "
                  f"{row['b8_faces_per_s']:>11.2f} {row['b32_faces_per_s']:>12.2f} "
                  f"{row['b1_speedup_vs_mxnet_float32']:>11.2f}x", flush=True)
        if Path(args.trained).exists():
            from facealign.serve import export

            source = artifact.resolve(args.trained)
            trained = loading.load_network(source, mx.cpu())
            assert pack(["--synthetic", "200", "--seed", "10", "--quiet", str(tmp / "held_out")]) == 0
            print(f"\naccuracy on 200 held-out procedural faces ({source.label}, {source.info.name}, "
                  f"{source.info.input_size} px):")
            for precision in ("bfloat16", "int8"):
                result = export.export_reduced(trained, source.info, tmp / f"trained-{precision}",
                                               _args(precision, tmp / "held_out", tmp / "faces",
                                                     precision == "int8", float("inf"), 200), log=quiet)
                for backend, check in result["check"].items():
                    accuracy.append({"model": source.label, "precision": precision, "backend": backend,
                                     "float32_nme": round(100 * check["float32_nme"], 3),
                                     "nme": round(100 * check["nme"], 3),
                                     "relative_drift_pct": round(100 * check["relative_drift"], 2),
                                     "faces": check["faces"]})
                    r = accuracy[-1]
                    print(f"  {precision:<9} {backend:<12} NME {r['nme']:.3f}% vs float32 {r['float32_nme']:.3f}% "
                          f"({r['relative_drift_pct']:+.2f}%)", flush=True)
    write_report("precision", args.out, {"model": args.model, "reps": args.reps, "threads": args.threads,
                                         "mxnet_engine": engine,
                                         "what": "Predictor.predict with given boxes, refine=0, flip off"},
                 {"speed": speed, "accuracy": accuracy}, mxnet=mx.__version__, onnxruntime=onnxruntime.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
