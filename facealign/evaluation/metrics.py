"""Normalised mean error (NME), cumulative error distribution, AUC and failure rate. NumPy only.

``nme(pred, gt, norm)`` takes (N, K, 2 or 3) arrays and returns the N
per-image values: the mean over landmarks of ||pred - gt|| divided by the
image's normaliser (computed from the ground truth's x, y):

  eye_centre    distance between the eye centres, each the midpoint of its two corners
                (36/39 and 42/45 on 68 points): the reference's 2D figure
  inter_ocular  distance between the outer eye corners (36 and 45)
  inter_pupil   distance between the centroids of the eyes' points
  box           sqrt(w * h) of the ground-truth landmark box: the reference's 3D figure
  box_diag      the ground-truth landmark box's diagonal

``jitter(pred, gt, norm)`` scores a video track: the RMS frame-to-frame change of the normalised error.
"""
from __future__ import annotations

import numpy as np

from facealign.data.pose import relative_depth
from facealign.data.schemes import LandmarkScheme, scheme_for

NORMALISATIONS = ("eye_centre", "inter_ocular", "inter_pupil", "box", "box_diag")


def primary_norm(landmark_dims: int) -> str:
    """The reference's normalisation: eye-centre distance in 2D, sqrt of the box area in 3D."""
    return "eye_centre" if landmark_dims == 2 else "box"


def norm_label(norm: str) -> str:
    """How a normalisation is named where a figure is printed: "eye-centre NME", "box NME", ..."""
    return norm.replace("_", "-") + " NME"


def normaliser(gt: np.ndarray, norm: str = "eye_centre", scheme: LandmarkScheme | None = None) -> np.ndarray:
    gt = np.asarray(gt, np.float64)[..., :2]
    if norm not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {norm!r}; expected one of {NORMALISATIONS}")
    if norm in ("box", "box_diag"):
        size = gt.max(1) - gt.min(1)
        return np.sqrt(size[:, 0] * size[:, 1]) if norm == "box" else np.hypot(size[:, 0], size[:, 1])
    scheme = scheme or scheme_for(gt.shape[1])
    ol, il, ir, orr = scheme.eye_corners
    if norm == "eye_centre":
        left, right = (gt[:, ol] + gt[:, il]) / 2, (gt[:, ir] + gt[:, orr]) / 2
    elif norm == "inter_ocular":
        left, right = gt[:, ol], gt[:, orr]
    else:
        left, right = gt[:, list(scheme.left_eye)].mean(1), gt[:, list(scheme.right_eye)].mean(1)
    return np.linalg.norm(left - right, axis=1)


def nme(pred, gt, norm: str = "eye_centre", scheme: LandmarkScheme | None = None) -> np.ndarray:
    """Per-image NME (as a fraction: multiply by 100 for the usual percentages)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape[:2] != gt.shape[:2] or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, K, D)")
    if len(gt) == 0:
        return np.zeros(0)
    d = min(pred.shape[2], gt.shape[2])
    err = np.linalg.norm(pred[..., :d] - gt[..., :d], axis=2).mean(1)
    return err / np.maximum(normaliser(gt, norm, scheme), 1e-12)


def jitter(pred, gt, norm: str = "eye_centre", scheme: LandmarkScheme | None = None) -> float:
    """How much a video's landmarks shake, as a fraction of the normaliser: the RMS, over consecutive frames and
    landmarks, of the change of the error (prediction - truth, x and y, over the frame's normaliser) from one
    frame to the next. ``pred`` and ``gt`` are (T, K, D) tracks of one face. An error that stays put (a bias)
    or a face that moves is no jitter; points that wander around the truth are."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape[:2] != gt.shape[:2] or pred.ndim != 3 or len(gt) < 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (T, K, D) with T >= 2 frames")
    err = (pred[..., :2] - gt[..., :2]) / np.maximum(normaliser(gt, norm, scheme), 1e-12)[:, None, None]
    return float(np.sqrt(np.mean(np.sum(np.diff(err, axis=0) ** 2, axis=2))))


def nme_3d(pred, gt, norm: str = "box") -> np.ndarray:
    """Per-image 3D NME: the mean Euclidean error over x, y and z (each face's z relative to its mean), over
    the normaliser of the ground truth's x, y (the square root of its box area by default, as the reference
    normalises 3D)."""
    pred, gt = relative_depth(pred), relative_depth(gt)
    err = np.linalg.norm(pred - gt, axis=2).mean(1)
    return err / np.maximum(normaliser(gt, norm), 1e-12)


def z_nme(pred, gt, norm: str = "box") -> np.ndarray:
    """Per-image depth error alone: the mean |z error| (relative to each face's mean z) over the normaliser."""
    pred, gt = relative_depth(pred), relative_depth(gt)
    return np.abs(pred[..., 2] - gt[..., 2]).mean(1) / np.maximum(normaliser(gt, norm), 1e-12)


def ced(nmes, threshold: float = 0.1, steps: int = 1000):
    """The cumulative error distribution: (thresholds, fraction of images with NME <= each)."""
    xs = np.linspace(0, threshold, steps + 1)
    nmes = np.sort(np.asarray(nmes))
    return xs, np.searchsorted(nmes, xs, side="right") / max(len(nmes), 1)


def auc_and_failure(nmes, threshold: float = 0.1) -> tuple[float, float]:
    """Area under the CED up to ``threshold`` (normalised to 1) and the share of images above it."""
    xs, ys = ced(nmes, threshold)
    return float(np.trapz(ys, xs) / threshold), float(np.mean(np.asarray(nmes) > threshold))
