"""A model followed through a video whose landmarks are known (``facealign.synth.video``): how fast the tracking
loop runs, how far its landmarks are from the truth, and how much they shake.

    frames = talking_head(seed=5, frames=150)
    result = track_video(predictor, frames, FaceTracker(lambda: make_filter("one-euro"), detect_every=10))
    result.nme, result.jitter, result.frames_per_s

The loop is ``tracking.follow``, the one ``facealign-infer`` runs on a video file; the seconds counted are
its own (detector, crops, network, decoding, smoothing), not the rendering. A frame where no face was found
scores as missed (its NME left out, counted in ``missed``) and breaks the track for the jitter.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from facealign.evaluation.metrics import jitter, nme
from facealign.serve.tracking import FaceTracker, follow


@dataclass
class VideoResult:
    frames: int
    missed: int  # frames where no face was found
    detector_frames: int  # frames the detector ran on
    seconds: float  # the tracking loop's own time
    nme: float  # mean over the frames with a face (fraction of the eye-centre distance)
    jitter: float  # metrics.jitter over the runs of consecutive found frames (fraction)
    landmarks: np.ndarray  # (T, K, 2); NaN where missed

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return {"frames": self.frames, "missed": self.missed, "detector_frames": self.detector_frames,
                "seconds": round(self.seconds, 3), "frames_per_s": round(self.frames_per_s, 1),
                "nme_pct": round(100 * self.nme, 3), "jitter_pct": round(100 * self.jitter, 3)}


def track_video(predictor, frames, tracker: FaceTracker) -> VideoResult:
    """Follow the one face of ``frames`` (``VideoFrame``s: ``index``, ``t``, ``image``, ``landmarks``)."""
    found, truth, seconds, detected = [], [], 0.0, 0
    for frame in frames:
        detected += tracker.boxes(frame.index) is None
        start = time.perf_counter()
        pred = follow(predictor, tracker, frame.image, frame.index, frame.t)
        seconds += time.perf_counter() - start
        found.append(pred.landmarks[nearest(pred.landmarks, frame.landmarks)][:, :2] if len(pred) else None)
        truth.append(frame.landmarks[:, :2])
    if not truth:
        raise ValueError("track_video: the video has no frames")
    k = truth[0].shape[0]
    landmarks = np.stack([f if f is not None else np.full((k, 2), np.nan) for f in found])
    truth = np.stack(truth)
    hit = ~np.isnan(landmarks[:, 0, 0])
    errors = nme(landmarks[hit], truth[hit]) if hit.any() else np.zeros(0)
    return VideoResult(frames=len(truth), missed=int((~hit).sum()), detector_frames=detected, seconds=seconds,
                       nme=float(errors.mean()) if len(errors) else float("nan"),
                       jitter=runs_jitter(landmarks, truth, hit), landmarks=landmarks)


def nearest(faces: np.ndarray, truth: np.ndarray) -> int:
    """The predicted face whose landmarks' centre is nearest the true face's."""
    return int(np.argmin(np.linalg.norm(faces[..., :2].mean(1) - truth[:, :2].mean(0), axis=1)))


def runs_jitter(landmarks: np.ndarray, truth: np.ndarray, hit: np.ndarray) -> float:
    """``metrics.jitter`` over every run of two or more consecutive found frames, weighted by its changes."""
    total, changes, start = 0.0, 0, None
    for i, h in enumerate(list(hit) + [False]):
        if h and start is None:
            start = i
        elif not h and start is not None:
            if i - start >= 2:
                total += jitter(landmarks[start:i], truth[start:i]) ** 2 * (i - start - 1)
                changes += i - start - 1
            start = None
    return float(np.sqrt(total / changes)) if changes else float("nan")
