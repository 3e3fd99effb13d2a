"""The heatmap codec: reference semantics, the Cython path equals the NumPy reference, round trips."""
import cv2
import numpy as np
import pytest

from facealign.data import codec as codec_mod
from facealign.data.codec import HeatmapCodec
from facealign.data.transforms import apply, invert, similarity


def test_native_extension_is_built():
    assert codec_mod._native is not None, "facealign._native.heatmap is missing: the loader would use NumPy"
    assert HeatmapCodec().native


@pytest.mark.parametrize("mode", ["reference", "subpixel"])
@pytest.mark.parametrize("sigma,input_size,heatmap_size", [(1.0, 128, 64), (2.0, 256, 64), (0.0, 128, 64),
                                                           (1.5, 64, 32)])
def test_cython_encode_equals_numpy(mode, sigma, input_size, heatmap_size):
    rng = np.random.default_rng(0)
    pts = rng.uniform(-10, input_size + 10, (98, 2))  # some outside: empty channels
    pts[3] = np.nan  # missing point: empty channel
    kw = dict(input_size=input_size, heatmap_size=heatmap_size, sigma=sigma, encode_mode=mode)
    fast = HeatmapCodec(**kw).encode(pts)
    ref = HeatmapCodec(**kw, backend="numpy").encode(pts)
    np.testing.assert_array_equal(fast, ref)
    assert fast[3].max() == 0


@pytest.mark.parametrize("stride", [2, 4])
def test_cython_decode_equals_numpy(stride):
    rng = np.random.default_rng(1)
    c = HeatmapCodec(input_size=64 * stride, heatmap_size=64, encode_mode="subpixel")
    hm = c.encode_batch(rng.uniform(0, 64 * stride, (5, 68, 2)))
    hm += rng.normal(0, 0.5, hm.shape).astype(np.float32)  # noisy, like a prediction
    hm[0, 0] = 0  # flat channel
    hm[0, 1] = -1  # all negative
    fast = c.decode(hm)
    ref = HeatmapCodec(input_size=64 * stride, heatmap_size=64, backend="numpy").decode(hm)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])


@pytest.mark.parametrize("stride,sigma", [(2, 1.0), (4, 2.0)])
def test_cython_dark_decode_equals_numpy(stride, sigma):
    rng = np.random.default_rng(2)
    c = HeatmapCodec(input_size=32 * stride, heatmap_size=32, sigma=sigma, encode_mode="subpixel", decode_mode="dark")
    hm = c.encode_batch(rng.uniform(0, 32 * stride, (4, 68, 2)))
    hm += rng.normal(0, 0.5, hm.shape).astype(np.float32)
    hm[0, 0] = 0  # flat channel
    hm[0, 1] = -1  # all negative
    hm[1, 2] = 0
    hm[1, 2, 0, 0] = 5  # a maximum at the border: no Taylor step
    fast = c.decode(hm)
    ref = HeatmapCodec(input_size=32 * stride, heatmap_size=32, sigma=sigma, decode_mode="dark",
                       backend="numpy").decode(hm)
    np.testing.assert_array_equal(fast[0], ref[0])
    np.testing.assert_array_equal(fast[1], ref[1])
    assert fast[0][1, 2].tolist() == [(stride - 1) / 2] * 2  # the border maximum, unmoved


def test_dark_taylor_step_by_hand():
    from facealign.data.codec import _taylor

    # the log of a 2D Gaussian with a cross term: the Taylor step lands on its centre exactly
    ys, xs = np.mgrid[0:9, 0:9].astype(np.float64)
    cx, cy, a, b, c = 4.3, 3.8, 0.5, 0.1, 0.3
    lg = -(a * (xs - cx) ** 2 + 2 * b * (xs - cx) * (ys - cy) + c * (ys - cy) ** 2)
    ox, oy = _taylor(lg, 4, 4)
    assert (4 + ox, 4 + oy) == pytest.approx((cx, cy), abs=1e-9)
    assert _taylor(-lg, 4, 4) == (0.0, 0.0)  # a minimum, not a maximum: no step
    assert _taylor(lg, 1, 4) == (0.0, 0.0)  # too near the border


def test_dark_decoding_beats_argmax_and_three_point_refinement_on_noisy_heatmaps():
    rng = np.random.default_rng(0)
    enc = HeatmapCodec(64, 32, sigma=2.0, encode_mode="subpixel")
    pts = rng.uniform(10, 54, (30, 68, 2))
    hm = np.stack([enc.encode(p) for p in pts]) * 0.7 + rng.normal(0, 1.0, (30, 68, 32, 32)).astype(np.float32)
    error = {mode: np.linalg.norm(HeatmapCodec(64, 32, sigma=2.0, decode_mode=mode).decode(hm)[0] - pts, axis=2).mean()
             for mode in ("reference", "subpixel", "dark")}
    assert error["dark"] < 0.5 * error["subpixel"] and error["subpixel"] < error["reference"], error
    with pytest.raises(ValueError, match="dark decoding smooths with the training sigma"):
        HeatmapCodec(64, 32, sigma=0.0, decode_mode="dark")


