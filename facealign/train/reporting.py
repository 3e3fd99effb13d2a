"""What a run tells its users while it trains: rank 0's log (stdout and <run>/log.txt), the progress line,
TensorBoard's scalars, images and HParams, and the progress record ``facealign-launch status`` reads.

Only rank 0 writes; the functions take the run being trained (facealign.train.setup.Run) and its
``TrainState``, and change neither but ``run.progress``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter

from facealign.evaluation.metrics import norm_label
from facealign.runs import status
from facealign.runs.layout import LOG_FILE, TB_DIR
from facealign.spec import components
from facealign.train.state import TrainState
from facealign.train.validation import draw_faces


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
        if self.fh is not None:
            line = time.strftime("%H:%M:%S ") + msg
            print(line, flush=True)
            self.fh.write(line + "\n")
            self.fh.flush()
        elif all_ranks:
            print(msg, file=sys.stderr, flush=True)


@dataclass
class ProgressWindow:
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


def format_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def open_writer(run, state: TrainState, closing) -> SummaryWriter | None:
    """Rank 0's TensorBoard writer, once the resume step is known: ``purge_step`` drops the events a previous
    attempt wrote after that checkpoint, so curves never fold back."""
    if not (run.world.is_primary and run.spec.logging.tensorboard):
        return None
    writer = SummaryWriter(str(run.run_dir / TB_DIR), purge_step=state.step or None)
    closing.callback(writer.close)
    return writer


def report(run, state: TrainState, window: ProgressWindow, started: tuple, stacks: int) -> None:
    """The progress line, its TensorBoard scalars and the progress record."""
    elapsed = time.perf_counter() - window.t
    ips = window.images * run.world.size / max(elapsed, 1e-9)
    mean_loss = window.loss / window.n if window.n else np.full(stacks, np.nan)
    lr = run.lr(state.step - 1)
    eta = (time.perf_counter() - started[1]) / max(state.step - started[0], 1) * (run.last_step - state.step)
    run.log(f"step {state.step}/{run.last_step} epoch {state.epoch} [{state.batch_in_epoch}/{run.steps_per_epoch}] "
            f"loss {mean_loss.sum():.5f} ({' '.join(f'{v:.5f}' for v in mean_loss)}) lr {lr:.3g} img/s {ips:.1f} "
            f"data-wait {100 * window.wait / max(elapsed, 1e-9):.0f}% eta {format_duration(eta)}")
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


def report_validation(run, state: TrainState, metrics: dict, images) -> None:
    """A validation's metrics (and drawn faces) in TensorBoard and the progress record."""
    record_progress(run, state)
    w = run.writer
    if w is not None:
        for k, v in metrics.items():
            w.add_scalar(f"val/{scalar_tag(k, run.validator.norm)}", v, state.step)
        if state.step and images is not None and run.spec.logging.images:
            faces, heatmaps = draw_faces(*images, run.codec.peak)
            w.add_image("val/faces", faces, state.step, dataformats="HWC")
            w.add_image("val/heatmaps", heatmaps, state.step, dataformats="HWC")


def scalar_tag(metric: str, norm: str) -> str:
    """The TensorBoard tag of a validation metric: ``nme/<set>`` is the model's primary NME, whose normaliser
    differs between 2D (eye-centre) and 3D models (box, the reference's 3D convention), so its tag names it:
    ``nme_eye_centre/<set>``, ``nme_box/<set>``. Before 0.2.0 the tag was ``nme/<set>``."""
    kind, _, name = metric.partition("/")
    return f"nme_{norm}/{name}" if kind == "nme" else metric


def metrics_text(metrics: dict, norm: str) -> str:
    """``nme/<set> 11.32% (eye-centre NME), nme3d/<set> ...``: the primary NME with its normaliser named."""
    return ", ".join(f"{k} {v * 100:.2f}%" + (f" ({norm_label(norm)})" if k.startswith("nme/") else "")
                     for k, v in metrics.items())


def record_progress(run, state: TrainState, **fields) -> None:
    """Rank 0: where the run stands, for `facealign-launch status` (kept here and written whole)."""
    if run.world.is_primary:
        run.progress.update(last_step=run.last_step, epoch=state.epoch, restarts=state.restarts,
                            metric=run.spec.metric_name(), best=state.best, best_step=state.best_step,
                            step=state.step, nominal_world_size=run.nominal.size, processes=run.world.size,
                            world_history=state.world_history, **fields)
        run.progress.pop("world_size", None)  # a record read back from before the two were named apart
        status.record_progress(run.run_dir, run.progress)


def world_history_text(state: TrainState) -> str:
    return ", ".join(f"{size} from step {step}" for step, size in state.world_history)


def describe(run, state: TrainState) -> None:
    d, spec = run.spec.data, run.spec
    dropped = run.loader.sampler.dropped_per_epoch
    run.log(f"{spec.model.name} ({run.model_spec.num_stacks} stacks, {d.num_points} points, {d.input_size}->"
            f"{d.heatmap_size}); {len(run.loader.records)} training faces"
            f"{f' ({dropped} left out of each epoch: not a whole step)' if dropped else ''}, {run.steps_per_epoch} "
            f"steps/epoch, batch {d.batch_size} x {run.nominal.size} rank(s) x {spec.optim.grad_accumulation}; "
            f"{run.nominal.describe()}; world sizes so far {world_history_text(state)}; training to step "
            f"{run.last_step}" + (f"; dynamic loss scale {run.scaler.value:g} (skips agreed by all ranks)"
                                  if run.scaler is not None else ""))


def report_finish(run, state: TrainState) -> str:
    """A finished run's line and TensorBoard's HParams (a sweep's runs side by side); returns the line."""
    reason = f"finished at step {state.step}: " + json.dumps({k: round(v, 6) for k, v in state.metrics.items()})
    run.log(reason)
    if run.writer is not None:
        metric = run.spec.metric_name()
        run.writer.add_hparams(components.hyperparameters(run.spec, run.nominal.size, status.sweep_overrides(run.run_dir)),
                               {**{f"hparam/{k}": float(v) for k, v in state.metrics.items()},
                                **({f"hparam/best_{metric}": state.best} if state.best is not None else {})},
                               name="hparams", global_step=state.step)
    return reason
