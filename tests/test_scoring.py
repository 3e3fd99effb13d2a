"""One scoring path: the reference's test_rec_nme.py image by image, and the same NME from training
validation, ``facealign-eval`` and the ``Predictor``."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from conftest import BIN, REPO, run_cli, write_tiny_job
from facealign.runs import artifact
from facealign.serve import loading
from facealign.runs import checkpoint, checkpoint_format
from facealign.data.pipeline import RecordSet
from facealign.cli.pack import main as pack_main
from facealign.data.transforms import ARCFACE_5PT, apply, five_points, reference_alignment
from facealign.evaluation.metrics import nme

# --- the reference protocol against an independent re-telling of test_rec_nme.py ---------------------

MARGINS = {"ibug": 36, "cofw_testset": 45, "300W": 40}


def rec_nme_of_the_reference(image, landmarks, forward, size, dataset, landmark_type):
    """What the reference's ``test_rec_nme.py`` does to one record (its default, ground-truth crop), told
    step by step with skimage and OpenCV as it uses them, in its float32 conventions. Returns the NME."""
    label = np.array(landmarks[:, :2], np.float32)
    five = np.zeros((5, 2), np.float32)
    five[0], five[1] = (label[36] + label[39]) / 2, (label[42] + label[45]) / 2
    five[2], five[3], five[4] = label[30], label[48], label[54]
    template = np.array(ARCFACE_5PT, np.float32)
    canvas_side = image.shape[0]  # preprocess(img, label, img.shape[0])
    if canvas_side == 384:
        template = template * 2 + 80.0
    similarity = SimilarityTransform()
    similarity.estimate(five, template)
    trans1 = similarity.params[0:2, :]
    canvas = cv2.warpAffine(image, trans1, (canvas_side, canvas_side), borderValue=0.0)
    aligned = np.zeros_like(label)
    for i in range(68):
        aligned[i] = np.dot(trans1, np.array([label[i][0], label[i][1], 1.0]))[:2]
    box = np.zeros(4, np.float32)
    box[0:2], box[2:4] = aligned.min(0), aligned.max(0)
    margin = MARGINS.get(dataset, 30)
    box[1] = 0 if box[1] < margin else box[1] - margin
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = int((box[2] + box[0]) / 2), int((box[3] + box[1]) / 2)
    scale = size / (max(w, h) * 1.2)
    trans2 = np.array([[scale, 0, size // 2 - cx * scale], [0, scale, size // 2 - cy * scale]])
    crop = cv2.warpAffine(canvas, trans2, (size, size), borderValue=0.0)
    trans = np.dot(np.vstack((trans2, [0, 0, 1])), np.vstack((trans1, [0, 0, 1])))[0:2]
    inverse = cv2.invertAffineTransform(trans)
    heatmaps = forward(np.transpose(crop, (2, 0, 1))[None].astype(np.float32))[0]
    pred, truth = np.zeros((68, 2), np.float32), np.zeros((68, 2), np.float32)
    for i in range(68):
        up = cv2.resize(heatmaps[i], (size, size))
        row, col = np.unravel_index(np.argmax(up, axis=None), up.shape)
        pred[i] = np.dot(inverse, (col, row, 1.0))[:2]
        q = np.dot(trans, np.array([label[i][0], label[i][1], 1.0]))[:2]
        q = np.floor(q) if landmark_type == "2d" else np.round(q)
        truth[i] = np.dot(inverse, (q[0], q[1], 1.0))[:2]
    error = np.mean(np.sqrt(np.sum(np.square(truth - pred), axis=1)))
    if landmark_type == "2d":
        return error / np.linalg.norm((truth[36] + truth[39]) / 2 - (truth[42] + truth[45]) / 2)
    size_wh = truth.max(0) - truth.min(0)
    return error / np.sqrt(size_wh[0] * size_wh[1])


@pytest.fixture(scope="module")
def reference_sets(tmp_path_factory):
    """Procedural faces named as the reference's test sets (their margins): 384 canvases, and one set
    of 256 canvases (where the reference does not scale its five-point template)."""
    root = tmp_path_factory.mktemp("refsets")
    for name, seed, canvas in (("ibug", 31, 384), ("AFLW2000-3D", 32, 384), ("300W", 33, 256)):
        assert pack_main(["--synthetic", "12", "--seed", str(seed), "--canvas", str(canvas), "--quiet",
                          str(root / name)]) == 0
    return root


@pytest.fixture(scope="module")
def random_release(tmp_path_factory):
    """A full-size hg2-d3-cab with random weights, as a reference release (128 x 128 input)."""
    from facealign.models import get_model, initialize

    directory = tmp_path_factory.mktemp("release") / "model-hg2d3-cab"
    directory.mkdir()
    artifact.save_reference_params(initialize(get_model("hg2-d3-cab"), seed=4), directory / "model-0000.params")
    return directory


@pytest.mark.parametrize("which,dataset,landmark_type", [
    ("trained", "ibug", "2d"), ("trained", "AFLW2000-3D", "3d"), ("trained", "300W", "2d"),
    ("random", "ibug", "2d"), ("random", "AFLW2000-3D", "3d")])
def test_reference_protocol_matches_test_rec_nme_image_by_image(which, dataset, landmark_type, trained_run,
                                                                random_release, reference_sets, tmp_path):
    model = trained_run if which == "trained" else random_release
    out = tmp_path / "eval"
    proc = run_cli("facealign-eval", model, "--data", reference_sets / dataset, "--protocol", "reference",
                   "--landmark-type", landmark_type, "--out", out, "--no-tensorboard", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    norm = "eye_centre" if landmark_type == "2d" else "box"
    ours = [p["nme"][norm] for p in json.loads((out / f"predictions_{dataset}_reference.json").read_text())]
    source = artifact.resolve(model)
    backend = loading.load_backend(source)
    records = RecordSet([reference_sets / dataset])
    theirs = [rec_nme_of_the_reference(records.sample(i).image, records.sample(i).landmarks, backend, source.info.input_size,
                           dataset, landmark_type) for i in range(len(records))]
    diff = 100 * np.abs(np.array(ours) - np.array(theirs))  # NME points
    assert len(ours) == 12 and diff.max() < 0.01, (diff.max(), np.mean(theirs))


def test_the_template_is_scaled_only_on_a_384_canvas():
    rng = np.random.RandomState(3)
    face = ARCFACE_5PT * 2.6 + 40 + rng.normal(0, 1.5, (5, 2))
    landmarks = np.zeros((68, 2))
    landmarks[[36, 39]], landmarks[[42, 45]] = face[0], face[1]
    landmarks[30], landmarks[48], landmarks[54] = face[2], face[3], face[4]
    on_384 = apply(reference_alignment(landmarks, 384), five_points(landmarks))
    on_256 = apply(reference_alignment(landmarks, 256), five_points(landmarks))
    assert np.abs(on_384 - (ARCFACE_5PT * 2 + 80)).max() < 3  # the fit of a noisy face
    assert np.abs(on_256 - ARCFACE_5PT).max() < 1.5


# --- one scoring function behind validation, facealign-eval and the Predictor ------------------------

@pytest.fixture(scope="module")
def box_run(tmp_path_factory):
    """A tiny run validated on 1.2 x box crops (so a Predictor given the records' boxes crops alike)."""
    root = tmp_path_factory.mktemp("boxrun")
    assert pack_main(["--synthetic", "32", "--seed", "41", "--quiet", str(root / "train")]) == 0
    assert pack_main(["--synthetic", "12", "--seed", "42", "--quiet", str(root / "val")]) == 0
    write_tiny_job(root / "job.yaml", root, run={"name": "boxrun", "seed": 2}, data={"workers": 0},
                   schedule={"kind": "step", "unit": "step", "length": 6}, checkpoint={"every_steps": 3},
                   eval={"every_steps": 3, "batch_size": 5, "crop": "box"},
                   logging={"every_steps": 3, "tensorboard": False})
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(root / "job.yaml"), "--run-dir",
                           str(root / "run")], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root / "run"


