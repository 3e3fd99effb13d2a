"""The learning-rate schedule and the metrics, against values worked out by hand."""
import math

import numpy as np
import pytest

from facealign.spec.schema import load_job
from facealign.evaluation.metrics import auc_and_failure, ced, nme, normaliser, primary_norm
from facealign.train.optim import lr_at, scaled_lr, total_steps


def _spec(tmp_path, optim="", schedule=""):
    p = tmp_path / "job.yaml"
    p.write_text(f"data: {{train: [t]}}\noptim: {{lr: 1.0e-3{optim}}}\nschedule: {{{schedule}}}\n")
    return load_job(p)


def test_step_schedule(tmp_path):
    spec = _spec(tmp_path, schedule="kind: step, unit: epoch, milestones: [2, 4], factor: 0.1, length: 6")
    rates = [lr_at(s, spec, steps_per_epoch=10, world_size=1) for s in (0, 19, 20, 39, 40, 59)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert total_steps(spec, 10) == 60


def test_cosine_schedule_in_steps(tmp_path):
    spec = _spec(tmp_path, schedule="kind: cosine, unit: step, length: 100, min_lr_ratio: 0.1")
    assert lr_at(0, spec, 7, 1) == pytest.approx(1e-3)
    assert lr_at(50, spec, 7, 1) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(25, spec, 7, 1) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(100, spec, 7, 1) == lr_at(150, spec, 7, 1) == pytest.approx(1e-4)
    assert total_steps(spec, 7) == 100


def test_warm_up_from_one_ranks_rate_to_the_scaled_rate(tmp_path):
    spec = _spec(tmp_path, optim=", lr_scaling: linear, warmup_steps: 5",
                 schedule="kind: step, unit: step, milestones: [50], factor: 0.5, length: 80")
    assert scaled_lr(spec, 4) == pytest.approx(4e-3)
    rates = [lr_at(s, spec, steps_per_epoch=10, world_size=4) for s in (0, 2, 5, 49, 50)]
    assert rates == pytest.approx([1e-3, 1e-3 + 3e-3 * 2 / 5, 4e-3, 4e-3, 2e-3])
    sqrt = _spec(tmp_path, optim=", lr_scaling: sqrt, grad_accumulation: 2")
    assert scaled_lr(sqrt, 8) == pytest.approx(1e-3 * 4)


def test_run_length_in_epochs_steps_and_the_cap(tmp_path):
    reference = _spec(tmp_path, schedule="kind: step, unit: epoch, length: 45")
    assert total_steps(reference, 980) == 44100  # seed-spec §5.3: 15,683 faces, batch 16
    capped = _spec(tmp_path, schedule="unit: epoch, length: 45, max_steps: 300")
    assert total_steps(capped, 980) == 300


# --- NME, CED, AUC ---------------------------------------------------------------------------------

def _face():
    """68 points: eyes at known places, two points fixing a 12 x 12 landmark box, the rest inside it."""
    gt = np.full((68, 2), 4.0)
    gt[0], gt[8] = (-2, -3), (10, 9)
    left = [(0, 0), (1, 1), (1, -1), (2, 0), (0.5, 1.1), (1.5, 0.1)]  # 36..41: corners 36 and 39
    gt[36:42] = left
    gt[42:48] = np.array(left) + (6, 0.6)  # 42..47: corners 42 and 45
    return gt


def test_each_normalisation_by_hand():
    gt = _face()[None]
    # eye centres (1, 0) and (7, 0.6); outer corners (0, 0) and (8, 0.6); eye centroids differ by (6, 0.6)
    assert normaliser(gt, "eye_centre")[0] == pytest.approx(math.hypot(6, 0.6))
    assert normaliser(gt, "inter_ocular")[0] == pytest.approx(math.hypot(8, 0.6))
    assert normaliser(gt, "inter_pupil")[0] == pytest.approx(math.hypot(6, 0.6))
    assert normaliser(gt, "box")[0] == pytest.approx(12.0)
    assert normaliser(gt, "box_diag")[0] == pytest.approx(math.hypot(12, 12))
    pred = gt + (3.0, 4.0)  # every point 5 pixels off
    assert nme(pred, gt, "box")[0] == pytest.approx(5 / 12)
    assert nme(pred, gt, "inter_ocular")[0] == pytest.approx(5 / math.hypot(8, 0.6))
    half = gt.copy()
    half[0, :34] += (0, 2)  # half the points 2 pixels off, half exact: mean error 1
    assert nme(half, gt, "eye_centre")[0] == pytest.approx(1 / math.hypot(6, 0.6))
    assert primary_norm(2) == "eye_centre" and primary_norm(3) == "box"


def test_ced_auc_and_failure_rate_by_hand():
    errors = [0.02, 0.05, 0.2]
    xs, ys = ced(errors, threshold=0.1)
    assert ys[xs < 0.02].max() == 0 and ys[(xs > 0.021) & (xs < 0.049)].min() == pytest.approx(1 / 3)
    assert ys[-1] == pytest.approx(2 / 3)
    auc, failure = auc_and_failure(errors, 0.1)
    # area: 1/3 over [0.02, 0.05] and 2/3 over [0.05, 0.1], over the 0.1 of the axis
    assert auc == pytest.approx((0.03 / 3 + 0.05 * 2 / 3) / 0.1, abs=1e-3)
    assert failure == pytest.approx(1 / 3)
    assert auc_and_failure([0.0, 0.0], 0.1) == pytest.approx((1.0, 0.0), abs=1e-3)


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_a_clean_window():
    from facealign.train.loss_scaling import DynamicLossScale

    s = DynamicLossScale(value=8.0, window=3, min_value=2.0, max_value=16.0)
    seen = []
    for overflow in [False, False, True, False, False, False, False, False, False, True, True, True]:
        s.update(overflow)
        seen.append((s.value, s.clean))
    assert seen == [(8, 1), (8, 2), (4, 0), (4, 1), (4, 2), (8, 0), (8, 1), (8, 2), (16, 0), (8, 0), (4, 0), (2, 0)]
    assert s.at_minimum and s.skipped == 4
    again = DynamicLossScale()
    again.load(s.state())
    assert (again.value, again.clean, again.skipped) == (2.0, 0, 4)


def test_3d_nme_and_the_depth_error_take_z_relative_to_each_faces_mean():
    from facealign.evaluation.metrics import nme_3d, z_nme

    gt = np.zeros((1, 4, 3))
    gt[0, :, :2] = [[0, 0], [10, 0], [0, 40], [10, 40]]  # box 10 x 40: sqrt(area) = 20
    gt[0, :, 2] = [5, 5, 5, 5]
    pred = gt.copy()
    pred[0, :, 2] = [103, 97, 100, 100]  # offset by 95 (ignored), then -+3, 0, 0 from the mean
    pred[0, 0, 0] += 4  # and 4 pixels off in x on the first point
    assert z_nme(pred, gt)[0] == pytest.approx((3 + 3) / 4 / 20)
    assert nme_3d(pred, gt)[0] == pytest.approx((5 + 3) / 4 / 20)  # hypot(4, 3) = 5 on the first point
