#!/usr/bin/env python
"""How much the reference protocol's second resampling matters: per-image NME with its two warps
(what ``facealign-eval --protocol reference`` does, as ``test_rec_nme.py``) against one combined warp
(what facealign did before), on the same models and records.

    python bench/reference_protocol.py                            # a random hg2-d3-cab, and runs/demo if trained
    python bench/reference_protocol.py --models runs/demo exported/hg2 --faces 300 --out bench/results/x.json

The records are procedural faces (384 canvases) named ``ibug`` (its 36-pixel top margin); NME is the
eye-centre figure in points (percent).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_report  # noqa: E402
from facealign.platform import cpu_isa  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="models facealign-eval takes (default: a random hg2-d3-cab "
                                               "release and runs/demo when it exists)")
    p.add_argument("--faces", type=int, default=200)
    p.add_argument("--out", default="bench/results/reference_protocol.json")
    return p.parse_args(argv)


def measure(model, records, label: str) -> dict:
    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.evaluation import scoring
    from facealign.data.transforms import chain_transform, warp

    source = artifact.resolve(model)
    backend = loading.load_backend(source)
    protocol = scoring.reference_protocol(source.info.landmark_dims)
    twice = scoring.score(backend, source.info, records, protocol, set_name="ibug")
    real_chain = scoring.warp_chain
    try:  # the same protocol with the two warps folded into one
        scoring.warp_chain = lambda image, warps: warp(image, chain_transform(warps), warps[-1][1])
        once = scoring.score(backend, source.info, records, protocol, set_name="ibug")
    finally:
        scoring.warp_chain = real_chain
    a, b = 100 * twice.nme["eye_centre"], 100 * once.nme["eye_centre"]
    d = np.abs(a - b)
    return {"model": label, "faces": len(a), "nme_two_warps": round(float(a.mean()), 4),
            "nme_one_warp": round(float(b.mean()), 4), "mean_abs_diff": round(float(d.mean()), 4),
            "median_abs_diff": round(float(np.median(d)), 4), "max_abs_diff": round(float(d.max()), 4),
            "images_differing_by_0.01": int((d > 0.01).sum())}


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them (FACEALIGN_CPU_ISA)
    from facealign.runs import artifact
    from facealign.data.pipeline import RecordSet
    from facealign.cli.pack import main as pack
    from facealign.models import get_model, initialize

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        assert pack(["--synthetic", str(args.faces), "--seed", "7", "--quiet", str(tmp / "ibug")]) == 0
        records = RecordSet([tmp / "ibug"])
        models = [(m, str(m)) for m in args.models or []]
        if not args.models:
            release = tmp / "model-hg2d3-cab"
            release.mkdir()
            artifact.save_reference_params(initialize(get_model("hg2-d3-cab"), seed=4), release / "model-0000.params")
            models.append((release, "hg2-d3-cab, random weights"))
            if Path("runs/demo/checkpoints").is_dir():
                models.append((Path("runs/demo"), "runs/demo (make demo), best checkpoint"))
        rows = [measure(m, records, label) for m, label in models]
    header = ["model", "faces", "nme_two_warps", "nme_one_warp", "mean_abs_diff", "median_abs_diff", "max_abs_diff",
              "images_differing_by_0.01"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in header) + " |")
    write_report("reference_protocol", args.out, {"faces": args.faces, "set": "ibug (procedural, seed 7)"}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