def test_validation_eval_and_predictor_give_the_same_per_image_nme(box_run, tmp_path):
    import mxnet as mx

    from facealign.train import dist
    from facealign.serve.predictor import Predictor
    from facealign.train.validation import Validator

    ckpt = checkpoint.find(box_run, "latest")
    state = checkpoint_format.read_state(ckpt)
    source = artifact.resolve(ckpt)
    # 1. the trainer's validation (its Validator, one rank)
    dist.init(cpu=True)
    validator = Validator(state["validation"], source.info, dist.World(0, 1, 0, 1), mx.cpu())
    metrics, _ = validator.run(loading.load_network(source, mx.cpu()))
    by_validation = validator.results["synth"].nme["eye_centre"]
    assert abs(metrics["nme/synth"] - state["metrics"]["nme/synth"]) < 1e-6
    # 2. facealign-eval with the run's own protocol
    proc = run_cli("facealign-eval", ckpt, "--protocol", "train", "--out", tmp_path / "eval", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    per_image = json.loads((tmp_path / "eval" / "predictions_synth_train.json").read_text())
    by_eval = np.array([p["nme"]["eye_centre"] for p in per_image])
    # 3. the Predictor, given the records' boxes
    predictor = Predictor.load(ckpt, refine=0)
    records = RecordSet([state["validation"]["sets"]["synth"]])
    by_predictor = []
    for i in range(len(records)):
        s = records.sample(i)
        landmarks = predictor.predict(s.image, boxes=[s.box]).landmarks
        by_predictor.append(nme(landmarks, s.landmarks[None, :, :2], "eye_centre")[0])
    assert len(by_validation) == len(by_eval) == len(by_predictor) == 12
    np.testing.assert_allclose(by_eval, by_validation, rtol=0, atol=1e-9)
    np.testing.assert_allclose(by_predictor, by_validation, rtol=0, atol=1e-6)
    assert by_validation.std() > 0  # twelve different faces, twelve different errors


def test_eval_train_protocol_reproduces_the_recorded_validation(trained_run, tmp_path):
    """The run's best checkpoint scored with ``--protocol train``: the NME its state.json recorded."""
    ckpt = checkpoint.find(trained_run)
    recorded = checkpoint_format.read_state(ckpt)["metrics"]["nme/synth"]
    proc = run_cli("facealign-eval", trained_run, "--protocol", "train", "--out", tmp_path, "--no-tensorboard",
                   "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "report.json").read_text())["results"][0]
    assert result["set"] == "synth" and result["protocol"] == "train" and result["images"] == 24
    assert abs(result["by_norm"]["eye_centre"]["nme"] - recorded) < 1e-6, (result, recorded)


# --- 3D evaluation as the field reports it: NME by yaw ------------------------------------------------

def test_yaw_bins_by_hand():
    from facealign.evaluation.scoring import yaw_bins

    bins = yaw_bins([0.1, 0.2, 0.3, 0.5, 0.9], [5.0, -29.9, 30.0, -75.0, 95.0])
    assert bins["0-30"] == {"nme": pytest.approx(0.15), "images": 2}
    assert bins["30-60"] == {"nme": pytest.approx(0.3), "images": 1}
    assert bins["60-90"] == {"nme": pytest.approx(0.7), "images": 2}  # beyond 90 counts in the last bin
    assert bins["balanced"]["nme"] == pytest.approx((0.15 + 0.3 + 0.7) / 3)
    assert yaw_bins([0.1], [None]) is None
    empty = yaw_bins([0.1, 0.2], [10.0, 20.0])
    assert empty["30-60"] == {"nme": None, "images": 0} and empty["balanced"]["nme"] == pytest.approx(0.15)


def test_eval_reports_nme_per_yaw_bin_on_faces_of_known_yaw(trained_run, synth_sets, tmp_path):
    from facealign.data.records import pose_degrees

    proc = run_cli("facealign-eval", trained_run, "--data", f"synth={synth_sets / 'val'}", "--protocol", "standard",
                   "--out", tmp_path, "--no-tensorboard", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = RecordSet([synth_sets / "val"])
    yaws = np.abs([pose_degrees(records.sample(i).meta)["yaw"] for i in range(len(records))])
    per_image = np.array([p["nme"]["eye_centre"] for p in json.loads(
        (tmp_path / "predictions_synth_standard.json").read_text())])
    by_yaw = json.loads((tmp_path / "report.json").read_text())["results"][0]["by_yaw"]["eye_centre"]
    for name, inside in (("0-30", yaws < 30), ("30-60", (yaws >= 30) & (yaws < 60)), ("60-90", yaws >= 60)):
        assert by_yaw[name]["images"] == int(inside.sum())
        if inside.any():
            assert by_yaw[name]["nme"] == pytest.approx(per_image[inside].mean(), abs=1e-12)
    held = [b["nme"] for k, b in by_yaw.items() if k != "balanced" and b["nme"] is not None]
    assert by_yaw["balanced"]["nme"] == pytest.approx(np.mean(held)) and len(held) >= 2
    assert "by head yaw" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "ced_synth_standard_yaw.png").is_file() and (tmp_path / "ced_synth_standard_yaw.pdf").is_file()
