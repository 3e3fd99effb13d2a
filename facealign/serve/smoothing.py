"""Steady landmarks in video: the One Euro filter (Casiez, Roussel and Vogel, CHI 2012) and an EMA.

    >>> f = OneEuroFilter(min_cutoff=2.0, beta=0.05, d_cutoff=5.0)    # the defaults
    >>> smooth = [f(t, points) for t, points in frames]      # t in seconds, points any array shape

64 x 64 heatmaps quantise landmarks to about a crop pixel and a half, which a
viewer sees as jitter. The One Euro filter is a low-pass filter whose cut-off
rises with the speed of the signal: at rest it smooths hard (``min_cutoff``, Hz),
in motion it follows (``beta`` scales the cut-off with the speed, in units per
second), so a face that moves suddenly is not left behind as an EMA of the same
steadiness leaves it. Every coordinate is filtered on its own, on the frames'
timestamps. ``reset()`` forgets a lost track.

The defaults were chosen on the procedural talking head (``facealign.synth.video``, seeds 5 and 7, two
models; bench/realtime.py reports seed 6): a speaker's lips move two or three times a second, so the
speed estimate must follow them (``d_cutoff`` 5 Hz, where 1 Hz averaged the lips' motion away and the
filter lagged them) and the cut-off at rest stays at 2 Hz. They cut the jitter (``metrics.jitter``) by
38-58% for at most 4.4% more NME there.
"""
from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff, dt: float):
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


MIN_CUTOFF, BETA, D_CUTOFF = 2.0, 0.05, 5.0  # Hz, per (pixel/s), Hz


class OneEuroFilter:
    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF):
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"One Euro filter: min_cutoff and d_cutoff must be > 0 and beta >= 0, got "
                             f"{min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self.t = self.x = self.dx = None

    def __call__(self, t: float, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or self.x.shape != x.shape:
            self.t, self.x, self.dx = t, x.copy(), np.zeros_like(x)
            return x.copy()
        dt = t - self.t
        if dt <= 0:  # a repeated or out-of-order timestamp: nothing to filter over
            return self.x.copy()
        dx = (x - self.x) / dt
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.x + _alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x.copy()


class EmaFilter:
    """``weight`` of the previous output, ``1 - weight`` of the new value (per frame, whatever the time)."""

    def __init__(self, weight: float):
        if not 0 <= weight < 1:
            raise ValueError(f"EMA weight must be in [0, 1), got {weight}")
        self.weight = weight
        self.reset()

    def reset(self) -> None:
        self.x = None

    def __call__(self, t: float, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        self.x = x.copy() if self.x is None or self.x.shape != x.shape else self.weight * self.x + (1 - self.weight) * x
        return self.x.copy()


class NoFilter:
    def reset(self) -> None:
        pass

    def __call__(self, t: float, x) -> np.ndarray:
        return np.asarray(x, np.float64).copy()


def make_filter(kind: str, *, ema: float = 0.6, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                d_cutoff: float = D_CUTOFF):
    """``one-euro``, ``ema`` (with ``ema`` the weight of the past) or ``off``: a new filter for one track."""
    if kind == "one-euro":
        return OneEuroFilter(min_cutoff, beta, d_cutoff)
    if kind == "ema":
        return EmaFilter(ema)
    if kind == "off":
        return NoFilter()
    raise ValueError(f"smoothing must be one-euro, ema or off, got {kind!r}")


def shake(track: np.ndarray) -> float:
    """RMS of the second difference of a (T, ...) track, for a track without a truth (with one, score
    ``facealign.evaluation.metrics.jitter``): what a viewer sees as shaking."""
    second = np.diff(np.asarray(track, np.float64), n=2, axis=0)
    return float(np.sqrt(np.mean(second ** 2)))
