"""The depth convention of 3D landmarks, and how every augmentation carries z (procedural faces: z known)."""
import numpy as np
import pytest

from facealign.data.loader import RecordSet, SampleConfig, process_sample
from facealign.data.pose import relative_depth
from facealign.data.schemes import get_scheme
from facealign.data.transforms import AugmentConfig
from facealign.synth import render_face


@pytest.fixture(scope="module")
def faces3d(tmp_path_factory):
    from facealign.data.pack import main as pack_main

    prefix = tmp_path_factory.mktemp("depth") / "faces"
    assert pack_main(["--synthetic", "24", "--seed", "9", "--quiet", str(prefix)]) == 0
    return RecordSet([prefix])


def test_procedural_z_points_toward_the_camera():
    """The nose tip is nearer than the face's mean; turned by a positive yaw, the side on the image's right
    goes away from the camera (x' = x cos y + z sin y, z' = z cos y - x sin y)."""
    for i in range(40):
        face = render_face(2, i)
        z = relative_depth(face.landmarks)[:, 2]
        assert z[30] > 0
        yaw = face.pose[0]
        if abs(yaw) > 20:
            right, left = z[9:17].mean(), z[0:8].mean()  # the jaw on the image's right and left
            assert (right < left) == (yaw > 0), (yaw, right, left)


def test_records_keep_z_and_samples_take_it_relative_to_the_face(faces3d):
    cfg = SampleConfig(input_size=64, augment=AugmentConfig(rotate=0, scale_sigma=0, flip=False))
    p = process_sample(faces3d, 3, cfg, train=False)
    assert p.source_landmarks.shape == (68, 3) and p.landmarks.shape == (68, 3)
    scale = np.sqrt(abs(np.linalg.det(p.transform[:, :2])))
    np.testing.assert_allclose(p.landmarks[:, 2], relative_depth(p.source_landmarks)[:, 2] * scale, atol=1e-3)
    assert abs(p.landmarks[:, 2].mean()) < 1e-3


@pytest.mark.parametrize("epoch", range(6))
def test_every_augmentation_carries_z(faces3d, epoch):
    """Rotation keeps z, scaling scales it, a flip re-labels the left and right points and negates nothing:
    z out = the source z relative to its mean x the crop's scale, permuted where the crop is mirrored."""
    cfg = SampleConfig(input_size=64, augment=AugmentConfig(rotate=40, scale_sigma=0.2, flip=True))
    flip = np.array(get_scheme("ibug68").flip)
    mirrored = 0
    for i in range(len(faces3d)):
        p = process_sample(faces3d, i, cfg, train=True, seed=1, epoch=epoch)
        det = np.linalg.det(p.transform[:, :2])
        expected = relative_depth(p.source_landmarks)[:, 2] * np.sqrt(abs(det))
        if det < 0:  # the crop is mirrored
            expected, mirrored = expected[flip], mirrored + 1
        np.testing.assert_allclose(p.landmarks[:, 2], expected, atol=1e-3, err_msg=f"record {i}")
    assert 0 < mirrored < len(faces3d)
