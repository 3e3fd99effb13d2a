"""Photographic procedural faces: a smooth, textured, lit 3D head in a photographed scene.

The head is one dense surface, parametrised by (theta, phi) around an ellipsoid: theta turns
about the vertical axis (0 faces the camera), phi is the elevation. The surface passes exactly
through the face's 68 3D landmarks (after identity and expression, ``faces.face_shape``):
each landmark's radial offset from the ellipsoid is interpolated over (theta, phi) with a thin-plate
spline, anchored by cheek, forehead and skull points. A neck and shoulders (one surface of
revolution) carry skin and clothing.

Everything that is painted (skin, eyes, brows, lips, nostrils, stubble, hair, ears, shadows in the
creases) is painted in texture space at the landmarks' own (theta, phi), so it stays on the face
at any pose and is hidden by whatever is nearer (the nose hides the far eye). The meshes go
through a z-buffered rasteriser (``raster.py``); normals and texture coordinates are
interpolated per pixel and shaded with two coloured lights, a sky/ground ambient, wrapped
diffuse and specular highlights. Then the scene: photographic backgrounds (scikit-image's
face-free sample images, procedural textures), occluders, glasses; then the camera: exposure,
white balance, vignetting, defocus or motion blur, sensor noise, low resolution, JPEG,
greyscale.

Labels: ``landmarks`` are the 3D landmarks projected (x-ray: the AFLW2000-3D convention, with
z); ``visible_landmarks`` move the jaw points (0-5, 11-16) that the head's turn hides to the
visible outline of the face on their row (300-W's convention, with the outline point's z).

``render_face(seed, index)`` is a pure function of its arguments.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec

import cv2
import numpy as np
from PIL import Image

from facealign.data.pose import head_rotation, mean_face

from .faces import CANVAS, SyntheticFace, face_shape, open_mouth_by
from .raster import interpolate, rasterize
from .threads import one_blas_thread

# --- the head surface --------------------------------------------------------------------------

HEAD_C = np.array([0.0, -0.38, -0.74])  # template units: nose tip at the origin, y down, z to the camera
HEAD_A = np.array([0.80, 1.08, 0.78])
N_THETA, N_PHI = 96, 64
PHI_MAX = 1.50
TEX_W, TEX_H = 512, 256  # head texture: u = theta over [-pi, pi), v = phi from +pi/2 (top) to -pi/2

# Anchors beside the landmarks (template frame): cheeks, temples, forehead, under the chin; their
# radial offsets are taken from these points. Skull points elsewhere keep the ellipsoid (offset 0).
_ANCHORS = np.array([
    [-0.50, -0.06, -0.36], [0.50, -0.06, -0.36], [-0.44, 0.22, -0.36], [0.44, 0.22, -0.36],
    [-0.60, -0.30, -0.52], [0.60, -0.30, -0.52],
    [-0.70, -0.66, -0.64], [0.70, -0.66, -0.64],
    [0.0, -0.80, -0.16], [-0.34, -0.80, -0.24], [0.34, -0.80, -0.24],
    [0.0, -1.08, -0.30], [-0.40, -1.08, -0.42], [0.40, -1.08, -0.42],
    [0.0, 0.72, -0.80], [-0.30, 0.62, -0.86], [0.30, 0.62, -0.86],
    [-0.76, -0.22, -0.90], [0.76, -0.22, -0.90],  # ears: a bump, from the brows' height to the nose's
])
# the jaw's width kept this far in front of its sides, and behind them below the ears (template units)
JAW_SIDES, JAW_BELOW_EAR, JAW_DEPTH = [1, 2, 3, 4, 5, 11, 12, 13, 14, 15], [2, 3, 4, 12, 13, 14], 0.12
NAPE_R = 0.4  # the back of the head below the ears: this far around the neck's axis (the neck: 0.30-0.40)


def _param(points: np.ndarray):
    """(theta, phi, radial offset) of template points about the head ellipsoid."""
    d = (points - HEAD_C) / HEAD_A
    r = np.linalg.norm(d, axis=1)
    theta = np.arctan2(d[:, 0], d[:, 2])
    phi = np.arctan2(-d[:, 1], np.hypot(d[:, 0], d[:, 2]))
    return theta, phi, r - 1


def _surface(theta, phi, offset):
    d = np.stack([np.cos(phi) * np.sin(theta), -np.sin(phi), np.cos(phi) * np.cos(theta)], -1)
    return HEAD_C + HEAD_A * d * (1 + offset)[..., None]


@lru_cache(maxsize=1)
def _skull_anchors():
    """(theta, phi, radial offset): the ellipsoid at the back and top of the skull; below the ears, at the back,
    the head narrows into the neck (a full ellipsoid there would bulge past the jaw, seen from the front)."""
    th, ph = np.meshgrid(np.linspace(-np.pi, np.pi, 9), np.linspace(-1.3, 1.3, 6))
    keep = ((np.abs(th) > 2.0) & (ph > -0.3)) | (ph > 1.0)
    a, y = np.meshgrid(np.radians([-140, -100, 100, 140, 180]), [0.30, 0.55])
    nape = np.column_stack([NAPE_R * np.sin(a.ravel()), y.ravel(), -0.98 + NAPE_R * np.cos(a.ravel())])
    n_t, n_p, n_o = _param(nape)
    return np.column_stack([np.concatenate([th[keep], n_t]), np.concatenate([ph[keep], n_p]),
                            np.concatenate([np.zeros(keep.sum()), n_o])])


def _tps_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """r^2 log r between every point of a and of b (as 0.5 r^2 log r^2: no square root)."""
    d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)
    return 0.5 * d2 * np.log(np.maximum(d2, 1e-20))


def _tps_weights(ctrl: np.ndarray, values: np.ndarray, smooth: float = 1e-4) -> np.ndarray:
    n = len(ctrl)
    K = _tps_kernel(ctrl, ctrl) + smooth * np.eye(n)
    P = np.column_stack([np.ones(n), ctrl])
    A = np.block([[K, P], [P.T, np.zeros((3, 3))]])
    return np.linalg.solve(A, np.concatenate([values, np.zeros(3)]))


def _tps_eval(ctrl: np.ndarray, w: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return _tps_kernel(pts, ctrl) @ w[:-3] + w[-3] + pts @ w[-2:]


@lru_cache(maxsize=1)
def _grid():
    """Head grid (theta, phi) per vertex and its triangles; theta wraps."""
    th = np.linspace(-np.pi, np.pi, N_THETA, endpoint=False)
    ph = np.linspace(PHI_MAX, -PHI_MAX, N_PHI)
    TH, PH = np.meshgrid(th, ph)
    idx = np.arange(N_PHI * N_THETA).reshape(N_PHI, N_THETA)
    a, b = idx[:-1], np.roll(idx, -1, axis=1)[:-1]
    c, d = idx[1:], np.roll(idx, -1, axis=1)[1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return np.column_stack([TH.ravel(), PH.ravel()]), tris.astype(np.int32)


def _uv_head(theta, phi):
    """Texture pixel coordinates of (theta, phi)."""
    return np.stack([(theta + np.pi) / (2 * np.pi) * TEX_W, (np.pi / 2 - phi) / np.pi * TEX_H], -1)


BODY_W, BODY_H = 384, 256
_BODY_Y = np.linspace(0.15, 3.2, 40)


@lru_cache(maxsize=1)
def _body_grid():
    th = np.linspace(-np.pi, np.pi, 64, endpoint=False)
    TH, Y = np.meshgrid(th, _BODY_Y)
    idx = np.arange(TH.size).reshape(TH.shape)
    a, b = idx[:-1], np.roll(idx, -1, axis=1)[:-1]
    c, d = idx[1:], np.roll(idx, -1, axis=1)[1:]
    tris = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    return TH.ravel(), Y.ravel(), tris.astype(np.int32)


def _body(rng, neck_w):
    """Neck and shoulders: a surface of revolution whose radius widens below the neck."""
    th, y, tris = _body_grid()
    shoulder_y = rng.uniform(1.1, 1.45)
    s = np.clip((y - shoulder_y + 0.35) / 0.45, 0, 1)
    s = s * s * (3 - 2 * s)
    rx = neck_w + (rng.uniform(1.5, 1.9) - neck_w) * s
    rz = neck_w * 0.95 + 0.2 * s
    pts = np.column_stack([rx * np.sin(th), y, -0.98 + rz * np.cos(th)])
    uv = np.column_stack([(th + np.pi) / (2 * np.pi) * BODY_W, (y - _BODY_Y[0]) / (_BODY_Y[-1] - _BODY_Y[0]) * BODY_H])
    return pts, uv, tris, shoulder_y


def _normals(pts: np.ndarray, shape, wrap_axis=1) -> np.ndarray:
    """Outward unit normals of a (rows, cols) grid of points wrapping along its columns."""
    g = pts.reshape(*shape, 3)
    du = np.roll(g, -1, axis=1) - np.roll(g, 1, axis=1)
    dv = np.gradient(g, axis=0)
    n = np.cross(du, dv).reshape(-1, 3)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


# --- textures ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _noise_bank():
    """Fixed fields of multi-scale noise (zero mean, unit-ish std), the same in every process."""
    rng = np.random.default_rng(20261206)
    bank = {}
    for name, scales in (("blotch", (6, 12, 24)), ("pore", (96, 192, 384)), ("mid", (24, 48))):
        f = np.zeros((TEX_H, TEX_W), np.float32)
        for s in scales:
            small = rng.standard_normal((max(2, s // 2), s)).astype(np.float32)
            f += cv2.resize(small, (TEX_W, TEX_H), interpolation=cv2.INTER_CUBIC) / len(scales)
        bank[name] = f / f.std()
    streak = rng.standard_normal((TEX_H // 8, TEX_W * 2)).astype(np.float32)
    streak = cv2.resize(streak, (TEX_W, TEX_H), interpolation=cv2.INTER_LINEAR)
    bank["strands"] = streak / streak.std()  # hair: long along v, fine along u
    return bank


def _field(rng, name):
    f = _noise_bank()[name]
    f = np.roll(f, (int(rng.integers(TEX_H)), int(rng.integers(TEX_W))), axis=(0, 1))
    return f[::-1] if rng.random() < 0.5 else f


SKIN = np.array([[244, 214, 190], [236, 190, 160], [222, 170, 135], [200, 140, 105], [170, 112, 80],
                 [135, 88, 62], [100, 64, 45], [72, 46, 34], [228, 184, 150]], np.float32) / 255
HAIR = np.array([[18, 14, 12], [45, 30, 20], [85, 55, 32], [130, 90, 50], [180, 140, 90], [215, 190, 140],
                 [120, 118, 115], [200, 198, 192], [110, 45, 25]], np.float32) / 255
IRIS = np.array([[75, 48, 28], [45, 28, 16], [70, 105, 140], [85, 115, 80], [120, 95, 60], [95, 100, 110]],
                np.float32) / 255


def _soft(field: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur, done at a quarter of the resolution (the fields it blurs are smooth)."""
    if sigma < 3:
        return cv2.GaussianBlur(field, (0, 0), sigma)
    h, w = field.shape[:2]
    small = cv2.resize(field, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / 4), (w, h), interpolation=cv2.INTER_LINEAR)


