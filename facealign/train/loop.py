"""The training loop, one rank of it: ``train(spec, run_dir)`` (``python -m facealign.train`` is
facealign.cli.train).

One loop, top to bottom: set-up (facealign.train.setup), resume, then per step: load, forward, backward,
allreduced update, and on the step boundaries the stop vote, logging (facealign.train.reporting),
validation and checkpoints. Only rank 0 writes (logs, TensorBoard, checkpoints); every rank reads. How a
run that does not finish ends, and its exit status: facealign.train.faults.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np
from mxnet import autograd

from facealign.errors import EXIT_OK, EXIT_REQUEUE
from facealign.data.records import DataError
from facealign.runs import status
from facealign.runs.checkpoint import CheckpointWriteError
from facealign.runs.checkpoint_format import CheckpointError, apply, decode, rank_stats
from facealign.runs.optimizer_state import optimizer_state
from facealign.spec.schema import JobSpec, spec_hash
from facealign.train import dist
from facealign.train.faults import LostPeer, NonFiniteLoss, ending, record_exit
from facealign.train.losses import depth_targets, stacked_loss
from facealign.train.optim import count_nonfinite
from facealign.train.reporting import (Log, ProgressWindow, describe, metrics_text, open_writer, record_progress, report,
                                       report_finish, report_validation)
from facealign.train.setup import Run, build, lock_run_dir, set_up_world, start_heartbeat
from facealign.train.state import TrainState
from facealign.train.world import process_part


def train(spec: JobSpec, run_dir: Path, on_finish=None) -> int:
    """Run the job in this process (one rank); ``on_finish(net, world)`` is called at the end on every rank.

    The loader, the TensorBoard writer and the log are closed on every way out. Rank 0 records how
    the run ended (code, reason) for the launchers, since horovodrun reports any rank's failure as
    exit 1: in ``$FACEALIGN_EXIT_FILE`` when a launcher set it, and in ``<run>/exit.json`` once it
    holds the run directory (a trainer turned away by the lock writes nothing there). A lost peer's line
    goes to the log too, the file users read.
    """
    world, holds_run, heartbeat, log = None, False, None, None
    with contextlib.ExitStack() as closing:
        try:
            world = set_up_world(spec)
            part = process_part(spec, world.rank, world.size)  # a process count that cannot keep the training
            holds_run = lock_run_dir(spec, run_dir, world, closing)
            log = Log(run_dir, world.is_primary)
            closing.callback(log.close)
            heartbeat = start_heartbeat(spec, run_dir, world, closing)
            code, reason = run_job(build(spec, run_dir, world, part, heartbeat, log, closing), on_finish, closing)
        except BaseException as e:
            code, reason, lost = ending(e, heartbeat)
            record_exit(world, holds_run, run_dir, code, reason, lost=lost)
            if lost:
                if log is not None:
                    log(reason)
                raise LostPeer(reason) from None
            raise
        record_exit(world, holds_run, run_dir, code, reason)
        dist.barrier()  # no rank leaves before rank 0 recorded how the run ended (srun kills the rest on an exit 75)
        return code


def resume(run: Run) -> TrainState:
    """The newest checkpoint every rank can load, or the start (rank 0's initialisation broadcast).

    Rank 0 lists the checkpoints that verify (latest first) for all; every rank decodes the same files,
    and if any rank cannot, all fall back to the next one together."""

    run.ckpt.tidy(run.log)
    primary, log = run.world.is_primary, run.log
    candidates = [str(p) for p in run.ckpt.candidates(log)] if run.spec.checkpoint.resume == "auto" and primary else []
    candidates = dist.broadcast_object(candidates, "facealign.resume")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    state, found = TrainState(restarts=restarts), None
    for candidate in map(Path, candidates):
        try:
            decoded, problem = decode(candidate), None
        except CheckpointError as e:
            decoded, problem = None, str(e)
        if dist.allreduce(1.0 if problem else 0.0)[0]:
            log(f"checkpoint {candidate} cannot be loaded ({problem or 'on another rank'}); falling back to the "
                f"previous one")
            continue
        record = apply(candidate, decoded, run.net, run.trainer, run.ctx,
                                fingerprint=run.model_spec.fingerprint())
        # each nominal rank's own BatchNorm statistics, wherever it runs now (a checkpoint of another nominal
        # world has other ranks: all start from the average)
        same_world = TrainState.nominal_world_size(record) == run.nominal.size
        run.nominal.stats.start(rank_stats(decoded, run.nominal.ranks) if same_world else None)
        # where the run stands for `facealign-launch status` (facealign.runs.status); the best survives restarts
        run.progress = status.read_progress(run.run_dir) if primary else {}
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
        hvd.broadcast_parameters(run.net.collect_params(), root_rank=0)  # rank 0's initialisation everywhere
        run.nominal.stats.start()
    state.note_world(run.world.size)
    return state


def run_job(run: Run, on_finish, closing) -> tuple[int, str]:
    """Resume, validate the start, train, finish: the exit code and the reason rank 0 records."""
    state = resume(run)
    run.writer = open_writer(run, state, closing)
    record_progress(run, state)
    describe(run, state)
    if state.step == 0 and run.validator.sets:
        run.log("before training: " + metrics_text(validate(run, state), run.validator.norm))
    code = train_loop(run, state)
    if on_finish is not None:
        on_finish(run.net, run.world)
    record_progress(run, state)
    if code != EXIT_OK:
        return code, f"stopped at step {state.step} on a signal ({run.stop.signal or 'another rank'}); checkpoint saved; requeue"
    return code, report_finish(run, state)


def train_loop(run: Run, state: TrainState) -> int:
    """The loop: every optimizer step, and on its boundaries logging, validation and collective checkpoints."""
    spec, window = run.spec, ProgressWindow()
    eval_every = spec.eval.every_steps or run.steps_per_epoch
    ckpt_every = spec.checkpoint.every_steps or run.steps_per_epoch
    started = (state.step, time.perf_counter())
    run.heartbeat.beat(state.step)
    while state.step < run.last_step:
        losses = []
        for batch in run.loader.epoch(state.epoch, order=run.nominal.deal(state.batch_in_epoch, run.loader.steps_per_epoch)):
            run.nominal.before(batch)  # its nominal rank's BatchNorm statistics
            losses.append(forward_backward(run, state, batch, window))
            if not run.nominal.after(batch):  # more micro-batches to come in this step
                continue
            vote = vote_on_step(run, state, np.sum(losses, axis=0))  # all agree: stop, diverged, overflowed, skipped
            losses = []
            optimizer_step(run, state, vote)
            window.add(vote.losses, vote.overflow)
            end_of_epoch = state.batch_in_epoch == run.steps_per_epoch
            if state.step % spec.logging.every_steps == 0 or state.step == run.last_step or vote.stopping:
                report(run, state, window, started, len(vote.losses))
                window = ProgressWindow()
            if run.validator.sets and (state.step % eval_every == 0 or state.step == run.last_step):
                state.metrics = validate(run, state)  # the checkpoints' until the next
                run.log(f"validation at step {state.step}: {metrics_text(state.metrics, run.validator.norm)}")
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

@dataclass(frozen=True)
class Vote:
    """What every rank learned in the step's allreduce."""

    stopping: bool
    overflow: bool
    nonfinite_grads: int
    losses: np.ndarray  # the stacks' losses, averaged over the step's micro-batches on every rank


def forward_backward(run: Run, state: TrainState, batch, window: ProgressWindow):
    """One micro-batch of the nominal rank it belongs to (whose BatchNorm statistics its forward pass
    updates): forward, the loss in float32 whatever the network computed in, backward; this rank's skipped
    records counted. Returns the stacks' losses (DistributedTrainer allreduces gradients inside
    ``optimizer_step``)."""
    data = mx.nd.array(batch.images, ctx=run.ctx, dtype="float32")
    target = mx.nd.array(batch.heatmaps, ctx=run.ctx)
    depth = depth_targets(batch, run.ctx) if run.model_spec.predict_z else None
    soft = run.teacher(data)[-1] if run.teacher is not None else None  # inference mode, outside the record
    with autograd.record():
        loss, stack_losses = stacked_loss(run.net(data), target, settings=run.loss_settings,
                                          stack_weights=run.spec.loss.stack_weights, depth=depth, soft=soft)
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


def vote_on_step(run: Run, state: TrainState, values) -> Vote:
    """The vote, before the update: every rank learns at the same step whether any rank was signalled, saw a
    non-finite loss or gradient, or skipped records (one rank raising alone would leave the others waiting
    in an allreduce), and the step's mean loss over all micro-batches (the same curve at any rank count).
    Under loss scaling a non-finite loss or gradient on any rank is an overflow: every rank skips this
    update and scales down. Raises on divergence and past ``data.max_skipped``. ``values``: this rank's
    stack losses summed over its micro-batches."""
    bad_grads = count_nonfinite(p.grad(run.ctx) for p in run.trainable)
    signalled, nonfinite, nonfinite_grads, skips_now, *loss_sums = dist.allreduce(
        [1.0 if run.stop.signal else 0.0, 0.0 if np.isfinite(values).all() else 1.0, float(bad_grads),
         float(state.pending_skips), *values])
    state.pending_skips = 0
    losses = run.nominal.mean(loss_sums)
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
    scaler = run.scaler
    run.trainer.set_learning_rate(run.lr(state.step))
    if vote.overflow:
        run.nominal.clear()
        run.log(f"overflow at step {state.step + 1} ({vote.nonfinite_grads} non-finite gradient arrays over the "
                f"ranks): update skipped on every rank; loss scale {scaler.value:g} -> "
                f"{max(scaler.value / scaler.factor, scaler.min_value):g}")
    else:
        with dist.collective():  # the update waits for every rank's gradients: done before the next step
            run.nominal.update(run.trainer, scaler.value if scaler is not None else 1.0)
            mx.nd.waitall()
        run.nominal.clear()
    if scaler is not None:
        scaler.update(vote.overflow)
    state.step += 1
    state.batch_in_epoch += 1


def diverged(run: Run, state: TrainState, what: str, detail: str) -> NonFiniteLoss:
    """Stop on a non-finite loss or gradient at step + 1: the weights after ``step`` produced it, so the
    checkpoint holding them (if one was saved at ``step``) is set aside, and a restart resumes before."""

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

    by_file = {}
    for counts in dist.allgather_object(state.my_skips, "facealign.skipped"):
        for f, n in counts.items():
            by_file[f] = by_file.get(f, 0) + n
    return {"total": state.skipped_total, "by_file": by_file}


# --- on the step boundaries ---------------------------------------------------------------------------

def validate(run: Run, state: TrainState) -> dict:
    """Validation with the rank-averaged BatchNorm statistics (each rank's own come back after): the metrics,
    noted as the best where they are, in TensorBoard and in the progress record."""

    stats = run.nominal.stats
    with stats.swapped(stats.average(stats.gather())):
        metrics, images = run.validator.run(run.net)
    metric = run.spec.metric_name()
    state.note_metric(metrics.get(metric) if metric else None, run.spec.checkpoint.mode)
    report_validation(run, state, metrics, images)
    return metrics


def checkpoint_collectively(run: Run, state: TrainState) -> None:
    """Never commit weights or optimizer state that are not finite, on any rank; nobody runs ahead (or
    exits) before the checkpoint is committed, and all learn if it was not."""
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
    # the nominal world is the one whose ranks rank_stats.params holds; the process counts are in the history
    facts = {"nominal_world_size": run.nominal.size, "processes": run.world.size, "model": run.model_spec.to_dict(),
             "model_fingerprint": run.model_spec.fingerprint(), "model_info": run.info.to_dict(),
             "validation": run.validation, "spec_hash": spec_hash(run.spec),
             "versions": {"mxnet": mx.__version__}}
    record = state.record(facts, samples_per_step=run.samples_per_step(), lr=run.lr(max(state.step - 1, 0)),
                          data_skipped=skipped_record(run, state))
    failure = None
    try:
        run.ckpt.save(state.step, run.net, run.trainer, record, running_stats=run.nominal.stats.gather())
    except CheckpointWriteError as e:
        failure = str(e)
    failure = dist.broadcast_object(failure, "facealign.checkpoint_saved")
    if failure:
        run.log(failure, all_ranks=True)
        raise CheckpointWriteError(failure)


