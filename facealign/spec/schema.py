"""Job specs: one strict YAML schema for a training run. Imports no MXNet (the launcher validates on a login node).

    spec = load_job("jobs/demo.yaml", overrides=["optim.lr=2e-4", "schedule.max_steps=50"])

Every mistake is a ``SpecError`` naming the file, the key path and what was
expected: an unknown key (with the closest valid key), a wrong type, or an
inconsistent value (a heatmap size that does not divide the input size, a
metric that names no validation set, stack weights that do not match the
stacks, a world size the resources cannot give). ``dump_job`` writes the
resolved spec (every default filled in) that a run directory keeps.

Sections: run, data, model, loss, optim, schedule, checkpoint, eval, logging,
resources. ``docs`` below each field says what it does; ``facealign.spec.schema``
is the reference for the format.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from facealign.errors import CannotStart
from facealign.data.schemes import SCHEMES

LOSSES = ("mse", "awing", "star")  # facealign.train.losses computes each


class SpecError(CannotStart, ValueError):
    """A job spec that cannot run; the message names the file and the key path."""


def _f(default, doc: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class RunSpec:
    name: str = _f("run", "name of the run; the default run directory is runs/<name>")
    seed: int = _f(0, "seed of initialisation, data order and augmentation", ge=0)
    out_root: str = _f("runs", "parent of run directories when --run-dir is not given")
    lock_wait: float = _f(30.0, "seconds a trainer waits for another one to release the run directory "
                                "(a requeued job while the old one exits), then exits 2 naming it", ge=0)
    max_restarts: int = _f(3, "times the Slurm launcher restarts the ranks inside the allocation after a lost rank "
                              "or node (from the last checkpoint, on the nodes still up)", ge=0)
    stall_timeout_s: typing.Optional[float] = _f(
        600.0, "a rank that makes no progress in a collective for this long ends the job with one line naming "
               "the rank and host that stalled (Horovod's stall inspector plus a watchdog); null: never", gt=0)


@dataclass(frozen=True)
class AugmentSpec:
    base_size: float = _f(256.0, "side of the training window in stored-image pixels, before the random scale", gt=0)
    rotate: float = _f(40.0, "rotation in whole degrees, uniform in [-rotate, rotate)", ge=0, le=180)
    scale_sigma: float = _f(0.2, "std of the random scale, clipped to 1 +- scale_clip", ge=0)
    scale_clip: float = _f(0.2, "bound of the random scale around 1", ge=0, lt=1)
    flip: bool = _f(True, "horizontal flip with p = 0.5, landmarks re-labelled by the scheme")
    translate: float = _f(0.0, "max shift of the window centre, as a fraction of its side", ge=0, le=1)
    color: float = _f(0.0, "brightness / contrast / saturation jitter strength, 0..1", ge=0, le=1)
    blur: float = _f(0.0, "probability of a Gaussian blur", ge=0, le=1)
    occlusion: float = _f(0.0, "probability of a random occluding rectangle", ge=0, le=1)
    grey: float = _f(0.0, "probability of a greyscale crop", ge=0, le=1)
    randconv: float = _f(0.0, "probability of a random convolution of the crop (RandConv: new textures and "
                              "colours, the same shapes)", ge=0, le=1)


@dataclass(frozen=True)
class DataSpec:
    train: list = _f([], "training record files (prefixes or .rec paths)", item=str)
    val: dict = _f({}, "validation sets: name -> record file", item=str)
    batch_size: int = _f(16, "samples per rank and step (per GPU)", ge=1)
    num_points: int = _f(68, "landmarks per face (68, 29 or 98: the known landmark schemes)", ge=1)
    scheme: typing.Optional[str] = _f(None, "landmark scheme (flip pairs, eyes of the normalisers): ibug68, "
                                            "cofw29 or wflw98; default: the scheme of num_points",
                                      choices=tuple(SCHEMES))
    landmark_dims: typing.Optional[int] = _f(None, "2 or 3: the 2D or 3D reference's NME normalisation; "
                                                   "default: the model's (3 for the zoo's -3d models)",
                                                choices=(2, 3))
    input_size: int = _f(128, "network input side", ge=8)
    heatmap_size: int = _f(64, "heatmap side; input_size / heatmap_size must be 2 or 4", ge=1)
    sigma: float = _f(1.0, "Gaussian target sigma in heatmap pixels (0: one-hot)", ge=0)
    peak: float = _f(20.0, "Gaussian target peak value", gt=0)
    target: str = _f("reference", "reference (integer centre) or subpixel Gaussian targets",
                     choices=("reference", "subpixel"))
    augment: AugmentSpec = _f(AugmentSpec(), "training augmentation")
    workers: int = _f(1, "loader worker processes per rank (0: load in the training process)", ge=0)
    prefetch: int = _f(4, "batches prepared ahead", ge=1)
    decode_reduce: int = _f(1, "decode JPEGs at 1/n size (1, 2, 4, 8): faster when the crop down-samples",
                            choices=(1, 2, 4, 8))
    on_error: str = _f("raise", "bad records: raise (stop, naming the file and record), or skip (replace by the "
                                "next record; each logged, counted per file in TensorBoard and state.json)",
                       choices=("raise", "skip"))
    max_skipped: typing.Optional[float] = _f(None, "with on_error: skip, stop once more records than this were "
                                                   "skipped: a count (>= 1) or a share of the samples drawn "
                                                   "(< 1); null: no limit", ge=0)


@dataclass(frozen=True)
class ModelSection:
    name: str = _f("hg2-d3-cab", "zoo model (facealign-models lists them)")
    num_stacks: typing.Optional[int] = _f(None, "override the model's stacks", ge=1)
    depth: typing.Optional[int] = _f(None, "override the down-sampling steps", ge=1)
    width: typing.Optional[int] = _f(None, "override the stack channels", ge=8)
    block: typing.Optional[str] = _f(None, "override the block type: resnet, hpm, inception, cab, mobile")
    dcn: typing.Optional[int] = _f(None, "deformable convolutions: 0, 1, 2, 3", ge=0, le=3)
    predict_z: typing.Optional[bool] = _f(
        None, "3D models: also predict each landmark's depth z (K depth maps beside the heatmaps; the -3dz zoo "
              "models do); the records must carry z")
    pretrained: typing.Optional[str] = _f(
        None, "initialise from a .params file: a checkpoint's model.params, an export's or a reference "
              "release's model-0000.params (missing or reshaped layers stay random)")


@dataclass(frozen=True)
class DistillSpec:
    teacher: typing.Optional[str] = _f(
        None, "a trained model whose outputs are soft targets beside the ground truth (Fast Pose Distillation): a run "
              "directory (its best checkpoint), a checkpoint or a float32 export package; its landmark scheme, input "
              "size, heatmap size and crop framing must be this job's. null: no distillation")
    weight: float = _f(1.0, "weight of the teacher term (the mean squared error to the teacher's last stack: its "
                            "heatmaps, and its depth maps where both models predict z) added to each stack's loss",
                       ge=0)


@dataclass(frozen=True)
class LossSpec:
    kind: str = _f("mse", "per-stack heatmap loss: mse (the reference's), awing (Adaptive Wing with its weighted "
                          "loss map) or star (the STAR loss on top of a heatmap term); see facealign/train/losses.py",
                   choices=LOSSES)
    stack_weights: typing.Optional[list] = _f(None, "weight of each stack's loss (default 1 each: summed)",
                                               item=float, ge=0)
    awing_alpha: float = _f(2.1, "awing: alpha", gt=1)
    awing_omega: float = _f(14.0, "awing: omega", gt=0)
    awing_epsilon: float = _f(1.0, "awing: epsilon", gt=0)
    awing_theta: float = _f(0.5, "awing: theta, where the loss turns linear", gt=0)
    awing_weight: float = _f(10.0, "awing: W of the loss map (foreground pixels weigh W + 1)", ge=0)
    star_weight: float = _f(0.1, "star: weight of the STAR term added to the heatmap term (whose weight is 1; "
                                 "STAR's code weighs them 1 : 10)", ge=0)
    star_omega: float = _f(1.0, "star: weight of the eigenvalue regulariser", ge=0)
    star_heatmap: str = _f("awing", "star: the heatmap term, awing (as the paper) or mse", choices=("awing", "mse"))
    z_weight: float = _f(1.0, "models that predict z: weight of the L1 depth error (divided by the face box's size) "
                              "added to each stack's heatmap loss; it trains the depth branches only (under "
                              "SGD a learning-rate factor for them; Adam-family optimizers all but ignore it)", ge=0)
    distill: DistillSpec = _f(DistillSpec(), "knowledge distillation from a teacher model (loss.distill.teacher)")


@dataclass(frozen=True)
class OptimSpec:
    name: str = _f("nadam", "nadam, adam, sgd or rmsprop", choices=("nadam", "adam", "sgd", "rmsprop"))
    lr: float = _f(1e-4, "learning rate for one rank at data.batch_size (see lr_scaling)", gt=0)
    lr_scaling: str = _f("none", "scale lr with the global batch: none, linear (x world x accumulation) "
                                 "or sqrt", choices=("none", "linear", "sqrt"))
    warmup_steps: int = _f(0, "linear warm-up from lr / world_size to the scaled lr over this many steps", ge=0)
    wd: float = _f(0.0, "weight decay", ge=0)
    momentum: float = _f(0.9, "momentum (sgd, rmsprop)", ge=0, lt=1)
    clip_gradient: typing.Optional[float] = _f(None, "clip each gradient element to +- this", gt=0)
    grad_accumulation: int = _f(1, "micro-batches per optimizer step", ge=1)
    fp16_allreduce: bool = _f(False, "compress gradients to float16 for the allreduce")
    amp: str = _f("off", "mixed precision through MXNet AMP: off, float16 (GPU) or bfloat16 (CPU)",
                  choices=("off", "float16", "bfloat16"))
    loss_scaling: str = _f("auto", "dynamic loss scaling, its skip decision agreed by all ranks: auto (with "
                                   "float16 AMP), dynamic (always) or off", choices=("auto", "dynamic", "off"))
    loss_scale_init: float = _f(65536.0, "initial loss scale (halved on each overflow)", ge=1)
    loss_scale_window: int = _f(2000, "clean steps before the loss scale doubles", ge=1)


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str = _f("step", "step (x factor at each milestone) or cosine", choices=("step", "cosine"))
    unit: str = _f("epoch", "milestones and length counted in epochs or steps", choices=("epoch", "step"))
    milestones: list = _f([20, 35], "when the lr is multiplied by factor (step schedule)", item=int, ge=0)
    factor: float = _f(0.2, "lr multiplier at each milestone", gt=0)
    length: int = _f(45, "run length in `unit`s: the reference stops at epoch 45", ge=1)
    min_lr_ratio: float = _f(0.0, "cosine: final lr / initial lr", ge=0, le=1)
    max_steps: typing.Optional[int] = _f(None, "stop after this many steps, whatever the length says", ge=0)


@dataclass(frozen=True)
class CheckpointSpec:
    every_steps: typing.Optional[int] = _f(None, "save every this many steps (default: every epoch)", ge=1)
    keep_last: int = _f(3, "checkpoints kept by recency (the newest is always kept)", ge=0)
    keep_best: int = _f(1, "checkpoints kept by the metric", ge=0)
    metric: typing.Optional[str] = _f(None, "nme/<val set> to rank checkpoints by (default: the first val set)")
    mode: str = _f("min", "min or max of the metric is best", choices=("min", "max"))
    resume: str = _f("auto", "auto: resume from the run directory's latest valid checkpoint; never",
                     choices=("auto", "never"))


@dataclass(frozen=True)
class EvalSpec:
    every_steps: typing.Optional[int] = _f(None, "validate every this many steps (default: every epoch)", ge=1)
    batch_size: int = _f(16, "validation batch per rank", ge=1)
    crop: str = _f("center", "validation crop: center (the training window) or box (1.2 x landmark box)",
                   choices=("center", "box"))
    decode: str = _f("subpixel", "heatmap decoding: subpixel, dark (DARK: Gaussian-smoothed log-heatmap, "
                                 "second-order Taylor step), or reference (integer argmax after up-sampling)",
                     choices=("subpixel", "dark", "reference"))
    max_samples: typing.Optional[int] = _f(None, "evaluate at most this many samples of each set", ge=1)


@dataclass(frozen=True)
class LoggingSpec:
    every_steps: int = _f(20, "progress line and scalars every this many steps", ge=1)
    tensorboard: bool = _f(True, "write TensorBoard events under <run>/tb (rank 0)")
    images: int = _f(4, "validation faces drawn to TensorBoard at each validation (0: none)", ge=0)


@dataclass(frozen=True)
class ResourcesSpec:
    nodes: int = _f(1, "machines", ge=1)
    min_nodes: typing.Optional[int] = _f(
        None, "the fewest machines the job may go on with after a node fails (default: nodes); it runs on node "
              "counts that divide nodes, so every rank count keeps the same training (docs/faults.md)", ge=1)
    tasks_per_node: int = _f(1, "ranks per machine (one per GPU)", ge=1)
    gpus_per_node: int = _f(0, "GPUs per machine (0: CPU training)", ge=0)
    cpus_per_task: int = _f(1, "cores per rank (threads for MXNet and loader workers)", ge=1)
    time: str = _f("02:00:00", "Slurm time limit")
    partition: typing.Optional[str] = _f(None, "Slurm partition")
    # what a GPU cluster tunes: set as environment variables by the launchers before any rank starts
    # (facealign.spec.components.runtime_env); None leaves Horovod's and MXNet's own default
    fusion_threshold_mb: typing.Optional[int] = _f(
        None, "Horovod tensor fusion buffer in MB (HOROVOD_FUSION_THRESHOLD; Horovod's default 128, 0 disables)", ge=0)
    cycle_time_ms: typing.Optional[float] = _f(
        None, "Horovod's wait between fusion cycles in ms (HOROVOD_CYCLE_TIME; default 1)", gt=0)
    hierarchical_allreduce: typing.Optional[bool] = _f(
        None, "Horovod hierarchical allreduce: within nodes, then across (HOROVOD_HIERARCHICAL_ALLREDUCE; default off)")
    cudnn_autotune: typing.Optional[int] = _f(
        None, "cuDNN convolution autotuning (MXNET_CUDNN_AUTOTUNE_DEFAULT): 0 off, 1 within a workspace limit "
              "(MXNet's default), 2 fastest", ge=0, le=2)


@dataclass(frozen=True)
class JobSpec:
    run: RunSpec = _f(RunSpec(), "run identity")
    data: DataSpec = _f(DataSpec(), "data and targets")
    model: ModelSection = _f(ModelSection(), "network")
    loss: LossSpec = _f(LossSpec(), "loss")
    optim: OptimSpec = _f(OptimSpec(), "optimizer")
    schedule: ScheduleSpec = _f(ScheduleSpec(), "learning-rate schedule and run length")
    checkpoint: CheckpointSpec = _f(CheckpointSpec(), "checkpoints")
    eval: EvalSpec = _f(EvalSpec(), "validation during training")
    logging: LoggingSpec = _f(LoggingSpec(), "progress and TensorBoard")
    resources: ResourcesSpec = _f(ResourcesSpec(), "what the job runs on")

    @property
    def world_size(self) -> int:
        """The nominal world: the ranks the training is defined for, whatever number runs it."""
        return self.resources.nodes * self.resources.tasks_per_node

    @property
    def min_nodes(self) -> int:
        return self.resources.min_nodes if self.resources.min_nodes is not None else self.resources.nodes

    def node_counts(self) -> list[int]:
        """The node counts the job may run on, largest first: from ``min_nodes`` to ``nodes``, those that divide
        ``nodes`` (each rank then stands for a whole number of nominal ranks: facealign.train.world)."""
        n = self.resources.nodes
        return [k for k in range(n, self.min_nodes - 1, -1) if n % k == 0]

    def check_ranks(self, ranks: int) -> None:
        """A ``SpecError`` unless ``ranks`` processes can run the nominal world's training unchanged: the count
        must divide it (each nominal rank's micro-batches stay in one process: facealign.train.world)."""
        nominal = self.world_size
        if ranks < 1 or ranks > nominal or nominal % ranks:
            allowed = [k for k in range(nominal, 0, -1) if nominal % k == 0]
            raise SpecError(f"{ranks} rank(s) were started, but the job's nominal world is {self.resources.nodes} node(s) "
                            f"x {self.resources.tasks_per_node} task(s) = {nominal} rank(s), and only a rank count that "
                            f"divides it keeps the same training; start {' or '.join(map(str, allowed))} rank(s), or "
                            f"change resources")

    def world_sizes(self) -> list[int]:
        """The rank counts a Slurm allocation may start, largest first."""
        return [k * self.resources.tasks_per_node for k in self.node_counts()]

    def metric_name(self) -> str | None:
        if self.checkpoint.metric:
            return self.checkpoint.metric
        return f"nme/{next(iter(self.data.val))}" if self.data.val else None


# --- loading -------------------------------------------------------------------------------------

def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, meta, where: str, source: str):
    """Check and coerce one YAML value to the field's type."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string
            value = float(value)
        except ValueError:
            pass
    choices = meta.get("choices") or ()
    if tp is str and isinstance(value, bool) and {"on", "off"} & set(choices):
        value = "on" if value else "off"  # YAML 1.1 (PyYAML) reads a bare off / on as false / true
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SpecError(f"{source}: {where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, where, source)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list),
        dict: isinstance(value, dict),
    }.get(tp, True)
    if not ok:
        raise SpecError(f"{source}: {where}: expected {_describe(tp)}, got {value!r} ({type(value).__name__})")
    if tp is float:
        value = float(value)
    item = meta.get("item")
    bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt") if k in meta}
    if item is not None and tp is list:
        value = [_convert(v, item, bounds, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if item is not None and tp is dict:
        value = {str(k): _convert(v, item, {}, f"{where}.{k}", source) for k, v in value.items()}
    if tp in (int, float):
        _check_range(value, meta, where, source)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise SpecError(f"{source}: {where}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


_RANGE_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _check_range(value, meta: dict, where: str, source: str) -> None:
    """The field's bounds (``ge``, ``gt``, ``le``, ``lt`` in its metadata), all in one message."""
    ok = {"ge": lambda b: value >= b, "gt": lambda b: value > b, "le": lambda b: value <= b,
          "lt": lambda b: value < b}
    bounds = [(k, meta[k]) for k in ("ge", "gt", "le", "lt") if k in meta]
    if any(not ok[k](b) for k, b in bounds):
        wanted = " and ".join(f"{_RANGE_WORDS[k]} {b}" for k, b in bounds)
        raise SpecError(f"{source}: {where}: must be {wanted}, got {value!r}")


