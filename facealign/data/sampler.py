"""Which records each rank draws: ``ShardedSampler``.

Every epoch has one global permutation of all records, drawn from (seed, epoch) and therefore identical on
every rank. It is cut to a multiple of ``world_size * batch_size`` and dealt out by rank
(``perm[rank::world_size]``), so every rank gets the same number of batches and no rank can wait in an
allreduce that the others never reach. A batch is a pure function of (seed, epoch, step, rank): resuming at
(epoch, step) replays exactly the batches an uninterrupted run would have seen.

A process may stand for several ranks of that world: a job that lost a node goes on with fewer processes,
each drawing the batches of the nominal ranks it stands for (``TrainLoader.epoch(..., order=)``),
micro-batch by micro-batch, in the same order as they would (facealign.train.world.deal). The data seen is
then the same at any process count.
"""
from __future__ import annotations

import numpy as np


class ShardedSampler:
    """Which global record indices rank ``rank`` sees at (epoch, step)."""

    def __init__(self, num_records: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        per_step = batch_size * world_size
        if num_records < per_step:
            raise ValueError(f"{num_records} records cannot fill one step of {world_size} rank(s) x "
                             f"batch {batch_size} = {per_step} samples")
        self.num_records, self.batch_size = num_records, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.steps_per_epoch = num_records // per_step
        self.dropped_per_epoch = num_records - self.steps_per_epoch * per_step

    def epoch_indices(self, epoch: int, rank: int | None = None) -> np.ndarray:
        """Rank ``rank``'s (default: this sampler's) indices for the epoch, in order (length
        steps_per_epoch * batch_size)."""
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.num_records)
        else:
            order = np.arange(self.num_records)
        order = order[:self.steps_per_epoch * self.batch_size * self.world_size]
        return order[self.rank if rank is None else rank::self.world_size]

    def batch_indices(self, epoch: int, step: int, rank: int | None = None) -> np.ndarray:
        """Rank ``rank``'s (default: this sampler's) batch at (epoch, step)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        return self.epoch_indices(epoch, rank)[step * self.batch_size:(step + 1) * self.batch_size]
