"""Geometry and photometry of training and evaluation crops: pure NumPy / OpenCV.

Every crop is a 2x3 affine ``M`` from source pixels to crop pixels. Images are
warped with it and landmarks mapped with it, and ``invert(M)`` maps
predictions back, so the image, the targets and the inverse mapping all come
from one matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (K, >=2) points with a 2x3 affine; extra columns (z) are scaled by the affine's scale."""
    pts = np.asarray(pts, np.float64)
    out = pts.copy()
    out[:, :2] = pts[:, :2] @ M[:, :2].T + M[:, 2]
    if pts.shape[1] > 2:
        out[:, 2:] = pts[:, 2:] * math.sqrt(abs(np.linalg.det(M[:, :2])))
    return out


def invert(M: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(M, np.float64))


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine of ``outer`` after ``inner``."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


def similarity(center_src, center_dst, scale: float, rotation_deg: float) -> np.ndarray:
    """Affine that scales by ``scale`` and rotates by ``rotation_deg`` (counter-clockwise on screen)
    about ``center_src``, moving it to ``center_dst``. The reference's
    ``T(dst) . R(rot) . T(-c.s) . S(s)`` (seed-spec §4.3)."""
    a = math.radians(rotation_deg)
    cos, sin = math.cos(a) * scale, math.sin(a) * scale
    # Image y points down, so a counter-clockwise screen rotation is [[cos, sin], [-sin, cos]].
    M = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]])
    M[:, 2] = np.asarray(center_dst, np.float64) - M[:, :2] @ np.asarray(center_src, np.float64)
    return M


def box_crop(box, out_size: int, *, expand: float = 1.2, top_margin: float = 0.0,
             integer_center: bool = False) -> np.ndarray:
    """Square crop around a box: side ``expand * max(w, h)`` centred on the box, scaled to ``out_size``.

    ``top_margin`` first moves the box's top up by that many pixels (clamped at 0),
    and ``integer_center`` truncates the centre to int: both as the reference's
    evaluation crop (``transform2`` + ``estimate_trans_bbox``, seed-spec §4.6).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    y0 = max(y0 - top_margin, 0.0) if top_margin else y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if integer_center:
        cx, cy = float(int(cx)), float(int(cy))
    scale = out_size / (expand * max(x1 - x0, y1 - y0, 1e-6))
    center_dst = out_size / 2 if integer_center else (out_size - 1) / 2
    if integer_center:  # the reference maps the centre to out/2 exactly
        return np.array([[scale, 0, center_dst - cx * scale], [0, scale, center_dst - cy * scale]])
    return similarity((cx, cy), (center_dst, center_dst), scale, 0.0)


def warp(image: np.ndarray, M: np.ndarray, size: int, *, border_value=0) -> np.ndarray:
    """Bilinear warp to ``size x size`` with a constant border (the reference's cv2.warpAffine)."""
    return cv2.warpAffine(image, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border_value)


def flip_horizontal(image: np.ndarray, landmarks: np.ndarray, flip_perm) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an H x W x C crop and its landmarks; ``flip_perm`` re-labels left and right points."""
    w = image.shape[1]
    out = landmarks[list(flip_perm)].copy()
    out[:, 0] = (w - 1) - out[:, 0]  # pixel centres mirror about (w - 1) / 2; depth is unchanged
    return cv2.flip(image, 1), out


# --- training augmentation ---------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. Defaults are the reference's (seed-spec §4.3); extras default off.

    Rotation is uniform over whole degrees in [-rotate, rotate) (the reference's
    ``randint(-40, 40)``), scale is ``clip(N(1, scale_sigma), 1 - scale_clip, 1 + scale_clip)``
    of the ``base_size`` window, and a draw that puts any landmark outside the
    crop is redrawn up to ``max_tries`` times, then replaced by the plain
    centred crop (the reference dropped such samples; dropping would make
    ranks' batch counts differ).
    """

    base_size: float = 256.0  # side of the training window in source pixels, before the random scale
    rotate: float = 40.0
    scale_sigma: float = 0.2
    scale_clip: float = 0.2
    flip: bool = True
    translate: float = 0.0  # max shift of the window centre, as a fraction of its side
    color: float = 0.0  # brightness / contrast / saturation jitter strength (0..1)
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.5..1.5 crop pixels)
    occlusion: float = 0.0  # probability of a random occluding rectangle
    grey: float = 0.0  # probability of a greyscale crop
    randconv: float = 0.0  # probability of a random convolution (``random_convolution``)
    max_tries: int = 3


