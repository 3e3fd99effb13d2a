"""The procedural face generator: deterministic, posed, and the landmarks sit on drawn features."""
import numpy as np

from facealign.synth import CANVAS, render_face
from facealign.synth.faces import _mesh


def test_deterministic_per_seed_and_index():
    a, b, c = render_face(3, 7), render_face(3, 7), render_face(3, 8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert not np.array_equal(a.landmarks, c.landmarks)
    assert not np.array_equal(render_face(4, 7).image, a.image)


def test_shapes_framing_and_pose_ranges():
    faces = [render_face(0, i) for i in range(60)]
    yaws = np.array([f.pose[0] for f in faces])
    for f in faces:
        assert f.image.shape == (CANVAS, CANVAS, 3) and f.image.dtype == np.uint8
        assert f.landmarks.shape == (68, 3) and np.isfinite(f.landmarks).all()
        side = (f.landmarks[:, :2].max(0) - f.landmarks[:, :2].min(0)).max()
        assert CANVAS / 4 < side < CANVAS / 1.5  # the framing facealign-pack gives real photos
        assert np.abs(f.landmarks[:, :2].mean(0) - CANVAS / 2).max() < CANVAS / 5
        assert abs(f.pose[0]) <= 70 and abs(f.pose[1]) <= 25 and abs(f.pose[2]) <= 30
    assert yaws.min() < -30 and yaws.max() > 30  # profiles occur
    assert len(_mesh()) > 100


def test_yaw_moves_depth_the_right_way():
    # Turned one way, the face's image-left jaw end comes toward the camera (z grows) and the other
    # recedes; turned the other way, the reverse; and the further the turn, the larger the difference.
    faces = [render_face(3, i) for i in range(30)]
    turned = [(f.pose[0], float(f.landmarks[0, 2] - f.landmarks[16, 2])) for f in faces if abs(f.pose[0]) > 10]
    assert sum(y > 0 for y, _ in turned) >= 3 and sum(y < 0 for y, _ in turned) >= 3
    assert all(np.sign(depth) == np.sign(yaw) for yaw, depth in turned), turned
    yaws, depths = np.array(turned).T
    assert np.corrcoef(np.abs(yaws), np.abs(depths))[0, 1] > 0.8
    for f in faces:  # and the nose tip stays nearer the camera than the far jaw end
        assert f.landmarks[30, 2] > min(f.landmarks[0, 2], f.landmarks[16, 2])


def test_landmarks_sit_on_drawn_features():
    # Across a brow landmark the image changes far more than across the same distance of forehead
    # just above it (a control that sees shading, not a drawn feature): evidence the image shows what
    # the landmarks say. The brow stroke is about 0.07 eye-corner distances wide.
    features, control = [], []
    for i in range(40):
        f = render_face(1, i)
        if abs(f.pose[0]) > 35:
            continue
        img = f.image.astype(float)
        lm = f.landmarks[:, :2]

        def at(p):
            x, y = np.clip(np.round(p).astype(int), 0, CANVAS - 1)
            return img[y, x]

        step = 0.12 * np.linalg.norm(lm[45] - lm[36])
        for brow, eye in ((19, 37), (24, 44)):
            up = (lm[brow] - lm[eye]) / np.linalg.norm(lm[brow] - lm[eye])
            on, above, further = at(lm[brow]), at(lm[brow] + up * step), at(lm[brow] + up * 2 * step)
            features.append(np.abs(on - above).sum())
            control.append(np.abs(above - further).sum())
    assert len(features) > 30
    assert np.median(features) > 3 * np.median(control)
