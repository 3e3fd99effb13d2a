"""The evaluation report: one model scored on every planned set and protocol (``evaluate_model``), its
tables, CED figures and per-image predictions, and the comparison of several (``write_comparison``).
``facealign-eval`` (facealign.cli.eval, whose help describes the protocols, the normalisations and the
files written) drives it; every number comes from facealign.evaluation.scoring.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from facealign.data.pipeline import RecordSet
from facealign.runs.layout import EVAL_DIR, TB_DIR
from facealign.evaluation.figures import ced_figure, save_figure
from facealign.evaluation.metrics import NORMALISATIONS, primary_norm
from facealign.evaluation.scoring import Protocol, check_records, reference_protocol, score, yaw_bin_masks
from facealign.evaluation.tables import augmentation_label, format_comparison, format_table, summarise
from facealign.runs import checkpoint_format
from facealign.runs.artifact import legacy_validation_record

CHOICES = ("reference", "standard", "train", "both", "all")


class UsageError(ValueError):
    """A command line that cannot run; printed as one line, exit 2."""


# --- one model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalOptions:
    """How ``facealign-eval`` scores a model (its command line's options, typed)."""

    protocol: str = "both"  # one of CHOICES
    landmark_type: str | None = None  # "2d" / "3d": the reference protocol's quantisation; None: the model's
    decode: str = "subpixel"  # the standard protocol's decoding
    flip: bool = False  # the standard protocol's flip test
    scales: tuple = (1.0,)  # the standard protocol's multi-scale test (crop widths relative to the model's)
    backend: str = "mxnet"
    batch_size: int = 16
    max_samples: int | None = None
    tensorboard: bool = True  # a run's checkpoints: eval scalars and figures in its tb/
    quiet: bool = False  # no progress bar


@dataclass
class Evaluation:
    """One model's evaluation: the report (as report.json holds it) and each set's scores by tag, which
    the comparison of several models draws its curves from."""

    report: dict
    results: dict = field(default_factory=dict)  # tag -> (label, facealign.evaluation.scoring result)


def plan(source, args: EvalOptions, sets: dict, margins: dict) -> list[tuple]:
    """[(set name, prefix, Protocol, flip, scales, batch size, max samples)] for one model."""
    info = source.info
    wanted = {"both": ("reference", "standard"), "all": ("reference", "standard", "train")}.get(
        args.protocol, (args.protocol,))
    if info.num_landmarks != 68 and "reference" in wanted:
        if args.protocol == "reference":
            raise UsageError(f"{source.path}: the reference protocol needs 68-point models, {info.name} predicts "
                             f"{info.num_landmarks}")
        wanted = tuple(w for w in wanted if w != "reference")
    if args.scales != (1.0,) and "standard" not in wanted:  # said, not silently ignored
        raise UsageError(f"--scales is a test of the standard protocol; --protocol {args.protocol} does not run it")
    dims = {"2d": 2, "3d": 3}.get(args.landmark_type, info.landmark_dims)
    jobs = []
    for name in wanted:
        if name == "train":
            record = validation_record(source)
            protocol = Protocol.from_dict(record["protocol"])
            for set_name, prefix in (sets or record["sets"]).items():
                limit = args.max_samples if args.max_samples is not None else record["max_samples"]
                jobs.append((set_name, prefix, protocol, False, (1.0,), record["batch_size"], limit))
            continue
        if not sets:
            raise UsageError("no test sets: pass --data (only --protocol train has a default: the run's sets)")
        for set_name, prefix in sets.items():
            if name == "reference":
                protocol = reference_protocol(dims, margins.get(set_name))
                jobs.append((set_name, prefix, protocol, False, (1.0,), args.batch_size, args.max_samples))
            else:
                protocol = Protocol("standard", decode=args.decode)
                jobs.append((set_name, prefix, protocol, args.flip, args.scales, args.batch_size, args.max_samples))
    return jobs


def validation_record(source) -> dict:
    """The run's validation as its checkpoint recorded it (or, for older checkpoints, its job.yaml)."""
    if source.checkpoint is None:
        raise UsageError(f"{source.path}: --protocol train needs a run or a checkpoint (an {source.kind} "
                         f"does not record a validation protocol)")
    if "validation" in source.state:
        return source.state["validation"]
    return legacy_validation_record(source.location)


def evaluate_model(source, backend, args: EvalOptions, sets, margins, out: Path, device: str) -> Evaluation:
    """Score one model on every planned set and protocol; writes report.json, report.md, the CED figures,
    the per-image predictions and (for a run's checkpoint) TensorBoard."""
    info = source.info
    dims = {"2d": 2, "3d": 3}.get(args.landmark_type, info.landmark_dims)
    primary = primary_norm(dims)
    report = {"model": str(source.path), "label": source.label, "kind": source.kind,
              "checkpoint": str(source.checkpoint) if source.checkpoint else None, "step": source.step,
              "model_name": info.name, "backend": args.backend, "device": device, "landmark_dims": dims,
              "primary_norm": primary, "results": []}
    tb = None
    if source.checkpoint is not None and args.tensorboard:
        tb = SummaryWriter(str(checkpoint_format.run_of(source.checkpoint) / TB_DIR))
    evaluation = Evaluation(report)
    try:
        for job in plan(source, args, sets, margins):
            score_one(source, backend, args, job, out, tb, evaluation)
    finally:
        if tb is not None:
            tb.close()
    (out / "report.json").write_text(json.dumps(report, indent=1))
    table = format_table(report)
    (out / "report.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\n[eval] report, CED curves and per-image predictions in {out}")
    return evaluation


def score_one(source, backend, args: EvalOptions, job: tuple, out: Path, tb, evaluation: Evaluation) -> None:
    """One set under one protocol: its summary in the report, its figures, predictions and scalars."""
    info, report, primary = source.info, evaluation.report, evaluation.report["primary_norm"]
    set_name, prefix, protocol, flip, scales, batch_size, limit = job
    records = RecordSet([prefix])
    check_records(records, info, set_name)
    n = len(records) if limit is None else min(len(records), limit)
    label = f"{set_name} ({protocol.name}{augmentation_label({'flip': flip, 'scales': scales})})"
    with tqdm(total=n, desc=f"[eval] {label}", unit="face", file=sys.stderr,
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        result = score(backend, info, records, protocol, set_name=set_name, indices=range(n),
                       batch_size=batch_size, flip=flip, scales=scales, pad=protocol.name == "train",
                       progress=lambda done: bar.update(done - bar.n))
    summary = {"set": set_name, "protocol": protocol.name, "flip": flip, "scales": list(scales), "decode": protocol.decode,
               **summarise(result)}
    report["results"].append(summary)
    tag = f"{set_name}_{protocol.name}{'_flip' if flip else ''}{f'_scales{len(scales)}' if scales != (1.0,) else ''}"
    evaluation.results[tag] = (label, result)
    pixels = save_figure(ced_figure({norm: result.nme[norm] for norm in NORMALISATIONS},
                                    f"{info.name}: {label}, {n} faces"), out / f"ced_{tag}")
    per_image = [{"index": i, "source": src, "yaw": result.yaws[j],
                  "pred": np.round(result.pred[j], 3).tolist(), "gt": np.round(result.gt[j], 3).tolist(),
                  "nme": {k: float(v[j]) for k, v in result.nme.items()},
                  **({"pred_z": np.round(result.pred_z[j], 3).tolist(), "gt_z": np.round(result.gt_z[j], 3).tolist(),
                      **{k: float(v[j]) for k, v in result.nme_3d.items()}} if result.nme_3d else {})}
                 for j, (i, src) in enumerate(zip(result.indices, result.sources))]
    (out / f"predictions_{tag}.json").write_text(json.dumps(per_image))
    print(f"[eval] {source.label}: {label}: NME {100 * summary['by_norm'][primary]['nme']:.3f}% ({primary}), "
          f"{summary['images_per_s']:.1f} images/s", flush=True)
    yaw_pixels = None
    if summary["by_yaw"]:
        curves = {f"yaw {label} ({int(inside.sum())} faces)": result.nme[primary][inside]
                  for label, inside in yaw_bin_masks(result.yaws) if inside.any()}
        yaw_pixels = save_figure(ced_figure(curves, f"{info.name}: {label}, {primary} NME by yaw"),
                                 out / f"ced_{tag}_yaw")
    if tb is not None:
        step = source.step or 0
        for norm, row in summary["by_norm"].items():
            tb.add_scalar(f"eval/{tag}/nme_{norm}", row["nme"], step)
            tb.add_scalar(f"eval/{tag}/auc@0.10_{norm}", row["auc@0.10"], step)
        for key, row in (summary["depth"] or {}).items():
            tb.add_scalar(f"eval/{tag}/{key}", row["nme"], step)
        tb.add_image(f"eval/{tag}/ced", pixels, step, dataformats="HWC")
        if yaw_pixels is not None:
            for b, v in summary["by_yaw"][primary].items():
                if v["nme"] is not None:
                    tb.add_scalar(f"eval/{tag}/nme_{primary}_yaw_{b}", v["nme"], step)
            tb.add_image(f"eval/{tag}/ced_yaw", yaw_pixels, step, dataformats="HWC")


def default_out(source) -> Path:
    if source.checkpoint is not None:
        return checkpoint_format.run_of(source.checkpoint) / EVAL_DIR / source.checkpoint.name
    return Path("eval") / (source.path.stem if source.kind == "onnx" else source.path.name)


def write_comparison(evaluations: list[Evaluation], out: Path) -> None:
    """One table and, per set and protocol, one CED figure with a curve per model (primary normalisation)."""
    out.mkdir(parents=True, exist_ok=True)
    tags = []
    for e in evaluations:
        tags += [t for t in e.results if t not in tags]
    for tag in tags:
        curves, label = {}, tag
        for e in evaluations:
            if tag in e.results:
                label, result = e.results[tag]
                curves[e.report["label"]] = result.nme[e.report["primary_norm"]]
        save_figure(ced_figure(curves, f"{label}: {len(curves)} models"), out / f"ced_{tag}")
    reports = [e.report for e in evaluations]
    table = format_comparison(reports)
    (out / "compare.md").write_text(table + "\n")
    (out / "compare.json").write_text(json.dumps(reports, indent=1))
    print("\n" + table)
    print(f"\n[eval] comparison of {len(reports)} models in {out}")

