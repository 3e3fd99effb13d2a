"""The training loop, one rank of it: ``train(spec, run_dir)`` (``python -m facealign.train`` is
facealign.cli.train).

One loop, top to bottom: set-up, resume, then per step: load, forward,
backward, allreduced update, and on the step boundaries the stop vote,
logging, validation and checkpoints. Only rank 0 writes (logs, TensorBoard,
checkpoints); every rank reads.

Exit status: 0 finished; 75 stopped by SIGTERM/SIGUSR2 after a checkpoint (the
Slurm templates requeue on it); 1 a run-time failure (a non-finite loss, which
names the step and leaves the last good checkpoint intact; bad records; a rank or
node that went away or stalled, ``LostPeer``, which rank 0 records as ``lost_peer``
for the launchers to restart: facealign.train.watchdog); 2 a job
that cannot start (a bad spec or missing record files, a run directory holding
another model's checkpoints or locked by another trainer, a ``model.pretrained``
that is no model, a GPU this MXNet cannot run: facealign.platform.gpu_probe). Each is one
line on stderr.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from facealign.spec import components
from facealign.platform import gpu_probe
from facealign.runs import status as runs
from facealign.runs.artifact import ArtifactError
from facealign.runs.checkpoint import CheckpointError, CheckpointManager, CheckpointWriteError
from facealign.runs.layout import CHECKPOINTS_DIR, EXIT_FILE, JOB_FILE, LOG_FILE, TB_DIR, write_json
from facealign.spec.schema import JobSpec, SpecError, dump_job, spec_hash
from facealign.data.records import DataError
from facealign.platform.gpu_probe import GPUProbeFailed
from facealign.runs.lock import RunLock, RunLocked
from facealign.train.state import TrainState

EXIT_OK, EXIT_ERROR, EXIT_SPEC, EXIT_REQUEUE = 0, 1, 2, 75


class NonFiniteLoss(RuntimeError):
    pass


class LostPeer(RuntimeError):
    """Another rank or its node went away, or stalled: the launchers restart from the last checkpoint."""


class StopFlag:
    """SIGTERM / SIGUSR2 only set a flag; the ranks vote on it at each step boundary."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name


class Log:
    """Rank 0: progress to stdout and <run>/log.txt. Other ranks: warnings only."""

    def __init__(self, run_dir: Path, primary: bool):
        self.primary = primary
        self.fh = open(run_dir / LOG_FILE, "a") if primary else None

    def close(self):
        if self.fh is not None:
            self.fh.close()
            self.fh = None

    def __call__(self, msg: str, *, all_ranks: bool = False):
        if self.primary:
            line = time.strftime("%H:%M:%S ") + msg
            print(line, flush=True)
            self.fh.write(line + "\n")
            self.fh.flush()
        elif all_ranks:
            print(msg, file=sys.stderr, flush=True)


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _probe(ctx) -> str | None:
    """This rank's GPU probe (facealign.platform.gpu_probe), as a message or None."""
    import socket

    failure = gpu_probe.check(ctx, socket.gethostname())
    return str(failure) if failure else None


def exit_code_for(error: BaseException) -> int:
    """The documented exit status of an error that stops the trainer."""
    if isinstance(error, (SpecError, CheckpointError, ArtifactError, RunLocked, GPUProbeFailed)):
        return EXIT_SPEC
    return EXIT_ERROR


