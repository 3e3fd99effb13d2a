"""The training loop, one rank of it: ``train(spec, run_dir)`` (``python -m facealign.train`` is
facealign.cli.train).

One loop, top to bottom: set-up, resume, then per step: load, forward,
backward, allreduced update, and on the step boundaries the stop vote,
logging, validation and checkpoints. Only rank 0 writes (logs, TensorBoard,
checkpoints); every rank reads.

Exit status: 0 finished; 75 stopped by SIGTERM/SIGUSR2 after a checkpoint (the
Slurm templates requeue on it); 1 a run-time failure (a non-finite loss, which
names the step and leaves the last good checkpoint intact; bad records); 2 a job
that cannot start (a bad spec or missing record files, a run directory holding
another model's checkpoints or locked by another trainer, a ``model.pretrained``
that is no model, a GPU this MXNet cannot run: facealign.platform.gpu_probe). Each is one
line on stderr.
"""
from __future__ import annotations

import contextlib
import json
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

EXIT_OK, EXIT_ERROR, EXIT_SPEC, EXIT_REQUEUE = 0, 1, 2, 75


class NonFiniteLoss(RuntimeError):
    pass


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
    """This rank's GPU probe (facealign.gpu_probe), as a message or None."""
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
    holder = {}  # _train sets "rank0", and "locked" once rank 0 holds the run directory
    with contextlib.ExitStack() as closing:
        try:
            code, reason = _train(spec, run_dir, on_finish, closing, holder)
        except BaseException as e:
            code = 130 if isinstance(e, KeyboardInterrupt) else exit_code_for(e)
            known = isinstance(e, (SpecError, CheckpointError, ArtifactError, RunLocked, NonFiniteLoss, DataError,
                                   CheckpointWriteError, GPUProbeFailed))
            _record_exit(holder, run_dir, code, str(e) if known else f"{type(e).__name__}: {e}")
            raise
        _record_exit(holder, run_dir, code, reason)
        return code


def _record_exit(holder: dict, run_dir: Path, code: int, reason: str) -> None:
    """Rank 0: the launcher's file if it set one, and the run's own exit.json (facealign-launch status reads
    it) once this trainer holds the run directory."""
    if not holder.get("rank0"):
        return
    target = os.environ.get("FACEALIGN_EXIT_FILE")
    if target:
        write_exit(Path(target), code, reason)
    if holder.get("locked"):
        write_exit(run_dir / EXIT_FILE, code, reason)


def write_exit(path: Path, code: int, reason: str) -> None:
    write_json(path, {"code": code, "reason": reason, "time": time.time()}, indent=None)


