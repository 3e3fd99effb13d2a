"""What a trained model is on disk: the kinds a user may pass, resolving each, and loading it.

    >>> source = resolve("runs/demo")                 # its best valid checkpoint; no MXNet needed
    >>> source.kind, source.location, source.info     # "run", .../ckpt-000000372, ModelInfo(...)
    (loading them for inference: facealign.serve.loading)

Kinds, told apart by what the path holds:

  run         a run directory (``checkpoints/`` inside): its ``best`` or ``latest`` valid checkpoint
  checkpoint  one checkpoint directory (``ckpt-<step>/``, facealign.runs.checkpoint's layout)
  export      an export package (``facealign-export``)::

                  model-symbol.json, model-0000.params   the hybridised network (``SymbolBlock.imports``),
                                                         one output per stack, the last the prediction
                  facealign-model.yaml                   ModelInfo (format 1)
                  model.onnx                             optional: the same network for onnxruntime
  onnx        an ``.onnx`` file beside its package's ``facealign-model.yaml``
  reference   a release of the reference project: ``<dir>/model-0000.params`` (MXNet Module names,
              ``arg:``/``aux:``, ``moving_*``), the model told by the directory name or ``model_name``

``ModelInfo`` is everything besides the weights that evaluation, export and
inference need. The trainer writes it into every checkpoint's ``state.json``,
so serving never reads the run's job spec; checkpoints written before it did
are described from their ``state.json`` and, leniently, their run's job.yaml.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facealign.errors import CannotStart
from facealign.runs import checkpoint, checkpoint_format
from facealign.runs.layout import JOB_FILE
from facealign.data.schemes import scheme_for
from facealign.data.transforms import BOX_CROP_FRAMING, crop_framing
from facealign.models.specs import ModelSpec, get_model_spec

INFO_FILE = "facealign-model.yaml"
SYMBOL_FILE, PARAMS_FILE, ONNX_FILE = "model-symbol.json", "model-0000.params", "model.onnx"
PACKAGE_FORMAT = 1
PRECISIONS = ("float32", "bfloat16", "int8")

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


class ArtifactError(CannotStart, RuntimeError):
    """A path that is no model, or a model file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ModelInfo:
    """What evaluation and inference need to know about a model besides its weights."""

    name: str
    input_size: int = 128
    heatmap_size: int = 64
    num_landmarks: int = 68
    landmark_dims: int = 2  # 3: trained on 3D-consistent landmarks (it predicts their x, y)
    scheme: str = "ibug68"  # facealign.data.schemes: flip pairs and the eyes of the normalisers
    crop_framing: float = crop_framing("center")  # crop side / landmark box side
    sigma: float = 1.0  # the training targets' Gaussian sigma, in heatmap pixels
    model: dict = field(default_factory=dict)  # the ModelSpec fields
    precision: str = "float32"  # of an export package: float32, bfloat16 or int8 (its inputs stay float32 pixels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def predicts_z(self) -> bool:
        """Its outputs hold K depth maps after the K heatmaps (facealign.models.network)."""
        return bool(self.model.get("predict_z"))

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "ModelInfo":
        if not isinstance(d, dict) or "name" not in d:
            raise ArtifactError(f"{source}: not a model description (a mapping with name, input_size, ...)")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if "scheme" not in values:  # written before the scheme was recorded
            values["scheme"] = scheme_for(int(values.get("num_landmarks", 68))).name
        try:
            return cls(**values)
        except TypeError as e:
            raise ArtifactError(f"{source}: {e}") from None

    @classmethod
    def of(cls, name: str, spec: ModelSpec, *, scheme: str, crop_framing: float, sigma: float = 1.0) -> "ModelInfo":
        return cls(name=name, input_size=spec.input_size, heatmap_size=spec.heatmap_size,
                   num_landmarks=spec.num_landmarks, landmark_dims=spec.landmark_dims, scheme=scheme,
                   crop_framing=crop_framing, sigma=sigma, model=spec.to_dict())

    def model_spec(self) -> ModelSpec:
        return ModelSpec(**self.model).validate()


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what the user gave (``path``), what is loaded (``location``: a checkpoint
    directory, a package directory, an .onnx file or a reference .params file), its facts and, for
    checkpoints, their ``state.json``."""

    kind: str
    path: Path
    location: Path
    info: ModelInfo
    state: dict | None = None

    @property
    def checkpoint(self) -> Path | None:
        return self.location if self.kind in ("run", "checkpoint") else None

    @property
    def step(self) -> int | None:
        return self.state.get("step") if self.state else None

    @property
    def label(self) -> str:
        """A short name for reports: the run and checkpoint, or the file."""
        if self.checkpoint is not None:
            return f"{checkpoint_format.run_of(self.location).name}/{self.location.name}"
        return self.path.stem if self.kind == "onnx" else self.path.name


def detect_kind(path) -> str:
    """run | checkpoint | export | onnx | reference, from what the path holds."""
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return "onnx"
    if path.is_dir():
        if checkpoint_format.is_run(path):
            return "run"
        if checkpoint_format.is_checkpoint(path):
            return "checkpoint"
        if (path / INFO_FILE).is_file():
            return "export"
        if (path / PARAMS_FILE).is_file():
            return "reference"
    elif Path(str(path) + "-0000.params").is_file():
        return "reference"
    raise ArtifactError(f"{path}: not a run directory, a checkpoint, an export package, an .onnx file or a "
                        f"reference release (model-0000.params)")


def resolve(path, *, which: str = "best", model_name: str | None = None, log=None) -> ModelSource:
    """Find what ``path`` holds and describe it (no MXNet). ``which``: a run's best or latest checkpoint;
    ``model_name``: the zoo model of a reference release whose directory name does not tell."""
    path = Path(path)
    kind = detect_kind(path)
    if kind in ("run", "checkpoint"):
        try:
            ckpt = checkpoint.find(path, which, log=log)
            state = checkpoint_format.read_state(ckpt)
        except checkpoint_format.CheckpointError as e:
            raise ArtifactError(str(e)) from None
        return ModelSource(kind, path, ckpt, checkpoint_info(ckpt, state), state)
    if kind == "export":
        return ModelSource(kind, path, path, read_package_info(path))
    if kind == "onnx":
        return ModelSource(kind, path, path, read_package_info(path.parent))
    params = reference_params_path(path)
    name = model_name or REFERENCE_RELEASES.get(params.parent.name)
    if name is None:
        raise ArtifactError(f"{params.parent}: cannot tell which model this is from the directory name; pass "
                            f"--model-name (one of {', '.join(REFERENCE_RELEASES.values())})")
    try:
        spec = get_model_spec(name)
    except KeyError as e:
        raise ArtifactError(f"{params}: {e.args[0]}") from None
    return ModelSource(kind, path, params, ModelInfo.of(name, spec, scheme=scheme_for(spec.num_landmarks).name,
                                                        crop_framing=BOX_CROP_FRAMING))


def _legacy_job(ckpt: Path) -> dict:
    """The raw job.yaml of a checkpoint's run, leniently (for checkpoints that predate ``model_info``)."""
    try:
        raw = yaml.safe_load((checkpoint_format.run_of(ckpt) / JOB_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _section(raw: dict, *keys) -> dict:
    for key in keys:
        raw = raw.get(key) if isinstance(raw.get(key), dict) else {}
    return raw


def legacy_validation_record(ckpt: Path) -> dict:
    """The validation record (``components.validation_record``'s layout) of a checkpoint written before
    state.json kept one, from its run's job.yaml; set paths as the trainer opened them (its cwd)."""
    raw = _legacy_job(ckpt)
    data, evaluation = _section(raw, "data"), _section(raw, "eval")
    if not data:
        raise ArtifactError(f"{ckpt}: no recorded validation protocol, and no readable job.yaml beside its run")
    protocol = {"name": "train", "decode": evaluation.get("decode", "subpixel"),
                "eval_crop": evaluation.get("crop", "center"),
                "base_size": float(_section(raw, "data", "augment").get("base_size", 256.0)),
                "decode_reduce": int(data.get("decode_reduce", 1))}
    return {"protocol": protocol, "sets": dict(data.get("val") or {}),
            "batch_size": int(evaluation.get("batch_size", 16)), "max_samples": evaluation.get("max_samples")}


def checkpoint_info(ckpt: Path, state: dict) -> ModelInfo:
    """A checkpoint's ModelInfo: as its trainer recorded it, or, for checkpoints from before that,
    rebuilt from the structure in ``state.json`` and the framing in the run's job.yaml."""
    if "model_info" in state:
        return ModelInfo.from_dict(state["model_info"], f"{ckpt / checkpoint_format.STATE_FILE}: model_info")
    model = state.get("model")
    if not isinstance(model, dict):
        raise ArtifactError(f"{ckpt / checkpoint_format.STATE_FILE} does not record the model's structure")
    raw = _legacy_job(ckpt)
    data = _section(raw, "data")
    framing = crop_framing(_section(raw, "eval").get("crop", "center"),
                           float(_section(raw, "data", "augment").get("base_size", 256.0)))
    name = _section(raw, "model").get("name") or f"{model.get('topology', 'model')}{model.get('num_stacks', '')}-custom"
    spec = ModelSpec(**model)
    return ModelInfo.of(name, spec, scheme=scheme_for(spec.num_landmarks).name, crop_framing=framing,
                        sigma=float(data.get("sigma", 1.0)))


# --- export packages -------------------------------------------------------------------------------

def write_package(net, info: ModelInfo, out_dir) -> list[str]:
    """Write the symbol, parameters and ``facealign-model.yaml`` of a package; returns the file names.
    ``net`` must be hybridised and have run once (Gluon exports the graph of its last forward)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.export(str(out / "model"), epoch=0)
    (out / INFO_FILE).write_text(yaml.safe_dump({"format": PACKAGE_FORMAT, **info.to_dict()}, sort_keys=False))
    return [SYMBOL_FILE, PARAMS_FILE, INFO_FILE]


def read_package_info(directory) -> ModelInfo:
    f = Path(directory) / INFO_FILE
    if not f.is_file():
        raise ArtifactError(f"{directory}: no {INFO_FILE}; not an export package (see facealign-export)")
    try:
        raw = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:  # safe_load: a Python tag is an error here, never code that runs
        raise ArtifactError(f"{f}: not valid YAML ({str(e).splitlines()[0]})") from None
    return ModelInfo.from_dict(raw, str(f))


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


def reference_params_path(prefix) -> Path:
    p = Path(prefix)
    return p / PARAMS_FILE if p.is_dir() else Path(str(p) + "-0000.params")


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
        raise ArtifactError(f"{path}: {len(missing)} parameter(s) of this network are not in the file, e.g. "
                            f"{', '.join(missing[:5])}; is it the right model?")
    wrong = [f"{k}: file {tuple(saved[k].shape)} vs network {params[k].shape}" for k in params
             if tuple(saved[k].shape) != tuple(params[k].shape)]
    if wrong:
        raise ArtifactError(f"{path}: shapes differ for {len(wrong)} parameter(s), e.g. {'; '.join(wrong[:3])}")
    for k, p in params.items():
        p.set_data(saved[k].as_in_context(ctx))
    return {"loaded": len(params), "ignored": sorted(set(saved) - set(params))}


def pretrained_params_file(path) -> Path:
    """The .params file ``model.pretrained`` names: the file itself, or that of a run's best checkpoint,
    a checkpoint, an export package or a reference release."""
    path = Path(path)
    return path if path.is_file() else params_file(resolve(path))


def params_file(source: ModelSource) -> Path:
    """The .params file of a resolved model (a checkpoint's model.params, an export's, a release's)."""
    if source.kind in ("run", "checkpoint"):
        return checkpoint_format.model_file(source.location)
    if source.kind == "export":
        return source.location / PARAMS_FILE
    if source.kind == "reference":
        return source.location
    raise ArtifactError(f"{source.path}: an ONNX model cannot initialise a network")


def load_pretrained(net, path, ctx) -> dict:
    """Initialise ``net`` from another model's parameters for fine-tuning (see ``pretrained_params_file``).
    Parameters the file lacks or has in another shape keep their initialisation (a new head).
    Returns {"loaded": [...], "kept": [...]}."""
    import mxnet as mx

    from facealign.models import structural_parameters

    params_file = pretrained_params_file(path)
    try:
        saved = mx.nd.load(str(params_file))
    except mx.base.MXNetError as e:
        raise ArtifactError(f"{params_file}: not an MXNet .params file ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise ArtifactError(f"{params_file}: not a named .params file")
    if any(k[:4] in ("arg:", "aux:") for k in saved):  # a release's or an export's Module-style names
        by_name = {our_name(k): v for k, v in saved.items()}
        params = {p.name: p for p in net.collect_params().values()}
    else:  # our checkpoints: structural names
        by_name = saved
        params = structural_parameters(net)
    loaded, kept = [], []
    for key, p in params.items():
        value = by_name.get(key)
        if value is not None and tuple(value.shape) == tuple(p.shape):
            p.set_data(value.as_in_context(ctx))
            loaded.append(key)
        else:
            kept.append(key)
    if not loaded:
        raise ArtifactError(f"{params_file}: none of its {len(saved)} arrays matches this network's parameters")
    return {"loaded": loaded, "kept": kept}
