"""Where a run stands: ``TrainState``, the one object the training loop changes, which checkpoints write
and read whole (``state.json``)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Everything a resume needs besides the weights, the optimizer state and the BatchNorm statistics."""

    step: int = 0  # optimizer steps taken (agreed skips of an overflowed update count)
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps into ``epoch``
    metrics: dict = field(default_factory=dict)  # the last validation's
    best: float | None = None  # the best validation metric so far, and its step
    best_step: int | None = None
    skipped_total: int = 0  # records skipped over all ranks since the run began
    my_skips: dict = field(default_factory=dict)  # this rank's skipped records by file (rank 0: the run's earlier)
    pending_skips: int = 0  # this rank's skips since the last vote
    loss_scale: dict | None = None  # the dynamic loss scale's state, when the run has one
    restarts: int = 0  # Slurm's restart count of this start
    world_history: list = field(default_factory=list)  # [step, ranks running] at each change of the rank count

    def note_world(self, size: int) -> None:
        """The ranks running from ``step`` on, when the count differs from the last (a resume elsewhere)."""
        if not self.world_history or self.world_history[-1][1] != size:
            self.world_history.append([self.step, size])

    def note_metric(self, value: float | None, mode: str) -> None:
        """A validation metric at ``step``: the best so far if it beats it (``mode`` min or max)."""
        if value is None:
            return
        if self.best is None or (value < self.best if mode == "min" else value > self.best):
            self.best, self.best_step = float(value), self.step

    def record(self, facts: dict, *, samples_per_step: int, lr: float, data_skipped: dict) -> dict:
        """``state.json``: the run's facts and where it stands (the keys every earlier checkpoint has too)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "samples_seen": self.step * samples_per_step,
                **facts, "metrics": self.metrics, "data_skipped": data_skipped, "lr": lr,
                "loss_scale": self.loss_scale, "world_history": self.world_history}

    @staticmethod
    def nominal_world_size(record: dict) -> int | None:
        """The nominal world a checkpoint's ``state.json`` was trained for (``world_size`` before 0.2.0)."""
        return record.get("nominal_world_size", record.get("world_size"))

    @classmethod
    def resumed(cls, record: dict, *, primary: bool, progress: dict, restarts: int) -> "TrainState":
        """The state of a checkpoint's ``state.json``; the best comes from the run's progress record (a
        checkpoint written before the best was kept there has none)."""
        skipped = record.get("data_skipped") or {"total": 0, "by_file": {}}
        return cls(step=record["step"], epoch=record["epoch"], batch_in_epoch=record["batch_in_epoch"],
                   metrics=record.get("metrics", {}), best=progress.get("best"), best_step=progress.get("best_step"),
                   skipped_total=int(skipped["total"]), my_skips=dict(skipped["by_file"]) if primary else {},
                   loss_scale=record.get("loss_scale"), restarts=restarts,
                   # a checkpoint written before the history was kept ran at its nominal world from the start
                   world_history=[list(e) for e in record["world_history"]] if "world_history" in record
                   else [[0, cls.nominal_world_size(record)]] if cls.nominal_world_size(record) else [])
