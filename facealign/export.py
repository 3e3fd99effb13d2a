"""``facealign-export``: trained models out of the training code, and the reference's models in.

    facealign-export runs/demo exported/demo                 # best checkpoint -> symbol + params + YAML
    facealign-export runs/demo exported/demo --onnx          # ... and model.onnx, checked against MXNet
    facealign-export models/model-hg2d3-cab exported/hg2     # a reference release, renamed into our network

An export package is a directory that needs neither the training code nor the
job spec to run: the hybridised network (``model-symbol.json``, ``model-0000.params``),
its ``facealign-model.yaml`` (facealign.artifact.ModelInfo) and, with --onnx,
``model.onnx`` for onnxruntime; facealign.artifact describes the layout.

The reference's released checkpoints (``model-symbol.json`` / ``model-0000.params``,
MXNet Module names, seed-spec §11.5) load into our networks through a name map
(facealign.artifact): our parameter names are the reference's layer names, so the
map strips Module's ``arg:`` / ``aux:`` prefixes and renames BatchNorm's
``moving_mean`` / ``moving_var`` to Gluon's ``running_mean`` / ``running_var``.

Exit status: 0 written; 2 a model that cannot be exported (one line on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from facealign import artifact
from facealign.artifact import ONNX_FILE, PARAMS_FILE, SYMBOL_FILE, ArtifactError, ModelInfo


# --- export packages -------------------------------------------------------------------------------

def export_package(net, info: ModelInfo, out_dir, *, onnx: bool = False, log=print) -> dict:
    """Write the package (facealign.artifact's layout); with ``onnx`` also model.onnx, checked against MXNet.

    Returns {"files": [...], "onnx_rel_diff": max |onnxruntime - MXNet| / max |MXNet|, or None}.
    """
    import mxnet as mx

    out = Path(out_dir)
    net.hybridize(static_alloc=True)
    probe = _probe_batch(info, 2)
    expected = net(mx.nd.array(probe))[-1].asnumpy()
    files = artifact.write_package(net, info, out)
    result = {"files": files, "onnx_rel_diff": None}
    if onnx:
        diff = export_onnx(out, info, probe, expected)
        files.append(ONNX_FILE)
        result["onnx_rel_diff"] = diff
        log(f"ONNX: {out / ONNX_FILE}; max |onnxruntime - MXNet| / max |MXNet| on the last stack = {diff:.2g}")
        if diff > 1e-4:
            raise ArtifactError(f"the ONNX model differs from MXNet's by {diff:.2g} (relative): not trusted")
    log(f"exported {info.name} to {out}: {', '.join(files)}")
    return result


def _probe_batch(info: ModelInfo, n: int) -> np.ndarray:
    return np.random.RandomState(0).uniform(0, 255, (n, 3, info.input_size, info.input_size)).astype(np.float32)


def export_onnx(out: Path, info: ModelInfo, probe: np.ndarray, expected: np.ndarray) -> float:
    """model.onnx through MXNet's own exporter (mxnet.onnx), batch dimension dynamic; returns the
    relative difference of onnxruntime's last stack from MXNet's on ``probe``."""
    import onnxruntime as ort
    from mxnet import onnx as mx_onnx

    s = info.input_size
    mx_onnx.export_model(str(out / SYMBOL_FILE), str(out / PARAMS_FILE), in_shapes=[(1, 3, s, s)],
                         in_types=[np.float32], onnx_file_path=str(out / ONNX_FILE), dynamic=True,
                         dynamic_input_shapes=[(None, 3, s, s)], run_shape_inference=False)
    _constant_initializers(out / ONNX_FILE)
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    got = session.run([session.get_outputs()[-1].name], {session.get_inputs()[0].name: probe})[0]
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def _constant_initializers(path: Path) -> None:
    """MXNet's exporter lists the weights as graph inputs too, which stops onnxruntime from folding
    them as constants; keep only the image as an input."""
    import onnx

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, str(path))


# --- the command line ------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="facealign-export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="run directory, checkpoint directory or reference release")
    p.add_argument("out", help="output directory for the package")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx and onnxruntime)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint of a run (default best)")
    p.add_argument("--model-name", help="zoo model of a reference release whose directory name does not say")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from facealign.backends import mx_context

    try:
        source = artifact.resolve(args.model, which=args.which, model_name=args.model_name,
                                  log=lambda m: print(f"[export] {m}", file=sys.stderr))
        if source.kind not in ("run", "checkpoint", "reference"):
            raise ArtifactError(f"{args.model} is already an export ({source.kind})")
        print(f"[export] {source.location}")
        net = artifact.load_network(source, mx_context(None))
        export_package(net, source.info, args.out, onnx=args.onnx, log=lambda m: print(f"[export] {m}"))
    except ArtifactError as e:
        print(f"facealign-export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
