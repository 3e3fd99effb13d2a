"""A rank's run, set up: its world, the run directory's lock, the heartbeat, and ``Run``, everything the
loop trains with, built from the job spec in one place (``build``).

MXNet is imported with this module: a process that caps oneDNN's ISA (facealign.platform.cpu_isa) does so
before importing it (facealign.cli.train).
"""
from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import horovod.mxnet as hvd
import mxnet as mx
from tensorboardX import SummaryWriter

from facealign.data.codec import HeatmapCodec
from facealign.data.loader import TrainLoader
from facealign.models import ModelSpec, build_model, initialize
from facealign.platform import cpu_isa, gpu_probe
from facealign.platform.gpu_probe import GPUProbeFailed
from facealign.runs.artifact import ArtifactError, ModelInfo, load_pretrained, params_file, resolve
from facealign.runs.checkpoint import CheckpointManager
from facealign.runs.layout import CHECKPOINTS_DIR, JOB_FILE, TB_DIR
from facealign.runs.lock import RunLock, RunLocked
from facealign.spec import components
from facealign.spec.schema import JobSpec, SpecError, dump_job
from facealign.train import amp, dist, loss_scaling, losses
from facealign.train.faults import StopFlag, exit_on_stall
from facealign.train.loss_scaling import DynamicLossScale
from facealign.train.losses import LossSettings
from facealign.train.optim import lr_at, make_trainer, total_steps
from facealign.train.reporting import Log
from facealign.train.validation import Validator
from facealign.train.watchdog import Heartbeat
from facealign.train.world import NominalWorld, Shares


@dataclass
class Run:
    """One rank's run: the spec, the world and what was built from them. The loop changes none of it but
    ``writer`` (opened after the resume) and ``progress`` (rank 0's record for facealign-launch status);
    where the run stands is ``TrainState``."""

    spec: JobSpec
    run_dir: Path
    world: dist.World  # the processes running
    nominal: NominalWorld  # the nominal world this process stands for a part of, and its BatchNorm statistics
    heartbeat: Heartbeat  # this rank's progress, for the watchdog and the other ranks
    ctx: mx.Context
    log: Log
    stop: StopFlag
    loader: TrainLoader
    net: mx.gluon.HybridBlock
    trainer: hvd.DistributedTrainer
    scaler: DynamicLossScale | None
    ckpt: CheckpointManager
    validator: Validator
    codec: HeatmapCodec
    loss_settings: LossSettings
    model_spec: ModelSpec
    info: ModelInfo
    validation: dict  # what state.json records of the run's validation
    steps_per_epoch: int
    last_step: int
    trainable: list[mx.gluon.Parameter]
    teacher: mx.gluon.HybridBlock | None = None  # loss.distill's, in inference mode: soft targets
    writer: SummaryWriter | None = None  # TensorBoard (rank 0, opened after the resume)
    progress: dict = field(default_factory=dict)

    def samples_per_step(self) -> int:
        return self.nominal.samples_per_step(self.spec.data.batch_size)

    def lr(self, step: int) -> float:
        return lr_at(step, self.spec, self.steps_per_epoch, self.nominal.size)


def set_up_world(spec: JobSpec) -> dist.World:
    """The CPU's ISA, the Horovod knobs, Horovod itself: this rank's world."""
    cpu_isa.enable()  # decided already where MXNet was imported after it (facealign.cli.train); idempotent
    os.environ.update(components.runtime_env(spec))  # the launchers set them too; Horovod reads them at init
    return dist.init(cpu=not spec.resources.gpus_per_node)


def lock_run_dir(spec: JobSpec, run_dir: Path, world: dist.World, closing) -> bool:
    """One trainer per run directory: rank 0 locks it before writing anything, for the run's life; every
    rank learns whether it could. True on the rank that holds it."""
    locked = None
    if world.is_primary:
        try:
            closing.callback(RunLock(run_dir, spec.run.lock_wait).acquire().release)
        except RunLocked as e:
            locked = str(e)
    locked = dist.broadcast_object(locked, "facealign.run_lock")
    if locked:
        raise RunLocked(locked)
    if world.is_primary:
        (run_dir / TB_DIR).mkdir(parents=True, exist_ok=True)
        dump_job(spec, run_dir / JOB_FILE)
    dist.barrier()  # the run directory exists before any rank looks into it
    return world.is_primary


def start_heartbeat(spec: JobSpec, run_dir: Path, world: dist.World, closing) -> Heartbeat:
    """Every rank's responder and watchdog (facealign.train.watchdog): a stall ends this process with one line,
    recorded by rank 0 as a lost peer for the launchers to restart."""
    heartbeat = Heartbeat(world, spec.run.stall_timeout_s, functools.partial(exit_on_stall, world, run_dir))
    closing.callback(heartbeat.close)
    return heartbeat


def probe_gpus(ctx, world: dist.World, log: Log) -> None:
    """Every rank probes its GPU before anything is built; all stop together if any cannot run MXNet."""
    failure = gpu_probe.check(ctx, socket.gethostname())
    failures = [f for f in dist.allgather_object(str(failure) if failure else None, "facealign.gpu_probe") if f]
    if failures:
        log(f"the GPU probe failed on {len(failures)} of {world.size} rank(s): {failures[0]}")
        raise GPUProbeFailed(failures[0])


