"""Predictions drawn on images: the boxes, the landmarks (the reference's groups on 68 points) and a 3D model's
head axes. BGR images, as OpenCV writes them."""
from __future__ import annotations

import cv2
import numpy as np

from facealign.data.pose import head_rotation

# The reference's drawing groups (seed-spec §7.2): jaw, brows, nose bridge, nostrils, eyes, lips.
GROUPS_68 = [(0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False), (31, 36, False),
             (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True)]


def draw(image_bgr: np.ndarray, prediction) -> np.ndarray:
    """The boxes, the landmarks (the reference's groups on 68 points) and, for a model that predicts z, the
    head's axes from the nose tip: x red, y green, z (toward the camera) blue."""
    out = image_bgr.copy()
    thickness = max(1, round(max(out.shape[:2]) / 500))
    poses = prediction.poses if prediction.poses is not None else [None] * len(prediction)
    for box, pts, pose in zip(prediction.boxes, prediction.landmarks, poses):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 160, 0), thickness)
        p = np.round(pts[:, :2]).astype(np.int32)
        if len(p) == 68:
            for a, b, closed in GROUPS_68:
                cv2.polylines(out, [p[a:b]], closed, (255, 255, 255), thickness, cv2.LINE_AA)
        for x, y in p:
            cv2.circle(out, (int(x), int(y)), thickness + 1, (0, 0, 255), -1, cv2.LINE_AA)
        if pose is not None and len(p) == 68:
            draw_axes(out, pts[30, :2], head_rotation(*pose), 0.4 * np.ptp(pts[:, 0]), thickness + 1)
    return out


def draw_axes(image_bgr: np.ndarray, origin, R: np.ndarray, length: float, thickness: int) -> None:
    """The rotated head frame's axes, projected on the image (x right, y down)."""
    start = tuple(int(round(v)) for v in origin)
    for axis, colour in zip(R.T, ((0, 0, 255), (0, 255, 0), (255, 0, 0))):  # BGR: x red, y green, z blue
        end = tuple(int(round(v)) for v in np.asarray(origin) + length * axis[:2])
        cv2.arrowedLine(image_bgr, start, end, colour, thickness, cv2.LINE_AA, tipLength=0.15)
