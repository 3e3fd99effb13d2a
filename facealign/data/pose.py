"""Head pose and depth: the conventions of 3D landmarks, and the rigid fit that reads the pose off them.

Depth: z in the same pixel units as x and y, toward the camera, relative to the face's mean z
(``relative_depth``): what the records' z becomes as a training target, and how predictions and ground
truth are compared. Pose: one convention everywhere (the procedural faces, the records' ``pose``, the Predictor): points in
x right, y down, z toward the camera, in pixels; a head at pose (yaw, pitch, roll) is the mean face
rotated by ``R = Rz(roll) Rx(pitch) Ry(yaw)`` (``head_rotation``). ``head_pose`` fits the mean 3D face
(facealign/synth/mean_face_68.txt) to 68 predicted (x, y, z) points with a least-squares similarity
and decomposes its rotation.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .transforms import similarity_fit


def relative_depth(points) -> np.ndarray:
    """(..., K, 3) points with each face's z taken relative to its mean z."""
    points = np.asarray(points, np.float64).copy()
    points[..., 2] -= points[..., 2].mean(axis=-1, keepdims=True)
    return points


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The 3 x 3 rotation of a head at (yaw, pitch, roll) degrees."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def euler_angles(R: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation ``head_rotation`` made: its third row is
    (-cos p sin y, sin p, cos p cos y), and R[0, 1] = -sin r cos p, R[1, 1] = cos r cos p."""
    pitch = math.asin(max(-1.0, min(1.0, R[2, 1])))
    yaw = math.atan2(-R[2, 0], R[2, 2])
    roll = math.atan2(-R[0, 1], R[1, 1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


# The procedural faces' templates (facealign/synth/derive_template.py writes both): "300w", today's (300-W's mean
# outline on SPIGA's depth: the photographic faces and the pose fit), and "spiga", SPIGA's alone, which the flat
# style keeps so that its faces, and the records and runs made from them, stay as they were.
TEMPLATES = {"300w": "mean_face_68.txt", "spiga": "mean_face_68_spiga.txt"}


@lru_cache(maxsize=None)
def mean_face(template: str = "300w") -> np.ndarray:
    """(68, 3) mean face (``TEMPLATES``): x right, y down, z toward the camera; nose tip at the origin (unit
    scale)."""
    return np.loadtxt(Path(__file__).resolve().parents[1] / "synth" / TEMPLATES[template])


def head_pose(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of 68 (x, y, z) points: the mean face's best similarity fit."""
    points = np.asarray(points, np.float64)
    if points.shape != (68, 3):
        raise ValueError(f"head pose needs 68 (x, y, z) points, got {points.shape}")
    T = similarity_fit(mean_face(), points)
    A = T[:3, :3]
    return euler_angles(A / np.cbrt(np.linalg.det(A)))
