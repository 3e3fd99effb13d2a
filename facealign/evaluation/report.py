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

from facealign.runs.layout import EVAL_DIR, TB_DIR
from facealign.evaluation.metrics import NORMALISATIONS, auc_and_failure, ced, primary_norm

CHOICES = ("reference", "standard", "train", "both", "all")
THRESHOLDS = (0.08, 0.10)


class UsageError(ValueError):
    """A command line that cannot run; printed as one line, exit 2."""


def summarise(result) -> dict:
    """Mean and median NME, AUC and failure rate at each threshold, per normalisation; and, where the records
    carry their head pose, NME per yaw bin and their balanced mean (``by_yaw``, per normalisation)."""
    rows = {}
    for norm, values in result.nme.items():
        row = {"nme": float(values.mean()) if len(values) else float("nan"),
               "median": float(np.median(values)) if len(values) else float("nan")}
        for t in THRESHOLDS:
            auc, fr = auc_and_failure(values, t)
            row[f"auc@{t:.2f}"], row[f"failure@{t:.2f}"] = auc, fr
        rows[norm] = row
    n = len(result.pred)
    from facealign.evaluation.scoring import yaw_bins

    by_yaw = {norm: yaw_bins(values, result.yaws) for norm, values in result.nme.items()}
    # a model that predicts z: the 3D NME and the depth error alone (box normaliser), per yaw bin too
    depth = {key: {"nme": float(values.mean()) if len(values) else float("nan"),
                   "median": float(np.median(values)) if len(values) else float("nan"),
                   "by_yaw": yaw_bins(values, result.yaws)} for key, values in result.nme_3d.items()}
    return {"images": n, "images_per_s": n / max(result.seconds, 1e-9), "by_norm": rows,
            "by_yaw": by_yaw if all(v is not None for v in by_yaw.values()) else None, "depth": depth or None}


# --- figures (matplotlib, Agg) ------------------------------------------------------------------------

CED_X_CAP = 0.50  # a broken model's curve is flat at 0 below this anyway


def ced_x_limit(curves: dict, threshold: float = 0.10) -> float:
    """The CED axis's end: at least ``threshold``, and at least the 95th percentile of every curve's NMEs
    (so a model whose median is above the threshold still shows its curve), rounded up to 5% and capped
    at ``CED_X_CAP``."""
    values = [np.asarray(v, dtype=np.float64) for v in curves.values() if len(v)]
    p95 = max((float(np.percentile(v[np.isfinite(v)], 95)) for v in values if np.isfinite(v).any()), default=0.0)
    return float(min(max(threshold, np.ceil(p95 * 20 - 1e-9) / 20), CED_X_CAP))


