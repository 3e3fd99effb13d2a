"""Video with known landmarks: the procedural talking head, the jitter figure against a NumPy reference, and a
trained model followed through the video by facealign-infer's loop (the detector every N frames, one re-crop
only where it ran, the faces of a frame in one batch)."""
import numpy as np
import pytest

from facealign.evaluation.metrics import jitter, normaliser
from facealign.synth.photo import FramePose, render_face
from facealign.synth.video import motion, talking_head


def test_a_frame_pose_moves_what_it_says_and_nothing_else():
    still = render_face(3, 0, 128, pose=FramePose(frame=0))
    again = render_face(3, 0, 128, pose=FramePose(frame=0))
    np.testing.assert_array_equal(still.image, again.image)  # a pure function: the scorer renders it again
    noisy = render_face(3, 0, 128, pose=FramePose(frame=1))
    np.testing.assert_array_equal(noisy.landmarks, still.landmarks)
    assert 0.5 < np.abs(noisy.image.astype(int) - still.image).mean() < 8  # fresh sensor noise, the same scene
    talking = render_face(3, 0, 128, pose=FramePose(mouth=1.0))
    np.testing.assert_array_equal(talking.landmarks[17:48], still.landmarks[17:48])  # brows, nose, eyes stay
    gap = lambda face: np.linalg.norm(face.landmarks[62, :2] - face.landmarks[66, :2])  # noqa: E731
    assert gap(still) < 0.5 and gap(talking) > 5  # the mouth closed, then open
    assert talking.landmarks[8, 1] > still.landmarks[8, 1] + 3  # the chin follows
    turned = render_face(3, 0, 128, pose=FramePose(yaw=30.0, shift=(0.1, 0.0)))
    assert turned.pose == (30.0, 0.0, 0.0)
    assert turned.landmarks[30, 0] > still.landmarks[30, 0] + 12.8 * 0.5  # shifted a tenth and turned
    assert render_face(3, 0, 128).pose != (0.0, 0.0, 0.0)  # without a pose: the set's own draw, as before


def test_the_talking_head_moves_smoothly_and_differs_by_seed():
    poses = motion(5, 90)
    yaws = np.array([p.yaw for p in poses])
    assert np.abs(yaws).max() <= 30 and np.abs(np.diff(yaws)).max() < 1.0  # under 30 degrees a second
    mouth = np.array([p.mouth for p in poses])
    assert mouth.min() < 0.05 and mouth.max() > 0.3  # it talks: closed and open within three seconds
    assert [p.frame for p in poses] == list(range(90))
    assert motion(6, 90)[0] != poses[0]
    frames = list(talking_head(5, 3, 96))
    assert [f.index for f in frames] == [0, 1, 2] and frames[1].t == pytest.approx(1 / 30)
    assert frames[0].image.shape == (96, 96, 3) and frames[0].landmarks.shape == (68, 2)


def _jitter_reference(pred, gt):
    """Loops: for each pair of consecutive frames and each landmark, the change of the error vector over the
    frame's eye-centre distance; the root of the mean square."""
    total, n = 0.0, 0
    for t in range(1, len(gt)):
        d_now = np.linalg.norm((gt[t, 36] + gt[t, 39]) / 2 - (gt[t, 42] + gt[t, 45]) / 2)
        d_before = np.linalg.norm((gt[t - 1, 36] + gt[t - 1, 39]) / 2 - (gt[t - 1, 42] + gt[t - 1, 45]) / 2)
        for k in range(gt.shape[1]):
            change = (pred[t, k] - gt[t, k]) / d_now - (pred[t - 1, k] - gt[t - 1, k]) / d_before
            total += float(change @ change)
            n += 1
    return np.sqrt(total / n)


def test_jitter_is_the_rms_change_of_the_normalised_error():
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 100, (68, 2))
    truth = np.stack([face * (1 + 0.01 * t) + [3 * t, -t] for t in range(12)])  # moving and nearing
    noisy = truth + rng.normal(0, 1.5, truth.shape)
    assert jitter(noisy, truth) == pytest.approx(_jitter_reference(noisy, truth), rel=1e-12)
    biased = truth + [4.0, -2.0] * (normaliser(truth)[:, None, None] / normaliser(truth)[0])
    assert jitter(biased, truth) == pytest.approx(0, abs=1e-12)  # an error that stays put does not shake
    assert jitter(truth, truth) == 0  # nor does a face that moves
    # i.i.d. noise of sigma px per coordinate: E[change^2] = 2 coordinates x 2 frames x sigma^2
    still = np.repeat(face[None], 2000, 0)
    noise = still + rng.normal(0, 1.0, still.shape)
    assert jitter(noise, still) == pytest.approx(2.0 / normaliser(face[None])[0], rel=0.02)
    with pytest.raises(ValueError, match="T >= 2 frames"):
        jitter(truth[:1], truth[:1])


class CountingBackend:
    """A real backend, its calls counted (the batch sizes it was given)."""

    def __init__(self, backend):
        self.backend, self.batches = backend, []

    def __call__(self, crops):
        self.batches.append(len(crops))
        return self.backend(crops)


def test_a_trained_model_follows_the_talking_head_detecting_every_n_frames(trained_run):
    from facealign.serve.detect import make_detector
    from facealign.serve.predictor import Predictor
    from facealign.serve.smoothing import make_filter
    from facealign.serve.tracking import FaceTracker
    from facealign.serve.video import track_video

    predictor = Predictor.load(trained_run, detector=make_detector("haar"), refine=1)
    predictor.backend = counting = CountingBackend(predictor.backend)
    frames = list(talking_head(5, 9, 192))
    result = track_video(predictor, frames, FaceTracker(lambda: make_filter("off"), detect_every=4))
    assert result.frames == 9 and result.missed == 0, result.to_json()
    assert result.detector_frames == 3  # frames 0, 4 and 8
    # a detector's box is re-cropped once (refine=1): two passes; a tracked face's box is a landmark box: one
    assert counting.batches == [1, 1] + [1] * 3 + [1, 1] + [1] * 3 + [1, 1]
    # (the session's small model learned on other faces: its figures are real numbers, not good ones)
    assert np.isfinite(result.nme) and result.jitter > 0 and result.frames_per_s > 0, result.to_json()
    # in the frame's pixels: where the detector framed the face (frames 0, 4, 8), the face lies inside the frame
    # (between detections this weak model's track may drift: its NME on the video is over 100%)
    centres = result.landmarks[[0, 4, 8]].mean(1)
    assert result.landmarks.shape == (9, 68, 2) and np.all(np.isfinite(result.landmarks))
    assert np.all((centres > 0) & (centres < 192)), centres
    # the faces of one frame share the network's batches
    counting.batches.clear()
    boxes = np.array([[40, 40, 150, 150], [10, 20, 120, 130], [60, 50, 170, 160]], np.float64)
    pred = predictor.predict(frames[0].image, boxes, refine=0)
    assert len(pred) == 3 and counting.batches == [3]
