"""The sharded, augmenting training loader and the deterministic evaluation loader.

Sharding (``ShardedSampler``): every epoch has one global permutation of all
records, drawn from (seed, epoch) and therefore identical on every rank. It is
cut to a multiple of ``world_size * batch_size`` and dealt out by rank
(``perm[rank::world_size]``), so every rank gets the same number of batches
and no rank can wait in an allreduce that the others never reach. A batch is a
pure function of (seed, epoch, step, rank): resuming at (epoch, step) replays
exactly the batches an uninterrupted run would have seen.

A process may stand for several ranks of that world: a job that lost a node goes
on with fewer processes, each drawing the batches of the nominal ranks it stands
for (``epoch(..., order=)``), micro-batch by micro-batch, in the same order as they
would (facealign.train.world.deal). The data seen is then the same at any process count.

Augmentation of the sample with global index ``i`` in ``epoch`` draws from
``np.random.default_rng((seed, epoch, i))``: independent of rank, worker
count and timing.

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
from dataclasses import dataclass, field

import cv2
import numpy as np

from .codec import HeatmapCodec
from .pose import relative_depth
from .records import DataError, RecordFile, pose_degrees
from .schemes import get_scheme
from .transforms import AugmentConfig, apply, box_crop, draw_train_crop, flip_horizontal, photometric, similarity, warp


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


class RecordSet:
    """Several record files seen as one index space (files in the given order)."""

    def __init__(self, paths):
        paths = [paths] if isinstance(paths, (str, bytes)) or not hasattr(paths, "__iter__") else list(paths)
        if not paths:
            raise ValueError("no record files given")
        self.files = [RecordFile(p) for p in paths]
        self.starts = np.cumsum([0] + [len(f) for f in self.files])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[RecordFile, int]:
        j = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.files[j], i - int(self.starts[j])

    def sample(self, i: int, **kw):
        f, local = self.locate(i)
        return f.sample(local, **kw)


@dataclass(frozen=True)
class SampleConfig:
    """How one record becomes one network input; shared by training and evaluation."""

    input_size: int = 128
    num_points: int | None = None  # expected K; None accepts what the records hold
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_crop: str = "center"  # "center": the base_size window at the canvas centre; "box": 1.2 x landmark box
    decode_reduce: int = 1  # 2, 4 or 8: JPEG DCT-domain reduction, faster where the crop down-samples anyway
    on_error: str = "raise"  # "raise" or "skip" (replace by the next record; counted)
    scheme: str = "ibug68"  # the landmark scheme whose flip pairs re-label a mirrored face


@dataclass
class ProcessedSample:
    image: np.ndarray  # S x S x 3 uint8
    landmarks: np.ndarray  # K x D float32 in crop pixels
    transform: np.ndarray  # 2 x 3 affine, stored-image pixels -> crop pixels
    fallback: bool  # the augmentation fell back to the plain crop
    index: int
    source_landmarks: np.ndarray  # K x D float32 in the stored image's pixels
    source: str  # the record's source name
    yaw: float | None = None  # the head's yaw in degrees, where the record carries its pose


def process_sample(records: RecordSet, index: int, cfg: SampleConfig, *, train: bool, seed: int = 0,
                   epoch: int = 0) -> ProcessedSample:
    """Read, decode, crop and (for training) augment the record with global index ``index``."""
    s = records.sample(index, reduce=cfg.decode_reduce)
    if cfg.num_points is not None and s.landmarks.shape[0] != cfg.num_points:
        raise DataError(f"{s.meta.get('file')}: record {s.meta.get('index')}: has {s.landmarks.shape[0]} "
                        f"landmarks, the job expects {cfg.num_points}")
    # Landmarks stay in full-resolution pixels; the crop affine absorbs the decode reduction.
    full_h, full_w = s.image.shape[0] * cfg.decode_reduce, s.image.shape[1] * cfg.decode_reduce
    reduce_to_full = np.array([[cfg.decode_reduce, 0, (cfg.decode_reduce - 1) / 2],
                               [0, cfg.decode_reduce, (cfg.decode_reduce - 1) / 2]], np.float64)
    lm = s.landmarks
    size, aug = cfg.input_size, cfg.augment
    fallback = False
    if train:
        rng = np.random.default_rng((seed, epoch, index))
        M, ok = draw_train_crop(rng, (full_h, full_w), lm, size, aug)
        fallback = not ok
    elif cfg.eval_crop == "box":
        M = box_crop(s.box, size, expand=1.2)
    else:
        M = similarity((full_w / 2, full_h / 2), (size / 2, size / 2), size / aug.base_size, 0.0)
    M_reduced = M.copy()
    M_reduced[:, :2] = M[:, :2] @ reduce_to_full[:, :2]
    M_reduced[:, 2] = M[:, :2] @ reduce_to_full[:, 2] + M[:, 2]
    crop = warp(s.image, M_reduced, size)
    pts = apply(M, lm)  # z scales with x and y (facealign.data.pose: the depth convention)
    pts = (relative_depth(pts) if pts.shape[1] == 3 else pts).astype(np.float32)
    if train:
        if aug.flip and rng.random() < 0.5:
            scheme = get_scheme(cfg.scheme)
            crop, pts = flip_horizontal(crop, pts, scheme.flip)
            M = np.array([[-1, 0, size - 1], [0, 1, 0]], np.float64) @ np.vstack([M, [0, 0, 1]])
        crop = photometric(rng, crop, aug)
    source = s.meta.get("source", f"{s.meta.get('file')}[{s.meta.get('index')}]")
    pose = pose_degrees(s.meta)
    return ProcessedSample(crop, pts, M, fallback, index, lm, source, pose["yaw"] if pose else None)


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


def _process_batch(indices, train: bool, seed: int, epoch: int):
    return _build_batch(_WORKER["records"], _WORKER["cfg"], indices, train, seed, epoch)


def _build_batch(records: RecordSet, cfg: SampleConfig, indices, train: bool, seed: int, epoch: int):
    """Images (B, S, S, 3) uint8, landmarks (B, K, D), transforms (B, 2, 3), and counters; each skipped
    record as (file, index in it, why)."""
    images, points, transforms, used = [], [], [], []
    fallbacks, skipped, errors = 0, 0, []
    n = len(records)
    for index in indices:
        index = int(index)
        for attempt in range(n):
            try:
                p = process_sample(records, index, cfg, train=train, seed=seed, epoch=epoch)
                break
            except DataError as e:
                if cfg.on_error != "skip":
                    raise
                skipped += 1
                f, local = records.locate(index)
                errors.append((str(f.rec_path), local, str(e)))
                index = (index + 1) % n  # a deterministic substitute keeps batch sizes equal on all ranks
        else:
            raise DataError(f"every one of the {n} records failed to load")
        images.append(p.image)
        points.append(p.landmarks)
        transforms.append(p.transform)
        used.append(p.index)
        fallbacks += p.fallback
    dims = min(p.shape[1] for p in points)  # files with z and without: the batch keeps what every face has
    return (np.stack(images), np.stack([p[:, :dims] for p in points]), np.stack(transforms), np.array(used),
            fallbacks, skipped, errors)


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
                 train: bool = True, shuffle: bool | None = None):
        self.paths = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        self.records = RecordSet(self.paths)
        self.cfg, self.codec, self.train, self.seed = cfg, codec, train, seed
        if codec.input_size != cfg.input_size:
            raise ValueError(f"codec input_size {codec.input_size} != sample input_size {cfg.input_size}")
        self.rank = rank
        self.sampler = ShardedSampler(len(self.records), batch_size, rank, world_size, seed,
                                      shuffle=train if shuffle is None else shuffle)
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
            return _build_batch(self.records, self.cfg, indices, self.train, self.seed, epoch)
        with _trainer_signals_blocked():  # submit may spawn a worker (and the resource tracker)
            return self._ensure_pool().submit(_process_batch, indices, self.train, self.seed, epoch)

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
