"""``facealign-eval``: NME, AUC and failure rates of a model on packed test sets, on one device.

    facealign-eval runs/hg2-d3-cab --data data/2d/ibug data/2d/cofw_testset data/2d/300W
    facealign-eval models/model-hg2d3-cab-3d --data data/3d/AFLW2000-3D --protocol reference
    facealign-eval exported/demo --data synthetic=data/synth_val --protocol standard --flip --gpu 0
    facealign-eval exported/demo/model.onnx --data data/synth_val --backend onnxruntime

MODEL is a run directory (its best checkpoint, or --which latest), a checkpoint
directory, an export package or .onnx file (facealign-export), or a reference
release (model-symbol.json + model-0000.params). Test sets are packed RecordIO
prefixes (facealign-pack), named by their file name or ``name=path``.

Protocols:
  reference  the reference's test_rec_nme.py (seed-spec §6.2): five-point alignment of the
             ground truth onto the 384 canvas, the aligned landmark box with the set's top
             margin (ibug 36, cofw_testset 45, 300W 40, else 30 px), 1.2 x its side around
             its integer centre; ground truth quantised in the 128 crop (floor in 2D, round
             for 3D models); integer argmax of the bilinearly up-sampled heatmap. Its
             published numbers are reproduced under this protocol.
  standard   a square crop of the ground-truth landmark box at the model's training framing,
             no quantisation, sub-pixel decoding; --flip averages with the mirrored crop.

Every normalisation is reported side by side (see facealign.metrics): eye_centre (the
reference's 2D figure), inter_ocular, inter_pupil, box (the reference's 3D figure) and
box_diag. Written to --out (default: <run>/eval/<checkpoint>/ or eval/<model>/):
report.json, report.md, ced_<set>_<protocol>.png, predictions_<set>_<protocol>.json;
for a run, the figures also go to its TensorBoard under eval/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from facealign.metrics import NORMALISATIONS, auc_and_failure, ced, nme

PROTOCOLS = ("reference", "standard")
THRESHOLDS = (0.08, 0.10)
CED_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run dir, checkpoint dir, export package, .onnx file or reference release")
    p.add_argument("--data", nargs="+", required=True, metavar="[NAME=]PREFIX", help="packed test sets")
    p.add_argument("--protocol", choices=(*PROTOCOLS, "both"), default="both")
    p.add_argument("--flip", action="store_true", help="flip test (standard protocol)")
    p.add_argument("--gpu", type=int, default=None, help="GPU index (default: CPU)")
    p.add_argument("--backend", choices=("mxnet", "onnxruntime"), default="mxnet")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of a run")
    p.add_argument("--model-name", help="zoo model of a reference release whose directory name does not say")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-samples", type=int, help="at most this many faces per set")
    p.add_argument("--margin", action="append", default=[], metavar="SET=PIXELS",
                   help="top margin of the reference protocol for a set (default: the reference's)")
    p.add_argument("--out", help="report directory")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def parse_sets(items) -> dict[str, str]:
    sets = {}
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = path[:-4] if path.endswith((".rec", ".idx")) else path
        name = name or Path(path).name
        if name in sets:
            raise SystemExit(f"facealign-eval: two test sets are named {name!r}; use NAME=PREFIX")
        sets[name] = path
    return sets


class Progress:
    """One status line on stderr, redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, label: str, total: int, quiet: bool = False):
        self.label, self.total, self.quiet = label, max(total, 1), quiet
        self.tty = sys.stderr.isatty()
        self.start, self.last_decile = time.perf_counter(), -1

    def update(self, done: int):
        if self.quiet:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        width = 30
        filled = int(width * done / self.total)
        line = (f"[eval] {self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{rate:.1f} img/s")
        decile = 10 * done // self.total
        if self.tty:
            print("\r" + line, end="\n" if done >= self.total else "", file=sys.stderr, flush=True)
        elif decile != self.last_decile:
            print(line, file=sys.stderr, flush=True)
        self.last_decile = decile


