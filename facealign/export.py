"""``facealign-export``: trained models out of the training code, and the reference's models in.

    facealign-export runs/demo exported/demo                 # best checkpoint -> symbol + params + YAML
    facealign-export runs/demo exported/demo --onnx          # ... and model.onnx, checked against MXNet
    facealign-export models/model-hg2d3-cab exported/hg2     # a reference release, renamed into our network

An export package is a directory that needs neither the training code nor the
job spec to run::

    model-symbol.json, model-0000.params   the hybridised network (``gluon.SymbolBlock.imports``);
                                           one output per stack, the last is the prediction
    facealign-model.yaml                   input size, heatmap size, landmarks, landmark scheme,
                                           crop framing, the model's structure
    model.onnx                             with --onnx: the same network for onnxruntime

The reference's released checkpoints (``model-symbol.json`` / ``model-0000.params``,
MXNet Module names, seed-spec §11.5) load into our networks through a name map:
our parameter names are the reference's layer names, so the map strips Module's
``arg:`` / ``aux:`` prefixes and renames BatchNorm's ``moving_mean`` / ``moving_var``
to Gluon's ``running_mean`` / ``running_var``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

from facealign.inference import BOX_CROP_FRAMING, ModelInfo, center_crop_framing

INFO_FILE = "facealign-model.yaml"
SYMBOL_FILE, PARAMS_FILE, ONNX_FILE = "model-symbol.json", "model-0000.params", "model.onnx"

# The reference's release directories (seed-spec §10) -> our zoo names.
REFERENCE_RELEASES = {
    "model-hg2d4-resnet": "hg2-d4-resnet",
    "model-hg2d3-hpm": "hg2-d3-hpm",
    "model-hg2d4-cab": "hg2-d4-cab",
    "model-sat2d3-cab": "sat2-d3-cab",
    "model-hg2d3-cab": "hg2-d3-cab",
    "model-hg2d3-cab-3d": "hg2-d3-cab-3d",
    "model-sat2d3-cab-3d": "sat2-d3-cab-3d",
}


class ExportError(RuntimeError):
    pass


def detect_kind(path: Path) -> str:
    """run | checkpoint | export | onnx | reference, from what the path holds."""
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return "onnx"
    if path.is_dir():
        if (path / "checkpoints").is_dir():
            return "run"
        if (path / "state.json").is_file() and (path / "model.params").is_file():
            return "checkpoint"
        if (path / INFO_FILE).is_file():
            return "export"
        if (path / PARAMS_FILE).is_file():
            return "reference"
    elif Path(str(path) + "-0000.params").is_file():
        return "reference"
    raise ExportError(f"{path}: not a run directory, a checkpoint, an export package, an .onnx file or a "
                      f"reference release (model-0000.params)")


# --- checkpoints -----------------------------------------------------------------------------------

def resolve_checkpoint(path, which: str = "best") -> Path:
    """A checkpoint directory: ``path`` itself, or a run's best / latest valid checkpoint."""
    from facealign.checkpoint import CheckpointManager

    path = Path(path)
    if detect_kind(path) == "checkpoint":
        return path
    job = read_job(path)
    manager = CheckpointManager(path / "checkpoints", writer=False, metric=job.metric_name() if job else None,
                                mode=job.checkpoint.mode if job else "min")
    found = manager.best() if which == "best" else manager.latest_valid(log=lambda m: print(m, file=sys.stderr))
    if found is None:
        raise ExportError(f"{path}: no valid checkpoint under {path / 'checkpoints'}")
    return found


def read_job(run_dir: Path):
    """The run's resolved spec (``job.yaml``, written by the trainer), or None."""
    from facealign.config import load_job

    f = Path(run_dir) / "job.yaml"
    return load_job(f) if f.is_file() else None


def checkpoint_info(ckpt: Path) -> ModelInfo:
    """The model facts of a checkpoint: its structure from state.json, the crop framing from the run's job."""
    state = json.loads((ckpt / "state.json").read_text())
    model = state.get("model")
    if not model:
        raise ExportError(f"{ckpt}/state.json does not record the model's structure")
    job = read_job(ckpt.parent.parent)
    framing = BOX_CROP_FRAMING if job and job.eval.crop == "box" else \
        center_crop_framing(job.data.augment.base_size if job else 256)
    name = job.model.name if job and job.model.name else f"{model['topology']}{model['num_stacks']}-custom"
    return ModelInfo(name=name, input_size=model["input_size"], heatmap_size=model["heatmap_size"],
                     num_landmarks=model["num_landmarks"], landmark_dims=model["landmark_dims"],
                     crop_framing=framing, model=model)