def test_reference_targets():
    # seed-spec §4.5: floor(pt / 2), a 7x7 window of 20 exp(-d^2 / 2) around it, zeros elsewhere.
    c = HeatmapCodec(input_size=128, heatmap_size=64, sigma=1, peak=20)
    hm = c.encode(np.array([[21.9, 41.2], [0.5, 127.9], [130.0, 5.0]]))
    assert hm.shape == (3, 64, 64) and hm.dtype == np.float32
    assert hm[0, 20, 10] == 20.0 and hm[0].argmax() == 20 * 64 + 10
    assert np.count_nonzero(hm[0]) == 49
    assert hm[0, 20, 11] == pytest.approx(20 * np.exp(-0.5))
    assert hm[0, 23, 13] == pytest.approx(20 * np.exp(-9))
    assert hm[0, 24, 10] == 0 and hm[0, 20, 14] == 0
    assert np.count_nonzero(hm[1]) == 4 * 4  # corner (63, 0): the window is clipped
    assert hm[2].max() == 0  # outside the crop: no target


def test_reference_windows_overwrite_instead_of_max_merging():
    c = HeatmapCodec(backend="numpy")
    close = np.array([[20.0, 20.0], [22.0, 20.0]])  # heatmap pixels (10, 10) and (11, 10)
    hm = c.encode(close)
    assert hm.shape[0] == 2 and hm[0, 10, 10] == 20 and hm[1, 10, 11] == 20  # one channel per point


def test_sigma_zero_is_one_hot():
    hm = HeatmapCodec(sigma=0).encode(np.array([[31.0, 63.0]]))
    assert hm.sum() == 1.0 and hm[0, 31, 15] == 1.0


@pytest.mark.parametrize("input_size,heatmap_size", [(128, 64), (256, 64), (64, 32)])
def test_subpixel_round_trip_is_exact(input_size, heatmap_size):
    rng = np.random.default_rng(2)
    c = HeatmapCodec(input_size=input_size, heatmap_size=heatmap_size, encode_mode="subpixel")
    stride = input_size // heatmap_size
    pts = rng.uniform(2 * stride, input_size - 2 * stride, (4, 68, 2))
    got, scores = c.decode(c.encode_batch(pts))
    assert np.abs(got - pts).max() < 1e-3
    assert (scores > 0.9 * 20 * np.exp(-0.5 * 0.5)).all()


def test_reference_round_trip_error_is_bounded_by_the_stride():
    rng = np.random.default_rng(3)
    pts = rng.uniform(4, 124, (2, 68, 2))
    c = HeatmapCodec()  # reference targets, sub-pixel decode
    got, _ = c.decode(c.encode_batch(pts))
    # A point in [2j, 2j + 2) is encoded at heatmap pixel j, whose centre is 2j + 0.5 in input pixels.
    assert np.abs(got - pts).max() <= 1.5 + 1e-6


def test_reference_decode_is_integer_argmax_after_bilinear_upsampling():
    rng = np.random.default_rng(4)
    hm = rng.normal(0, 1, (2, 68, 64, 64)).astype(np.float32)
    pts, scores = HeatmapCodec(decode_mode="reference").decode(hm)
    for b in range(2):
        for k in range(0, 68, 7):
            up = cv2.resize(hm[b, k], (128, 128))
            y, x = np.unravel_index(up.argmax(), up.shape)
            assert tuple(pts[b, k]) == (x, y) and scores[b, k] == up.max()
    assert (pts == np.round(pts)).all()


def test_landmarks_map_back_through_the_inverse_crop():
    rng = np.random.default_rng(5)
    original = rng.uniform(140, 250, (68, 2))  # in a 384 canvas, inside the crop below
    M = similarity((200, 190), (64, 64), 128 / 256 * 1.1, 17.0)  # a rotated training crop
    c = HeatmapCodec(encode_mode="subpixel")
    decoded, _ = c.decode(c.encode(apply(M, original))[None])
    back = apply(invert(M), decoded[0])
    np.testing.assert_allclose(back, original, atol=2e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="must divide"):
        HeatmapCodec(input_size=128, heatmap_size=48)
    with pytest.raises(ValueError, match="encode_mode"):
        HeatmapCodec(encode_mode="gauss")
    with pytest.raises(ValueError, match="N x K x H x W"):
        HeatmapCodec().decode(np.zeros((68, 64, 64), np.float32))