def evaluate_set(predictor, records, protocol: str, *, set_name: str, margin: float | None = None,
                 flip: bool = False, batch_size: int = 16, max_samples: int | None = None,
                 progress: Progress | None = None) -> dict:
    """Score ``predictor`` on one RecordSet under one protocol.

    Returns {"pred", "gt" (N, K, 2) in record-image pixels, "nme": {norm: (N,)}, "seconds", "sources"}.
    """
    from facealign.data.codec import HeatmapCodec
    from facealign.data.transforms import (REFERENCE_TOP_MARGIN, apply, box_crop, invert,
                                           reference_eval_crop, warp)

    info = predictor.info
    s = info.input_size
    codec = HeatmapCodec(s, info.heatmap_size, decode_mode="reference" if protocol == "reference" else "subpixel")
    predictor.flip = flip and protocol == "standard"
    if margin is None:
        margin = REFERENCE_TOP_MARGIN.get(set_name, 30.0)
    n = len(records) if max_samples is None else min(len(records), max_samples)
    preds, gts, sources, seconds = [], [], [], 0.0
    for start in range(0, n, batch_size):
        samples = [records.sample(i) for i in range(start, min(start + batch_size, n))]
        t0 = time.perf_counter()
        crops, transforms = [], []
        for smp in samples:
            gt = smp.landmarks[:, :2].astype(np.float64)
            if protocol == "reference":
                if gt.shape[0] != 68:
                    raise ValueError(f"{set_name}: the reference protocol needs 68 landmarks, got {gt.shape[0]}")
                M = reference_eval_crop(gt, s, margin)
            else:
                M = box_crop((*gt.min(0), *gt.max(0)), s, expand=info.crop_framing)
            transforms.append(M)
            crops.append(warp(smp.image, M, s))
        pts, _ = codec.decode(predictor.heatmaps(np.stack(crops)))
        seconds += time.perf_counter() - t0
        for smp, M, p in zip(samples, transforms, pts):
            gt = smp.landmarks[:, :2].astype(np.float64)
            if protocol == "reference":  # the reference scores against ground truth quantised in the crop
                q = apply(M, gt)
                q = np.round(q) if info.landmark_dims == 3 else np.floor(q)
                gt = apply(invert(M), q)
            preds.append(apply(invert(M), p))
            gts.append(gt)
            sources.append(smp.meta.get("source", f"{set_name}[{smp.meta.get('index')}]"))
        if progress:
            progress.update(min(start + batch_size, n))
    pred, gt = np.stack(preds), np.stack(gts)
    return {"pred": pred, "gt": gt, "nme": {norm: nme(pred, gt, norm) for norm in NORMALISATIONS},
            "seconds": seconds, "sources": sources}


def summarise(result: dict) -> dict:
    rows = {}
    n = len(result["pred"])
    for norm, values in result["nme"].items():
        row = {"nme": float(values.mean()), "median": float(np.median(values))}
        for t in THRESHOLDS:
            auc, fr = auc_and_failure(values, t)
            row[f"auc@{t:.2f}"], row[f"failure@{t:.2f}"] = auc, fr
        rows[norm] = row
    return {"images": n, "images_per_s": n / max(result["seconds"], 1e-9), "by_norm": rows}


