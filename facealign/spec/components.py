"""A job spec's parts, each built in one place and field by field by name.

Imports no MXNet, OpenCV or Horovod: ``load`` and ``check`` (what ``facealign-launch validate`` runs on a
login node) need only the schema and the model's structure; the factories of compute-side parts import
theirs when called.

    spec = components.load("jobs/demo.yaml", ["optim.lr=2e-4"])   # load_job + the parts' own checks
    model_spec(spec), codec(spec), augment(spec), sample_config(spec), scheme(spec), model_info(spec)

The trainer, the launcher's ``validate`` and the demo take their parts from
here, so a setting means the same thing everywhere. ``check`` builds every part
on the login node: a model the zoo refuses (``model.width: 60`` with CAB
blocks) is a ``SpecError`` naming the key, not a traceback on the compute node.
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from facealign.data.schemes import LandmarkScheme, get_scheme, scheme_for
from facealign.models.specs import ModelSpec, ModelSpecError, get_model_spec
from facealign.spec.schema import AugmentSpec, JobSpec, SpecError, load_job

if TYPE_CHECKING:  # the compute side's types, imported by the factories that build them
    from facealign.data.codec import HeatmapCodec
    from facealign.data.pipeline import SampleConfig
    from facealign.data.transforms import AugmentConfig
    from facealign.evaluation.scoring import Protocol
    from facealign.runs.artifact import ModelInfo

# ModelSpec field -> the job-spec key that sets it
_MODEL_KEYS = {"topology": "model.name", "num_stacks": "model.num_stacks", "depth": "model.depth",
               "block": "model.block", "width": "model.width", "dcn": "model.dcn",
               "num_landmarks": "data.num_points", "input_size": "data.input_size",
               "heatmap_size": "data.heatmap_size", "landmark_dims": "data.landmark_dims"}


def scheme(spec: JobSpec) -> LandmarkScheme:
    """``data.scheme``, or the scheme of ``data.num_points``."""
    d = spec.data
    return get_scheme(d.scheme) if d.scheme else scheme_for(d.num_points)


def model_spec(spec: JobSpec) -> ModelSpec:
    """The network's structure: the zoo model of ``model.name`` with the spec's overrides.
    ``data.landmark_dims`` left unset keeps the zoo model's (3 for its ``-3d`` models)."""
    m, d = spec.model, spec.data
    overrides = {k: getattr(m, k) for k in ("num_stacks", "depth", "width", "block", "dcn", "predict_z")
                 if getattr(m, k) is not None}
    overrides.update(num_landmarks=d.num_points, input_size=d.input_size, heatmap_size=d.heatmap_size)
    if d.landmark_dims is not None:
        overrides["landmark_dims"] = d.landmark_dims
    return get_model_spec(m.name, **overrides)


def codec(spec: JobSpec) -> HeatmapCodec:
    """Training targets and the validation decoding."""
    from facealign.data.codec import HeatmapCodec

    d = spec.data
    return HeatmapCodec(d.input_size, d.heatmap_size, d.sigma, d.peak, encode_mode=d.target,
                        decode_mode=spec.eval.decode)


def augment(spec: JobSpec) -> AugmentConfig:
    from facealign.data.transforms import AugmentConfig

    a = spec.data.augment
    return AugmentConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(AugmentSpec)})


def sample_config(spec: JobSpec) -> SampleConfig:
    """How a training record becomes a network input."""
    from facealign.data.pipeline import SampleConfig

    d = spec.data
    return SampleConfig(input_size=d.input_size, num_points=d.num_points, augment=augment(spec),
                        eval_crop=spec.eval.crop, decode_reduce=d.decode_reduce, on_error=d.on_error,
                        scheme=scheme(spec).name)


RUNTIME_ENV = {"fusion_threshold_mb": "HOROVOD_FUSION_THRESHOLD", "cycle_time_ms": "HOROVOD_CYCLE_TIME",
               "hierarchical_allreduce": "HOROVOD_HIERARCHICAL_ALLREDUCE", "cudnn_autotune": "MXNET_CUDNN_AUTOTUNE_DEFAULT"}


