"""Faces followed through a video: each face matched to the last frame's nearest, its landmarks smoothed by its
own filter (facealign.serve.smoothing), and the last frame's landmarks framing the faces of the next one, so the
detector runs only every few frames."""
from __future__ import annotations

import numpy as np

from facealign.serve.predictor import landmark_box


def match_previous(current, previous):
    """Index of the previous frame's face nearest to each current face (or None)."""
    if previous is None or len(previous) == 0:
        return [None] * len(current)
    prev_centres = previous.mean(1)
    out = []
    for pts in current:
        d = np.linalg.norm(prev_centres - pts.mean(0), axis=1)
        j = int(np.argmin(d))
        size = np.ptp(pts[:, 0]) + 1e-6
        out.append(j if d[j] < 0.5 * size else None)
    return out


class FaceTracker:
    """``boxes(index)``: the faces' boxes for frame ``index`` from the last frame's landmarks, or None where the
    detector must run (every ``detect_every`` frames, or no face tracked); ``update(t, landmarks)`` smooths a
    frame's landmarks in place, each face with the filter of the track it continues (a new one starts afresh)."""

    def __init__(self, new_filter, detect_every: int = 1):
        self.new_filter, self.detect_every = new_filter, max(int(detect_every), 1)
        self.previous, self.filters = None, []

    def boxes(self, index: int):
        if self.previous is None or not len(self.previous) or index % self.detect_every == 0:
            return None
        return np.array([landmark_box(p) for p in self.previous])

    def update(self, t: float, landmarks: np.ndarray) -> np.ndarray:
        matches = match_previous(landmarks, self.previous)
        self.filters = [self.filters[j] if j is not None else self.new_filter() for j in matches]
        for i, f in enumerate(self.filters):
            landmarks[i] = f(t, landmarks[i])
        self.previous = landmarks.copy()
        return landmarks