def train(spec: JobSpec, run_dir: Path, on_finish=None) -> int:
    """Run the job in this process (one rank); ``on_finish(net, world)`` is called at the end on every rank.

    The loader, the TensorBoard writer and the log are closed on every way out. Rank 0 records how
    the run ended (code, reason) for the launchers, since horovodrun reports any rank's failure as
    exit 1: in ``$FACEALIGN_EXIT_FILE`` when a launcher set it, and in ``<run>/exit.json`` once it
    holds the run directory (a trainer turned away by the lock writes nothing there).
    """
    world, holds_run, heartbeat = None, False, None
    with contextlib.ExitStack() as closing:
        try:
            world = set_up_world(spec)
            shares = world_shares(spec, world)
            holds_run = lock_run_dir(spec, run_dir, world, closing)
            heartbeat = start_heartbeat(spec, run_dir, world, closing)
            code, reason = run_job(build(spec, run_dir, world, shares, heartbeat, closing), on_finish, closing)
        except BaseException as e:
            code = 130 if isinstance(e, KeyboardInterrupt) else exit_code_for(e)
            known = isinstance(e, (SpecError, CheckpointError, ArtifactError, RunLocked, NonFiniteLoss, DataError,
                                   CheckpointWriteError, GPUProbeFailed))
            reason = str(e) if known else f"{type(e).__name__}: {e}"
            if not known and lost_peer(e):  # one line naming who went away (the ranks that do not answer)
                first = str(e).replace("MXNetError: ", "").strip().splitlines()[0].split(". ")[0][:200]
                what = f"a collective failed ({first}): a rank or node went away"
                reason = heartbeat.census_line(what) if heartbeat is not None else what
                record_exit(world, holds_run, run_dir, code, reason, lost=True)
                raise LostPeer(reason) from None
            record_exit(world, holds_run, run_dir, code, reason)
            raise
        record_exit(world, holds_run, run_dir, code, reason)
        return code


# What a collective says when another rank or its node went away (Horovod shut down by a peer's exit or
# its stall inspector, Gloo's transport losing the peer): the launchers restart on these, and on nothing else
LOST_PEER_SIGNS = ("Horovod has been shut down", "HorovodInternalError", "Gloo", "gloo", "Connection reset by peer",
                   "Connection closed by peer", "Broken pipe")


def lost_peer(error: BaseException) -> bool:
    return any(sign in f"{type(error).__name__}: {error}" for sign in LOST_PEER_SIGNS)


def record_exit(world, holds_run: bool, run_dir: Path, code: int, reason: str, lost: bool = False) -> None:
    """Rank 0: the launcher's file if it set one, and the run's own exit.json (facealign-launch status reads
    it) once this trainer holds the run directory. ``lost``: a rank or node went away (restartable)."""
    if world is None or not world.is_primary:
        return
    target = os.environ.get("FACEALIGN_EXIT_FILE")
    if target:
        write_exit(Path(target), code, reason, lost)
    if holds_run:
        write_exit(run_dir / EXIT_FILE, code, reason, lost)


def write_exit(path: Path, code: int, reason: str, lost: bool = False) -> None:
    write_json(path, {"code": code, "reason": reason, "lost_peer": lost, "time": time.time()}, indent=None)


def start_heartbeat(spec: JobSpec, run_dir: Path, world, closing):
    """Every rank's responder and watchdog (facealign.train.watchdog): a stall ends this process with one line,
    recorded by rank 0 as a lost peer for the launchers to restart."""
    import functools

    from facealign.train.watchdog import Heartbeat

    heartbeat = Heartbeat(world, spec.run.stall_timeout_s, functools.partial(exit_on_stall, world, run_dir))
    closing.callback(heartbeat.close)
    return heartbeat


def exit_on_stall(world, run_dir: Path, line: str) -> None:
    """On the watchdog's thread, while the main one is stuck: the line (rank 0: in the log and the exit
    record too), then out, with no clean-up that could wait for the stalled rank."""
    print(f"facealign.train: {line}", file=sys.stderr, flush=True)
    if world.is_primary:
        with contextlib.suppress(OSError), open(run_dir / LOG_FILE, "a") as fh:
            fh.write(time.strftime("%H:%M:%S ") + line + "\n")
    record_exit(world, world.is_primary, run_dir, EXIT_ERROR, line, lost=True)
    os._exit(EXIT_ERROR)


# --- the steps of a run, in the order they happen -----------------------------------------------------

def set_up_world(spec: JobSpec):
    """The CPU's ISA, the Horovod knobs, Horovod itself: this rank's world."""
    from facealign.platform import cpu_isa
    from facealign.train import dist

    cpu_isa.enable()  # before MXNet is imported (dist.init imports it)
    os.environ.update(components.runtime_env(spec))  # the launchers set them too; Horovod reads them at init
    return dist.init(cpu=not spec.resources.gpus_per_node)


def world_shares(spec: JobSpec, world):
    """This process's part of the job's nominal world (facealign.train.world): all of one nominal rank's work
    when the full world runs, more after a lost node."""
    from facealign.train.world import shares

    return shares(spec, world.rank, world.size)