def load_checkpoint_net(path, *, ctx, which: str = "best"):
    """(hybridised network, ModelInfo, checkpoint path) for a run directory or a checkpoint."""
    from facealign.checkpoint import CheckpointManager

    ckpt = resolve_checkpoint(path, which)
    problem = CheckpointManager(ckpt.parent, writer=False).verify(ckpt)
    if problem:
        raise ExportError(f"{ckpt}: {problem}")
    from facealign.models import ModelSpec, build_model

    info = checkpoint_info(ckpt)
    net = build_model(ModelSpec(**info.model))
    net.load_parameters(str(ckpt / "model.params"), ctx=ctx)
    net.hybridize(static_alloc=True)
    return net, info, ckpt


# --- export packages -------------------------------------------------------------------------------

def export_package(net, info: ModelInfo, out_dir, *, onnx: bool = False, log=print) -> dict:
    """Write the package; with ``onnx`` also model.onnx, checked against the MXNet output.

    Returns {"files": [...], "onnx_rel_diff": max |onnxruntime - MXNet| / max |MXNet|, or None}.
    """
    import mxnet as mx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.hybridize(static_alloc=True)
    probe = _probe_batch(info, 2)
    expected = net(mx.nd.array(probe))[-1].asnumpy()
    net.export(str(out / "model"), epoch=0)
    (out / INFO_FILE).write_text(yaml.safe_dump({"format": 1, **info.to_dict()}, sort_keys=False))
    files = [SYMBOL_FILE, PARAMS_FILE, INFO_FILE]
    result = {"files": files, "onnx_rel_diff": None}
    if onnx:
        diff = export_onnx(out, info, probe, expected)
        files.append(ONNX_FILE)
        result["onnx_rel_diff"] = diff
        log(f"ONNX: {out / ONNX_FILE}; max |onnxruntime - MXNet| / max |MXNet| on the last stack = {diff:.2g}")
        if diff > 1e-4:
            raise ExportError(f"the ONNX model differs from MXNet's by {diff:.2g} (relative): not trusted")
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


def read_info(directory) -> ModelInfo:
    f = Path(directory) / INFO_FILE
    if not f.is_file():
        raise ExportError(f"{directory}: no {INFO_FILE}; not an export package (see facealign-export)")
    return ModelInfo.from_dict(yaml.safe_load(f.read_text()))