def load_teacher(spec: JobSpec, ctx, log: Log) -> mx.gluon.HybridBlock | None:
    """``loss.distill.teacher`` as a frozen, hybridised network on this rank's device (every rank runs its own:
    no collective, and nothing of it in the checkpoints), or None. Built after AMP patched the operators, so
    it computes in bfloat16 where the student does. Every one of its parameters must load."""
    if not spec.loss.distill.teacher:
        return None
    source = resolve(spec.loss.distill.teacher)
    net = build_model(source.info.model_spec())
    net.initialize(mx.init.Zero(), ctx=ctx)  # draws nothing from MXNet's generator: every value is loaded below
    report = load_pretrained(net, params_file(source), ctx)  # resolved (and verified) once, above
    if report["kept"]:
        raise ArtifactError(f"{spec.loss.distill.teacher}: {len(report['kept'])} of the teacher's parameters are "
                            f"not in it, e.g. {report['kept'][0]}")
    for p in net.collect_params().values():
        p.grad_req = "null"
    net.hybridize(static_alloc=True)
    log(f"distilling from {source.label} ({source.info.name}), weight {spec.loss.distill.weight:g}")
    return net


def build(spec: JobSpec, run_dir: Path, world: dist.World, nominal_shares: Shares, heartbeat: Heartbeat, log: Log,
          closing) -> Run:
    """The GPU probe, the loader, the network and its trainer, the nominal world, the checkpoints and the
    validator: every part of the run from the spec."""
    stop = StopFlag()
    ctx = dist.device(world, spec.resources.gpus_per_node)
    log(f"rank 0 of {world.size} on {ctx}; run directory {run_dir}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}; "
        f"SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', '0')}; {cpu_isa.cpu_model()}, "
        f"{cpu_isa.enable().describe()}; {components.describe_runtime_env(os.environ)}")
    probe_gpus(ctx, world, log)

    d, accumulation = spec.data, spec.optim.grad_accumulation
    codec = components.codec(spec)
    loader = TrainLoader(d.train, batch_size=d.batch_size, codec=codec, rank=nominal_shares.ranks[0],
                         world_size=nominal_shares.nominal, seed=spec.run.seed, cfg=components.sample_config(spec),
                         workers=d.workers, prefetch=d.prefetch)
    closing.callback(loader.close)
    model_spec = components.model_spec(spec)
    for path, records in zip(d.train, loader.records.files if model_spec.predict_z else []):
        if len(records) and records.sample(0, decode=False).landmarks.shape[1] < 3:
            raise SpecError(f"model {spec.model.name} predicts z, but {path} holds x, y landmarks only; "
                            f"train it on records with z (AFLW2000-3D, procedural faces) or drop model.predict_z")
    steps_per_epoch = loader.steps_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise SpecError(f"data.train: {loader.steps_per_epoch} batch(es) per epoch cannot fill one step of "
                        f"{accumulation} accumulated batches")

    if spec.optim.amp != "off":  # must patch MXNet's operators before the network is built
        amp.init(spec.optim.amp)
    net = initialize(build_model(model_spec), ctx=ctx, seed=spec.run.seed)
    if spec.model.pretrained:  # a checkpoint's, an export's or a reference release's parameters
        report = load_pretrained(net, spec.model.pretrained, ctx)
        log(f"initialised {len(report['loaded'])} parameters from {spec.model.pretrained}; "
            f"{len(report['kept'])} keep their initialisation")
    net.hybridize(static_alloc=True)  # static_shape as well would double the memory for ~10% speed
    trainable = [p for p in net.collect_params().values() if p.grad_req != "null"]
    nominal = NominalWorld(nominal_shares, trainable, dist.RunningStats(net, world, nominal_shares.ranks))
    teacher = load_teacher(spec, ctx, log)
    ckpt = CheckpointManager(run_dir / CHECKPOINTS_DIR, writer=world.is_primary, keep_last=spec.checkpoint.keep_last,
                             keep_best=spec.checkpoint.keep_best, metric=spec.metric_name(), mode=spec.checkpoint.mode,
                             log=log)
    info, validation = components.model_info(spec), components.validation_record(spec)
    # dynamic loss scaling (with float16 AMP by default), decided collectively rather than by
    # amp.init_trainer's per-rank check; bfloat16 has float32's range and needs none
    return Run(spec=spec, run_dir=run_dir, world=world, nominal=nominal, heartbeat=heartbeat, ctx=ctx, log=log,
               stop=stop, loader=loader, net=net, trainer=make_trainer(net, spec),
               scaler=loss_scaling.for_spec(spec), ckpt=ckpt, validator=Validator(validation, info, world, ctx),
               codec=codec, loss_settings=losses.settings_for(spec), model_spec=model_spec, info=info,
               validation=validation, steps_per_epoch=steps_per_epoch, last_step=total_steps(spec, steps_per_epoch),
               trainable=trainable, teacher=teacher)
