"""Head pose from 3D landmarks, against its definition and against procedural faces of known pose."""
import numpy as np
import pytest

from facealign.data.pose import euler_angles, head_pose, head_rotation, mean_face
from facealign.synth import render_face


@pytest.mark.parametrize("pose", [(0, 0, 0), (30, -10, 5), (-75, 20, -15), (60, 35, 40), (-5, -40, 170)])
def test_the_euler_angles_of_a_head_rotation_are_its_pose(pose):
    np.testing.assert_allclose(euler_angles(head_rotation(*pose)), pose, atol=1e-9)


def test_the_fit_reads_the_pose_off_a_rotated_scaled_moved_mean_face():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pose = (rng.uniform(-80, 80), rng.uniform(-40, 40), rng.uniform(-45, 45))
        points = 57.0 * mean_face() @ head_rotation(*pose).T + [120.0, 80.0, -3.0]
        np.testing.assert_allclose(head_pose(points), pose, atol=1e-6)


def test_the_pose_of_procedural_faces_is_their_known_pose():
    """Their shapes vary and their projection has perspective: the fit stays within a few degrees."""
    errors = []
    for i in range(60):
        face = render_face(7, i)
        errors.append(np.abs(np.subtract(head_pose(face.landmarks), face.pose)))
    errors = np.array(errors)
    assert (np.median(errors, axis=0) < 1).all() and (errors.max(axis=0) < 5).all(), \
        (np.median(errors, axis=0), errors.max(axis=0))


def test_head_pose_needs_68_points_with_depth():
    with pytest.raises(ValueError, match=r"68 \(x, y, z\) points, got \(68, 2\)"):
        head_pose(np.zeros((68, 2)))
