"""One record to one network input, for training and evaluation alike: read, decode, crop and (for training)
augment (``process_sample``), and a batch of them (``build_batch``), with bad records raised or skipped.

Augmentation of the sample with global index ``i`` in ``epoch`` draws from
``np.random.default_rng((seed, epoch, i))``: independent of rank, worker count and timing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pose import relative_depth
from .records import DataError, RecordFile, pose_degrees
from .schemes import get_scheme
from .transforms import AugmentConfig, apply, box_crop, draw_train_crop, flip_horizontal, photometric, similarity, warp


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


def process_sample(records: RecordSet, index: int, cfg: SampleConfig, *, augment: bool, seed: int = 0,
                   epoch: int = 0) -> ProcessedSample:
    """Read, decode and crop the record with global index ``index``; ``augment``: the training crop and
    augmentation drawn from (seed, epoch, index), else the evaluation crop (``cfg.eval_crop``)."""
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
    if augment:
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
    if augment:
        if aug.flip and rng.random() < 0.5:
            scheme = get_scheme(cfg.scheme)
            crop, pts = flip_horizontal(crop, pts, scheme.flip)
            M = np.array([[-1, 0, size - 1], [0, 1, 0]], np.float64) @ np.vstack([M, [0, 0, 1]])
        crop = photometric(rng, crop, aug)
    source = s.meta.get("source", f"{s.meta.get('file')}[{s.meta.get('index')}]")
    pose = pose_degrees(s.meta)
    return ProcessedSample(crop, pts, M, fallback, index, lm, source, pose["yaw"] if pose else None)


def build_batch(records: RecordSet, cfg: SampleConfig, indices, augment: bool, seed: int, epoch: int):
    """Images (B, S, S, 3) uint8, landmarks (B, K, D), transforms (B, 2, 3), and counters; each skipped
    record as (file, index in it, why)."""
    images, points, transforms, used = [], [], [], []
    fallbacks, skipped, errors = 0, 0, []
    n = len(records)
    for index in indices:
        index = int(index)
        for attempt in range(n):
            try:
                p = process_sample(records, index, cfg, augment=augment, seed=seed, epoch=epoch)
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
