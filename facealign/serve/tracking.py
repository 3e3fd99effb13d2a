"""Faces followed through a video: each face matched to the last frame's nearest, its landmarks smoothed by its
own filter (facealign.serve.smoothing), and the last frame's landmarks framing the faces of the next one, so the
detector runs only every few frames. ``follow`` is one frame of it, for ``facealign-infer`` and the video
scoring alike."""
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
    detector must run (every ``detect_every`` frames, or no face tracked); ``update(t, landmarks, ...)`` smooths a
    frame's landmarks in place, each face with the filter of the track it continues (a new one starts afresh).

    A track is lost, and the detector runs on the next frame, when its face's mean landmark score (the heatmap
    peaks: about the targets' peak, 20, when confident) falls below ``min_score``, or its landmarks' centre leaves
    the frame."""

    def __init__(self, new_filter, detect_every: int = 1, min_score: float = 0.0):
        self.new_filter, self.detect_every, self.min_score = new_filter, max(int(detect_every), 1), min_score
        self.previous, self.filters = None, []

    def boxes(self, index: int):
        if self.previous is None or not len(self.previous) or index % self.detect_every == 0:
            return None
        return np.array([landmark_box(p) for p in self.previous])

    def update(self, t: float, landmarks: np.ndarray, scores: np.ndarray | None = None,
               frame_size: tuple[int, int] | None = None) -> np.ndarray:
        """Smooth ``landmarks`` (F, K, D) in place and keep the faces still tracked; ``scores`` (F, K) and
        ``frame_size`` (width, height) decide which are lost."""
        matches = match_previous(landmarks, self.previous)
        self.filters = [self.filters[j] if j is not None else self.new_filter() for j in matches]
        for i, f in enumerate(self.filters):
            landmarks[i] = f(t, landmarks[i])
        kept = [i for i in range(len(landmarks)) if self.holds(landmarks[i], None if scores is None else scores[i],
                                                                 frame_size)]
        self.previous, self.filters = landmarks[kept].copy(), [self.filters[i] for i in kept]
        return landmarks

    def holds(self, points: np.ndarray, scores: np.ndarray | None, frame_size) -> bool:
        """Whether a face stays tracked: confident enough, and its landmarks' centre inside the frame."""
        if scores is not None and len(scores) and float(np.mean(scores)) < self.min_score:
            return False
        if frame_size is not None:
            cx, cy = points[:, :2].mean(0)
            return 0 <= cx < frame_size[0] and 0 <= cy < frame_size[1]
        return True


def follow(predictor, tracker: FaceTracker, image: np.ndarray, index: int, t: float, boxes=None):
    """Frame ``index`` (at ``t`` seconds) of a video: its faces framed from the last frame's landmarks (or found by
    the predictor's detector where the tracker has none, every ``detect_every`` frames and after a lost track; or
    ``boxes`` when given), their landmarks predicted and smoothed in place. Tracked faces need no re-crop: their
    boxes are landmark boxes already. Returns the ``Prediction``."""
    tracked = tracker.boxes(index) if boxes is None else None
    given = boxes if boxes is not None else tracked
    pred = predictor.predict(image, given, refine=0 if tracked is not None else None)
    tracker.update(t, pred.landmarks, pred.scores, (image.shape[1], image.shape[0]))
    return pred