def ced_figure(curves: dict, title: str, threshold: float = 0.10):
    """A CED figure: one curve per label ({label: per-image NMEs}), with its AUC and failure rate at
    ``threshold`` in the legend, the reference's 8% and 10% marks as lines, and an axis that covers
    the data (``ced_x_limit``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    limit = ced_x_limit(curves, threshold)
    for label, values in curves.items():
        xs, ys = ced(values, limit, steps=400)
        auc, fr = auc_and_failure(values, threshold)
        ax.plot(xs * 100, ys, linewidth=2, label=f"{label} (AUC@{threshold * 100:g}% {auc:.3f}, FR {100 * fr:.1f}%)")
    for mark in THRESHOLDS:
        ax.axvline(mark * 100, color="0.4", linestyle="--", linewidth=1)
        ax.text(mark * 100, 0.02, f" {mark * 100:g}%", color="0.3", fontsize=8)
    ax.set_xlim(0, limit * 100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("NME (%)")
    ax.set_ylabel("fraction of images")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def save_figure(fig, stem: Path) -> np.ndarray:
    """Write ``stem``.png and ``stem``.pdf; return the RGB pixels (for TensorBoard)."""
    import matplotlib.pyplot as plt

    fig.savefig(str(stem) + ".png")
    fig.savefig(str(stem) + ".pdf")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


# --- reports --------------------------------------------------------------------------------------

def format_table(report: dict) -> str:
    cols = ["nme", *[f"{m}@{t:.2f}" for t in THRESHOLDS for m in ("auc", "failure")]]
    lines = [f"model: {report['model']} ({report['backend']}, {report['device']})", "",
             "| set | protocol | normalisation | NME % | " + " | ".join(c.replace("failure", "FR").upper()
                                                                     for c in cols[1:]) + " | images | images/s |",
             "|---|---|---|---:|" + "---:|" * (len(cols) - 1) + "---:|---:|"]
    for entry in report["results"]:
        for norm, row in entry["by_norm"].items():
            primary = " **" if norm == report["primary_norm"] else ""
            lines.append(f"| {entry['set']} | {entry['protocol']}{' + flip' if entry['flip'] else ''} | {norm}{primary}"
                         f" | {100 * row['nme']:.3f} | " + " | ".join(f"{row[c]:.4f}" for c in cols[1:])
                         + f" | {entry['images']} | {entry['images_per_s']:.1f} |")
    lines.append("")
    lines.append(f"** the reference's figure for {report['landmark_dims']}D models. AUC and FR (failure rate) "
                 f"at NME thresholds 0.08 and 0.10.")
    yawed = [e for e in report["results"] if e.get("by_yaw")]
    if yawed:
        norm = report["primary_norm"]
        bins = [b for b in yawed[0]["by_yaw"][norm] if b != "balanced"]
        lines += ["", f"NME % ({norm}) by head yaw, degrees (faces):", "",
                  "| set | protocol | " + " | ".join(f"yaw {b}" for b in bins) + " | balanced | mean |",
                  "|---|---|" + "---:|" * (len(bins) + 2)]
        for e in yawed:
            cells = [f"{100 * e['by_yaw'][norm][b]['nme']:.3f} ({e['by_yaw'][norm][b]['images']})"
                     if e["by_yaw"][norm][b]["nme"] is not None else "– (0)" for b in bins]
            lines.append(f"| {e['set']} | {e['protocol']}{' + flip' if e['flip'] else ''} | " + " | ".join(cells)
                         + f" | {100 * e['by_yaw'][norm]['balanced']['nme']:.3f} | {100 * e['by_norm'][norm]['nme']:.3f} |")
    lines += format_depth(report)
    return "\n".join(lines)


def format_depth(report: dict) -> list[str]:
    """The 3D NME and depth error table of a model that predicts z (nothing for the others)."""
    entries = [e for e in report["results"] if e.get("depth")]
    if not entries:
        return []
    lines = ["", "3D, for a model that predicts z (x, y, z; each face's z relative to its mean; box normaliser):", "",
             "| set | protocol | 3D NME % | depth error % | by yaw: 3D NME % / depth error % |", "|---|---|---:|---:|---|"]
    for e in entries:
        d = e["depth"]
        bins = d["nme_3d"]["by_yaw"] or {}
        cells = ", ".join(f"{b}: {100 * v['nme']:.2f} / {100 * d['z']['by_yaw'][b]['nme']:.2f}"
                          for b, v in bins.items() if b != "balanced" and v["nme"] is not None) or "–"
        lines.append(f"| {e['set']} | {e['protocol']}{' + flip' if e['flip'] else ''} | {100 * d['nme_3d']['nme']:.3f} "
                     f"| {100 * d['z']['nme']:.3f} | {cells} |")
    return lines


def format_comparison(reports: list[dict]) -> str:
    lines = ["| model | set | protocol | normalisation | NME % | AUC@0.10 | FR@0.10 | images |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for report in reports:
        for entry in report["results"]:
            norm = report["primary_norm"]
            row = entry["by_norm"][norm]
            lines.append(f"| {report['label']} | {entry['set']} | {entry['protocol']}{' + flip' if entry['flip'] else ''}"
                         f" | {norm} | {100 * row['nme']:.3f} | {row['auc@0.10']:.4f} | {row['failure@0.10']:.4f} "
                         f"| {entry['images']} |")
    return "\n".join(lines)


# --- one model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalOptions:
    """How ``facealign-eval`` scores a model (its command line's options, typed)."""

    protocol: str = "both"  # one of CHOICES
    landmark_type: str | None = None  # "2d" / "3d": the reference protocol's quantisation; None: the model's
    decode: str = "subpixel"  # the standard protocol's decoding
    flip: bool = False  # the standard protocol's flip test
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
    """[(set name, prefix, Protocol, flip, batch size, max samples)] for one model."""
    from facealign.evaluation.scoring import Protocol, reference_protocol

    info = source.info
    wanted = {"both": ("reference", "standard"), "all": ("reference", "standard", "train")}.get(
        args.protocol, (args.protocol,))
    if info.num_landmarks != 68 and "reference" in wanted:
        if args.protocol == "reference":
            raise UsageError(f"{source.path}: the reference protocol needs 68-point models, {info.name} predicts "
                             f"{info.num_landmarks}")
        wanted = tuple(w for w in wanted if w != "reference")
    dims = {"2d": 2, "3d": 3}.get(args.landmark_type, info.landmark_dims)
    jobs = []
    for name in wanted:
        if name == "train":
            record = validation_record(source)
            protocol = Protocol.from_dict(record["protocol"])
            for set_name, prefix in (sets or record["sets"]).items():
                limit = args.max_samples if args.max_samples is not None else record["max_samples"]
                jobs.append((set_name, prefix, protocol, False, record["batch_size"], limit))
            continue
        if not sets:
            raise UsageError("no test sets: pass --data (only --protocol train has a default: the run's sets)")
        for set_name, prefix in sets.items():
            if name == "reference":
                protocol = reference_protocol(dims, margins.get(set_name))
                jobs.append((set_name, prefix, protocol, False, args.batch_size, args.max_samples))
            else:
                protocol = Protocol("standard", decode=args.decode)
                jobs.append((set_name, prefix, protocol, args.flip, args.batch_size, args.max_samples))
    return jobs


def validation_record(source) -> dict:
    """The run's validation as its checkpoint recorded it (or, for older checkpoints, its job.yaml)."""
    if source.checkpoint is None:
        raise UsageError(f"{source.path}: --protocol train needs a run or a checkpoint (an {source.kind} "
                         f"does not record a validation protocol)")
    if "validation" in source.state:
        return source.state["validation"]
    from facealign.runs.artifact import legacy_validation_record

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
        from tensorboardX import SummaryWriter

        from facealign.runs import checkpoint_format

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
    from tqdm import tqdm

    from facealign.data.loader import RecordSet
    from facealign.evaluation.scoring import check_records, score, yaw_bin_masks

    info, report, primary = source.info, evaluation.report, evaluation.report["primary_norm"]
    set_name, prefix, protocol, flip, batch_size, limit = job
    records = RecordSet([prefix])
    check_records(records, info, set_name)
    n = len(records) if limit is None else min(len(records), limit)
    label = f"{set_name} ({protocol.name}{' + flip' if flip else ''})"
    with tqdm(total=n, desc=f"[eval] {label}", unit="face", file=sys.stderr,
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        result = score(backend, info, records, protocol, set_name=set_name, indices=range(n),
                       batch_size=batch_size, flip=flip, pad=protocol.name == "train",
                       progress=lambda done: bar.update(done - bar.n))
    summary = {"set": set_name, "protocol": protocol.name, "flip": flip, "decode": protocol.decode,
               **summarise(result)}
    report["results"].append(summary)
    tag = f"{set_name}_{protocol.name}{'_flip' if flip else ''}"
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
        from facealign.runs import checkpoint_format

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