def draw_train_crop(rng: np.random.Generator, image_size: tuple[int, int], landmarks: np.ndarray, out_size: int,
                    cfg: AugmentConfig) -> tuple[np.ndarray, bool]:
    """Draw the random crop affine; returns (M, whether a draw kept every landmark inside)."""
    h, w = image_size
    center = np.array([w / 2, h / 2])
    for _ in range(cfg.max_tries):
        rot = float(rng.integers(-int(cfg.rotate), int(cfg.rotate))) if cfg.rotate >= 1 else 0.0
        ratio = float(np.clip(rng.normal(1.0, cfg.scale_sigma), 1 - cfg.scale_clip, 1 + cfg.scale_clip))
        side = int(cfg.base_size * ratio)  # int(): the reference's truncation
        shift = rng.uniform(-cfg.translate, cfg.translate, 2) * side if cfg.translate > 0 else 0.0
        M = similarity(center + shift, (out_size / 2, out_size / 2), out_size / side, rot)
        p = apply(M, landmarks[:, :2])
        if (p >= 0).all() and (p < out_size).all():
            return M, True
    return similarity(center, (out_size / 2, out_size / 2), out_size / cfg.base_size, 0.0), False


def photometric(rng: np.random.Generator, crop: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Optional colour jitter, blur and occlusion on a uint8 RGB crop (in place when possible)."""
    if cfg.color > 0:
        c = cfg.color
        alpha = 1 + rng.uniform(-c, c)  # contrast
        beta = rng.uniform(-c, c) * 64  # brightness
        sat = 1 + rng.uniform(-c, c)
        f = crop.astype(np.float32)
        grey = f.mean(axis=2, keepdims=True)
        f = (grey + (f - grey) * sat) * alpha + beta
        crop = np.clip(f, 0, 255).astype(np.uint8)
    if cfg.grey > 0 and rng.random() < cfg.grey:
        crop = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    if cfg.randconv > 0 and rng.random() < cfg.randconv:
        crop = random_convolution(rng, crop)
    if cfg.blur > 0 and rng.random() < cfg.blur:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.5, 1.5))
    if cfg.occlusion > 0 and rng.random() < cfg.occlusion:
        s = crop.shape[0]
        ow, oh = (rng.uniform(0.15, 0.45, 2) * s).astype(int)
        x0, y0 = rng.integers(0, s - ow), rng.integers(0, s - oh)
        crop = crop.copy() if not crop.flags.writeable else crop
        crop[y0:y0 + oh, x0:x0 + ow] = rng.integers(0, 256, 3, dtype=np.uint8)
    return crop


RANDCONV_SIZES = (1, 3, 5, 7)


def random_convolution(rng: np.random.Generator, crop: np.ndarray) -> np.ndarray:
    """RandConv (Xu et al., ICLR 2021): the crop through a random 3 -> 3 channel convolution (kernel side from
    ``RANDCONV_SIZES``, He-normal weights), each output channel matched to the crop's mean and spread, mixed with
    the crop by a uniform weight. Textures and colours change, shapes stay, so that a model leans on shapes; on
    our procedural faces it did not help on real photographs (docs/performance.md)."""
    k = int(rng.choice(RANDCONV_SIZES))
    weights = rng.normal(0.0, 1.0 / np.sqrt(k * k * 3), (3, 3, k, k)).astype(np.float32)  # out, in, kh, kw
    f = crop.astype(np.float32)
    out = np.zeros_like(f)
    for o in range(3):
        for i in range(3):
            out[:, :, o] += cv2.filter2D(f[:, :, i], -1, weights[o, i], borderType=cv2.BORDER_REFLECT)
    mean, std = f.mean(axis=(0, 1)), f.std(axis=(0, 1)) + 1e-3
    out = (out - out.mean(axis=(0, 1))) / (out.std(axis=(0, 1)) + 1e-3) * std + mean
    alpha = rng.uniform(0.0, 1.0)
    return np.clip(alpha * f + (1 - alpha) * out, 0, 255).astype(np.uint8)


# --- framing of packed records and of the crops made from them ------------------------------------

# facealign-pack's defaults: a PACKED_CANVAS-pixel square covering PACKED_CONTEXT x the landmark box's
# longer side (the reference's records).
PACKED_CANVAS = 384
PACKED_CONTEXT = 2.25
BOX_CROP_FRAMING = 1.2  # eval.crop: box, and the reference's evaluation crops


def crop_framing(eval_crop: str, base_size: float = 256.0, canvas: int = PACKED_CANVAS,
                 context: float = PACKED_CONTEXT) -> float:
    """Crop side / landmark-box side of a model's evaluation crops: 1.2 for ``box`` crops; for ``center``
    crops, the ``base_size`` window of a canvas that covers ``context`` x the landmark box."""
    return BOX_CROP_FRAMING if eval_crop == "box" else base_size / canvas * context


# --- the reference's evaluation crop (seed-spec §4.6, §6.2) -----------------------------------------

# ArcFace's 112 x 112 five-point template (left eye, right eye, nose tip, mouth corners), which the
# reference scales x2 + 80 when its canvas is 384 pixels.
ARCFACE_5PT = np.array([[38.2946, 41.6963], [73.5318, 41.5014], [56.0252, 61.7366],
                        [41.5493, 82.3655], [70.7299, 82.2041]])
# The reference's per-test-set top margin of the landmark box, in canvas pixels (30 for any other set).
REFERENCE_TOP_MARGIN = {"ibug": 36.0, "cofw_testset": 45.0, "300W": 40.0}
DEFAULT_TOP_MARGIN = 30.0


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping 2D src onto dst: 2 x 3."""
    return similarity_fit(src, dst)[:2]


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping (N, D) src onto dst, as a homogeneous (D + 1) x (D + 1) matrix.

    skimage's ``SimilarityTransform.estimate`` (Umeyama 1991), which the reference uses for its
    five-point alignment, step for step and in the inputs' precision: the reference passes
    float32 points, so its means, covariance and SVD are float32, and so are these. The rotation is
    proper (determinant +1).
    """
    src, dst = np.asarray(src), np.asarray(dst)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    A = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(A) < 0:
        d[dim - 1] = -1
    T = np.eye(dim + 1, dtype=np.float64)
    U, S, V = np.linalg.svd(A)
    rank = np.linalg.matrix_rank(A)
    if rank == 0:
        raise ValueError("umeyama: the source points are all the same point")
    if rank == dim - 1 and np.linalg.det(U) * np.linalg.det(V) > 0:
        T[:dim, :dim] = U @ V
    elif rank == dim - 1:
        flipped = d.copy()
        flipped[dim - 1] = -1
        T[:dim, :dim] = U @ np.diag(flipped) @ V
    else:
        T[:dim, :dim] = U @ np.diag(d) @ V
    scale = 1.0 / src_demean.var(axis=0).sum() * (S @ d)
    T[:dim, dim] = dst_mean - scale * (T[:dim, :dim] @ src_mean.T)
    T[:dim, :dim] *= scale
    return T


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """The reference's five points from 68 (float32, as its ``preprocess`` computes them): eye centres
    (36+39)/2 and (42+45)/2, nose tip 30, mouth corners 48 and 54."""
    p = np.asarray(landmarks68, np.float32)[:, :2]
    return np.stack([(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]])


def reference_alignment(landmarks68: np.ndarray, canvas: int) -> np.ndarray:
    """The reference's first resampling (``img_helper.preprocess``): the five-point similarity onto the
    ArcFace template, scaled x2 + 80 only when the canvas (the record's height) is 384 pixels."""
    template = ARCFACE_5PT.astype(np.float32)
    if canvas == 384:
        template = template * 2 + 80
    return umeyama(five_points(landmarks68), template)


def reference_crop(aligned: np.ndarray, out_size: int, top_margin: float) -> np.ndarray:
    """The reference's second resampling (``transform2`` + ``estimate_trans_bbox``) from the aligned
    landmarks: their box, its top moved up by ``top_margin`` (clamped at 0), a square of 1.2 x its
    longer side around its integer centre. float32 where the reference keeps float32."""
    a = np.asarray(aligned, np.float32)[:, :2]
    x0, y0 = a.min(0)
    x1, y1 = a.max(0)
    y0 = np.float32(0) if y0 < top_margin else y0 - np.float32(top_margin)
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    scale = out_size / (max(x1 - x0, y1 - y0) * BOX_CROP_FRAMING)
    return np.array([[scale, 0, out_size // 2 - cx * scale], [0, scale, out_size // 2 - cy * scale]], np.float64)


def reference_eval_warps(landmarks68: np.ndarray, image_height: int, out_size: int,
                         top_margin: float) -> list[tuple[np.ndarray, int]]:
    """``test_rec_nme.py``'s two resamplings from ground truth, as (2 x 3 affine, output side) pairs:
    the record to the aligned square canvas of its own height (kept as uint8), then the canvas to the
    ``out_size`` crop. ``warp_chain`` applies them; ``compose`` of the two maps points."""
    align = reference_alignment(landmarks68, image_height)
    aligned = apply(align, np.asarray(landmarks68, np.float32)[:, :2]).astype(np.float32)
    return [(align, int(image_height)), (reference_crop(aligned, out_size, top_margin), out_size)]


def warp_chain(image: np.ndarray, warps) -> np.ndarray:
    """Resample ``image`` through each (affine, side) in turn, as uint8 between steps."""
    for M, size in warps:
        image = warp(image, M, size)
    return image


def chain_transform(warps) -> np.ndarray:
    """The single 2 x 3 affine of a chain of warps (for mapping points, not pixels)."""
    M = np.asarray(warps[0][0], np.float64)
    for step, _ in warps[1:]:
        M = compose(step, M)
    return M