def lock_run_dir(spec: JobSpec, run_dir: Path, world, closing) -> bool:
    """One trainer per run directory: rank 0 locks it before writing anything, for the run's life; every
    rank learns whether it could. True on the rank that holds it."""
    from facealign.train import dist

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


@dataclass
class Run:
    """One rank's run: the spec, the world and what was built from them. The loop changes none of it but
    ``progress`` (rank 0's record for facealign-launch status); where the run stands is ``TrainState``."""

    spec: JobSpec
    run_dir: Path
    world: object
    shares: object  # the nominal ranks this process stands for (facealign.train.world.Shares)
    gradients: object  # their gradients summed as their allreduce would (facealign.train.world.RankGradients)
    heartbeat: object  # this rank's progress, for the watchdog and the other ranks (facealign.train.watchdog)
    ctx: object
    log: Log
    stop: StopFlag
    loader: object
    net: object
    trainer: object
    scaler: object  # the dynamic loss scale, or None
    ckpt: CheckpointManager
    validator: object
    stats: object  # every rank's BatchNorm statistics
    writer: object  # TensorBoard (rank 0, opened after the resume), or None
    codec: object
    loss_settings: object
    model_spec: object
    info: object
    validation: dict  # what state.json records of the run's validation
    steps_per_epoch: int
    last_step: int
    trainable: list = field(default_factory=list)
    progress: dict = field(default_factory=dict)

    def samples_per_step(self) -> int:
        """The global batch: the nominal world's, at any number of processes."""
        return self.spec.data.batch_size * self.shares.nominal * self.shares.accumulation

    def lr(self, step: int) -> float:
        from facealign.train.optim import lr_at

        return lr_at(step, self.spec, self.steps_per_epoch, self.shares.nominal)


def build(spec: JobSpec, run_dir: Path, world, shares, heartbeat, closing) -> Run:
    """The log, the GPU probe, the loader, the network and its trainer, the checkpoints and the validator."""
    from facealign.platform import cpu_isa
    from facealign.data.loader import TrainLoader
    from facealign.models import build_model, initialize
    from facealign.runs.artifact import load_pretrained
    from facealign.train import amp, dist
    from facealign.train.optim import make_trainer, total_steps
    from facealign.train.validation import Validator
    from facealign.train.world import RankGradients

    stop = StopFlag()
    log = Log(run_dir, world.is_primary)
    closing.callback(log.close)
    ctx = dist.device(world, spec.resources.gpus_per_node)
    log(f"rank 0 of {world.size} on {ctx}; run directory {run_dir}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}; "
        f"SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', '0')}; {cpu_isa.cpu_model()}, "
        f"{cpu_isa.enable().describe()}; {components.describe_runtime_env(os.environ)}")
    # every rank probes its GPU before anything is built; all stop together if any cannot run MXNet
    failures = [f for f in dist.allgather_object(_probe(ctx), "facealign.gpu_probe") if f]
    if failures:
        log(f"the GPU probe failed on {len(failures)} of {world.size} rank(s): {failures[0]}")
        raise GPUProbeFailed(failures[0])

    d, accumulation = spec.data, spec.optim.grad_accumulation
    codec = components.codec(spec)
    loader = TrainLoader(d.train, batch_size=d.batch_size, codec=codec, ranks=shares.ranks,
                         world_size=shares.nominal, accumulation=accumulation, seed=spec.run.seed,
                         cfg=components.sample_config(spec), workers=d.workers, prefetch=d.prefetch)
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
    if shares.micro_batches > 1:  # gradients summed over this process's micro-batches
        for p in trainable:
            p.grad_req = "add"
    ckpt = CheckpointManager(run_dir / CHECKPOINTS_DIR, writer=world.is_primary, keep_last=spec.checkpoint.keep_last,
                             keep_best=spec.checkpoint.keep_best, metric=spec.metric_name(), mode=spec.checkpoint.mode,
                             log=log)
    info, validation = components.model_info(spec), components.validation_record(spec)
    # dynamic loss scaling (with float16 AMP by default), decided collectively rather than by
    # amp.init_trainer's per-rank check; bfloat16 has float32's range and needs none
    return Run(spec=spec, run_dir=run_dir, world=world, shares=shares, heartbeat=heartbeat, ctx=ctx,
               gradients=RankGradients(trainable, shares), log=log, stop=stop, loader=loader, net=net,
               trainer=make_trainer(net, spec), scaler=components.loss_scale(spec), ckpt=ckpt,
               validator=Validator(validation, info, world, ctx), validation=validation,
               stats=dist.RunningStats(net, world, shares.ranks), writer=None, codec=codec,
               loss_settings=components.loss_settings(spec), model_spec=model_spec, info=info,
               steps_per_epoch=steps_per_epoch, last_step=total_steps(spec, steps_per_epoch), trainable=trainable)


