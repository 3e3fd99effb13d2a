"""What an evaluation report says in numbers: a result's summary (NME, AUC and failure rate per normalisation,
by head yaw, the depth error), and its Markdown tables."""
from __future__ import annotations

import numpy as np

from facealign.evaluation.metrics import auc_and_failure
from facealign.evaluation.scoring import yaw_bins

THRESHOLDS = (0.08, 0.10)


def augmentation_label(entry: dict) -> str:
    """The test-time augmentation of a report's entry, as its label's suffix: '', ' + flip', ' + flip + 7 scales'."""
    scales = entry.get("scales") or [1.0]
    return (" + flip" if entry["flip"] else "") + (f" + {len(scales)} scales" if list(scales) != [1.0] else "")


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
    by_yaw = {norm: yaw_bins(values, result.yaws) for norm, values in result.nme.items()}
    # a model that predicts z: the 3D NME and the depth error alone (box normaliser), per yaw bin too
    depth = {key: {"nme": float(values.mean()) if len(values) else float("nan"),
                   "median": float(np.median(values)) if len(values) else float("nan"),
                   "by_yaw": yaw_bins(values, result.yaws)} for key, values in result.nme_3d.items()}
    return {"images": n, "images_per_s": n / max(result.seconds, 1e-9), "by_norm": rows,
            "by_yaw": by_yaw if all(v is not None for v in by_yaw.values()) else None, "depth": depth or None}


def format_table(report: dict) -> str:
    cols = ["nme", *[f"{m}@{t:.2f}" for t in THRESHOLDS for m in ("auc", "failure")]]
    lines = [f"model: {report['model']} ({report['backend']}, {report['device']})", "",
             "| set | protocol | normalisation | NME % | " + " | ".join(c.replace("failure", "FR").upper()
                                                                     for c in cols[1:]) + " | images | images/s |",
             "|---|---|---|---:|" + "---:|" * (len(cols) - 1) + "---:|---:|"]
    for entry in report["results"]:
        for norm, row in entry["by_norm"].items():
            primary = " **" if norm == report["primary_norm"] else ""
            lines.append(f"| {entry['set']} | {entry['protocol']}{augmentation_label(entry)} | {norm}{primary}"
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
            lines.append(f"| {e['set']} | {e['protocol']}{augmentation_label(e)} | " + " | ".join(cells)
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
        lines.append(f"| {e['set']} | {e['protocol']}{augmentation_label(e)} | {100 * d['nme_3d']['nme']:.3f} "
                     f"| {100 * d['z']['nme']:.3f} | {cells} |")
    return lines


def format_comparison(reports: list[dict]) -> str:
    lines = ["| model | set | protocol | normalisation | NME % | AUC@0.10 | FR@0.10 | images |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for report in reports:
        for entry in report["results"]:
            norm = report["primary_norm"]
            row = entry["by_norm"][norm]
            lines.append(f"| {report['label']} | {entry['set']} | {entry['protocol']}{augmentation_label(entry)}"
                         f" | {norm} | {100 * row['nme']:.3f} | {row['auc@0.10']:.4f} | {row['failure@0.10']:.4f} "
                         f"| {entry['images']} |")
    return "\n".join(lines)
