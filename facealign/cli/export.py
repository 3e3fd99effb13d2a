"""``facealign-export``: trained models out of the training code, and the reference's models in.

    facealign-export runs/demo exported/demo                 # best checkpoint -> symbol + params + YAML
    facealign-export runs/demo exported/demo --onnx          # ... and model.onnx, checked against MXNet
    facealign-export models/model-hg2d3-cab exported/hg2     # a reference release, renamed into our network
    facealign-export runs/demo exported/demo-int8 --precision int8 --calibration data/synth_train_visible \
        --check data/synth_val_visible --onnx                        # int8 for MXNet and onnxruntime, NME checked
    facealign-export runs/demo exported/demo-bf16 --precision bfloat16 --check data/synth_val_visible

An export package is a directory that needs neither the training code nor the
job spec to run: the hybridised network (``model-symbol.json``, ``model-0000.params``),
its ``facealign-model.yaml`` (facealign.runs.artifact.ModelInfo) and, with --onnx,
``model.onnx`` for onnxruntime; facealign.runs.artifact describes the layout.

The reference's released checkpoints (``model-symbol.json`` / ``model-0000.params``,
MXNet Module names, seed-spec §11.5) load into our networks through a name map
(facealign.runs.artifact): our parameter names are the reference's layer names, so the
map strips Module's ``arg:`` / ``aux:`` prefixes and renames BatchNorm's
``moving_mean`` / ``moving_var`` to Gluon's ``running_mean`` / ``running_var``.

Reduced precision (``--precision``): ``int8`` quantises the network with MXNet's
``quantize_net_v2`` (channel-wise where oneDNN has it; ``--calib-mode entropy`` (the
default: KL-optimal) or ``naive`` (min/max) thresholds from ``--calibration-samples`` faces of ``--calibration``; the
ops without an int8 kernel, UpSampling among them, stay float32 between a dequantise
and a quantise) and, with ``--onnx``, writes a statically quantised QDQ model.onnx
through onnxruntime's quantiser (per channel, uint8 activations, int8 weights).
``bfloat16`` converts the network with AMP and fuses it with oneDNN (``mixed_precision``), for
CPUs with AVX512-BF16 or AMX. Both take float32 pixels in and give float32 heatmaps out; the
package records its precision, and every loader takes it as it is. A reduced export
scores float32 and itself on the held-out faces of ``--check`` (the standard protocol)
and is refused, with nothing written, when its NME rises more than ``--max-drift``
(relative, default 2%).

Exit status: 0 written; 2 a model that cannot be exported, or an export that loses more accuracy
than --max-drift allows (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys

from facealign.runs import artifact
from facealign.runs.artifact import PRECISIONS, ArtifactError
from facealign.serve import loading
from facealign.serve.export import ReducedExport, export_package, export_reduced


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory, checkpoint directory or reference release")
    p.add_argument("out", help="output directory for the package")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx and onnxruntime)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--model-name", help="zoo model of a reference release whose directory name does not say")
    p.add_argument("--precision", choices=PRECISIONS, default="float32")
    p.add_argument("--calibration", metavar="PREFIX", help="int8: packed records whose faces set the ranges")
    p.add_argument("--calibration-samples", type=int, default=64, help="int8: faces to calibrate on (64)")
    p.add_argument("--calib-mode", choices=("naive", "entropy"), default="entropy",
                   help="int8: thresholds from the min/max (naive) or the KL-optimal (entropy) of the activations; "
                        "neither wins on every model: if the drift guard refuses one, try the other")
    p.add_argument("--check", metavar="PREFIX", help="held-out packed records scoring float32 against the export "
                                                     "(required for bfloat16 and int8)")
    p.add_argument("--check-samples", type=int, default=200, help="faces of --check to score (200)")
    p.add_argument("--max-drift", type=float, default=0.02,
                   help="largest relative NME rise over float32 (default 0.02: 2%%)")
    return p.parse_args(argv)


# --- reduced precision ---------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign.platform import cpu_isa

    cpu_isa.serve_synchronously()  # before MXNet is imported: export computes on the CPU
    from facealign.evaluation.backends import mx_context
    from facealign.data.records import DataError
    from facealign.evaluation.scoring import ScoringError

    try:
        source = artifact.resolve(args.model, which=args.which, model_name=args.model_name,
                                  log=lambda m: print(f"[export] {m}", file=sys.stderr))
        if source.kind not in ("run", "checkpoint", "reference"):
            raise ArtifactError(f"{args.model} is already an export ({source.kind})")
        print(f"[export] {source.location}")
        net = loading.load_network(source, mx_context(None))
        log = lambda m: print(f"[export] {m}")  # noqa: E731
        if args.precision == "float32":
            export_package(net, source.info, args.out, onnx=args.onnx, log=log)
        else:
            options = ReducedExport(precision=args.precision, check=args.check, check_samples=args.check_samples,
                                    max_drift=args.max_drift, calibration=args.calibration,
                                    calibration_samples=args.calibration_samples, calib_mode=args.calib_mode,
                                    onnx=args.onnx)
            export_reduced(net, source.info, args.out, options, log=log)
    except (ArtifactError, DataError, ScoringError) as e:
        print(f"facealign-export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
