"""Landmark schemes, crops and flips."""
import numpy as np
import pytest

from facealign.data.schemes import COFW29, IBUG68, WFLW98, get_scheme
from facealign.data.transforms import apply, box_crop, compose, flip_horizontal, invert, similarity
from facealign.synth import mean_face


def test_a_flip_that_is_not_an_involution_is_refused():
    from facealign.data.schemes import LandmarkScheme

    good = dict(name="toy", num_points=4, left_eye=(0,), right_eye=(1,), eye_corners=(0, 0, 1, 1))
    LandmarkScheme(flip=(1, 0, 3, 2), **good)
    with pytest.raises(ValueError, match="not an involution"):
        LandmarkScheme(flip=(1, 2, 0, 3), **good)
    with pytest.raises(ValueError, match="not a permutation"):
        LandmarkScheme(flip=(1, 0, 0, 2), **good)


def test_the_68_point_flip_maps_a_face_onto_its_mirror_image():
    # The mean face is symmetric: mirrored and re-labelled by the scheme, every point lands on its
    # own partner's position (a wrong pair would land on the other side of the face).
    points = mean_face()[:, :2]
    points = points - points.mean(0)
    mirrored = points[list(IBUG68.flip)] * [-1, 1]
    side = np.ptp(points[:, 0])
    assert np.abs(mirrored - points).max() < 0.08 * side
    unflipped = points * [-1, 1]  # without the re-labelling, the jaw and eyes change sides
    assert np.abs(unflipped - points).max() > 0.5 * side


def test_ibug_flip_pairs_match_the_reference():
    assert IBUG68.flip[:17] == tuple(range(16, -1, -1))
    assert IBUG68.flip[36] == 45 and IBUG68.flip[39] == 42 and IBUG68.flip[48] == 54 and IBUG68.flip[30] == 30
    assert WFLW98.flip[96] == 97 and WFLW98.flip[60] == 72
    assert COFW29.flip[8] == 9 and COFW29.flip[28] == 28


def test_the_3d_template_is_mirror_symmetric_under_the_ibug_flip():
    # Checks both the template's point order and the flip permutation: mirroring the face (x -> -x)
    # and relabelling left/right gives the face back.
    t = mean_face()
    mirrored = t[list(IBUG68.flip)] * [-1, 1, 1]
    error = np.abs(mirrored - t)
    assert error.mean() < 0.03 and error.max() < 0.15  # a wrong order would be off by ~0.5 (eye distance 0.84)
    assert t[30].tolist() == [0, 0, 0] and t[:, 2].argmax() == 30  # nose tip closest to the camera
    assert t[8, 1] > t[30, 1] > t[27, 1] > t[19, 1]  # chin below nose below bridge below brow (y down)


def test_get_scheme():
    assert get_scheme(68) is IBUG68 and get_scheme("wflw98") is WFLW98 and get_scheme(29) is COFW29
    with pytest.raises(KeyError, match="no landmark scheme 21"):
        get_scheme(21)


def test_flip_twice_is_identity():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    pts = rng.uniform(0, 127, (68, 3))
    img2, pts2 = flip_horizontal(*flip_horizontal(image, pts, IBUG68.flip), IBUG68.flip)
    np.testing.assert_array_equal(img2, image)
    np.testing.assert_allclose(pts2, pts)


def test_flip_maps_pixels_and_points_consistently():
    image = np.zeros((128, 128, 3), np.uint8)
    pts = np.zeros((68, 2))
    pts[36] = (10, 20)  # the subject's right eye corner, on the image's left
    image[20, 10] = 255
    flipped, fpts = flip_horizontal(image, pts, IBUG68.flip)
    x, y = fpts[45]  # it becomes the other eye's outer corner after relabelling
    assert flipped[int(y), int(x)].max() == 255 and (x, y) == (117, 20)


def test_affine_helpers():
    M = similarity((100, 50), (64, 64), 0.5, 30)
    np.testing.assert_allclose(apply(M, [[100, 50]]), [[64, 64]])
    np.testing.assert_allclose(compose(invert(M), M), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    pts3 = np.array([[100.0, 50.0, 10.0]])
    assert apply(M, pts3)[0, 2] == pytest.approx(5.0)  # depth scales with the crop


def test_box_crop_matches_the_reference_eval_crop():
    # seed-spec §4.6: centre (int((x1+x2)/2), int((y1+y2)/2)), scale 128 / (1.2 max(w, h)), top margin.
    box = (101.0, 130.0, 251.0, 290.0)
    M = box_crop(box, 128, expand=1.2, top_margin=36, integer_center=True)
    y0 = 130 - 36
    cx, cy = int((101 + 251) / 2), int((y0 + 290) / 2)
    s = 128 / (1.2 * max(150, 290 - y0))
    np.testing.assert_allclose(M, [[s, 0, 64 - cx * s], [0, s, 64 - cy * s]])