def open_writer(run: Run, state: TrainState, closing):
    """Rank 0's TensorBoard writer, once the resume step is known: ``purge_step`` drops the events a previous
    attempt wrote after that checkpoint, so curves never fold back."""
    if not (run.world.is_primary and run.spec.logging.tensorboard):
        return None
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(run.run_dir / TB_DIR), purge_step=state.step or None)
    closing.callback(writer.close)
    return writer


def resume(run: Run) -> TrainState:
    """The newest checkpoint every rank can load, or the start (rank 0's initialisation broadcast).

    Rank 0 lists the checkpoints that verify (latest first) for all; every rank decodes the same files,
    and if any rank cannot, all fall back to the next one together."""
    from facealign.train import dist

    run.ckpt.tidy(run.log)
    primary, log = run.world.is_primary, run.log
    candidates = [str(p) for p in run.ckpt.candidates(log)] if run.spec.checkpoint.resume == "auto" and primary else []
    candidates = dist.broadcast_object(candidates, "facealign.resume")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    state, found = TrainState(restarts=restarts), None
    for candidate in map(Path, candidates):
        try:
            decoded, problem = run.ckpt.read(candidate), None
        except CheckpointError as e:
            decoded, problem = None, str(e)
        if dist.allreduce(1.0 if problem else 0.0)[0]:
            log(f"checkpoint {candidate} cannot be loaded ({problem or 'on another rank'}); falling back to the "
                f"previous one")
            continue
        record = run.ckpt.apply(candidate, decoded, run.net, run.trainer, run.ctx,
                                fingerprint=run.model_spec.fingerprint())
        # each nominal rank's own BatchNorm statistics, wherever it runs now (a checkpoint of another nominal
        # world has other ranks: all start from the average)
        same_world = record.get("world_size") == run.shares.nominal
        run.stats.start(run.ckpt.rank_stats(decoded, run.shares.ranks) if same_world else None)
        # where the run stands for `facealign-launch status` (facealign.runs.status); the best survives restarts
        run.progress = runs.read_progress(run.run_dir) if primary else {}
        state, found = TrainState.resumed(record, primary=primary, progress=run.progress, restarts=restarts), candidate
        if run.scaler is not None:
            run.scaler.load(state.loss_scale)
        log(f"resumed from {found}: step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch} of the "
            f"epoch")
        break
    run.ckpt.repoint(found, log)
    if found is None:
        if candidates:
            log("no checkpoint of this run could be loaded: training starts from the beginning")
        import horovod.mxnet as hvd

        hvd.broadcast_parameters(run.net.collect_params(), root_rank=0)  # rank 0's initialisation everywhere
        run.stats.start()
    state.note_world(run.world.size)
    return state


