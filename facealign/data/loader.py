"""The training loader: batches of a rank's shard (facealign.data.sampler), each sample read, cropped and
augmented by facealign.data.pipeline in worker processes, heatmaps encoded here.

Work split: worker processes (spawned, never forked from a process that runs
MXNet) read, decode, warp and augment; the main process encodes heatmaps with
the codec's Cython path straight into the batch. ``Batch.wait_s`` is how long
the consumer waited for the batch; the trainer turns it into a data-wait share.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from .codec import HeatmapCodec
from .pipeline import RecordSet, SampleConfig, build_batch
from .sampler import ShardedSampler


# --- worker processes -----------------------------------------------------------------------------

_WORKER: dict = {}


def _die_with_parent(parent_pid: int) -> None:
    """A worker whose trainer was killed must not live on: an orphan would keep the rank's stdout and
    stderr open, and horovodrun (or srun) would wait for them forever."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


# Slurm signals every process of a job step (scancel -s USR2, --signal=USR2@120, SIGTERM at the
# time limit), the trainer's data workers and multiprocessing's resource tracker included. Only the
# trainer acts on them: the helpers are started with these signals blocked and then ignore them, so
# a preemption signal cannot break the pool (BrokenProcessPool) before the checkpoint.
_TRAINER_SIGNALS = {signal.SIGTERM, signal.SIGUSR2, signal.SIGINT}


@contextlib.contextmanager
def _trainer_signals_blocked():
    """Block the trainer's signals in this thread while it may start helper processes (they inherit the
    mask through fork and exec); a signal arriving meanwhile is delivered when the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _TRAINER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _init_worker(paths, cfg: SampleConfig, parent_pid: int):
    for sig in _TRAINER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _TRAINER_SIGNALS)
    _die_with_parent(parent_pid)
    cv2.setNumThreads(1)  # one core per worker; OpenCV's own pool would oversubscribe
    _WORKER["records"] = RecordSet(paths)
    _WORKER["cfg"] = cfg


def _process_batch(indices, augment: bool, seed: int, epoch: int):
    return build_batch(_WORKER["records"], _WORKER["cfg"], indices, augment, seed, epoch)


@dataclass
class Batch:
    images: np.ndarray  # B x 3 x S x S uint8 (raw RGB; the network normalises)
    heatmaps: np.ndarray  # B x K x H x W float32 targets
    landmarks: np.ndarray  # B x K x D float32 in input pixels
    transforms: np.ndarray  # B x 2 x 3: stored-image pixels -> input pixels
    indices: np.ndarray  # B global record indices (after any skip substitution)
    epoch: int
    step: int
    rank: int  # the (nominal) rank whose batch this is
    skips: list  # (file, index in the file, why) of each record skipped for this batch
    wait_s: float  # how long the consumer waited for this batch


def _recycle_large_allocations() -> None:
    """Let glibc reuse freed batch buffers instead of unmapping them.

    Each batch's heatmaps are an ~18 MB array; glibc serves that with a fresh
    mmap whose pages fault in on first write, which cost more than encoding
    the heatmaps themselves. Raising the mmap and trim thresholds keeps freed
    buffers in the heap for the next batch. Process-wide and harmless for a
    training process; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class TrainLoader:
    """Batches for one rank: ``for batch in loader.epoch(e, start_step=s)``.

    ``workers=0`` processes in the calling thread; otherwise ``workers``
    spawned processes run ``prefetch`` batches ahead. ``stats`` counts samples,
    augmentation fall-backs and skipped records (in all and per file); each batch carries its
    own skips (``Batch.skips``) for the trainer to log as they happen.
    """

    def __init__(self, paths, *, batch_size: int, codec: HeatmapCodec, rank: int = 0, world_size: int = 1,
                 seed: int = 0, cfg: SampleConfig = SampleConfig(), workers: int = 0, prefetch: int = 4,
                 augment: bool = True, shuffle: bool | None = None):
        self.paths = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        self.records = RecordSet(self.paths)
        self.cfg, self.codec, self.augment, self.seed = cfg, codec, augment, seed
        if codec.input_size != cfg.input_size:
            raise ValueError(f"codec input_size {codec.input_size} != sample input_size {cfg.input_size}")
        self.rank = rank
        self.sampler = ShardedSampler(len(self.records), batch_size, rank, world_size, seed,
                                      shuffle=augment if shuffle is None else shuffle)
        self.workers, self.prefetch = workers, max(1, prefetch)
        self.stats = {"samples": 0, "fallbacks": 0, "skipped": 0, "skipped_by_file": {}}
        self._pool = None
        _recycle_large_allocations()

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def _ensure_pool(self):
        # concurrent.futures, not multiprocessing.Pool: a worker that dies fails its batch with
        # BrokenProcessPool instead of leaving the trainer waiting forever. Spawned, so a process
        # running MXNet is never forked; the launching script needs the usual __main__ guard.
        if self._pool is None and self.workers > 0:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.paths, self.cfg, os.getpid()))
        return self._pool

    def _submit(self, epoch: int, step: int, rank: int):
        indices = self.sampler.batch_indices(epoch, step, rank)
        if self.workers == 0:
            return build_batch(self.records, self.cfg, indices, self.augment, self.seed, epoch)
        with _trainer_signals_blocked():  # submit may spawn a worker (and the resource tracker)
            return self._ensure_pool().submit(_process_batch, indices, self.augment, self.seed, epoch)

    def epoch(self, epoch: int, start_step: int = 0, *, order=None):
        """Yield the batches of ``epoch``: this rank's from ``start_step`` on, or those of ``order``, (rank,
        batch) pairs of any ranks (a process standing for several: facealign.train.world.deal)."""
        if order is None:
            order = [(self.rank, step) for step in range(start_step, self.steps_per_epoch)]
        pending = deque()
        upcoming = iter(order)
        for rank, step in upcoming:
            pending.append((rank, step, self._submit(epoch, step, rank)))
            if len(pending) >= self.prefetch:
                break
        while pending:
            rank, step, job = pending.popleft()
            t0 = time.perf_counter()
            result = job.result() if hasattr(job, "result") else job
            images, points, transforms, used, fallbacks, skipped, errors = result
            heatmaps = self.codec.encode_batch(points)
            wait = time.perf_counter() - t0
            following = next(upcoming, None)  # keep the pipeline full before handing the batch out
            if following is not None:
                pending.append((*following, self._submit(epoch, following[1], following[0])))
            self.stats["samples"] += len(used)
            self.stats["fallbacks"] += fallbacks
            self.stats["skipped"] += skipped
            for file, _, _ in errors:
                self.stats["skipped_by_file"][file] = self.stats["skipped_by_file"].get(file, 0) + 1
            yield Batch(images=np.ascontiguousarray(images.transpose(0, 3, 1, 2)), heatmaps=heatmaps,
                        landmarks=points, transforms=transforms, indices=used, epoch=epoch, step=step, rank=rank,
                        wait_s=wait, skips=errors)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
