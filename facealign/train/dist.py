"""The Horovod facade the trainer uses: rank facts and a few collectives on NumPy values.

Every collective must be called by every rank in the same order: callers keep
that invariant by never calling these inside rank-dependent branches.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def init(cpu: bool = False) -> World:
    """Start Horovod. On CPU ranks, Horovod's background thread polls every 10 ms instead of 1 ms
    (unless HOROVOD_CYCLE_TIME is set): with a core or two per rank the 1 ms polling competes with
    the compute (scaling efficiency 76% -> 90% at 2 ranks here), and 10 ms is nothing against a
    CPU step of seconds. GPU ranks keep Horovod's default."""
    import horovod.mxnet as hvd

    if cpu:
        os.environ.setdefault("HOROVOD_CYCLE_TIME", "10")
    hvd.init()
    return World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())


def device(world: World, gpus_per_node: int):
    """One device per rank: the GPU of the local rank, gpu(0) when CUDA_VISIBLE_DEVICES shows one GPU
    (Slurm's per-task binding), or the CPU."""
    import mxnet as mx

    if not gpus_per_node:
        return mx.cpu()
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return mx.gpu(0) if len(visible) == 1 else mx.gpu(world.local_rank)


_WAITING = [None]  # since when this rank waits in a collective (facealign.train.watchdog asks)


@contextlib.contextmanager
def collective():
    """Marks a wait for the other ranks: a rank stalled elsewhere is then told from one that waits for it."""
    outer = _WAITING[0]
    if outer is None:
        _WAITING[0] = time.monotonic()
    try:
        yield
    finally:
        if outer is None:
            _WAITING[0] = None


def waiting_since() -> float | None:
    return _WAITING[0]


def allreduce(value) -> np.ndarray:
    """Sum a NumPy array or scalar over all ranks."""
    import horovod.mxnet as hvd
    import mxnet as mx

    arr = mx.nd.array(np.atleast_1d(np.asarray(value, np.float64)), dtype="float64")
    with collective():
        return hvd.allreduce(arr, op=hvd.Sum).asnumpy()


def broadcast_object(obj, name: str, root: int = 0):
    """Rank ``root``'s JSON-able object on every rank.

    Built on ``allreduce`` (the root contributes the bytes, the others zeros) rather than Horovod's
    ``broadcast_object``: on the root that returns before the others have the data, so a root that
    then stopped shut Horovod down under them, and in one-process runs it crashed the process about
    once in a hundred (a segmentation fault in the collective after it). ``name`` says what it is
    for in tracebacks; like every collective here, every rank must call it in the same order.
    """
    import horovod.mxnet as hvd

    mine = hvd.rank() == root
    data = json.dumps(obj).encode() if mine else b""
    size = int(allreduce([len(data)])[0])
    buf = np.zeros(size)
    if mine:
        buf[:] = np.frombuffer(data, np.uint8)
    return json.loads(allreduce(buf).astype(np.uint8).tobytes()) if size else None


def allgather_object(obj, name: str) -> list:
    """Every rank's JSON-able object, in rank order, on every rank (two allreduces)."""
    import horovod.mxnet as hvd

    rank, size = hvd.rank(), hvd.size()
    data = json.dumps(obj).encode()
    lengths = np.zeros(size)
    lengths[rank] = len(data)
    lengths = allreduce(lengths).astype(int)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    buf = np.zeros(int(starts[-1]))
    buf[starts[rank]:starts[rank + 1]] = np.frombuffer(data, np.uint8)
    joined = allreduce(buf).astype(np.uint8).tobytes()
    return [json.loads(joined[starts[r]:starts[r + 1]]) for r in range(size)]


def barrier() -> None:
    allreduce(0.0)


class RunningStats:
    """BatchNorm running statistics across ranks.

    Horovod averages gradients, not BatchNorm statistics: each rank's running
    mean and variance follow its own data. For validation and checkpoints we
    want the rank average (the better estimate, and identical everywhere); for
    exact resume each rank must get back its own.

    A process may stand for several nominal ranks (facealign.train.world): it keeps
    each one's statistics apart, and ``select(rank)`` puts that rank's in the network
    before its micro-batch's forward pass updates them. ``gather()`` collects every
    nominal rank's values in rank order with one allreduce; ``average()`` picks from
    that; ``swapped(values)`` runs a block with other values in place.
    """

    def __init__(self, net, world: World, ranks=None):
        self.world = world
        from facealign.models import structural_parameters

        self.params = [(k, p) for k, p in sorted(structural_parameters(net).items()) if p.grad_req == "null"]
        self.ranks = list(ranks) if ranks is not None else [world.rank]
        self.start()

    def start(self, own: dict | None = None) -> None:
        """Every nominal rank of this process from ``own`` ({rank: values}, a checkpoint's) where given,
        else from the network's present values."""
        base = self.current()
        own = own or {}
        self.active = self.ranks[0]
        self.load(own.get(self.active, base))
        self.held = {r: own.get(r, base) for r in self.ranks[1:]}  # the ranks not in the network

    def select(self, rank: int) -> None:
        """Nominal rank ``rank``'s statistics into the network (its forward pass updates them)."""
        if rank != self.active:
            self.held[self.active] = self.current()
            self.load(self.held.pop(rank))
            self.active = rank

    def mine(self) -> list[dict]:
        """This process's nominal ranks' values, in rank order."""
        return [self.current() if r == self.active else self.held[r] for r in self.ranks]

    def gather(self) -> list[dict]:
        """[{structural name: NDArray} for each nominal rank]"""
        import horovod.mxnet as hvd
        import mxnet as mx

        if not self.params:
            return [{} for _ in range(self.world.size * len(self.ranks))]
        rows = mx.nd.stack(*[mx.nd.concat(*[values[k].reshape(-1).as_in_context(p.data().context) for k, p in self.params],
                                          dim=0) for values in self.mine()])
        with collective():
            if self.world.size > 1:
                # an allreduce of zeros but this process's slot, not hvd.allgather, whose output Horovod's background
                # thread resizes (the crash class of its MXNet allgather); adding zeros is exact
                slots = mx.nd.zeros((self.world.size,) + rows.shape, ctx=rows.context, dtype=rows.dtype)
                slots[self.world.rank] = rows
                every = hvd.allreduce(slots, op=hvd.Sum, name="facealign.running_stats").reshape((-1, rows.shape[1]))
            else:
                every = rows
            every.wait_to_read()
        out = []
        for r in range(every.shape[0]):
            row, offset, values = every[r], 0, {}
            for k, p in self.params:
                n = int(p.data().size)
                values[k] = row[offset:offset + n].reshape(p.shape).copy()
                offset += n
            out.append(values)
        return out

    @staticmethod
    def average(gathered: list[dict]) -> dict:
        from facealign.runs.checkpoint_format import average_over_ranks

        return average_over_ranks(gathered)

    def current(self) -> dict:
        return {k: p.data().copy() for k, p in self.params}

    def load(self, values: dict) -> None:
        for k, p in self.params:
            if k in values:
                p.set_data(values[k])

    @contextlib.contextmanager
    def swapped(self, values: dict):
        local = self.current()
        self.load(values)
        try:
            yield
        finally:
            self.load(local)
