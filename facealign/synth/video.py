"""A procedural video with known landmarks: one photographic face moving, turning and talking, with fresh
sensor noise on every frame.

    for frame in talking_head(seed=5, frames=150):     # 5 s at 30 frames/s, rendered as it is read
        frame.t, frame.image, frame.landmarks

Every frame is ``photo.render_face`` of the same (seed, index) at the frame's ``FramePose``: the face,
its scene and its camera stay; the head turns as a speaker's in front of a webcam (yaw up to +-30 degrees
over 8 s, some pitch and roll), the mouth opens and closes at a talking pace (2.5 syllables a second, in
phrases), the face drifts across the frame and nears the camera. The motion is
smooth sums of sines whose phases depend on the seed, so a scorer renders the same video again and
nothing is stored. ``landmarks`` are 300-W's (the jaw on the visible outline), what the photographic
jobs train on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .photo import FramePose, render_face


@dataclass
class VideoFrame:
    index: int
    t: float  # seconds
    image: np.ndarray  # size x size x 3 uint8 RGB
    landmarks: np.ndarray  # 68 x 2, pixels
    pose: FramePose


def motion(seed: int, frames: int, fps: float = 30.0) -> list[FramePose]:
    """The poses of ``frames`` frames: smooth, different for each seed, the same every time."""
    rng = np.random.default_rng((seed, 7))
    phase = rng.uniform(0, 2 * math.pi, 8)
    poses = []
    for i in range(frames):
        t = i / fps
        speaking = 0.5 + 0.5 * math.sin(2 * math.pi * t / 3.7 + phase[5])  # phrases and pauses
        syllables = 0.5 + 0.5 * math.sin(2 * math.pi * 2.5 * t + phase[6])  # two or three a second
        poses.append(FramePose(
            yaw=30 * math.sin(2 * math.pi * t / 8.0 + phase[0]),
            pitch=6 * math.sin(2 * math.pi * t / 6.1 + phase[1]),
            roll=5 * math.sin(2 * math.pi * t / 7.3 + phase[2]),
            mouth=0.6 * speaking * syllables,
            shift=(0.06 * math.sin(2 * math.pi * t / 9.0 + phase[3]), 0.03 * math.sin(2 * math.pi * t / 6.7 + phase[4])),
            scale=1.0 + 0.06 * math.sin(2 * math.pi * t / 11.0 + phase[7]),
            frame=i))
    return poses


def talking_head(seed: int = 5, frames: int = 150, size: int = 256, fps: float = 30.0, index: int = 0):
    """The video's frames, rendered one at a time (about 0.1 s each at 256 px)."""
    for i, pose in enumerate(motion(seed, frames, fps)):
        face = render_face(seed, index, size, pose=pose)
        yield VideoFrame(index=i, t=i / fps, image=face.image, landmarks=face.visible_landmarks[:, :2].copy(),
                         pose=pose)