def load_symbol_package(directory, ctx):
    import warnings

    from mxnet import gluon

    d = Path(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = gluon.SymbolBlock.imports(str(d / SYMBOL_FILE), ["data"], str(d / PARAMS_FILE), ctx=ctx)
    net.hybridize(static_alloc=True)
    return net


# --- the reference's released checkpoints ----------------------------------------------------------

def reference_name(ours: str) -> str:
    """Our parameter name -> the reference Module's key in its .params file."""
    if ours.endswith(("_running_mean", "_running_var")):
        return "aux:" + re.sub(r"_running_(mean|var)$", r"_moving_\1", ours)
    return "arg:" + ours


def our_name(reference: str) -> str:
    """The reference Module's .params key -> our parameter name."""
    name = reference.split(":", 1)[1] if reference[:4] in ("arg:", "aux:") else reference
    return re.sub(r"_moving_(mean|var)$", r"_running_\1", name)


def save_reference_params(net, path) -> None:
    """Write ``net``'s parameters under the reference's Module names (``arg:``/``aux:``, moving_*)."""
    import mxnet as mx

    mx.nd.save(str(path), {reference_name(p.name): p.data() for p in net.collect_params().values()})


def load_reference_params(net, path, ctx) -> dict:
    """Load a reference .params file into ``net`` through the name map.

    Every parameter of ``net`` must be present with its shape; keys the network does not
    have (the training graph's extras) are ignored and reported. Returns {"loaded", "ignored"}.
    """
    import mxnet as mx

    saved = {our_name(k): v for k, v in mx.nd.load(str(path)).items()}
    params = {p.name: p for p in net.collect_params().values()}
    missing = sorted(set(params) - set(saved))
    if missing:
        raise ExportError(f"{path}: {len(missing)} parameter(s) of this network are not in the file, e.g. "
                          f"{', '.join(missing[:5])}; is it the right model?")
    wrong = [f"{k}: file {tuple(saved[k].shape)} vs network {params[k].shape}" for k in params
             if tuple(saved[k].shape) != tuple(params[k].shape)]
    if wrong:
        raise ExportError(f"{path}: shapes differ for {len(wrong)} parameter(s), e.g. {'; '.join(wrong[:3])}")
    for k, p in params.items():
        p.set_data(saved[k].as_in_context(ctx))
    return {"loaded": len(params), "ignored": sorted(set(saved) - set(params))}


def load_pretrained(net, path, ctx) -> dict:
    """Initialise ``net`` from a .params file for fine-tuning: a checkpoint's ``model.params``, an export
    package's or a reference release's ``model-0000.params`` (Module names, through the name map).
    Parameters the file lacks or has in another shape keep their initialisation (a new head).
    Returns {"loaded": [...], "kept": [...]}."""
    import mxnet as mx

    saved = mx.nd.load(str(path))
    if not isinstance(saved, dict):
        raise ExportError(f"{path}: not a named .params file")
    if any(k[:4] in ("arg:", "aux:") for k in saved):
        by_name = {our_name(k): v for k, v in saved.items()}
        params = {p.name: p for p in net.collect_params().values()}
    else:  # our checkpoints: structural names
        by_name = saved
        params = dict(net._collect_params_with_prefix().items())
    loaded, kept = [], []
    for key, p in params.items():
        value = by_name.get(key)
        if value is not None and tuple(value.shape) == tuple(p.shape):
            p.set_data(value.as_in_context(ctx))
            loaded.append(key)
        else:
            kept.append(key)
    if not loaded:
        raise ExportError(f"{path}: none of its {len(saved)} arrays matches this network's parameters")
    return {"loaded": loaded, "kept": kept}


def reference_params_path(prefix) -> Path:
    p = Path(prefix)
    return p / PARAMS_FILE if p.is_dir() else Path(str(p) + "-0000.params")


def load_reference_release(prefix, *, model: str | None, ctx):
    """(hybridised network, ModelInfo) for a reference release directory or ``<dir>/model`` prefix."""
    from facealign.models import get_model, initialize

    params = reference_params_path(prefix)
    if not params.is_file():
        raise ExportError(f"{params}: not found (a reference release holds model-symbol.json and model-0000.params)")
    release = params.parent.name
    name = model or REFERENCE_RELEASES.get(release)
    if name is None:
        raise ExportError(f"{params.parent}: cannot tell which model this is from the directory name; pass "
                          f"--model (one of {', '.join(REFERENCE_RELEASES.values())})")
    net = initialize(get_model(name), ctx=ctx)
    report = load_reference_params(net, params, ctx)
    if report["ignored"]:
        print(f"[facealign] {params}: ignored {len(report['ignored'])} key(s) the network does not use",
              file=sys.stderr)
    net.hybridize(static_alloc=True)
    spec = net.spec
    info = ModelInfo(name=name, input_size=spec.input_size, heatmap_size=spec.heatmap_size,
                     num_landmarks=spec.num_landmarks, landmark_dims=spec.landmark_dims,
                     crop_framing=BOX_CROP_FRAMING, model=spec.to_dict())
    return net, info


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
    import mxnet as mx

    args = parse_args(argv)
    try:
        kind = detect_kind(Path(args.model))
        if kind in ("run", "checkpoint"):
            net, info, ckpt = load_checkpoint_net(args.model, ctx=mx.cpu(), which=args.which)
            print(f"[export] {ckpt}")
        elif kind == "reference":
            net, info = load_reference_release(args.model, model=args.model_name, ctx=mx.cpu())
        else:
            raise ExportError(f"{args.model} is already an export ({kind})")
        export_package(net, info, args.out, onnx=args.onnx, log=lambda m: print(f"[export] {m}"))
    except ExportError as e:
        print(f"facealign-export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
