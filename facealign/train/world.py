"""The nominal world and the processes that run it: how a job keeps the same training on fewer ranks.

A job's training is defined for its nominal world, ``resources.nodes x tasks_per_node`` ranks: the
global batch, the data each rank draws, the BatchNorm statistics each rank keeps, the learning rate.
After a node is lost the job goes on with fewer processes (facealign-launch, launcher.slurm): each then
stands for a block of ``nominal / size`` nominal ranks, draws their micro-batches one after another
(facealign.data.loader.deal), keeps each one's BatchNorm statistics apart (dist.RunningStats), and
sums their gradients before the allreduce. Horovod's average over ``size`` processes times the
``micro_batches`` rescale is then the nominal world's average over ``nominal x accumulation``
micro-batches, so the run matches the nominal one to float rounding (the order of the sums).

The process count must divide the nominal world: a nominal rank's micro-batches stay in one process,
in order, because its BatchNorm statistics are updated by each in turn. Imports nothing but the spec.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def shares(spec: JobSpec, rank: int, size: int) -> Shares:
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