def _mix(palette, rng):
    i, j = rng.integers(len(palette), size=2)
    t = rng.uniform(0, 0.5)
    return palette[i] * (1 - t) + palette[j] * t


def _pt(p):
    return tuple(int(round(v * 16)) for v in p)


def _blob(canvas, centre, axes, value, rng=None, angle=0.0):
    cv2.ellipse(canvas, _pt(centre), (max(1, int(axes[0] * 16)), max(1, int(axes[1] * 16))), angle, 0, 360,
                value, -1, cv2.LINE_AA, 4)


def _window(points: np.ndarray, margin: float, align: int = 1) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the texture pixels within ``margin`` of the points' box, clipped to the texture, its edges
    on multiples of ``align``. A feature is painted there alone: with a margin beyond its blur's reach (4 sigma),
    and aligned to ``_soft``'s 4 x 4 cells where it blurs at a quarter of the resolution, the window gets the pixels
    the whole texture would."""
    x0, y0 = np.floor((points.min(0) - margin) / align).astype(int) * align
    x1, y1 = np.ceil((points.max(0) + margin) / align).astype(int) * align
    return max(x0, 0), max(y0, 0), min(x1, TEX_W), min(y1, TEX_H)


def _poly(points: np.ndarray, origin=(0, 0)) -> np.ndarray:
    """Points as cv2's fixed-point polygon (shift 4), in a window whose corner is ``origin``."""
    return np.round(points * 16).astype(np.int32) - 16 * np.asarray(origin, np.int32)