def _train(spec: JobSpec, run_dir: Path, on_finish, closing: contextlib.ExitStack, holder: dict) -> tuple[int, str]:
    # --- set-up ------------------------------------------------------------------------------------
    from facealign.platform import cpu_isa
    from facealign.train import dist

    isa = cpu_isa.enable()  # before MXNet is imported (dist.init imports it)
    os.environ.update(components.runtime_env(spec))  # the launchers set them too; Horovod reads them at init
    world = dist.init(cpu=not spec.resources.gpus_per_node)
    holder["rank0"] = world.is_primary
    if world.size != spec.world_size:
        raise SpecError(f"resources give a world of {spec.resources.nodes} node(s) x "
                        f"{spec.resources.tasks_per_node} task(s) = {spec.world_size} rank(s), but {world.size} "
                        f"were started; launch -np {spec.world_size} or set resources.tasks_per_node")
    stop = StopFlag()
    import mxnet as mx
    from mxnet import autograd

    from facealign.runs.artifact import load_pretrained
    from facealign.data.loader import TrainLoader
    from facealign.train.losses import stacked_loss
    from facealign.models import build_model, initialize
    from facealign.train.optim import count_nonfinite, lr_at, make_trainer, optimizer_state, total_steps
    from facealign.train.validation import Validator, draw_faces

    # One trainer per run directory: rank 0 locks it before writing anything, for the run's life.
    locked = None
    if world.is_primary:
        try:
            closing.callback(RunLock(run_dir, spec.run.lock_wait).acquire().release)
        except RunLocked as e:
            locked = str(e)
        else:
            holder["locked"] = True
    locked = dist.broadcast_object(locked, "facealign.run_lock")
    if locked:
        raise RunLocked(locked)
    if world.is_primary:
        (run_dir / TB_DIR).mkdir(parents=True, exist_ok=True)
        dump_job(spec, run_dir / JOB_FILE)
    dist.barrier()  # the run directory exists before any rank looks into it
    log = Log(run_dir, world.is_primary)
    closing.callback(log.close)
    ctx = dist.device(world, spec.resources.gpus_per_node)
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    log(f"rank 0 of {world.size} on {ctx}; run directory {run_dir}; OMP_NUM_THREADS={threads}; "
        f"SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', '0')}; {cpu_isa.cpu_model()}, {isa.describe()}; "
        f"{components.describe_runtime_env(os.environ)}")
    # every rank probes its GPU before anything is built; all stop together if any cannot run MXNet
    failures = [f for f in dist.allgather_object(_probe(ctx), "facealign.gpu_probe") if f]
    if failures:
        log(f"the GPU probe failed on {len(failures)} of {world.size} rank(s): {failures[0]}")
        raise GPUProbeFailed(failures[0])

    d = spec.data
    codec = components.codec(spec)
    loss_settings = components.loss_settings(spec)
    loader = TrainLoader(d.train, batch_size=d.batch_size, codec=codec, rank=world.rank, world_size=world.size,
                         seed=spec.run.seed, cfg=components.sample_config(spec), workers=d.workers,
                         prefetch=d.prefetch)
    closing.callback(loader.close)
    accumulation = spec.optim.grad_accumulation
    steps_per_epoch = loader.steps_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise SpecError(f"data.train: {loader.steps_per_epoch} batch(es) per epoch cannot fill one step of "
                        f"{accumulation} accumulated batches")
    last_step = total_steps(spec, steps_per_epoch)

    from facealign.train import amp

    if spec.optim.amp != "off":  # must patch MXNet's operators before the network is built
        amp.init(spec.optim.amp)
    model_spec = components.model_spec(spec)
    info = components.model_info(spec)
    net = initialize(build_model(model_spec), ctx=ctx, seed=spec.run.seed)
    if spec.model.pretrained:  # a checkpoint's, an export's or a reference release's parameters
        report = load_pretrained(net, spec.model.pretrained, ctx)
        log(f"initialised {len(report['loaded'])} parameters from {spec.model.pretrained}; "
            f"{len(report['kept'])} keep their initialisation")
    net.hybridize(static_alloc=True)  # static_shape as well would double the memory for ~10% speed
    if accumulation > 1:
        for p in net.collect_params().values():
            if p.grad_req != "null":
                p.grad_req = "add"
    trainer = make_trainer(net, spec)
    # dynamic loss scaling (with float16 AMP by default), decided collectively below rather than by
    # amp.init_trainer's per-rank check; bfloat16 has float32's range and needs none
    scaler = components.loss_scale(spec)

    # --- resume ------------------------------------------------------------------------------------
    metric = spec.metric_name()
    ckpt = CheckpointManager(run_dir / CHECKPOINTS_DIR, writer=world.is_primary, keep_last=spec.checkpoint.keep_last,
                             keep_best=spec.checkpoint.keep_best, metric=metric, mode=spec.checkpoint.mode, log=log)
    ckpt.tidy(log)
    # rank 0 lists the checkpoints that verify (latest first) for all; every rank decodes the same files,
    # and if any rank cannot, all fall back to the next one together
    candidates = [str(p) for p in ckpt.candidates(log)] if spec.checkpoint.resume == "auto" and world.is_primary \
        else []
    candidates = dist.broadcast_object(candidates, "facealign.resume")
    step, epoch, batch_in_epoch, last_metrics, found, skipped = 0, 0, 0, {}, None, {"total": 0, "by_file": {}}
    for candidate in map(Path, candidates):
        try:
            decoded, problem = ckpt.read(candidate), None
        except CheckpointError as e:
            decoded, problem = None, str(e)
        if dist.allreduce(1.0 if problem else 0.0)[0]:
            log(f"checkpoint {candidate} cannot be loaded ({problem or 'on another rank'}); falling back to the "
                f"previous one")
            continue
        same_world = decoded["state"].get("world_size") == world.size
        state = ckpt.apply(candidate, decoded, net, trainer, ctx, fingerprint=model_spec.fingerprint(),
                           rank=world.rank if same_world else None)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        last_metrics = state.get("metrics", {})
        skipped = state.get("data_skipped", skipped)
        if scaler is not None:
            scaler.load(state.get("loss_scale"))
        found = candidate
        log(f"resumed from {found}: step {step}, epoch {epoch}, batch {batch_in_epoch} of the epoch")
        break
    ckpt.repoint(found, log)
    if found is None:
        if candidates:
            log("no checkpoint of this run could be loaded: training starts from the beginning")
        import horovod.mxnet as hvd

        hvd.broadcast_parameters(net.collect_params(), root_rank=0)  # rank 0's initialisation everywhere
    # skipped records: this rank's own since the start (rank 0 carries the run's earlier ones forward)
    my_skips = dict(skipped["by_file"]) if world.is_primary else {}
    skipped_total = int(skipped["total"])
    trainable = [p for p in net.collect_params().values() if p.grad_req != "null"]
    writer = None
    if world.is_primary and spec.logging.tensorboard:
        from tensorboardX import SummaryWriter

        # purge_step drops events a previous attempt wrote after this checkpoint, so curves never fold back
        writer = SummaryWriter(str(run_dir / TB_DIR), purge_step=step if found else None)
        closing.callback(writer.close)
    validation = components.validation_record(spec)
    validator = Validator(validation, info, world, ctx)
    stats = dist.RunningStats(net, world)

    def validate():
        """Validation with the rank-averaged BatchNorm statistics; each rank's own come back after."""
        with stats.swapped(stats.average(stats.gather())):
            return validator.run(net)

    def checkpoint_state(metrics):
        return {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "samples_seen": step * d.batch_size * world.size
                * accumulation, "world_size": world.size, "model": model_spec.to_dict(),
                "model_fingerprint": model_spec.fingerprint(), "model_info": info.to_dict(),
                "validation": validation, "spec_hash": spec_hash(spec), "metrics": metrics,
                "data_skipped": skipped_record(),
                "lr": lr_at(max(step - 1, 0), spec, steps_per_epoch, world.size),
                "loss_scale": scaler.state() if scaler is not None else None,
                "versions": {"mxnet": mx.__version__}}

    def skipped_record():
        by_file = {}
        for counts in dist.allgather_object(my_skips, "facealign.skipped"):
            for f, n in counts.items():
                by_file[f] = by_file.get(f, 0) + n
        return {"total": skipped_total, "by_file": by_file}

    def diverged(what: str, detail: str) -> NonFiniteLoss:
        """Stop on a non-finite loss or gradient at step + 1: the weights after ``step`` produced it, so the
        checkpoint holding them (if one was saved at ``step``) is set aside, and a restart resumes before."""
        aside = ckpt.at_step(step) if world.is_primary else None
        note = ""
        if aside is not None:
            moved = ckpt.set_aside(aside)
            left = ckpt.checkpoints()
            note = (f"; checkpoint {aside.name} holds the weights that produced it: set aside as {moved.name}; a "
                    f"restart resumes from {left[-1].name if left else 'the beginning'}")
        message = dist.broadcast_object(f"{what} at step {step + 1} (epoch {epoch}; {detail}); stopped before the update"
                                        + (note or "; the last checkpoint is intact"), "facealign.diverged")
        log(message, all_ranks=True)
        return NonFiniteLoss(message)

    # where the run stands, for `facealign-launch status` (facealign.runs); the best survives restarts
    progress = runs.read_progress(run_dir) if world.is_primary and found else {}
    best = {"metric": metric, "best": progress.get("best"), "best_step": progress.get("best_step")}

    def record_progress(**fields):
        if world.is_primary:  # kept here and written whole: no read-back per progress line
            progress.update(last_step=last_step, epoch=epoch, restarts=restarts, **best, **fields)
            runs.record_progress(run_dir, progress)

    def note_validation(metrics, at_step):
        value = metrics.get(metric) if metric else None
        if value is not None and (best["best"] is None or (value < best["best"] if spec.checkpoint.mode == "min"
                                                           else value > best["best"])):
            best.update(best=float(value), best_step=at_step)

    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    record_progress(step=step)
    eval_every = spec.eval.every_steps or steps_per_epoch
    ckpt_every = spec.checkpoint.every_steps or steps_per_epoch
    dropped = loader.sampler.dropped_per_epoch
    log(f"{spec.model.name} ({model_spec.num_stacks} stacks, {d.num_points} points, {d.input_size}->"
        f"{d.heatmap_size}); {len(loader.records)} training faces"
        f"{f' ({dropped} left out of each epoch: not a whole step)' if dropped else ''}, {steps_per_epoch} steps/epoch, "
        f"batch {d.batch_size} x {world.size} rank(s) x {accumulation}; training to step {last_step}"
        + (f"; dynamic loss scale {scaler.value:g} (skips agreed by all ranks)" if scaler is not None else ""))
    if step == 0 and validator.sets:
        metrics, images = validate()
        note_validation(metrics, 0)
        log("before training: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in metrics.items()))
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, 0)

    # --- the loop ----------------------------------------------------------------------------------
    exit_code, window = EXIT_OK, {"t": time.perf_counter(), "wait": 0.0, "images": 0, "loss": None, "n": 0}
    start_step, start_time, pending_skips = step, time.perf_counter(), 0
    while step < last_step:
        batches = loader.epoch(epoch, start_step=batch_in_epoch * accumulation)
        for micro, batch in enumerate(batches, start=1):
            # forward and backward; DistributedTrainer allreduces the gradients inside step()
            data = mx.nd.array(batch.images, ctx=ctx, dtype="float32")
            target = mx.nd.array(batch.heatmaps, ctx=ctx)
            with autograd.record():  # the loss in float32 whatever the network computed in
                loss, stack_losses = stacked_loss(net(data), target, settings=loss_settings,
                                                  stack_weights=spec.loss.stack_weights)
                if scaler is not None:
                    loss = loss * scaler.value
            autograd.backward(loss)
            window["wait"] += batch.wait_s
            window["images"] += len(batch.indices)
            for file, index, why in batch.skips:  # this rank's, as they happen
                my_skips[file] = my_skips.get(file, 0) + 1
                log(f"skipped record {index} of {file}: {why}", all_ranks=True)
            pending_skips += len(batch.skips)
            if micro % accumulation:
                continue
            # The vote, before the update: every rank learns at the same step whether any rank was
            # signalled, saw a non-finite loss or gradient, or skipped records (one rank raising alone
            # would leave the others waiting in an allreduce). Under loss scaling a non-finite loss or
            # gradient on any rank is an overflow: every rank skips this update and scales down.
            values = np.array([l.asscalar() for l in stack_losses])
            bad_grads = count_nonfinite(p.grad(ctx) for p in trainable)
            signalled, nonfinite, nonfinite_grads, skips_now = dist.allreduce(
                [1.0 if stop.signal else 0.0, 0.0 if np.isfinite(values).all() else 1.0, float(bad_grads),
                 float(pending_skips)])
            pending_skips = 0
            overflow = scaler is not None and bool(nonfinite or nonfinite_grads)
            if overflow and scaler.at_minimum:
                raise diverged("non-finite loss or gradients at the smallest loss scale",
                               f"scale {scaler.value:g}, {int(nonfinite_grads)} gradient arrays over the ranks")
            if nonfinite and not overflow:
                raise diverged("non-finite loss", f"rank 0's stack losses {values.tolist()}")
            if nonfinite_grads and not overflow:
                raise diverged("non-finite gradients", f"{int(nonfinite_grads)} arrays over the ranks")
            skipped_total += int(skips_now)
            drawn = (step + 1) * d.batch_size * world.size * accumulation
            limit = d.max_skipped
            if limit is not None and skipped_total > (limit if limit >= 1 else limit * drawn):
                by_file = skipped_record()["by_file"]
                worst = ", ".join(f"{f}: {n}" for f, n in sorted(by_file.items(), key=lambda t: -t[1])[:3])
                message = (f"{skipped_total} records skipped by step {step + 1} ({skipped_total / drawn:.1%} of the "
                           f"{drawn} drawn), more than data.max_skipped = {limit:g}; most in {worst}")
                log(message, all_ranks=True)
                raise DataError(message)
            stopping = signalled > 0
            trainer.set_learning_rate(lr_at(step, spec, steps_per_epoch, world.size))
            if overflow:  # on every rank alike: no allreduce, no update, the batch counts as seen
                net.collect_params().zero_grad()
                log(f"overflow at step {step + 1} ({int(nonfinite_grads)} non-finite gradient arrays over the "
                    f"ranks): update skipped on every rank; loss scale {scaler.value:g} -> "
                    f"{max(scaler.value / scaler.factor, scaler.min_value):g}")
            else:
                # the loss is a mean already: average over the micro-batches only (and divide the scale out)
                trainer.step(accumulation * (scaler.value if scaler is not None else 1))
                if accumulation > 1:
                    net.collect_params().zero_grad()
            if scaler is not None:
                scaler.update(overflow)
            step += 1
            batch_in_epoch += 1
            if not overflow:
                window["loss"] = values if window["loss"] is None else window["loss"] + values
                window["n"] += 1
            end_of_epoch = batch_in_epoch == steps_per_epoch
            if step % spec.logging.every_steps == 0 or step == last_step or stopping:
                elapsed = time.perf_counter() - window["t"]
                ips = window["images"] * world.size / max(elapsed, 1e-9)
                mean_loss = window["loss"] / window["n"] if window["n"] else np.full(len(values), np.nan)
                lr = lr_at(step - 1, spec, steps_per_epoch, world.size)
                eta = (time.perf_counter() - start_time) / max(step - start_step, 1) * (last_step - step)
                log(f"step {step}/{last_step} epoch {epoch} [{batch_in_epoch}/{steps_per_epoch}] loss "
                    f"{mean_loss.sum():.5f} ({' '.join(f'{v:.5f}' for v in mean_loss)}) lr {lr:.3g} "
                    f"img/s {ips:.1f} data-wait {100 * window['wait'] / max(elapsed, 1e-9):.0f}% eta {_fmt_time(eta)}")
                if writer:
                    writer.add_scalar("train/loss", float(mean_loss.sum()), step)
                    for i, v in enumerate(mean_loss):
                        writer.add_scalar(f"train/loss_stack{i}", float(v), step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("perf/images_per_s", ips, step)
                    writer.add_scalar("perf/data_wait", window["wait"] / max(elapsed, 1e-9), step)
                    writer.add_scalar("data/skipped", skipped_total, step)
                    if scaler is not None:
                        writer.add_scalar("train/loss_scale", scaler.value, step)
                record_progress(step=step, images_per_s=ips, eta_s=eta)
                window = {"t": time.perf_counter(), "wait": 0.0, "images": 0, "loss": None, "n": 0}
            metrics = None
            if validator.sets and (step % eval_every == 0 or step == last_step):
                metrics, images = validate()
                note_validation(metrics, step)
                record_progress(step=step)
                log(f"validation at step {step}: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in metrics.items()))
                if writer:
                    for k, v in metrics.items():
                        writer.add_scalar(f"val/{k}", v, step)
                    if images is not None and spec.logging.images:
                        faces, heatmaps = draw_faces(*images, codec.peak)
                        writer.add_image("val/faces", faces, step, dataformats="HWC")
                        writer.add_image("val/heatmaps", heatmaps, step, dataformats="HWC")
                last_metrics = metrics
            if end_of_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            if step % ckpt_every == 0 or step == last_step or end_of_epoch or stopping:
                # never commit weights or optimizer state that are not finite, on any rank
                bad = dist.allreduce(float(count_nonfinite([p.data(ctx) for p in net.collect_params().values()]
                                                           + list(optimizer_state(trainer)[0].values()))))[0]
                if bad:
                    previous = ckpt.checkpoints()[-1].name if world.is_primary and ckpt.checkpoints() else None
                    message = dist.broadcast_object(
                        f"the parameters or optimizer state after step {step} are not finite ({int(bad)} arrays over "
                        f"the ranks): not checkpointed; " + (f"the last checkpoint {previous} is intact" if previous
                                                            else "no checkpoint yet: a restart begins from the start"),
                        "facealign.nonfinite_state")
                    log(message, all_ranks=True)
                    raise NonFiniteLoss(message)
                failure = None
                try:
                    ckpt.save(step, net, trainer, checkpoint_state(metrics or last_metrics),
                              running_stats=stats.gather())
                except CheckpointWriteError as e:
                    failure = str(e)
                # nobody runs ahead (or exits) before the checkpoint is committed, and all learn if it was not
                failure = dist.broadcast_object(failure, "facealign.checkpoint_saved")
                if failure:
                    log(failure, all_ranks=True)
                    raise CheckpointWriteError(failure)
            if writer:
                writer.flush()
            if stopping:
                log(f"stopping at step {step} on {stop.signal or 'another rank'}'s signal; checkpoint saved; "
                    f"exit {EXIT_REQUEUE} (requeue)", all_ranks=True)
                exit_code = EXIT_REQUEUE
                break
            if step >= last_step or end_of_epoch:
                break
        if exit_code == EXIT_REQUEUE:
            break
    if on_finish is not None:
        on_finish(net, world)
    record_progress(step=step)
    if exit_code == EXIT_OK:
        reason = f"finished at step {step}: " + json.dumps({k: round(v, 6) for k, v in last_metrics.items()})
        log(reason)
        if writer:  # TensorBoard's HParams dashboard: a sweep's runs side by side
            writer.add_hparams(components.hyperparameters(spec, world.size, runs.sweep_overrides(run_dir)),
                               {**{f"hparam/{k}": float(v) for k, v in last_metrics.items()},
                                **({f"hparam/best_{metric}": best["best"]} if best["best"] is not None else {})},
                               name="hparams", global_step=step)
    else:
        reason = f"stopped at step {step} on a signal ({stop.signal or 'another rank'}); checkpoint saved; requeue"
    return exit_code, reason

