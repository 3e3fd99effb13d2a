"""The nominal world and the processes that run it: how a job keeps the same training on fewer ranks.

A job's training is defined for its nominal world, ``resources.nodes x tasks_per_node`` ranks: the
global batch, the data each rank draws, the BatchNorm statistics each rank keeps, the learning rate.
After a node is lost the job goes on with fewer processes (facealign-launch, launcher.slurm): each then
stands for a block of ``nominal / size`` nominal ranks, draws their micro-batches one after another
(``deal``), keeps each one's BatchNorm statistics apart (dist.RunningStats), and
sums their gradients before the allreduce. Horovod's average over ``size`` processes times the
``micro_batches`` rescale is then the nominal world's average over ``nominal x accumulation``
micro-batches, so the run matches the nominal one to float rounding (the order of the sums).

The process count must divide the nominal world: a nominal rank's micro-batches stay in one process,
in order, because its BatchNorm statistics are updated by each in turn. ``NominalWorld`` owns all of it:
the loop calls ``before`` and ``after`` around each micro-batch and ``update`` for the optimizer step, and
holds no accumulation arithmetic of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facealign.spec.schema import JobSpec


@dataclass(frozen=True)
class Shares:
    """This process's part of the nominal world's work at every step."""

    rank: int  # this process's rank among those running
    size: int  # processes running
    nominal: int  # ranks the training is defined for
    accumulation: int  # micro-batches per nominal rank per step (optim.grad_accumulation)

    @property
    def per_process(self) -> int:
        return self.nominal // self.size

    @property
    def ranks(self) -> list[int]:
        """The nominal ranks this process stands for: a block, so gathering in process order is rank order."""
        return list(range(self.rank * self.per_process, (self.rank + 1) * self.per_process))

    @property
    def micro_batches(self) -> int:
        """Micro-batches this process runs per optimizer step (its gradients' sum is divided by it)."""
        return self.per_process * self.accumulation

    def describe(self) -> str:
        if self.size == self.nominal:
            return f"{self.size} rank(s), the job's nominal world"
        return (f"{self.size} rank(s) standing for the nominal {self.nominal}: each runs {self.per_process} nominal "
                f"ranks' batches, {self.micro_batches} micro-batches a step")


def process_part(spec: JobSpec, rank: int, size: int) -> Shares:
    """This process's ``Shares`` of ``spec``'s nominal world, or the spec's ``SpecError`` for a process count
    that cannot keep the training the same."""
    spec.check_ranks(size)
    return Shares(rank=rank, size=size, nominal=spec.world_size, accumulation=spec.optim.grad_accumulation)


class RankGradients:
    """The gradients of the nominal ranks a process stands for, summed apart and then together, as their
    allreduce would: with accumulation ``(a + b) + (c + d)`` rather than ``((a + b) + c) + d``. For two
    ranks that is the nominal world's float sum bit for bit (addition commutes); for more, a close one.
    A no-op for a process that stands for one rank, or without accumulation (the sums are the same)."""

    def __init__(self, params, shares: Shares):
        self.params, self.shares = list(params), shares
        self.active = shares.per_process > 1 and shares.accumulation > 1
        self.held = None

    def rank_done(self, rank: int) -> None:
        """After the last micro-batch of nominal rank ``rank`` in this step."""
        if not self.active:
            return
        grads = [p.list_grad()[0] for p in self.params]
        ranks = self.shares.ranks
        if rank == ranks[-1]:
            for g, h in zip(grads, self.held):
                g += h
            self.held = None
            return
        if rank == ranks[0]:
            self.held = [g.copy() for g in grads]
        else:
            for g, h in zip(grads, self.held):
                h += g
        for g in grads:
            g[:] = 0


def deal(ranks, accumulation: int, start_step: int, steps_per_epoch: int) -> list[tuple[int, int]]:
    """The (rank, batch) order in which a process standing for ``ranks`` draws an epoch's batches from
    batch ``start_step`` on: optimizer step by optimizer step (``accumulation`` batches of every rank), each
    rank's batches together and in its own order, so each rank's BatchNorm statistics see them as its
    process would have. ``start_step`` is a multiple of ``accumulation``."""
    out = []
    for first in range(start_step, steps_per_epoch - accumulation + 1, accumulation):
        out += [(rank, first + a) for rank in ranks for a in range(accumulation)]
    return out


class NominalWorld:
    """The job's nominal world as this process runs it: the shares, the per-rank gradient sums, the
    BatchNorm switch (``stats``: dist.RunningStats over the nominal ranks of this process) and the deal
    order. Per micro-batch the loop calls ``before`` and ``after``; ``after`` says when the step's last
    micro-batch is in, and ``update`` then applies the nominal world's average gradient."""

    def __init__(self, shares: Shares, params, stats):
        self.shares, self.stats = shares, stats
        self.params = list(params)
        self.gradients = RankGradients(self.params, shares)
        self.seen = 0  # micro-batches of the step under way
        if shares.micro_batches > 1:  # gradients summed over this process's micro-batches
            for p in self.params:
                p.grad_req = "add"

    @property
    def size(self) -> int:
        """The nominal world's rank count: what the training is defined for."""
        return self.shares.nominal

    @property
    def processes(self) -> int:
        return self.shares.size

    @property
    def ranks(self) -> list[int]:
        return self.shares.ranks

    def describe(self) -> str:
        return self.shares.describe()

    def samples_per_step(self, batch_size: int) -> int:
        """The global batch: the nominal world's, at any number of processes."""
        return batch_size * self.shares.nominal * self.shares.accumulation

    def deal(self, step_in_epoch: int, batches_per_epoch: int) -> list[tuple[int, int]]:
        """This process's (nominal rank, batch) order through an epoch from optimizer step ``step_in_epoch``."""
        a = self.shares.accumulation
        return deal(self.shares.ranks, a, step_in_epoch * a, batches_per_epoch)

    def before(self, batch) -> None:
        """Nominal rank ``batch.rank``'s BatchNorm statistics into the network: its forward pass updates them."""
        self.stats.select(batch.rank)

    def after(self, batch) -> bool:
        """After ``batch``'s backward pass: True once the step's last micro-batch on this process is in."""
        self.seen += 1
        if self.seen % self.shares.accumulation == 0:  # the last micro-batch of a nominal rank
            self.gradients.rank_done(batch.rank)
        if self.seen < self.shares.micro_batches:
            return False
        self.seen = 0
        return True

    def mean(self, sums) -> np.ndarray:
        """The nominal world's mean of per-micro-batch values summed over every process (an allreduce)."""
        return np.asarray(sums) / (self.shares.nominal * self.shares.accumulation)

    def update(self, trainer, loss_scale: float = 1.0) -> None:
        """The optimizer step on the nominal world's average gradient: the loss is a mean already, so average
        over this process's micro-batches (Horovod averages over the processes, so together over the nominal
        world's) and divide the loss scale out."""
        trainer.step(self.shares.micro_batches * loss_scale)

    def clear(self) -> None:
        """Gradients back to zero where they accumulate (after an update, or a skipped one)."""
        if self.shares.micro_batches > 1:
            for p in self.params:
                p.zero_grad()