def _build(cls, raw: dict, prefix: str, source: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else ""
            raise SpecError(f"{source}: unknown key '{where}'{hint} (valid keys here: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            where = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(raw[name], hints[name], f.metadata, where, source)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value, source: str):
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise SpecError(f"{source}: --set {dotted}: '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """``a.b=value`` with value parsed as YAML (so 2e-4 is a number, [1, 2] a list, null None)."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError(f"--set {text!r}: value is not valid YAML: {e}")
    return key.strip(), value


def load_job(path, overrides=(), *, check_files: bool = False) -> JobSpec:
    """Read, override, type-check and cross-check a job spec."""
    path = Path(path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpecError(f"{source}: no such job spec")
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}")
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a job spec is a mapping of sections (run, data, model, ...)")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, source)
    return check_job(_build(JobSpec, raw, "", source), source, base_dir=path.parent, check_files=check_files)


def check_job(spec: JobSpec, source: str, base_dir=None, check_files: bool = False) -> JobSpec:
    """Cross-field checks: everything a type alone cannot say."""
    d, m, r = spec.data, spec.model, spec.resources

    def fail(where, msg):
        raise SpecError(f"{source}: {where}: {msg}")

    if d.heatmap_size < 1 or d.input_size % d.heatmap_size or d.input_size // d.heatmap_size not in (2, 4):
        fail("data.heatmap_size", f"input_size / heatmap_size must be 2 or 4, got {d.input_size} / {d.heatmap_size}")
    if d.landmark_dims is not None and d.landmark_dims not in (2, 3):
        fail("data.landmark_dims", f"must be 2 or 3, got {d.landmark_dims}")
    if not d.train:
        fail("data.train", "no training record files given")
    if check_files:
        from facealign.data.records import record_paths

        for name, p in [("data.train", p) for p in d.train] + [(f"data.val.{k}", v) for k, v in d.val.items()]:
            rec, idx = record_paths(Path(base_dir or ".") / p if not Path(p).is_absolute() else p)
            if not rec.exists() and not record_paths(p)[0].exists():
                fail(name, f"record file {p} not found")
    if m.name:
        from facealign.models.specs import MODELS  # structure only: no MXNet

        if m.name not in MODELS:
            close = difflib.get_close_matches(m.name, list(MODELS), n=1)
            fail("model.name", f"unknown model {m.name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                 + f" (models: {', '.join(MODELS)})")
        stacks = m.num_stacks if m.num_stacks is not None else MODELS[m.name].num_stacks
        if spec.loss.stack_weights is not None and len(spec.loss.stack_weights) != stacks:
            fail("loss.stack_weights", f"{len(spec.loss.stack_weights)} weights for a {stacks}-stack model")
    metric = spec.checkpoint.metric
    if metric is not None:
        if not metric.startswith("nme/") or metric[4:] not in d.val:
            fail("checkpoint.metric", f"{metric!r} names no validation set; expected one of "
                 + (", ".join(f"nme/{k}" for k in d.val) if d.val else "(none: data.val is empty)"))
    if spec.schedule.kind == "step" and any(b >= a for a, b in zip(spec.schedule.milestones[1:],
                                                                     spec.schedule.milestones[:-1])):
        fail("schedule.milestones", f"must increase, got {spec.schedule.milestones}")
    if r.min_nodes is not None and r.min_nodes > r.nodes:
        fail("resources.min_nodes", f"{r.min_nodes} is more than resources.nodes = {r.nodes}")
    if r.min_nodes is not None and spec.node_counts() == [r.nodes] and r.min_nodes < r.nodes:
        fail("resources.min_nodes", f"no node count from {r.min_nodes} to {r.nodes - 1} divides nodes = {r.nodes}, "
             f"so the job could never go on with fewer nodes (the count must divide nodes for the same training); "
             f"use min_nodes = {max(k for k in range(1, r.nodes) if r.nodes % k == 0)} or drop it")
    if r.gpus_per_node and r.tasks_per_node > r.gpus_per_node:
        fail("resources.tasks_per_node", f"{r.tasks_per_node} ranks per node cannot each have a GPU with "
             f"gpus_per_node = {r.gpus_per_node}")
    if spec.optim.amp == "float16" and not r.gpus_per_node:
        fail("optim.amp", "float16 AMP needs GPUs (resources.gpus_per_node); use bfloat16 on CPUs")
    return spec


def to_dict(spec) -> dict:
    return dataclasses.asdict(spec)


def dump_job(spec: JobSpec, path) -> None:
    """Write the resolved spec (all defaults filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(spec), sort_keys=False))


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(to_dict(spec), sort_keys=True).encode()).hexdigest()[:16]