def run_job(run: Run, on_finish, closing) -> tuple[int, str]:
    """Resume, validate the start, train, finish: the exit code and the reason rank 0 records."""
    state = resume(run)
    run.writer = open_writer(run, state, closing)
    record_progress(run, state)
    describe(run, state)
    if state.step == 0 and run.validator.sets:
        metrics = validate(run, state)
        run.log("before training: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in metrics.items()))
    code = train_loop(run, state)
    if on_finish is not None:
        on_finish(run.net, run.world)
    return code, finish(run, state, code)


def train_loop(run: Run, state: TrainState) -> int:
    """The loop: every optimizer step, and on its boundaries logging, validation and collective checkpoints."""
    spec, window = run.spec, Window()
    eval_every = spec.eval.every_steps or run.steps_per_epoch
    ckpt_every = spec.checkpoint.every_steps or run.steps_per_epoch
    started = (state.step, time.perf_counter())
    run.heartbeat.beat(state.step)
    while state.step < run.last_step:
        losses = []
        for batch in run.loader.epoch(state.epoch, start_step=state.batch_in_epoch * spec.optim.grad_accumulation):
            losses.append(forward_backward(run, state, batch, window))
            if len(losses) % spec.optim.grad_accumulation == 0:  # the last micro-batch of a nominal rank
                run.gradients.rank_done(batch.rank)
            if len(losses) < run.shares.micro_batches:
                continue
            vote = vote_on_step(run, state, np.sum(losses, axis=0))  # all agree: stop, diverged, overflowed, skipped
            losses = []
            optimizer_step(run, state, vote)
            window.add(vote.losses, vote.overflow)
            end_of_epoch = state.batch_in_epoch == run.steps_per_epoch
            if state.step % spec.logging.every_steps == 0 or state.step == run.last_step or vote.stopping:
                report(run, state, window, started, len(vote.losses))
                window = Window()
            if run.validator.sets and (state.step % eval_every == 0 or state.step == run.last_step):
                state.metrics = metrics = validate(run, state)  # the checkpoints' until the next
                run.log(f"validation at step {state.step}: "
                        + ", ".join(f"{k} {v * 100:.2f}%" for k, v in metrics.items()))
            if end_of_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            if (state.step % ckpt_every == 0 or state.step == run.last_step or end_of_epoch or vote.stopping):
                checkpoint_collectively(run, state)
            if run.writer is not None:
                run.writer.flush()
            if vote.stopping:
                run.log(f"stopping at step {state.step} on {run.stop.signal or 'another rank'}'s signal; checkpoint "
                        f"saved; exit {EXIT_REQUEUE} (requeue)", all_ranks=True)
                return EXIT_REQUEUE
            run.heartbeat.beat(state.step)
            if state.step >= run.last_step or end_of_epoch:
                break
    return EXIT_OK


# --- one optimizer step -------------------------------------------------------------------------------

@dataclass
class Window:
    """What the progress line between two reports averages."""

    t: float = field(default_factory=time.perf_counter)
    wait: float = 0.0
    images: int = 0
    loss: object = None  # the stacks' summed losses
    n: int = 0

    def add(self, values, overflow: bool) -> None:
        if not overflow:
            self.loss = values if self.loss is None else self.loss + values
            self.n += 1


@dataclass(frozen=True)
class Vote:
    """What every rank learned in the step's allreduce."""

    stopping: bool
    overflow: bool
    nonfinite_grads: int
    losses: np.ndarray  # the stacks' losses, averaged over the step's micro-batches on every rank


def forward_backward(run: Run, state: TrainState, batch, window: Window):
    """One micro-batch of the nominal rank it belongs to (whose BatchNorm statistics its forward pass
    updates): forward, the loss in float32 whatever the network computed in, backward; this rank's skipped
    records counted. Returns the stacks' losses (DistributedTrainer allreduces gradients inside
    ``optimizer_step``)."""
    import mxnet as mx
    from mxnet import autograd

    from facealign.train.losses import stacked_loss

    run.stats.select(batch.rank)
    data = mx.nd.array(batch.images, ctx=run.ctx, dtype="float32")
    target = mx.nd.array(batch.heatmaps, ctx=run.ctx)
    depth = depth_targets(batch, run.ctx) if run.model_spec.predict_z else None
    with autograd.record():
        loss, stack_losses = stacked_loss(run.net(data), target, settings=run.loss_settings,
                                          stack_weights=run.spec.loss.stack_weights, depth=depth)
        if run.scaler is not None:
            loss = loss * run.scaler.value
    autograd.backward(loss)
    window.wait += batch.wait_s
    window.images += len(batch.indices)
    for file, index, why in batch.skips:  # this rank's, as they happen
        state.my_skips[file] = state.my_skips.get(file, 0) + 1
        run.log(f"skipped record {index} of {file}: {why}", all_ranks=True)
    state.pending_skips += len(batch.skips)
    return np.array([l.asscalar() for l in stack_losses])


def depth_targets(batch, ctx):
    """(z (B, K), face box size (B,)) in input pixels, for a model that predicts z: the box is the square root of
    the landmarks' box area, what the depth error is divided by."""
    import mxnet as mx

    points = batch.landmarks
    if points.shape[2] < 3:
        raise DataError("model.predict_z needs records with z (x, y, z landmarks); these have x and y only")
    size = points[..., :2].max(axis=1) - points[..., :2].min(axis=1)
    box = np.sqrt(np.maximum(size[:, 0] * size[:, 1], 1.0))
    return mx.nd.array(points[..., 2], ctx=ctx), mx.nd.array(box, ctx=ctx)


def vote_on_step(run: Run, state: TrainState, values) -> Vote:
    """The vote, before the update: every rank learns at the same step whether any rank was signalled, saw a
    non-finite loss or gradient, or skipped records (one rank raising alone would leave the others waiting
    in an allreduce), and the step's mean loss over all micro-batches (the same curve at any rank count).
    Under loss scaling a non-finite loss or gradient on any rank is an overflow: every rank skips this
    update and scales down. Raises on divergence and past ``data.max_skipped``. ``values``: this rank's
    stack losses summed over its micro-batches."""
    from facealign.train import dist
    from facealign.train.optim import count_nonfinite

    bad_grads = count_nonfinite(p.grad(run.ctx) for p in run.trainable)
    signalled, nonfinite, nonfinite_grads, skips_now, *loss_sums = dist.allreduce(
        [1.0 if run.stop.signal else 0.0, 0.0 if np.isfinite(values).all() else 1.0, float(bad_grads),
         float(state.pending_skips), *values])
    state.pending_skips = 0
    losses = np.array(loss_sums) / (run.shares.nominal * run.shares.accumulation)
    scaler = run.scaler
    overflow = scaler is not None and bool(nonfinite or nonfinite_grads)
    if overflow and scaler.at_minimum:
        raise diverged(run, state, "non-finite loss or gradients at the smallest loss scale",
                       f"scale {scaler.value:g}, {int(nonfinite_grads)} gradient arrays over the ranks")
    if nonfinite and not overflow:
        raise diverged(run, state, "non-finite loss", f"rank 0's stack losses {values.tolist()}")
    if nonfinite_grads and not overflow:
        raise diverged(run, state, "non-finite gradients", f"{int(nonfinite_grads)} arrays over the ranks")
    state.skipped_total += int(skips_now)
    check_skip_limit(run, state)
    return Vote(stopping=signalled > 0, overflow=overflow, nonfinite_grads=int(nonfinite_grads), losses=losses)


def check_skip_limit(run: Run, state: TrainState) -> None:
    """``data.max_skipped`` (a count, or a share of the records drawn) stops the run with the worst files."""
    drawn = (state.step + 1) * run.samples_per_step()
    limit = run.spec.data.max_skipped
    if limit is not None and state.skipped_total > (limit if limit >= 1 else limit * drawn):
        by_file = skipped_record(run, state)["by_file"]
        worst = ", ".join(f"{f}: {n}" for f, n in sorted(by_file.items(), key=lambda t: -t[1])[:3])
        message = (f"{state.skipped_total} records skipped by step {state.step + 1} "
                   f"({state.skipped_total / drawn:.1%} of the {drawn} drawn), more than data.max_skipped = "
                   f"{limit:g}; most in {worst}")
        run.log(message, all_ranks=True)
        raise DataError(message)


def optimizer_step(run: Run, state: TrainState, vote: Vote) -> None:
    """The allreduced update, or on an overflow the same skip on every rank (the batch counts as seen)."""
    import mxnet as mx

    from facealign.train import dist

    scaler = run.scaler
    run.trainer.set_learning_rate(run.lr(state.step))
    if vote.overflow:
        run.net.collect_params().zero_grad()
        run.log(f"overflow at step {state.step + 1} ({vote.nonfinite_grads} non-finite gradient arrays over the "
                f"ranks): update skipped on every rank; loss scale {scaler.value:g} -> "
                f"{max(scaler.value / scaler.factor, scaler.min_value):g}")
    else:
        # the loss is a mean already: average over this process's micro-batches (Horovod averages over the
        # processes, so together over the nominal world's), and divide the scale out
        with dist.collective():  # the update waits for every rank's gradients: done before the next step
            run.trainer.step(run.shares.micro_batches * (scaler.value if scaler is not None else 1))
            mx.nd.waitall()
        if run.shares.micro_batches > 1:
            run.net.collect_params().zero_grad()
    if scaler is not None:
        scaler.update(vote.overflow)
    state.step += 1
    state.batch_in_epoch += 1


def diverged(run: Run, state: TrainState, what: str, detail: str) -> NonFiniteLoss:
    """Stop on a non-finite loss or gradient at step + 1: the weights after ``step`` produced it, so the
    checkpoint holding them (if one was saved at ``step``) is set aside, and a restart resumes before."""
    from facealign.train import dist

    ckpt = run.ckpt
    aside = ckpt.at_step(state.step) if run.world.is_primary else None
    note = ""
    if aside is not None:
        moved = ckpt.set_aside(aside)
        left = ckpt.checkpoints()
        note = (f"; checkpoint {aside.name} holds the weights that produced it: set aside as {moved.name}; a "
                f"restart resumes from {left[-1].name if left else 'the beginning'}")
    message = dist.broadcast_object(f"{what} at step {state.step + 1} (epoch {state.epoch}; {detail}); stopped before "
                                    f"the update" + (note or "; the last checkpoint is intact"), "facealign.diverged")
    run.log(message, all_ranks=True)
    return NonFiniteLoss(message)


def skipped_record(run: Run, state: TrainState) -> dict:
    """The run's skipped records over all ranks: the total, and per file."""
    from facealign.train import dist

    by_file = {}
    for counts in dist.allgather_object(state.my_skips, "facealign.skipped"):
        for f, n in counts.items():
            by_file[f] = by_file.get(f, 0) + n
    return {"total": state.skipped_total, "by_file": by_file}


# --- on the step boundaries ---------------------------------------------------------------------------

def report(run: Run, state: TrainState, window: Window, started: tuple, stacks: int) -> None:
    """The progress line, its TensorBoard scalars and the progress record."""
    elapsed = time.perf_counter() - window.t
    ips = window.images * run.world.size / max(elapsed, 1e-9)
    mean_loss = window.loss / window.n if window.n else np.full(stacks, np.nan)
    lr = run.lr(state.step - 1)
    eta = (time.perf_counter() - started[1]) / max(state.step - started[0], 1) * (run.last_step - state.step)
    run.log(f"step {state.step}/{run.last_step} epoch {state.epoch} [{state.batch_in_epoch}/{run.steps_per_epoch}] "
            f"loss {mean_loss.sum():.5f} ({' '.join(f'{v:.5f}' for v in mean_loss)}) lr {lr:.3g} img/s {ips:.1f} "
            f"data-wait {100 * window.wait / max(elapsed, 1e-9):.0f}% eta {_fmt_time(eta)}")
    w = run.writer
    if w is not None:
        w.add_scalar("train/loss", float(mean_loss.sum()), state.step)
        for i, v in enumerate(mean_loss):
            w.add_scalar(f"train/loss_stack{i}", float(v), state.step)
        w.add_scalar("train/lr", lr, state.step)
        w.add_scalar("perf/images_per_s", ips, state.step)
        w.add_scalar("perf/data_wait", window.wait / max(elapsed, 1e-9), state.step)
        w.add_scalar("data/skipped", state.skipped_total, state.step)
        if run.scaler is not None:
            w.add_scalar("train/loss_scale", run.scaler.value, state.step)
    record_progress(run, state, images_per_s=ips, eta_s=eta)


def validate(run: Run, state: TrainState) -> dict:
    """Validation with the rank-averaged BatchNorm statistics (each rank's own come back after): the metrics,
    noted as the best where they are, in TensorBoard and in the progress record."""
    from facealign.train.validation import draw_faces

    with run.stats.swapped(run.stats.average(run.stats.gather())):
        metrics, images = run.validator.run(run.net)
    metric = run.spec.metric_name()
    state.note_metric(metrics.get(metric) if metric else None, run.spec.checkpoint.mode)
    record_progress(run, state)
    w = run.writer
    if w is not None:
        for k, v in metrics.items():
            w.add_scalar(f"val/{k}", v, state.step)
        if state.step and images is not None and run.spec.logging.images:
            faces, heatmaps = draw_faces(*images, run.codec.peak)
            w.add_image("val/faces", faces, state.step, dataformats="HWC")
            w.add_image("val/heatmaps", heatmaps, state.step, dataformats="HWC")
    return metrics


def checkpoint_collectively(run: Run, state: TrainState) -> None:
    """Never commit weights or optimizer state that are not finite, on any rank; nobody runs ahead (or
    exits) before the checkpoint is committed, and all learn if it was not."""
    import mxnet as mx

    from facealign.train import dist
    from facealign.runs.optimizer_state import optimizer_state
    from facealign.train.optim import count_nonfinite

    params = run.net.collect_params().values()
    bad = dist.allreduce(float(count_nonfinite([p.data(run.ctx) for p in params]
                                               + list(optimizer_state(run.trainer)[0].values()))))[0]
    if bad:
        previous = run.ckpt.checkpoints()[-1].name if run.world.is_primary and run.ckpt.checkpoints() else None
        message = dist.broadcast_object(
            f"the parameters or optimizer state after step {state.step} are not finite ({int(bad)} arrays over the "
            f"ranks): not checkpointed; " + (f"the last checkpoint {previous} is intact" if previous
                                            else "no checkpoint yet: a restart begins from the start"),
            "facealign.nonfinite_state")
        run.log(message, all_ranks=True)
        raise NonFiniteLoss(message)
    state.loss_scale = run.scaler.state() if run.scaler is not None else None
    # world_size: the nominal world, whose ranks rank_stats.params holds; the process counts are in the history
    facts = {"world_size": run.shares.nominal, "model": run.model_spec.to_dict(),
             "model_fingerprint": run.model_spec.fingerprint(), "model_info": run.info.to_dict(),
             "validation": run.validation, "spec_hash": spec_hash(run.spec),
             "versions": {"mxnet": mx.__version__}}
    record = state.record(facts, samples_per_step=run.samples_per_step(), lr=run.lr(max(state.step - 1, 0)),
                          data_skipped=skipped_record(run, state))
    failure = None
    try:
        run.ckpt.save(state.step, run.net, run.trainer, record, running_stats=run.stats.gather())
    except CheckpointWriteError as e:
        failure = str(e)
    failure = dist.broadcast_object(failure, "facealign.checkpoint_saved")
    if failure:
        run.log(failure, all_ranks=True)
        raise CheckpointWriteError(failure)


def record_progress(run: Run, state: TrainState, **fields) -> None:
    """Rank 0: where the run stands, for `facealign-launch status` (kept here and written whole)."""
    if run.world.is_primary:
        run.progress.update(last_step=run.last_step, epoch=state.epoch, restarts=state.restarts,
                            metric=run.spec.metric_name(), best=state.best, best_step=state.best_step,
                            step=state.step, world_size=run.world.size, world_history=state.world_history, **fields)
        runs.record_progress(run.run_dir, run.progress)


def world_history_text(state: TrainState) -> str:
    return ", ".join(f"{size} from step {step}" for step, size in state.world_history)


def describe(run: Run, state: TrainState) -> None:
    d, spec = run.spec.data, run.spec
    dropped = run.loader.sampler.dropped_per_epoch
    run.log(f"{spec.model.name} ({run.model_spec.num_stacks} stacks, {d.num_points} points, {d.input_size}->"
            f"{d.heatmap_size}); {len(run.loader.records)} training faces"
            f"{f' ({dropped} left out of each epoch: not a whole step)' if dropped else ''}, {run.steps_per_epoch} "
            f"steps/epoch, batch {d.batch_size} x {run.shares.nominal} rank(s) x {spec.optim.grad_accumulation}; "
            f"{run.shares.describe()}; world sizes so far {world_history_text(state)}; training to step "
            f"{run.last_step}" + (f"; dynamic loss scale {run.scaler.value:g} (skips agreed by all ranks)"
                                  if run.scaler is not None else ""))


def finish(run: Run, state: TrainState, code: int) -> str:
    """The last progress record and, for a finished run, its line and TensorBoard's HParams (a sweep's runs
    side by side). Returns the reason rank 0 records."""
    record_progress(run, state)
    if code != EXIT_OK:
        return f"stopped at step {state.step} on a signal ({run.stop.signal or 'another rank'}); checkpoint saved; requeue"
    reason = f"finished at step {state.step}: " + json.dumps({k: round(v, 6) for k, v in state.metrics.items()})
    run.log(reason)
    if run.writer is not None:
        metric = run.spec.metric_name()
        run.writer.add_hparams(components.hyperparameters(run.spec, run.shares.nominal, runs.sweep_overrides(run.run_dir)),
                               {**{f"hparam/{k}": float(v) for k, v in state.metrics.items()},
                                **({f"hparam/best_{metric}": state.best} if state.best is not None else {})},
                               name="hparams", global_step=state.step)
    return reason