def runtime_env(spec: JobSpec) -> dict:
    """The environment the spec's ``resources`` knobs set (only those it sets): what facealign-launch and
    launcher.slurm export before the ranks start, and what the trainer applies before Horovod starts."""
    r, env = spec.resources, {}
    if r.fusion_threshold_mb is not None:
        env["HOROVOD_FUSION_THRESHOLD"] = str(r.fusion_threshold_mb * 1024 * 1024)
    if r.cycle_time_ms is not None:
        env["HOROVOD_CYCLE_TIME"] = f"{r.cycle_time_ms:g}"
    if r.hierarchical_allreduce is not None:
        env["HOROVOD_HIERARCHICAL_ALLREDUCE"] = "1" if r.hierarchical_allreduce else "0"
    if r.cudnn_autotune is not None:
        env["MXNET_CUDNN_AUTOTUNE_DEFAULT"] = str(r.cudnn_autotune)
    if spec.run.stall_timeout_s:
        # Horovod's stall inspector names the missing ranks and, a little after the trainer's own watchdog
        # (facealign.train.watchdog), shuts Horovod down: a bound where the watchdog's thread could not run
        env["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(max(1, min(60, int(spec.run.stall_timeout_s // 2))))
        env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(int(spec.run.stall_timeout_s) + 30)
    return env


def epoch_steps(spec: JobSpec) -> int | None:
    """Optimizer steps in an epoch of the nominal world (the record files' indexes only; no MXNet), or None
    where the files cannot be read."""
    from facealign.data.records import RecordFile

    global_batch = spec.data.batch_size * spec.world_size * spec.optim.grad_accumulation
    try:
        return sum(len(RecordFile(p)) for p in spec.data.train) // global_batch
    except Exception:  # noqa: BLE001  (validate reports bad files itself; this is a figure, not a check)
        return None


def describe_runtime_env(environ) -> str:
    """The knobs as this process has them, for the rank-0 start-up line."""
    return ", ".join(f"{var}={environ.get(var, 'default')}" for var in RUNTIME_ENV.values())


HPARAM_KEYS = ("model.name", "model.width", "model.depth", "loss.kind", "optim.name", "optim.lr", "optim.amp",
               "data.batch_size", "data.input_size", "data.sigma", "data.target", "eval.decode", "schedule.kind",
               "schedule.length", "run.seed")


def hyperparameters(spec: JobSpec, nominal_world_size: int, overrides=()) -> dict:
    """What TensorBoard's HParams dashboard lists for a run: the main keys of the spec, the nominal world size, and
    every ``--set``/sweep override (``key=value``) as the spec resolved it. Values are bool, int, float or str."""
    def value(dotted):
        v = spec
        for part in dotted.split("."):
            v = getattr(v, part)
        return v if isinstance(v, (bool, int, float, str)) else str(v)

    keys = list(HPARAM_KEYS) + [o.partition("=")[0] for o in overrides if o.partition("=")[0] not in HPARAM_KEYS]
    out = {}
    for key in keys:
        try:
            out[key] = value(key)
        except AttributeError:
            continue
    out["nominal_world_size"] = nominal_world_size
    return out


def model_info(spec: JobSpec) -> ModelInfo:
    """What the trainer records in every checkpoint for evaluation and inference."""
    from facealign.data.transforms import crop_framing
    from facealign.runs.artifact import ModelInfo

    return ModelInfo.of(spec.model.name, model_spec(spec), scheme=scheme(spec).name,
                        crop_framing=crop_framing(spec.eval.crop, spec.data.augment.base_size), sigma=spec.data.sigma)


def validation_protocol(spec: JobSpec) -> Protocol:
    """The run's validation crops and decoding (the ``train`` protocol of facealign.evaluation.scoring)."""
    from facealign.evaluation.scoring import Protocol

    return Protocol("train", decode=spec.eval.decode, eval_crop=spec.eval.crop,
                    base_size=spec.data.augment.base_size, decode_reduce=spec.data.decode_reduce)


def validation_record(spec: JobSpec) -> dict:
    """What ``state.json`` records of the run's validation, so ``facealign-eval --protocol train``
    repeats it without the job spec: the protocol, the sets (absolute paths), batch and sample limit."""
    return {"protocol": validation_protocol(spec).to_dict(),
            "sets": {name: os.path.abspath(path) for name, path in spec.data.val.items()},
            "batch_size": spec.eval.batch_size, "max_samples": spec.eval.max_samples}


def check(spec: JobSpec, source: str, *, check_files: bool = True) -> JobSpec:
    """Build every part once; what a part refuses becomes a SpecError naming the key. ``check_files``: the
    teacher too (a file, as the records are: ``load_job`` checks those)."""
    try:
        s = scheme(spec)
    except KeyError as e:
        raise SpecError(f"{source}: data.num_points: {e.args[0]}; set data.scheme") from None
    if s.num_points != spec.data.num_points:
        raise SpecError(f"{source}: data.scheme: {s.name} has {s.num_points} points, data.num_points is "
                        f"{spec.data.num_points}")
    try:
        model_spec(spec)
    except ModelSpecError as e:
        field, message = e.problems[0]
        raise SpecError(f"{source}: {_MODEL_KEYS.get(field, 'model')}: {message} (model {spec.model.name})") from None
    if spec.loss.distill.teacher and check_files:
        problem = teacher_problem(spec)
        if problem:
            raise SpecError(f"{source}: loss.distill.teacher: {problem}")
    return spec


def teacher_problem(spec: JobSpec) -> str | None:
    """Why ``loss.distill.teacher`` cannot teach this job's model (None: it can): not a model, an ONNX file or a
    reduced-precision export (the trainer runs the teacher as an MXNet network of float32 parameters), or a
    model whose heatmaps mean something else (landmark scheme, input size, heatmap size, crop framing)."""
    from facealign.runs.artifact import ArtifactError, resolve

    path = spec.loss.distill.teacher
    try:
        source = resolve(path)
    except ArtifactError as e:
        return str(e)
    if source.kind == "onnx":
        return f"{path}: an ONNX file cannot run inside training; give its export package's directory"
    if source.info.precision != "float32":
        return f"{path}: a {source.info.precision} export; give a run, a checkpoint or a float32 export"
    teacher, student = source.info, model_info(spec)
    for what, theirs, ours in (("landmark scheme", teacher.scheme, student.scheme),
                               ("input size", teacher.input_size, student.input_size),
                               ("heatmap size", teacher.heatmap_size, student.heatmap_size),
                               ("crop framing", round(teacher.crop_framing, 6), round(student.crop_framing, 6))):
        if theirs != ours:
            return (f"{path} ({teacher.name}) has {what} {theirs}, this job's model has {ours}: its heatmaps are "
                    f"no targets for this model")
    return None


def load(path, overrides=(), *, check_files: bool = False) -> JobSpec:
    """``config.load_job`` and ``check``: the job spec as the trainer will run it."""
    return check(load_job(path, overrides, check_files=check_files), str(path), check_files=check_files)