def _paint_head(rng, uv, skin, hair, bald, hairline, long_hair, beard, age, detail=True):
    """Albedo (H, W, 3), specular strength and cavity shading in head texture space."""
    albedo = np.empty((TEX_H, TEX_W, 3), np.float32)
    albedo[:] = skin
    blotch, pore, mid = _field(rng, "blotch"), _field(rng, "pore"), _field(rng, "mid")
    pore_w = rng.uniform(0.01, 0.04)
    if detail:
        albedo *= (1 + 0.045 * blotch + 0.025 * mid)[..., None]
        albedo *= (1 + pore_w * pore)[..., None]
    eye_w = np.linalg.norm(uv[39] - uv[36])
    red = np.zeros((TEX_H, TEX_W), np.float32)
    for c, ax in (((uv[2] + uv[31] * 2) / 3, 1.0), ((uv[14] + uv[35] * 2) / 3, 1.0), (uv[30], 0.5),
                  ((uv[51] + uv[57]) / 2, 0.9)):
        _blob(red, c, (eye_w * ax, eye_w * ax * 0.8), rng.uniform(0.4, 1.0))
    red = _soft(red, eye_w * 0.4)
    albedo *= (1 - red[..., None] * rng.uniform(0.05, 0.14) * np.array([-0.3, 0.9, 0.9], np.float32))
    cavity = np.zeros((TEX_H, TEX_W), np.float32)  # 0 = open, 1 = deep crease
    for eye, brow in ((range(36, 42), range(17, 22)), (range(42, 48), range(22, 27))):
        e, b = uv[list(eye)], uv[list(brow)]
        _blob(cavity, (e.mean(0) * 0.6 + b.mean(0) * 0.4), (eye_w * 0.75, eye_w * 0.45), 0.55)
        _blob(cavity, e[0] * 0.5 + e[3] * 0.5 + [0, eye_w * 0.35], (eye_w * 0.55, eye_w * 0.22), 0.35)
    for wing, corner in ((31, 48), (35, 54)):  # nasolabial folds
        pts = np.array([uv[wing] + (uv[wing] - uv[30]) * 0.3, uv[corner] + (uv[corner] - uv[62]) * 0.25])
        cv2.polylines(cavity, [np.round(pts * 16).astype(np.int32)], False, rng.uniform(0.3, 0.7),
                      max(1, int(eye_w * 0.12)), cv2.LINE_AA, 4)
    _blob(cavity, uv[33] + [0, eye_w * 0.12], (eye_w * 0.5, eye_w * 0.12), 0.6)  # under the nose
    _blob(cavity, uv[57] + [0, eye_w * 0.3], (eye_w * 0.5, eye_w * 0.14), 0.45)  # under the lower lip
    _blob(cavity, uv[39] * 0.5 + uv[27] * 0.5, (eye_w * 0.22, eye_w * 0.3), 0.6)  # inner eye corners
    _blob(cavity, uv[42] * 0.5 + uv[27] * 0.5, (eye_w * 0.22, eye_w * 0.3), 0.6)
    cavity = _soft(cavity, eye_w * 0.18)
    if age > 0:  # lines: forehead, crow's feet, under the eyes
        lines = np.zeros((TEX_H, TEX_W), np.float32)
        brow_mid = (uv[19] + uv[24]) / 2
        half = abs(uv[26, 0] - uv[17, 0]) / 2
        for k in range(int(rng.integers(2, 5))):
            y = brow_mid[1] - eye_w * (0.55 + 0.35 * k + rng.uniform(-0.1, 0.1))
            xs = np.linspace(brow_mid[0] - half * rng.uniform(0.5, 0.9), brow_mid[0] + half * rng.uniform(0.5, 0.9), 9)
            ys = y + np.sin(np.linspace(0, np.pi, 9)) * -eye_w * rng.uniform(0, 0.15) + rng.normal(0, 0.6, 9)
            cv2.polylines(lines, [np.round(np.column_stack([xs, ys]) * 16).astype(np.int32)], False,
                          rng.uniform(0.5, 1.0), 1, cv2.LINE_AA, 4)
        for corner, sign in ((36, -1), (45, 1)):
            for a in np.linspace(-0.5, 0.5, int(rng.integers(2, 4))):
                start = uv[corner] + [sign * eye_w * 0.15, 0]
                end = start + eye_w * 0.45 * np.array([sign * math.cos(a), math.sin(a)])
                cv2.line(lines, _pt(start), _pt(end), rng.uniform(0.4, 0.9), 1, cv2.LINE_AA, 4)
        for eye in (range(36, 42), range(42, 48)):
            lower = uv[[list(eye)[k] for k in (0, 5, 4, 3)]] + [0, eye_w * 0.3]
            cv2.polylines(lines, [np.round(lower * 16).astype(np.int32)], False, 0.6, 1, cv2.LINE_AA, 4)
        cavity = np.maximum(cavity, cv2.GaussianBlur(lines, (0, 0), 0.7) * age)

    if beard > 0:  # stubble or beard: darker, fine noise, over the jaw, chin and upper lip
        mask = np.zeros((TEX_H, TEX_W), np.float32)
        jaw = uv[0:17].copy()
        upper = np.vstack([uv[[48, 49, 50, 52, 53, 54]], uv[[35, 33, 31]]])
        cheek = np.vstack([jaw, uv[[54]] + [eye_w * 0.2, -eye_w * 0.2], uv[[48]] - [eye_w * 0.2, eye_w * 0.2]])
        cv2.fillPoly(mask, [np.round(cv2.convexHull(cheek.astype(np.float32))[:, 0] * 16).astype(np.int32)],
                     1.0, cv2.LINE_AA, 4)
        cv2.fillPoly(mask, [np.round(cv2.convexHull(upper.astype(np.float32))[:, 0] * 16).astype(np.int32)],
                     1.0, cv2.LINE_AA, 4)
        lips = np.zeros_like(mask)
        cv2.fillPoly(lips, [np.round(uv[48:60] * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
        mask = np.clip(mask - cv2.dilate(lips, None, iterations=2), 0, 1)
        # the hull reaches the ears at the eyes' height; a beard grows below the nose's
        below = np.clip((np.arange(TEX_H, dtype=np.float32) - uv[33, 1] + eye_w * 0.1) / (eye_w * 0.6), 0, 1)
        mask = _soft(mask * below[:, None], eye_w * 0.15)
        grain = np.clip(0.8 + 0.25 * pore, 0, 1)
        a = (mask * grain * beard)[..., None]
        albedo = albedo * (1 - a) + (hair * 0.7 + skin * 0.15) * a

    spec = np.full((TEX_H, TEX_W), 0.5, np.float32)
    _blob(spec, uv[27] * 0.5 + uv[30] * 0.5, (eye_w * 0.3, eye_w * 1.0), 1.0)
    _blob(spec, (uv[19] + uv[24]) / 2 - [0, eye_w * 0.8], (eye_w * 1.8, eye_w * 0.6), 0.9)
    spec = _soft(spec, eye_w * 0.3)

    # Hair: above the hairline (texture v smaller than the hairline's at that u) and at the back.
    if not bald:
        u = np.arange(TEX_W, dtype=np.float32)
        front_u = (u - TEX_W / 2) / (TEX_W / 2) * np.pi  # theta
        temple = np.abs(front_u)
        line = hairline + np.clip(temple - 0.45, 0, None) * rng.uniform(0.15, 0.45)
        back = np.clip(temple - 1.35, 0, None)
        line = line + back * (rng.uniform(0.6, 1.4) if long_hair else rng.uniform(0.1, 0.6))
        v_line = (np.pi / 2 - np.clip(np.pi / 2 - line, -np.pi / 2, np.pi / 2)) / np.pi * TEX_H
        vv = np.arange(TEX_H, dtype=np.float32)[:, None]
        edge = np.clip((v_line[None, :] - vv) / (3 + 4 * rng.random()) + 0.5, 0, 1)
        strands = _field(rng, "strands")
        tone = hair * (1 + 0.28 * strands[..., None]) * (1 + 0.12 * mid[..., None])
        albedo = albedo * (1 - edge[..., None]) + tone * edge[..., None]
        spec = spec * (1 - edge) + edge * (0.8 + 0.5 * np.clip(strands, 0, None))
        cavity = np.maximum(cavity, edge * 0.15)

    # Ears: slightly redder, with a dark inner curve.
    for side in (-1, 1):
        c = _uv_head(np.array(side * (np.pi / 2 + 0.12)), np.array(0.0))
        c = np.array([c[0], (uv[0, 1] + uv[2, 1]) / 2 if side < 0 else (uv[16, 1] + uv[14, 1]) / 2])
        axes = (eye_w * 0.45, eye_w * 1.0)
        _blob(albedo, c, axes, tuple(float(v) for v in skin * np.array([1.0, 0.86, 0.82])))
        cv2.ellipse(cavity, _pt(c), (int(axes[0] * 9), int(axes[1] * 9)), 0, -80 * side, 150 * side, 0.8,
                    max(1, int(eye_w * 0.1)), cv2.LINE_AA, 4)
    return albedo, spec, cavity


def _paint_features(rng, albedo, spec, cavity, uv, skin, hair, gaze, mouth_open):
    """Eyes, brows, then the mouth (``_paint_mouth``) in head texture space (in place)."""
    eye_w = np.linalg.norm(uv[39] - uv[36])
    iris_c = _mix(IRIS, rng)
    lash = np.array([0.05, 0.04, 0.04], np.float32) * rng.uniform(0.6, 1.5)
    for eye in (list(range(36, 42)), list(range(42, 48))):
        p = uv[eye]
        x0, y0, x1, y1 = _window(p, eye_w * 0.3)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        m = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(m, [_poly(p, (x0, y0))], 1.0, cv2.LINE_AA, 4)
        m = m[..., None]
        eye_img = np.empty((y1 - y0, x1 - x0, 3), np.float32)
        eye_img[:] = np.array([0.92, 0.89, 0.86], np.float32) * rng.uniform(0.9, 1.05)
        ys = (np.arange(y0, y1) - p[:, 1].min()) / max(np.ptp(p[:, 1]), 1)
        eye_img *= (0.7 + 0.3 * np.clip(ys * 2, 0, 1))[:, None, None]  # the lid's shadow on the sclera
        centre = p.mean(0) + gaze * eye_w * [0.25, 0.12] - [x0, y0]
        r = eye_w * rng.uniform(0.19, 0.24)  # an iris is about 0.4 of the eye's width: the white shows beside it
        yy, xx = np.mgrid[0:y1 - y0, 0:x1 - x0].astype(np.float32)
        dist = np.hypot(xx - centre[0], yy - centre[1]) / r
        ang = np.arctan2(yy - centre[1], xx - centre[0])
        streak = 1 + 0.18 * np.sin(ang * rng.integers(9, 23) + rng.uniform(0, 6)) * np.clip(dist, 0, 1)
        iris = iris_c * streak[..., None] * (1 - 0.45 * np.clip((dist - 0.75) / 0.25, 0, 1))[..., None]
        iris = np.where((dist < rng.uniform(0.35, 0.5))[..., None], 0.03, iris)
        a = np.clip((1 - dist) * r, 0, 1)[..., None]
        eye_img = eye_img * (1 - a) + iris * a
        hl = centre + [-r * 0.3, -r * 0.35]
        cv2.circle(eye_img, _pt(hl), int(max(r * 0.14, 0.6) * 16), (1.0, 1.0, 1.0), -1, cv2.LINE_AA, 4)
        albedo[y0:y1, x0:x1] = albedo[y0:y1, x0:x1] * (1 - m) + eye_img * m
        spec[y0:y1, x0:x1] = spec[y0:y1, x0:x1] * (1 - m[..., 0]) + 1.6 * m[..., 0]
        lw = max(1, int(round(eye_w * rng.uniform(0.07, 0.13))))
        cv2.polylines(albedo, [np.round(p[:4] * 16).astype(np.int32)], False, tuple(float(v) for v in lash), lw,
                      cv2.LINE_AA, 4)
        cv2.polylines(albedo, [np.round(p[[3, 4, 5, 0]] * 16).astype(np.int32)], False,
                      tuple(float(v) for v in skin * 0.55), max(1, lw // 2), cv2.LINE_AA, 4)
        crease = p[:4] + [0, -eye_w * rng.uniform(0.2, 0.35)]
        cv2.polylines(cavity, [np.round(crease * 16).astype(np.int32)], False, 0.7, max(1, lw), cv2.LINE_AA, 4)

    # Brows: a soft band (the hairs seen together, at a photograph's resolution), short strokes over it.
    brow_c = hair * rng.uniform(0.35, 0.8) if rng.random() < 0.8 else HAIR[rng.integers(3)]
    thick = eye_w * rng.uniform(0.12, 0.26)
    density = rng.uniform(0.55, 0.9)
    for brow in (list(range(17, 22)), list(range(22, 27))):
        p = uv[brow]

        # thick at the inner end (21, 22), a third thinner at the tail (``along``: 0 at 17 or 22, 1 at the end): a
        # tail thinned to 0.4 faded at 64 pixels, and models placed real brows' ends worse (docs/performance.md)
        def taper(along):
            return 0.65 + 0.35 * along if brow[0] == 17 else 1 - 0.35 * along

        # the points run along the brow's upper edge (iBUG): the band hangs below them
        below = np.array([0.0, 1.0]) * thick * 1.6 * taper(np.linspace(0, 1, len(p))[:, None])
        outline = np.vstack([p, (p + below)[::-1]])
        sigma = max(thick * 0.35, 0.6)
        x0, y0, x1, y1 = _window(outline, 4 * sigma + 8, align=4)
        band = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(band, [_poly(outline, (x0, y0))], 1.0, cv2.LINE_AA, 4)
        band = (_soft(band, sigma) * density)[..., None]
        albedo[y0:y1, x0:x1] = albedo[y0:y1, x0:x1] * (1 - band) + brow_c * band
        for k in range(int(rng.integers(25, 50))):
            t = rng.uniform(0, len(p) - 1)
            i = min(int(t), len(p) - 2)
            q = p[i] + (p[i + 1] - p[i]) * (t - i)
            along = (p[i + 1] - p[i]) / max(np.linalg.norm(p[i + 1] - p[i]), 1e-6)
            width = thick * taper(t / (len(p) - 1))
            off = q + [0, width * rng.uniform(0.4, 1.1)]
            d = along * thick * rng.uniform(0.8, 1.6) + [0, -width * rng.uniform(0.3, 0.6)]
            cv2.line(albedo, _pt(off), _pt(off + d), tuple(float(v) for v in brow_c * rng.uniform(0.8, 1.2)), 1,
                     cv2.LINE_AA, 4)

    _paint_mouth(rng, albedo, spec, cavity, uv, skin, eye_w, mouth_open)


def _paint_mouth(rng, albedo, spec, cavity, uv, skin, eye_w, mouth_open):
    """Lips, an open mouth's teeth and dark inside, nostrils in head texture space (in place)."""
    lip_c = skin * np.array([0.88, 0.58, 0.58], np.float32) * rng.uniform(0.75, 1.0)
    mask = np.zeros((TEX_H, TEX_W), np.float32)
    cv2.fillPoly(mask, [np.round(uv[48:60] * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None]
    albedo[:] = albedo * (1 - mask * 0.85) + lip_c * mask * 0.85
    spec[:] = spec + mask[..., 0] * 0.6
    inner = uv[60:68]
    opening = np.linalg.norm(inner[2] - inner[6])
    if mouth_open and opening > 1.0:
        # Teeth: the upper row hangs from the upper lip; on some faces the lower row stands on the lower lip. Toward
        # the corners they fall into the cheeks' shadow, as in a smile.
        tooth = eye_w * rng.uniform(0.16, 0.26)
        x0, y0, x1, y1 = _window(inner, tooth + 5)  # the rows reach a tooth beyond the lips; their blur 2.8 more
        inside = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(inside, [_poly(inner, (x0, y0))], 1.0, cv2.LINE_AA, 4)
        teeth = np.zeros_like(inside)
        rows = [(inner[[0, 1, 2, 3, 4]], tooth)]
        if rng.random() < 0.5:
            rows.append((inner[[4, 5, 6, 7, 0]], -tooth * 0.7))
        for lip, depth in rows:
            cv2.fillPoly(teeth, [_poly(np.vstack([lip, lip[::-1] + [0, depth]]), (x0, y0))], 1.0, cv2.LINE_AA, 4)
        half_w = max(np.linalg.norm(inner[4] - inner[0]) / 2, 1.0)
        across = np.abs(np.arange(x0, x1, dtype=np.float32) - (inner[0, 0] + inner[4, 0]) / 2) / half_w
        teeth *= np.clip((1 - across) * rng.uniform(1.5, 3.0), 0, 1)[None, :]
        teeth = (_soft(teeth, 0.7) * inside)[..., None]
        inside = inside[..., None]
        dark = np.array([0.12, 0.04, 0.04], np.float32) * rng.uniform(0.5, 1.5)
        white = np.array([0.86, 0.82, 0.74], np.float32) * rng.uniform(0.7, 1.0)
        region = albedo[y0:y1, x0:x1]
        region[:] = region * (1 - inside) + inside * (dark * (1 - teeth) + white * teeth)
        np.maximum(cavity[y0:y1, x0:x1], (inside * (0.85 - 0.65 * teeth))[..., 0], out=cavity[y0:y1, x0:x1])
    cv2.polylines(albedo, [np.round(inner[[0, 1, 2, 3, 4]] * 16).astype(np.int32)], False,
                  tuple(float(v) for v in lip_c * 0.45), max(1, int(eye_w * 0.06)), cv2.LINE_AA, 4)
    for a, b in ((31, 32), (35, 34)):  # nostrils
        c = uv[a] * 0.55 + uv[b] * 0.45 + [0, -eye_w * 0.03]
        _blob(albedo, c, (eye_w * 0.17, eye_w * 0.08), tuple(float(v) for v in skin * 0.25))


# --- scene -------------------------------------------------------------------------------------

_BACKGROUNDS = ("brick", "cell", "chelsea", "chessboard_RGB", "clock_motion", "coffee", "coins", "color", "grass",
                "gravel", "horse", "hubble_deep_field", "ihc", "logo", "microaneurysms", "moon", "motorcycle_left",
                "motorcycle_right", "page", "retina", "rocket", "text")  # never astronaut, camera, lfw_subset: faces


@lru_cache(maxsize=1)
def _photographs() -> tuple:
    """scikit-image's face-free sample photographs (RGB float32), where scikit-image is installed."""
    spec = find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = os.path.join(spec.submodule_search_locations[0], "data")
    out = []
    for name in _BACKGROUNDS:
        for ext in (".png", ".jpg"):
            path = os.path.join(folder, name + ext)
            if os.path.exists(path):
                with Image.open(path) as img:  # PIL: libpng's warnings on these files stay quiet
                    out.append(np.asarray(img.convert("RGB"), np.float32) / 255)
                break
    return tuple(out)


def _background(rng, size, photographs=True) -> np.ndarray:
    photos = _photographs() if photographs else ()
    kind = rng.random()
    if photos and kind < 0.55:
        src = photos[int(rng.integers(len(photos)))]
        h, w = src.shape[:2]
        side = rng.uniform(0.25, 1.0) * min(h, w)
        cx, cy = rng.uniform(side / 2, w - side / 2 + 1e-3), rng.uniform(side / 2, h - side / 2 + 1e-3)
        ang = rng.uniform(-20, 20) if rng.random() < 0.5 else 0.0
        M = cv2.getRotationMatrix2D((cx, cy), ang, size / side)
        M[:, 2] += size / 2 - np.array([cx, cy])
        img = cv2.warpAffine(src, M, (size, size), borderMode=cv2.BORDER_REFLECT)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img * rng.uniform(0.5, 1.2, 3).astype(np.float32))
    else:
        c0, c1 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
        n = _field(rng, "mid" if rng.random() < 0.5 else "blotch")[:size, :size]
        n = cv2.resize(n, (size, size)) if n.shape != (size, size) else n
        g = np.linspace(-1, 1, size, dtype=np.float32)
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(a) * g[None, :] + np.sin(a) * g[:, None]
        t = np.clip(0.5 + 0.3 * ramp + rng.uniform(0.05, 0.35) * n, 0, 1)[..., None]
        img = c0 * (1 - t) + c1 * t
        if rng.random() < 0.5:  # a wall, a door, a window: straight edges
            for _ in range(int(rng.integers(1, 5))):
                x0, y0 = rng.integers(0, size, 2)
                w, h = rng.integers(size // 8, size, 2)
                colour = rng.uniform(0, 1, 3)
                shade = rng.uniform(0.4, 1.0)
                cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)),
                              tuple(float(v * shade) for v in colour), -1)
    blur = rng.uniform(0, 4) if rng.random() < 0.7 else 0
    if blur > 0.3:  # depth of field: the background is rarely in focus
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return np.clip(img, 0, 1).astype(np.float32)


def _clothing(rng) -> np.ndarray:
    tex = np.empty((BODY_H, BODY_W, 3), np.float32)
    tex[:] = rng.uniform(0.03, 0.9, 3)
    n = cv2.resize(_field(rng, "mid"), (BODY_W, BODY_H))
    tex *= (1 + 0.12 * n)[..., None]
    if rng.random() < 0.3:  # stripes or checks
        period = rng.uniform(6, 20)
        yy, xx = np.mgrid[0:BODY_H, 0:BODY_W]
        tex *= (1 + 0.25 * np.sign(np.sin(yy / period * np.pi)))[..., None]
    return tex


def _identity(rng, t: np.ndarray) -> np.ndarray:
    """Shape variation beyond ``face_shape``'s: eye opening, jaw squareness, lip thickness, asymmetry."""
    t = t.copy()
    for eye in (range(36, 42), range(42, 48)):
        e = list(eye)
        mid = (t[e[0], 1] + t[e[3], 1]) / 2
        t[e, 1] = mid + (t[e, 1] - mid) * rng.uniform(0.9, 1.15)  # open as wide as real eyes, on average
    t[17:27, 1] += rng.uniform(0.0, 0.03)  # brows a little lower: face_shape's expressions raise them on average
    jaw = np.arange(17)
    square = rng.uniform(0.05, 0.3) * np.exp(-((np.abs(jaw - 8) - 2.5) / 1.5) ** 2)  # a rounder, wider chin
    t[jaw, 0] *= 1 + square
    t[[7, 8, 9], 1] += rng.uniform(0, 0.03)
    for outer, inner in (((49, 50, 51, 52, 53), (61, 62, 63)), ((55, 56, 57, 58, 59), (65, 66, 67))):
        k = rng.uniform(0.8, 1.4)
        ref = t[list(inner), 1].mean()
        t[list(outer), 1] = ref + (t[list(outer), 1] - ref) * k
    side = 48 if rng.random() < 0.5 else 54  # a lopsided smile
    t[[side, side + 12 if side == 48 else 64], 1] -= rng.uniform(0, 0.04)
    shear = rng.normal(0, 0.03)
    t[:, 0] += shear * t[:, 1]
    return t


# --- the render --------------------------------------------------------------------------------

# The scene is rendered at this share of the output side, then enlarged before the sensor's noise and JPEG:
# cheaper, and nothing lost where it counts (training crops shrink the canvas 1.5x or more). Half the side
# beat two thirds on real photographs under two trainer seeds (docs/performance.md), and packs 11% faster.
RENDER_SCALE = 1 / 2


# What an ablation can leave out (bench/photoreal.py measures what each buys on real photographs).
PARTS = ("identity", "detail", "backgrounds", "camera", "smile")
SMILE_SHARE = 0.45  # faces with a broad smile (``_smile``)


@dataclass(frozen=True)
class FramePose:
    """One video frame of a face (``synth/video.py``): the head's yaw, pitch and roll in degrees, the mouth's
    opening (0 closed, 1 wide), the face's shift from its place (fractions of the side), its scale, and the
    frame's number (the sensor's noise changes with it; everything else about the face stays)."""
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    mouth: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    frame: int = 0


# What a video's head turns about (template units: nose tip at the origin, y down, z to the camera): the middle of
# the face's height, inside the head. It stays at the frame's centre (plus the shift), so an opening mouth moves
# the jaw alone, not the whole face.
VIDEO_PIVOT = np.array([[0.0, 0.1, -0.74]])


def _smile(rng, t: np.ndarray) -> np.ndarray:
    """A broad smile on some faces, as people smile in photographs: the corners out and up, the lips parted over
    the teeth, the cheeks pushing the lower lids up. Template units (eye centres 0.59 apart)."""
    t = t.copy()
    if rng.random() >= SMILE_SHARE:
        return t
    k = rng.uniform(0.3, 1.0)
    c = t[48:68, 0].mean()
    for i, w in {48: 1.0, 54: 1.0, 60: 0.9, 64: 0.9, 49: 0.5, 53: 0.5, 59: 0.5, 55: 0.5, 61: 0.4, 63: 0.4}.items():
        t[i, 0] += math.copysign(0.075 * k * w, t[i, 0] - c)
        t[i, 1] -= 0.055 * k * w
    part = rng.uniform(0.03, 0.13) * (0.5 + 0.5 * k)  # lips parted over the teeth
    t[[49, 50, 51, 52, 53, 61, 62, 63], 1] -= part * 0.4
    t[[55, 56, 57, 58, 59, 65, 66, 67], 1] += part * 0.6
    for lower, upper in (((40, 41), (38, 37)), ((46, 47), (44, 43))):
        for lo, u in zip(lower, upper):
            t[lo, 1] -= (t[lo, 1] - t[u, 1]) * 0.3 * k
    return t


def _open_mouth(shape: np.ndarray, mouth: float) -> np.ndarray:
    """``shape`` with its inner lips ``mouth`` x 0.25 template units apart (0: closed), the lower lip and jaw
    following as ``face_shape`` opens a mouth."""
    shape = shape.copy()
    open_mouth_by(shape, 0.25 * float(np.clip(mouth, 0, 1)) - (shape[66, 1] - shape[62, 1]))
    return shape


@one_blas_thread
def render_face(seed: int, index: int, size: int = CANVAS, without=(), pose: FramePose | None = None
                ) -> SyntheticFace:
    """The photographic procedural face number ``index`` of the set ``seed`` (a ``size``-pixel square).
    ``without`` leaves out parts (``PARTS``): the extra shape variation, the skin's texture, creases and highlights,
    the photographic backgrounds, the camera's effects, the broad smiles. ``pose``: a video frame's (``FramePose``)."""
    unknown = set(without) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)} to leave out; expected some of {PARTS}")
    rng = np.random.default_rng((seed, index, 2))
    out_size, size = size, max(32, int(round(size * RENDER_SCALE)))
    shape = face_shape(rng)
    varied = _identity(rng, shape)
    shape = shape if "identity" in without else varied
    shape = shape if "smile" in without else _smile(np.random.default_rng((seed, index, 5)), shape)  # own draws
    shape = shape if pose is None else _open_mouth(shape, pose.mouth)
    mouth_open = np.linalg.norm(shape[62, :2] - shape[66, :2]) > 0.012
    yaw = float(np.clip(rng.normal(0, 28), -75, 75))
    pitch = float(np.clip(rng.normal(0, 11), -30, 30))
    roll = float(np.clip(rng.normal(0, 12), -40, 40))
    f = size / 2.25 / 1.42 * rng.uniform(0.85, 1.15)
    dist = rng.uniform(3.5, 12.0)
    if pose is not None:  # the draws above happen all the same: the rest of the face stays (seed, index)'s
        yaw, pitch, roll, f = pose.yaw, pose.pitch, pose.roll, f * pose.scale
    R = head_rotation(yaw, pitch, roll)

    grid, tris = _grid()
    unit = shape / (scale := _axis_scale(shape))  # the head at the template's proportions, scaled to this face's
    ctrl, w, head, head_n = _head_surface(rng, unit, scale)
    neck_w = rng.uniform(0.30, 0.40)  # narrower than the jaw: seen from the front, the lower face's outline is the jaw
    body, body_uv, body_tris, shoulder_y = _body(rng, neck_w)
    body_n = _normals(body, (len(_BODY_Y), 64))
    if np.mean(body_n[:, 0] * body[:, 0] + body_n[:, 2] * (body[:, 2] + 0.98)) < 0:
        body_n = -body_n

    def project(p3):
        cam = p3 @ R.T
        persp = dist / (dist - cam[:, 2])
        return np.column_stack([cam[:, 0] * f * persp, cam[:, 1] * f * persp, cam[:, 2] * f])

    lm = project(shape)
    # centred on its landmarks' box; a video's head on the point it turns about (VIDEO_PIVOT), shifted
    centre = (lm[:, :2].min(0) + lm[:, :2].max(0)) / 2 if pose is None else project(VIDEO_PIVOT)[0, :2]
    shift = 0.0 if pose is None else np.asarray(pose.shift, np.float64) * size
    offset_px = size / 2 - centre + rng.normal(0, 0.02 * size, 2) + shift
    lm[:, :2] += offset_px
    visible = _visible_jaw(lm, unit, ctrl, w, R, lambda p3: project(p3 * scale), offset_px, yaw)

    verts = np.vstack([project(head), project(body)])
    verts[:, :2] += offset_px
    all_tris = np.vstack([tris, body_tris + len(head)])
    tri, bary, _ = rasterize(verts, all_tris, size, size)

    skin = _mix(SKIN, rng) * rng.uniform(0.9, 1.08, 3).astype(np.float32)
    hair = _mix(HAIR, rng)
    bald = rng.random() < 0.12
    long_hair = rng.random() < 0.4
    hairline = float(_param(np.array([[0.0, -1.02 - rng.uniform(-0.1, 0.25), -0.3]]))[1][0])
    beard = rng.uniform(0.2, 0.9) if rng.random() < 0.3 else 0.0
    uv = _uv_head(*_param(unit)[:2])
    age = rng.uniform(0.3, 1.0) if rng.random() < 0.35 else 0.0
    if age > 0.6 and rng.random() < 0.6:  # grey
        hair = hair * 0.3 + HAIR[7] * 0.7
    albedo, spec, cavity = _paint_head(rng, uv, skin, hair, bald, hairline, long_hair, beard, age,
                                       detail="detail" not in without)
    _paint_features(rng, albedo, spec, cavity, uv, skin, hair, rng.uniform(-1, 1, 2), mouth_open)
    if "detail" in without:  # plain Lambert shading of a flat albedo: no creases, no highlights
        cavity[:] = 0
        spec[:] = 0
    body_tex = _body_texture(rng, skin, shoulder_y, float(shape[8, 1]))

    # Appearance painted in texture space; per pixel, texture look-ups and normals over its triangle, then light.
    covered = tri >= 0
    head_px = (tri < len(tris))[covered]
    uv_px = interpolate(np.vstack([_uv_head(grid[:, 0], grid[:, 1]), body_uv]), all_tris, tri, bary)
    normals = interpolate(np.vstack([head_n, body_n]) @ R.T, all_tris, tri, bary)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)
    colour = np.empty((covered.sum(), 3), np.float32)
    gloss = np.full(covered.sum(), 0.3, np.float32)
    occl = np.zeros(covered.sum(), np.float32)
    colour[head_px] = _sample(albedo, uv_px[head_px])
    gloss[head_px] = _sample(spec, uv_px[head_px])
    occl[head_px] = _sample(cavity, uv_px[head_px])
    colour[~head_px] = _sample(body_tex, uv_px[~head_px])
    shaded = _shade(rng, colour, gloss, occl, normals)

    img = _background(rng, size, photographs="backgrounds" not in without)
    img[covered] = shaded
    style = "long" if long_hair and not bald else ("frizzy" if not bald and rng.random() < 0.15 else "")
    img = _hair_strands(rng, img, lm, hair, f, style, roll)
    img = _glasses_and_occluders(rng, img, shape, project, offset_px, skin, f)
    img = _camera(rng, img, out_size, "camera" not in without, None if pose is None else (seed, index, pose.frame))
    k = out_size / size  # pixel centres: x_out + 0.5 = (x + 0.5) * k, as cv2.resize maps them
    for pts in (lm, visible):
        pts[:, :2] = (pts[:, :2] + 0.5) * k - 0.5
        pts[:, 2:] *= k
    return SyntheticFace(image=img, landmarks=lm.astype(np.float32), pose=(yaw, pitch, roll),
                         visible_landmarks=visible.astype(np.float32))


def _axis_scale(shape: np.ndarray) -> np.ndarray:
    """The face's size along x, y and z against the template's (least squares about the template's origin)."""
    t = mean_face()
    return (shape * t).sum(0) / (t * t).sum(0)


def _head_surface(rng, shape, scale=(1.0, 1.0, 1.0)):
    """The head through the 68 landmarks of ``shape`` (template proportions): the thin-plate spline of radial
    offsets (its control points and weights), the grid's vertices times ``scale`` and their outward normals."""
    grid, _ = _grid()
    lm_t, lm_p, lm_o = _param(shape)
    an_t, an_p, an_o = _param(_ANCHORS * [rng.uniform(0.92, 1.08), 1, 1])
    an_o[-2:] += rng.uniform(0.02, 0.08)  # the ears stand out
    # In front of the jaw's sides the cheek keeps the jaw's width, as a real face does: seen from the front, the
    # outline of the lower face is the jaw, not the head's ellipsoid bulging past it.
    front, back = shape[JAW_SIDES].copy(), shape[JAW_BELOW_EAR].copy()
    front[:, 2] = np.maximum(front[:, 2], HEAD_C[2]) + JAW_DEPTH
    back[:, 2] -= JAW_DEPTH
    jb_t, jb_p, jb_o = _param(np.vstack([front, back]))
    skull = _skull_anchors()
    ctrl = np.vstack([np.column_stack([lm_t, lm_p]), np.column_stack([an_t, an_p]), np.column_stack([jb_t, jb_p]),
                      skull[:, :2]])
    w = _tps_weights(ctrl, np.concatenate([lm_o, an_o, jb_o, skull[:, 2]]))
    head = _surface(grid[:, 0], grid[:, 1], _tps_eval(ctrl, w, grid)) * np.asarray(scale)
    normals = _normals(head, (N_PHI, N_THETA))
    if np.mean(normals[:, 2] * (head[:, 2] - HEAD_C[2])) < 0:
        normals = -normals
    return ctrl, w, head, normals


def _body_texture(rng, skin, shoulder_y, chin_y):
    """Skin on the neck, in the chin's shadow at the top; clothing from a neckline (round or V) down."""
    cloth = _clothing(rng)
    collar = rng.uniform(0.45, 0.8) * (shoulder_y - 0.15) / (_BODY_Y[-1] - _BODY_Y[0]) * BODY_H
    tex = np.empty((BODY_H, BODY_W, 3), np.float32)
    vv = np.arange(BODY_H)[:, None]
    # The head shades the neck below the jaw in nearly every photograph: that contrast draws the jaw line,
    # which a neck as bright as the face would not.
    y = _BODY_Y[0] + vv / BODY_H * (_BODY_Y[-1] - _BODY_Y[0])
    shadow = 1 - rng.uniform(0.3, 0.8) * np.clip(1 - (y - chin_y) / rng.uniform(0.12, 0.45), 0, 1)
    tex[:] = (skin * 0.95)[None, None, :] * shadow[..., None]
    uu = np.abs(np.arange(BODY_W)[None, :] - BODY_W / 2) / (BODY_W / 2)
    neckline = collar + (1 - uu) * rng.uniform(0, 40) * (rng.random() < 0.6)
    return np.where((vv > neckline)[..., None], cloth, tex)


def _sample(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture look-up at (N, 2) pixel coordinates, wrapping around (theta is periodic)."""
    n = len(uv)
    if n == 0:
        return np.zeros((0, *tex.shape[2:]), tex.dtype)
    rows = -(-n // 512)
    maps = np.zeros((rows * 512, 2), np.float32)
    maps[:n] = uv
    maps = maps.reshape(rows, 512, 2)
    out = cv2.remap(tex, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out.reshape(rows * 512, *tex.shape[2:])[:n]


def _visible_jaw(lm, shape, ctrl, w, R, project, offset_px, yaw):
    """The 300-W jaw: points 0-5 and 11-16 that the turn hides move to the face's outline on their row."""
    out = lm.copy()
    side_axis = R[:2, 0] / max(np.linalg.norm(R[:2, 0]), 1e-9)  # the head's x axis on screen
    t0, p0, _ = _param(shape)
    rows = list(range(0, 6)) + list(range(11, 17))
    steps = np.linspace(-1.2, 0.4, 81)
    ths = t0[rows, None] + steps[None, :] * np.sign(t0[rows, None])  # toward the nose and a little beyond
    phs = np.repeat(p0[rows, None], len(steps), axis=1)
    pts = np.column_stack([ths.ravel(), phs.ravel()])
    px = project(_surface(pts[:, 0], pts[:, 1], _tps_eval(ctrl, w, pts))).reshape(len(rows), len(steps), 3)
    px[..., :2] += offset_px
    for r, i in enumerate(rows):
        outward = -1.0 if i < 8 else 1.0  # the subject's right (image left when frontal) has negative x
        reach = (px[r, :, :2] - lm[i, :2]) @ side_axis * outward
        k = int(np.argmax(reach))
        if reach[k] > 1e-6 and abs(ths[r, k]) < abs(t0[i]):  # the outline lies outside the hidden point
            out[i] = px[r, k]
    return out


def _shade(rng, albedo, gloss, cavity, n):
    key = np.array([rng.uniform(-0.9, 0.9), rng.uniform(-0.8, 0.4), rng.uniform(0.3, 1.0)])
    key /= np.linalg.norm(key)
    fill = np.array([-key[0] * rng.uniform(0.3, 1), rng.uniform(-0.3, 0.3), 1.0])
    fill /= np.linalg.norm(fill)
    temp = rng.uniform(-1, 1)
    key_c = np.array([1 + 0.15 * temp, 1.0, 1 - 0.2 * temp]) * rng.uniform(0.7, 1.15)
    fill_c = np.array([1 - 0.1 * temp, 1.0, 1 + 0.12 * temp]) * rng.uniform(0.1, 0.45)
    sky = rng.uniform(0.15, 0.45) * rng.uniform(0.85, 1.15, 3)
    ground = sky * rng.uniform(0.4, 0.9)
    wrap = rng.uniform(0.1, 0.45)
    n = n.astype(np.float32)
    nd_key = (n @ key.astype(np.float32) + wrap) / (1 + wrap)
    nd_fill = np.maximum(n @ fill.astype(np.float32), 0)
    up = np.clip(-n[:, 1] * 0.5 + 0.5, 0, 1)[:, None]  # y points down
    ao = (1 - 0.7 * np.clip(cavity, 0, 1))[:, None]
    light = (np.maximum(nd_key, 0)[:, None] * key_c * (1 - 0.5 * np.clip(cavity, 0, 1))[:, None]
             + nd_fill[:, None] * fill_c + (sky * up + ground * (1 - up)) * ao)
    half = key + [0, 0, 1]
    half /= np.linalg.norm(half)
    shine = rng.uniform(8, 40)
    ks = rng.uniform(0.03, 0.25)
    spec = ks * gloss * np.maximum(n @ half.astype(np.float32), 0) ** shine * (nd_key > 0)
    return np.clip(albedo * light + spec[:, None] * key_c, 0, 1.5).astype(np.float32)


def _hair_strands(rng, img, lm, hair, f, style, roll):
    """Hair beyond the head's outline: long bundles falling beside the face, or frizz around the top."""
    if not style:
        return img
    down = np.array([-math.sin(math.radians(roll)), math.cos(math.radians(roll))])
    across = np.array([down[1], -down[0]])
    eye_w = np.linalg.norm(lm[39, :2] - lm[36, :2])
    half = np.linalg.norm(lm[16, :2] - lm[0, :2]) / 2
    curves = []
    if style == "frizzy":  # short curls out of the top half of the head and its sides
        centre = (lm[19, :2] + lm[24, :2]) / 2 - down * eye_w * 0.9
        t = np.linspace(0, 1, 8)[:, None]
        for _ in range(int(rng.integers(200, 400))):
            a = rng.uniform(-np.pi * 1.05, np.pi * 0.05)
            rad = np.array([half * 1.05, half * 1.25]) * rng.uniform(0.85, 1.1)
            start = centre + across * math.cos(a) * rad[0] + down * math.sin(a) * rad[1]
            out = (start - centre) / max(np.linalg.norm(start - centre), 1e-6)
            length = eye_w * rng.uniform(0.4, 1.8)
            bend = np.array([-out[1], out[0]]) * rng.normal(0, 0.6) * length
            curves.append(start + out * length * t + bend * t * t)
        opacity = rng.uniform(0.6, 0.95)
    else:  # long: from the crown, over the temples, down beside the face
        top = (lm[19, :2] + lm[24, :2]) / 2 - down * eye_w * 2.2
        reach = rng.uniform(2.0, 6.0)
        t = np.linspace(0, 1, 12)[:, None]
        for side in (-1, 1):
            for _ in range(int(rng.integers(100, 200))):
                start = top + across * side * rng.uniform(0.1, 1.0) * half
                bend = top + across * side * half * rng.uniform(1.05, 1.3) + down * eye_w * rng.uniform(0.3, 1.2)
                end = bend + down * eye_w * reach * rng.uniform(0.8, 1.1) + across * side * rng.normal(0.2, 0.3) * eye_w
                curves.append((1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end)
        opacity = rng.uniform(0.7, 1.0)
    layer = np.zeros_like(img)
    alpha = np.zeros(img.shape[:2], np.float32)
    for curve in curves:
        pts = np.round(curve * 16).astype(np.int32)
        cv2.polylines(layer, [pts], False, tuple(float(v) for v in np.clip(hair * rng.uniform(0.6, 1.4), 0, 1)),
                      1, cv2.LINE_AA, 4)
        cv2.polylines(alpha, [pts], False, 1.0, 1, cv2.LINE_AA, 4)
    a = np.clip(alpha, 0, 1)[..., None] * opacity
    return img * (1 - a) + layer * a


def _glasses_and_occluders(rng, img, shape, project, offset_px, skin, f):
    if rng.random() < 0.18:  # glasses: frames in 3D in front of the eyes
        colour = tuple(float(v) for v in rng.uniform(0, 0.5, 3) * (rng.random() < 0.7))
        width = max(1, int(f * rng.uniform(0.01, 0.03)))
        rim_w, rim_h = rng.uniform(0.17, 0.24), rng.uniform(0.10, 0.17)
        lens_pts = []
        for eye in (range(36, 42), range(42, 48)):
            c = shape[list(eye)].mean(0) + [0, 0.02, 0.12]
            a = np.linspace(0, 2 * np.pi, 24)
            ring = c + np.column_stack([rim_w * np.cos(a), rim_h * np.sin(a), np.zeros_like(a)])
            p = project(ring)[:, :2] + offset_px
            lens_pts.append(p)
            cv2.polylines(img, [np.round(p * 16).astype(np.int32)], True, colour, width, cv2.LINE_AA, 4)
        bridge = project(np.array([shape[39] + [0.05, -0.04, 0.14], shape[42] + [-0.05, -0.04, 0.14]]))[:, :2]
        cv2.polylines(img, [np.round((bridge + offset_px) * 16).astype(np.int32)], False, colour, width,
                      cv2.LINE_AA, 4)
        for k, (a_i, side) in enumerate(((0, -1), (16, 1))):
            arm = np.array([shape[36 if side < 0 else 45] + [side * 0.22, 0.0, 0.10], shape[a_i] + [0, -0.05, 0.02]])
            arm_px = project(arm)[:, :2] + offset_px
            cv2.polylines(img, [np.round(arm_px * 16).astype(np.int32)], False, colour, width, cv2.LINE_AA, 4)
        if rng.random() < 0.25:  # tinted
            tint = np.zeros(img.shape[:2], np.float32)
            for p in lens_pts:
                cv2.fillPoly(tint, [np.round(p * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
            a = tint[..., None] * rng.uniform(0.3, 0.9)
            img = img * (1 - a) + a * np.array(colour, np.float32) * 0.3
    lm = project(shape)[:, :2] + offset_px
    for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.12 else 0):
        c = lm[rng.integers(68)] + rng.normal(0, 0.15 * f, 2)
        axes = rng.uniform(0.1, 0.35, 2) * f
        if rng.random() < 0.5:  # a hand: skin, shaded
            colour = skin * rng.uniform(0.6, 1.0)
        else:
            colour = rng.uniform(0, 1, 3)
        layer = img.copy()
        cv2.ellipse(layer, _pt(c), (int(axes[0] * 16), int(axes[1] * 16)), rng.uniform(0, 180), 0, 360,
                    tuple(float(v) for v in colour), -1, cv2.LINE_AA, 4)
        mask = np.zeros(img.shape[:2], np.float32)
        cv2.ellipse(mask, _pt(c), (int(axes[0] * 16), int(axes[1] * 16)), 0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
        grad = np.linspace(0.7, 1.1, img.shape[0], dtype=np.float32)[:, None, None]
        img = np.where(layer != img, layer * grad, img)
    return img


def _camera(rng, img, out_size, effects, frame) -> np.ndarray:
    """The rendered scene as the camera takes it, uint8 at ``out_size``: optics, enlarged, then the sensor
    (``effects`` False: enlarged only). ``frame``: a video frame's (seed, index, number), for its noise."""
    img = _optics(rng, img) if effects else img
    img = cv2.resize(img, (out_size, out_size), interpolation=cv2.INTER_LINEAR)
    return _sensor(rng, img, frame) if effects else (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _optics(rng, img) -> np.ndarray:
    """Exposure, white balance, vignetting, defocus or motion blur, a small photograph enlarged."""
    size = img.shape[0]
    img = img * rng.uniform(0.6, 1.35) * rng.uniform(0.88, 1.12, 3).astype(np.float32)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        img = img * (1 - rng.uniform(0.1, 0.6) * (xx * xx + yy * yy))[..., None]
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    r = rng.random()
    if r < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.8))
    elif r < 0.6:  # motion blur
        k = int(rng.integers(3, 9))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1 / k
        kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1),
                                (k, k))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    if rng.random() < 0.3:  # a small photograph, enlarged
        small = int(size * rng.uniform(0.2, 0.5))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    return img


def _sensor(rng, img, frame=None) -> np.ndarray:
    """Noise, greyscale, JPEG: uint8 RGB out. ``frame`` (seed, index, frame number): a video frame's noise, its
    own (every frame's differs; the rest of the camera stays)."""
    out = (np.clip(img, 0, 1) * 255).astype(np.float32)
    sigma = rng.uniform(0, 8)
    if sigma > 0.5:
        drawn = int(rng.integers(2 ** 31))
        cv2.setRNGSeed(drawn if frame is None else int(np.random.default_rng((*frame, 3)).integers(2 ** 31)))
        noise = np.empty(out.shape, np.float32)
        cv2.randn(noise, 0, sigma)
        luma = noise.mean(axis=2, keepdims=True)
        out = out + luma + (noise - luma) * rng.uniform(0, 0.6)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = np.repeat(grey[..., None], 3, axis=2)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out