def ced_plot(result: dict, title: str, threshold: float = 0.10, size=(640, 480)) -> np.ndarray:
    """The cumulative error distributions, one curve per normalisation, as an RGB image."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, w - 20, 40, h - 50
    cv2.rectangle(img, (left, top), (right, bottom), (0, 0, 0), 1)
    for i in range(6):
        x = left + (right - left) * i // 5
        y = bottom - (bottom - top) * i // 5
        cv2.line(img, (x, bottom), (x, bottom + 4), (0, 0, 0), 1)
        cv2.putText(img, f"{threshold * i / 5 * 100:.0f}", (x - 8, bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.line(img, (left - 4, y), (left, y), (0, 0, 0), 1)
        cv2.putText(img, f"{i / 5:.1f}", (left - 32, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "NME (%)", ((left + right) // 2 - 25, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    cv2.putText(img, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (norm, values) in enumerate(result["nme"].items()):
        xs, ys = ced(values, threshold, steps=400)
        pts = np.stack([left + xs / threshold * (right - left), bottom - ys * (bottom - top)], 1).astype(np.int32)
        colour = CED_COLOURS[k % len(CED_COLOURS)]
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        auc, _ = auc_and_failure(values, threshold)
        cv2.putText(img, f"{norm} (AUC {auc:.3f})", (right - 210, bottom - 20 - 18 * k), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, colour, 1, cv2.LINE_AA)
    return img


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
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign import export
    from facealign.data.loader import RecordSet
    from facealign.data.records import DataError
    from facealign.inference import Predictor
    from facealign.validation import add_image

    sets = parse_sets(args.data)
    margins = {}
    for item in args.margin:
        name, _, value = item.partition("=")
        margins[name] = float(value)
    model_path = Path(args.model)
    try:
        kind = export.detect_kind(model_path)
        ckpt = export.resolve_checkpoint(model_path, args.which) if kind in ("run", "checkpoint") else None
        predictor = Predictor.load(ckpt or model_path, backend=args.backend, gpu=args.gpu, model=args.model_name,
                                   batch_size=args.batch_size)
        record_sets = {name: RecordSet([path]) for name, path in sets.items()}
    except (export.ExportError, DataError, FileNotFoundError, ValueError) as e:
        print(f"facealign-eval: {e}", file=sys.stderr)
        return 2
    info = predictor.info
    if args.out:
        out = Path(args.out)
    elif ckpt is not None:
        out = ckpt.parent.parent / "eval" / ckpt.name
    else:
        out = Path("eval") / (model_path.stem if model_path.suffix == ".onnx" else model_path.name)
    out.mkdir(parents=True, exist_ok=True)
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    if info.num_landmarks != 68 and "reference" in protocols:
        if args.protocol == "reference":
            print("facealign-eval: the reference protocol needs 68-point models", file=sys.stderr)
            return 2
        protocols = ("standard",)
    device = "cpu" if args.gpu is None or args.gpu < 0 else f"gpu({args.gpu})"
    primary = "eye_centre" if info.landmark_dims == 2 else "box"
    report = {"model": str(model_path), "checkpoint": str(ckpt) if ckpt else None, "model_name": info.name,
              "backend": args.backend, "device": device, "landmark_dims": info.landmark_dims,
              "primary_norm": primary, "results": []}
    tb = None
    if ckpt is not None and not args.no_tensorboard:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(ckpt.parent.parent / "tb"))
        step = json.loads((ckpt / "state.json").read_text()).get("step", 0)
    try:
        for name, records in record_sets.items():
            for protocol in protocols:
                flip = args.flip and protocol == "standard"
                n = len(records) if args.max_samples is None else min(len(records), args.max_samples)
                label = f"{name} ({protocol}{' + flip' if flip else ''})"
                result = evaluate_set(predictor, records, protocol, set_name=name, margin=margins.get(name),
                                      flip=flip, batch_size=args.batch_size, max_samples=args.max_samples,
                                      progress=Progress(label, n, args.quiet))
                summary = {"set": name, "protocol": protocol, "flip": flip, **summarise(result)}
                report["results"].append(summary)
                tag = f"{name}_{protocol}{'_flip' if flip else ''}"
                plot = ced_plot(result, f"{info.name}: {label}, {n} faces")
                cv2.imwrite(str(out / f"ced_{tag}.png"), cv2.cvtColor(plot, cv2.COLOR_RGB2BGR))
                per_image = [{"index": i, "source": src, "pred": np.round(result["pred"][i], 3).tolist(),
                              "gt": np.round(result["gt"][i], 3).tolist(),
                              "nme": {k: float(v[i]) for k, v in result["nme"].items()}}
                             for i, src in enumerate(result["sources"])]
                (out / f"predictions_{tag}.json").write_text(json.dumps(per_image))
                print(f"[eval] {label}: NME {100 * summary['by_norm'][primary]['nme']:.3f}% ({primary}), "
                      f"{summary['images_per_s']:.1f} images/s", flush=True)
                if tb is not None:
                    for norm, row in summary["by_norm"].items():
                        tb.add_scalar(f"eval/{tag}/nme_{norm}", row["nme"], step)
                        tb.add_scalar(f"eval/{tag}/auc@0.10_{norm}", row["auc@0.10"], step)
                    add_image(tb, f"eval/{tag}/ced", plot, step)
    except (DataError, ValueError) as e:
        print(f"facealign-eval: {e}", file=sys.stderr)
        return 2
    finally:
        if tb is not None:
            tb.close()
    (out / "report.json").write_text(json.dumps(report, indent=1))
    table = format_table(report)
    (out / "report.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\n[eval] report, CED curves and per-image predictions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
