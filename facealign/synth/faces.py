"""Procedural faces with exact 68-point 2D and 3D landmarks: the embedded data for demos and tests.

Each face starts from SPIGA's 3D mean face (``mean_face_68_spiga.txt``: this style keeps the first
template, so its faces stay as they were; the photographic style starts from ``mean_face_68.txt``, 300-W's
mean outline on SPIGA's depth; see ``derive_template.py``), then:

* identity: face width / height / depth, jaw width, eye spacing and size, nose
  length and width, mouth width, small per-point jitter;
* expression: mouth opening (the jaw follows), smile, blinks, brow raise;
* pose: yaw up to +-70 degrees, pitch +-25, roll +-30, and a mild perspective camera;
* appearance: skin tone, Lambertian shading under a random light, eyes with
  iris and pupil, brows, lips, nostrils, hair, neck, optional glasses;
* scene: cluttered backgrounds (gradients, shapes, skin-coloured distractors),
  occluders (blocks, hands, sunglasses), blur, noise.

The face is a shaded triangle mesh over the landmarks plus forehead points;
eyes, brows, lips and nostrils are primitives placed on that surface. All of
them are drawn far-to-near (painter's algorithm), so at large yaw the nose
really hides the far eye. Landmarks are the projections of the 3D points
whether visible or not (the AFLW2000-3D convention), with z in pixels,
positive toward the camera.

``render_face(seed, index)`` is a pure function of its arguments: the same
(seed, index) gives the same image and landmarks in any process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from facealign.data.pose import head_rotation, mean_face

from .threads import one_blas_thread

CANVAS = 384
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel vertex positions
_ONE = 1 << _SHIFT


# Extra (non-landmark) surface points: a forehead row and a hairline row on the head ellipsoid.
# The ellipsoid ends above the chin: below the mouth, the jaw landmarks are the outline.
_HEAD_CENTER = np.array([0.0, -0.45, -0.72])
_HEAD_AXES = np.array([0.78, 0.95, 0.76])


def _on_head(x, y, front=True):
    """Point on the head ellipsoid at (x, y), on its front (or back) surface."""
    r = 1 - ((x - _HEAD_CENTER[0]) / _HEAD_AXES[0]) ** 2 - ((y - _HEAD_CENTER[1]) / _HEAD_AXES[1]) ** 2
    z = _HEAD_AXES[2] * math.sqrt(max(r, 0.0))
    return [x, y, _HEAD_CENTER[2] + (z if front else -z)]


def _extra_points() -> np.ndarray:
    xs = np.linspace(-0.62, 0.62, 7)
    forehead = [_on_head(x, -0.80) for x in xs]
    hairline = [_on_head(x * 0.95, -1.05 - 0.12 * (1 - (x / 0.62) ** 2)) for x in xs]
    return np.array(forehead + hairline)


# Regions drawn as features rather than skin triangles.
_EYES = [list(range(36, 42)), list(range(42, 48))]
_BROWS = [list(range(17, 22)), list(range(22, 27))]
_OUTER_LIPS = list(range(48, 60))
_INNER_MOUTH = list(range(60, 68))


@lru_cache(maxsize=1)
def _mesh() -> np.ndarray:
    """Triangles (T, 3) over the 68 landmarks + extra points, from a Delaunay triangulation of the frontal view."""
    pts = np.vstack([mean_face("spiga"), _extra_points()])
    xy = pts[:, :2]
    lo = xy.min(0) - 1
    subdiv = cv2.Subdiv2D((int(math.floor(lo[0] * 100)), int(math.floor(lo[1] * 100)),
                           int(math.ceil((xy[:, 0].max() - lo[0]) * 100)) + 200,
                           int(math.ceil((xy[:, 1].max() - lo[1]) * 100)) + 200))
    for x, y in xy:
        subdiv.insert((float(x * 100), float(y * 100)))
    inside = [set(_EYES[0]), set(_EYES[1]), set(_INNER_MOUTH)]
    tris = []
    for t in subdiv.getTriangleList():
        corners = np.asarray(t, np.float64).reshape(3, 2) / 100  # float32 inside Subdiv2D: match by distance
        d = np.linalg.norm(xy[None, :, :] - corners[:, None, :], axis=2)
        idx = [int(i) if d[j, i] < 1e-3 else None for j, i in enumerate(d.argmin(1))]
        if None in idx or any(set(idx) <= region for region in inside):
            continue  # a vertex of the bounding triangle, or the inside of an eye or the mouth
        a, b, c = pts[idx]
        if np.cross(b[:2] - a[:2], c[:2] - a[:2]) < 0:  # counter-clockwise on screen: normals face the camera
            idx = [idx[0], idx[2], idx[1]]
        tris.append(idx)
    return np.array(tris)


SKIN_TONES = np.array([[255, 224, 196], [241, 194, 167], [224, 172, 138], [198, 134, 103], [161, 102, 78],
                       [125, 80, 62], [92, 58, 45], [236, 188, 160], [210, 160, 120]], np.float64)
HAIR_COLOURS = np.array([[20, 15, 12], [60, 40, 25], [110, 75, 40], [170, 130, 80], [200, 170, 120],
                         [120, 120, 120], [210, 210, 205], [90, 30, 20]], np.float64)
IRIS_COLOURS = np.array([[70, 45, 25], [40, 25, 15], [60, 100, 150], [70, 110, 70], [110, 90, 50]], np.float64)


@dataclass
class SyntheticFace:
    image: np.ndarray  # CANVAS x CANVAS x 3 uint8 RGB
    landmarks: np.ndarray  # 68 x 3: x, y in pixels; z in pixels, toward the camera
    pose: tuple[float, float, float]  # yaw, pitch, roll in degrees
    # 300-W's convention: the jaw points the turn hides moved to the visible outline (None: as ``landmarks``)
    visible_landmarks: np.ndarray | None = None


# an opening mouth: how far each point of the lower lip, and of the jaw (x 0.9), moves down with the opening
LOWER_LIP_FOLLOWS = {56: .9, 57: 1., 58: .9, 55: .5, 59: .5, 65: .95, 66: 1., 67: .95}
JAW_FOLLOWS = {8: 1., 7: .9, 9: .9, 6: .7, 10: .7, 5: .45, 11: .45, 4: .2, 12: .2}


def open_mouth_by(t: np.ndarray, o: float) -> None:
    """Lower the lower lip by ``o`` template units (in place), the jaw following."""
    for i, w in LOWER_LIP_FOLLOWS.items():
        t[i, 1] += o * w
    for i, w in JAW_FOLLOWS.items():
        t[i, 1] += o * w * 0.9


def face_shape(rng: np.random.Generator, template: str = "300w") -> np.ndarray:
    """Identity and expression applied to the template (canonical frame; ``mean_face(template)``): 68 3D
    points."""
    t = mean_face(template).copy()
    t *= [rng.uniform(0.88, 1.12), rng.uniform(0.9, 1.1), rng.uniform(0.8, 1.2)]
    jaw = np.arange(17)
    t[jaw, 0] *= 1 + rng.uniform(-0.1, 0.1) * np.sin(np.pi * jaw / 16)  # wider or narrower lower face
    for eye, side in zip(_EYES, (-1, 1)):
        c = t[eye].mean(0)
        t[eye] = c + (t[eye] - c) * rng.uniform(0.85, 1.2)
    spacing = rng.uniform(-0.04, 0.04)
    t[_EYES[0] + _BROWS[0], 0] -= spacing
    t[_EYES[1] + _BROWS[1], 0] += spacing
    nose = list(range(31, 36))
    t[nose + [30], 1] += rng.uniform(-0.05, 0.06)
    c = t[nose].mean(0)
    t[nose, 0] = c[0] + (t[nose, 0] - c[0]) * rng.uniform(0.8, 1.25)
    mouth = _OUTER_LIPS + _INNER_MOUTH
    c = t[mouth].mean(0)
    t[mouth, 0] = c[0] + (t[mouth, 0] - c[0]) * rng.uniform(0.85, 1.15)

    # Expression.
    if rng.random() < 0.5:  # open mouth; the jaw follows
        o = rng.uniform(0.02, 0.3)
        open_mouth_by(t, o)
    s = rng.uniform(-0.04, 0.1)  # smile (negative: frown)
    for i, w in {48: 1., 54: 1., 60: .9, 64: .9, 49: .4, 53: .4}.items():
        t[i, 1] -= s * w
        t[i, 0] += math.copysign(s * 0.6 * w, t[i, 0] - c[0])
    for upper, lower in (((37, 38), (41, 40)), ((43, 44), (47, 46))):
        close = rng.uniform(0.6, 1.0) if rng.random() < 0.12 else rng.uniform(0.0, 0.3)
        for u, lo in zip(upper, lower):
            t[u, :2] += close * (t[lo, :2] - t[u, :2]) * 0.85
    t[17:27, 1] -= rng.uniform(-0.04, 0.08)
    return t + rng.normal(0, 0.006, t.shape)


def _background(rng, size):
    kind = rng.integers(0, 3)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == 0:  # gradient
        a = rng.uniform(0, 2 * np.pi)
        g = np.linspace(-1, 1, size)
        ramp = (np.cos(a) * g[None, :] + np.sin(a) * g[:, None]) * 0.5 + 0.5
        img = c0 + (c1 - c0) * ramp[..., None]
    elif kind == 1:  # low-frequency texture
        n = rng.integers(3, 12)
        small = rng.uniform(0, 1, (n, n, 1))
        img = c0 + (c1 - c0) * cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
    else:
        img = np.broadcast_to(c0, (size, size, 3))
    img = np.ascontiguousarray(np.clip(img, 0, 255), np.uint8)
    for _ in range(rng.integers(3, 14)):  # clutter, some of it skin-coloured
        colour = (SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.6, 1.1) if rng.random() < 0.2
                  else rng.uniform(0, 255, 3))
        colour = tuple(float(v) for v in np.clip(colour, 0, 255))
        x, y = (rng.uniform(-0.1, 1.1, 2) * size).astype(int)
        shape = rng.integers(0, 3)
        if shape == 0:
            axes = (int(rng.uniform(8, 90)), int(rng.uniform(8, 90)))
            cv2.ellipse(img, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        elif shape == 1:
            w, h = (rng.uniform(10, 160, 2)).astype(int)
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), colour, -1)
        else:
            x2, y2 = (rng.uniform(0, 1, 2) * size).astype(int)
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), colour, int(rng.integers(1, 8)), cv2.LINE_AA)
    return img


def _ellipsoid_silhouette(R, f, center_px):
    """Projected outline (cv2 ellipse parameters) of the rotated head ellipsoid under orthographic projection."""
    q = R @ np.diag(1 / _HEAD_AXES ** 2) @ R.T
    m = q[:2, :2] - np.outer(q[:2, 2], q[2, :2]) / q[2, 2]  # Schur complement: the silhouette's quadric
    evals, evecs = np.linalg.eigh(m)
    axes = (float(f / math.sqrt(evals[0])), float(f / math.sqrt(evals[1])))
    angle = math.degrees(math.atan2(evecs[1, 0], evecs[0, 0]))
    return (float(center_px[0]), float(center_px[1])), axes, angle


def _occluded(points: np.ndarray, verts: np.ndarray, tris: np.ndarray, margin: float) -> np.ndarray:
    """For each (x, y, z) point: is it behind a triangle (by more than ``margin`` in z) that covers it on screen?"""
    a, b, c = (verts[tris[:, j]] for j in range(3))  # (T, 3) each
    v0, v1 = (b - a)[:, :2], (c - a)[:, :2]
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-9
    d = points[:, None, :2] - a[None, :, :2]  # (P, T, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (d[..., 0] * v1[:, 1] - v1[:, 0] * d[..., 1]) / den
        v = (v0[:, 0] * d[..., 1] - d[..., 0] * v0[:, 1]) / den
    inside = ok & (u >= -1e-6) & (v >= -1e-6) & (u + v <= 1 + 1e-6)
    z = a[:, 2] + u * (b[:, 2] - a[:, 2]) + v * (c[:, 2] - a[:, 2])
    return (inside & (z > points[:, None, 2] + margin)).any(axis=1)


@one_blas_thread
def render_face(seed: int, index: int, size: int = CANVAS) -> SyntheticFace:
    """The synthetic face number ``index`` of the set ``seed``."""
    rng = np.random.default_rng((seed, index))
    shape = face_shape(rng, "spiga")  # the flat style keeps its first template: its faces stay
    extra = _extra_points()
    yaw = float(np.clip(rng.normal(0, 30), -70, 70))
    pitch = float(rng.uniform(-25, 25))
    roll = float(rng.uniform(-30, 30))
    R = head_rotation(yaw, pitch, roll)
    f = size / 2.25 / 1.42 * rng.uniform(0.85, 1.15)  # landmark box ~ canvas / 2.25, as facealign-pack crops
    dist = rng.uniform(4.0, 10.0)  # camera distance in template units: mild perspective

    def project(p3):
        cam = p3 @ R.T
        persp = dist / (dist - cam[:, 2])
        return np.column_stack([cam[:, 0] * f * persp, cam[:, 1] * f * persp, cam[:, 2] * f]), cam

    lm, lm_cam = project(shape)
    ex, ex_cam = project(extra)
    head_c, _ = project(_HEAD_CENTER[None])
    # Centre the landmark box on the canvas, with a little jitter.
    offset = size / 2 - (lm[:, :2].min(0) + lm[:, :2].max(0)) / 2 + rng.normal(0, 0.02 * size, 2)
    lm[:, :2] += offset
    ex[:, :2] += offset
    head_c = head_c[0, :2] + offset

    img = _background(rng, size)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.85, 1.1, 3)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.5), 1.0])
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.3, 0.6)

    _draw_head(img, rng, lm, project, offset, head_c, R, f, roll, skin, hair, ambient)
    hidden = _draw_skin(img, lm, ex, lm_cam, ex_cam, skin, light, ambient, f)
    _draw_features(img, rng, lm, hidden, skin, hair, ambient, f, roll)
    _draw_occluders(img, rng, lm, skin, f)
    return SyntheticFace(image=_blur_and_noise(img, rng), landmarks=lm.astype(np.float32), pose=(yaw, pitch, roll))


def _col(rgb, shade=1.0):
    return tuple(float(v) for v in np.clip(np.asarray(rgb) * shade, 0, 255))


def _poly(points):
    return np.round(points[:, :2] * _ONE).astype(np.int32)


def _draw_head(img, rng, lm, project, offset, head_c, R, f, roll, skin, hair, ambient) -> None:
    # Neck, head and hair: behind the face mesh.
    jaw_l, jaw_r = lm[5, :2] * 0.85 + lm[11, :2] * 0.15, lm[11, :2] * 0.85 + lm[5, :2] * 0.15
    down = np.array([-math.sin(math.radians(roll)), math.cos(math.radians(roll))])
    neck = np.array([jaw_l - down * f * 0.3, jaw_r - down * f * 0.3, jaw_r + down * f * 1.6, jaw_l + down * f * 1.6])
    cv2.fillConvexPoly(img, _poly(neck), _col(skin, ambient + 0.15), cv2.LINE_AA, _SHIFT)
    center, axes, angle = _ellipsoid_silhouette(R, f, head_c)
    cv2.ellipse(img, (int(center[0]), int(center[1])), (int(axes[0]), int(axes[1])), angle, 0, 360,
                _col(skin, ambient + 0.3), -1, cv2.LINE_AA)
    if rng.random() < 0.85:  # hair over the top and back of the head
        cap = []
        for th in np.linspace(0, 2 * np.pi, 24, endpoint=False):
            for yy in (-1.3, -1.15, -1.0, -0.7, -0.3):
                r = math.sqrt(max(1 - ((yy - _HEAD_CENTER[1]) / _HEAD_AXES[1]) ** 2, 0))
                p = _HEAD_CENTER + [_HEAD_AXES[0] * r * math.cos(th), yy - _HEAD_CENTER[1],
                                    _HEAD_AXES[2] * r * math.sin(th)]
                p[1] = yy
                if yy < -0.95 or p[2] < _HEAD_CENTER[2] - 0.1:
                    cap.append(p)
        cap_px, _ = project(np.array(cap))
        cap_px[:, :2] += offset
        hull = cv2.convexHull(_poly(cap_px))
        cv2.fillConvexPoly(img, hull, _col(hair, rng.uniform(0.7, 1.0)), cv2.LINE_AA, _SHIFT)


def _draw_skin(img, lm, ex, lm_cam, ex_cam, skin, light, ambient, f) -> np.ndarray:
    # Face mesh far to near (painter's algorithm), then the features on top, each only where no
    # nearer skin triangle covers it (a z-test): at large yaw the nose hides the far eye, while the
    # skin around a feature never buries it.
    verts = np.vstack([lm, ex])
    verts_cam = np.vstack([lm_cam, ex_cam])
    tris = _mesh()
    a, b, c = (verts_cam[tris[:, j]] for j in range(3))
    normals = np.cross(b - a, c - a)
    normals[:, 1] *= -1  # template y points down: flip to a right-handed frame with z toward the camera
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    front = normals[:, 2] > 0.02  # skip triangles facing away
    tris, shades = tris[front], (ambient + (1 - ambient) * np.maximum(normals @ light, 0))[front]
    order = np.argsort(verts[tris, 2].mean(1))
    for t in order:
        cv2.fillConvexPoly(img, _poly(verts[tris[t]]), _col(skin, shades[t]), cv2.LINE_AA, _SHIFT)
    return _occluded(lm, verts, tris, margin=0.04 * f)


def _draw_features(img, rng, lm, hidden, skin, hair, ambient, f, roll) -> None:
    items = []  # (depth, kind, payload): features, near ones last
    for eye in _EYES:
        if hidden[eye].mean() < 0.5:
            items.append((lm[eye, 2].mean(), 1, eye))
    for brow in _BROWS:
        for i, j in zip(brow[:-1], brow[1:]):
            if not (hidden[i] or hidden[j]):
                items.append((lm[[i, j], 2].mean(), 2, [i, j]))
    if hidden[_OUTER_LIPS].mean() < 0.5:
        items.append((lm[_OUTER_LIPS, 2].mean(), 3, None))
    if hidden[31:36].mean() < 0.5:
        items.append((lm[31:36, 2].mean(), 4, None))
    items.sort(key=lambda it: it[0])

    iris_colour = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    lip_colour = skin * np.array([0.9, 0.45, 0.45]) * rng.uniform(0.75, 1.0)
    gaze = rng.uniform(-0.25, 0.25, 2)
    line_w = max(1, int(round(f * 0.02)))
    brow_w = int(max(2, f * 0.06))
    for _, kind, payload in items:
        if kind == 1:
            eye = payload
            p = lm[eye]
            width = np.linalg.norm(p[3, :2] - p[0, :2])
            if width < 3:
                continue
            cv2.fillPoly(img, [_poly(p)], _col((240, 238, 232), ambient + 0.5), cv2.LINE_AA, _SHIFT)
            x0, y0 = np.floor(p[:, :2].min(0)).astype(int) - 2
            x1, y1 = np.ceil(p[:, :2].max(0)).astype(int) + 3
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, img.shape[1]), min(y1, img.shape[0])
            if x1 > x0 and y1 > y0:
                roi = img[y0:y1, x0:x1]
                mask = np.zeros(roi.shape[:2], np.uint8)
                cv2.fillPoly(mask, [_poly(p - [x0, y0, 0])], 255, cv2.LINE_AA, _SHIFT)
                iris = roi.copy()
                centre = p[:, :2].mean(0) + gaze * width * 0.3 - [x0, y0]
                r = 0.3 * width
                cv2.circle(iris, tuple(int(v * _ONE) for v in centre), int(r * _ONE), _col(iris_colour),
                           -1, cv2.LINE_AA, _SHIFT)
                cv2.circle(iris, tuple(int(v * _ONE) for v in centre), int(r * 0.45 * _ONE), (10, 10, 10),
                           -1, cv2.LINE_AA, _SHIFT)
                m = (mask.astype(np.float32) / 255)[..., None]
                roi[:] = (iris * m + roi * (1 - m)).astype(np.uint8)
            cv2.polylines(img, [_poly(p[:4])], False, (25, 20, 20), line_w + 1, cv2.LINE_AA, _SHIFT)
            cv2.polylines(img, [_poly(p[[3, 4, 5, 0]])], False, _col(skin, 0.45), line_w, cv2.LINE_AA, _SHIFT)
        elif kind == 2:
            cv2.polylines(img, [_poly(lm[payload])], False, _col(hair, 0.6), brow_w, cv2.LINE_AA, _SHIFT)
        elif kind == 3:
            cv2.fillPoly(img, [_poly(lm[_OUTER_LIPS])], _col(lip_colour, ambient + 0.45), cv2.LINE_AA, _SHIFT)
            inner = lm[_INNER_MOUTH]
            opening = np.linalg.norm(inner[2, :2] - inner[6, :2])
            if opening > 2:
                cv2.fillPoly(img, [_poly(inner)], (45, 20, 22), cv2.LINE_AA, _SHIFT)
                if opening > 6:  # upper teeth
                    teeth = np.vstack([inner[1:4], (inner[3] * 0.7 + inner[5] * 0.3), (inner[1] * 0.7 + inner[7] * 0.3)])
                    cv2.fillPoly(img, [_poly(teeth)], (225, 222, 210), cv2.LINE_AA, _SHIFT)
            cv2.polylines(img, [_poly(inner[[0, 1, 2, 3, 4]])], False, (60, 30, 30), line_w, cv2.LINE_AA, _SHIFT)
        else:
            for a, b in ((31, 32), (34, 35)):
                c = (lm[a, :2] + lm[b, :2]) / 2
                axes_n = (max(1, int(np.linalg.norm(lm[a, :2] - lm[b, :2]) * 0.5)), max(1, int(f * 0.02)))
                cv2.ellipse(img, (int(c[0]), int(c[1])), axes_n, roll, 0, 360, _col(skin, 0.3), -1, cv2.LINE_AA)


def _draw_occluders(img, rng, lm, skin, f) -> None:
    line_w = max(1, int(round(f * 0.02)))
    # Accessories and occluders, drawn over everything.
    if rng.random() < 0.1:  # glasses
        colour = _col(rng.uniform(0, 80, 3))
        centres = [lm[e, :2].mean(0) for e in _EYES]
        rad = int(max(3, 0.75 * np.linalg.norm(lm[39, :2] - lm[36, :2])))
        for c in centres:
            cv2.circle(img, (int(c[0]), int(c[1])), rad, colour, line_w + 1, cv2.LINE_AA)
        if rng.random() < 0.5:  # sunglasses
            for c in centres:
                cv2.circle(img, (int(c[0]), int(c[1])), rad, colour, -1, cv2.LINE_AA)
    for _ in range(rng.integers(0, 3) if rng.random() < 0.35 else 0):
        c = lm[rng.integers(68), :2] + rng.normal(0, 0.1 * f, 2)
        axes_o = tuple(int(v) for v in rng.uniform(0.1, 0.4, 2) * f)
        colour = _col(skin * rng.uniform(0.8, 1.1)) if rng.random() < 0.4 else _col(rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            cv2.ellipse(img, (int(c[0]), int(c[1])), axes_o, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (int(c[0] - axes_o[0]), int(c[1] - axes_o[1])),
                          (int(c[0] + axes_o[0]), int(c[1] + axes_o[1])), colour, -1)


def _blur_and_noise(img, rng) -> np.ndarray:
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.6))
    noise = rng.uniform(0, 6)
    if noise > 1:  # OpenCV's generator, seeded from ours: far cheaper than numpy normals for 442k pixels
        cv2.setRNGSeed(int(rng.integers(2 ** 31)))
        n = np.empty(img.shape, np.int16)
        cv2.randn(n, 0, noise)
        img = cv2.add(img, n, dtype=cv2.CV_8U)
    return img
