"""The depth convention of 3D landmarks, and how every augmentation carries z (procedural faces: z known)."""
import numpy as np
import pytest

from facealign.data.pipeline import RecordSet, SampleConfig, process_sample
from facealign.data.pose import relative_depth
from facealign.data.schemes import get_scheme
from facealign.data.transforms import AugmentConfig
from facealign.synth import render_face


@pytest.fixture(scope="module")
def faces3d(tmp_path_factory):
    from facealign.cli.pack import main as pack_main

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
    p = process_sample(faces3d, 3, cfg, augment=False)
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
        p = process_sample(faces3d, i, cfg, augment=True, seed=1, epoch=epoch)
        det = np.linalg.det(p.transform[:, :2])
        expected = relative_depth(p.source_landmarks)[:, 2] * np.sqrt(abs(det))
        if det < 0:  # the crop is mirrored
            expected, mirrored = expected[flip], mirrored + 1
        np.testing.assert_allclose(p.landmarks[:, 2], expected, atol=1e-3, err_msg=f"record {i}")
    assert 0 < mirrored < len(faces3d)


def test_a_batch_of_records_with_and_without_z_keeps_x_and_y(faces3d, tmp_path):
    """A 2D model may train on sets with z (AFLW2000-3D) beside sets without (300W): such a batch has x, y."""
    from facealign.data.codec import HeatmapCodec
    from facealign.data.loader import TrainLoader
    from facealign.data.records import RecordWriter, pack_sample

    with RecordWriter(tmp_path / "flat") as w:
        for i in range(len(faces3d)):
            sample = faces3d.sample(i)
            sample.landmarks = sample.landmarks[:, :2]
            w.write(pack_sample(sample, i))
    paths = [faces3d.files[0].rec_path.with_suffix(""), tmp_path / "flat"]
    cfg = SampleConfig(input_size=64)
    with TrainLoader(paths, batch_size=48, codec=HeatmapCodec(64, 32), seed=1, cfg=cfg) as loader:
        batch = next(loader.epoch(0))
    assert batch.landmarks.shape == (48, 68, 2) and batch.heatmaps.shape == (48, 68, 32, 32)


# --- a model that predicts z, end to end (a tiny one trained here) -----------------------------------------

@pytest.fixture(scope="module")
def z_run(tmp_path_factory):
    """hg2-d3-cab-3dz at width 32 trained 40 steps in one process on procedural faces (which carry z)."""
    import subprocess
    import sys

    from conftest import REPO, pack_synthetic_sets, write_tiny_job

    root = pack_synthetic_sets(tmp_path_factory.mktemp("zrun"), train=64, val=16, seed=4)
    job = write_tiny_job(root / "z.yaml", root, model={"name": "hg2-d3-cab-3dz"},
                         data={"workers": 1, "input_size": 64, "heatmap_size": 32, "sigma": 2.0},
                         optim={"lr": 2.0e-3}, schedule={"kind": "cosine", "unit": "step", "length": 40},
                         checkpoint={"every_steps": 20}, eval={"every_steps": 20, "batch_size": 8},
                         logging={"every_steps": 10, "images": 2})
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(job), "--run-dir", str(root / "run")],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})  # faster than 2 at batch 8
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_a_model_that_predicts_z_validates_evaluates_serves_and_exports_z(z_run, tmp_path):
    import json

    from conftest import run_cli
    from facealign.serve.predictor import Predictor
    from tb_events import scalars

    log = (z_run / "run" / "log.txt").read_text()
    assert "nme3d/synth" in log and "z/synth" in log
    assert {"val/nme_box/synth", "val/nme3d/synth", "val/z/synth"} <= set(scalars(z_run / "run" / "tb"))

    ev = run_cli("facealign-eval", z_run / "run", "--data", z_run / "val", "--out", tmp_path / "eval",
                 "--protocol", "standard")
    assert ev.returncode == 0, ev.stderr[-2000:]
    report = json.loads(next((tmp_path / "eval").glob("**/report.json")).read_text())
    depth = report["results"][0]["depth"]
    assert 0 < depth["z"]["nme"] < depth["nme_3d"]["nme"] and depth["z"]["by_yaw"] is not None
    assert "3D NME %" in ev.stdout

    # the Predictor and facealign-infer: z and the head pose
    face = render_face(4, 3)
    box = [*face.landmarks[:, :2].min(0), *face.landmarks[:, :2].max(0)]
    predictor = Predictor.load(z_run / "run")
    pred = predictor.predict(face.image, boxes=[box])
    assert pred.landmarks.shape == (1, 68, 3) and pred.poses.shape == (1, 3)
    assert set(pred.to_json()[0]["pose"]) == {"yaw", "pitch", "roll"} and len(pred.to_json()[0]["landmarks"][0]) == 3

    # ONNX: the same depth maps, so the same z
    ex = run_cli("facealign-export", z_run / "run", tmp_path / "exp", "--onnx")
    assert ex.returncode == 0, ex.stderr[-2000:]
    onnx = Predictor.load(tmp_path / "exp" / "model.onnx").predict(face.image, boxes=[box])
    np.testing.assert_allclose(onnx.landmarks, pred.landmarks, atol=0.05)
    np.testing.assert_allclose(onnx.poses, pred.poses, atol=0.5)


def test_a_reference_3d_models_weights_load_into_the_xy_part_and_the_depth_maps_start_fresh(tmp_path):
    import mxnet as mx

    from facealign.models import get_model, initialize
    from facealign.runs.artifact import load_pretrained

    old = initialize(get_model("hg2-d3-cab-3d", width=32, depth=2, input_size=64, heatmap_size=32))
    saved = {("arg:" if "running" not in k else "aux:") + k: v.data() for k, v in old.collect_params().items()}
    mx.nd.save(str(tmp_path / "model-0000.params"), saved)
    new = initialize(get_model("hg2-d3-cab-3dz", width=32, depth=2, input_size=64, heatmap_size=32))
    report = load_pretrained(new, tmp_path / "model-0000.params", mx.cpu())
    depth_params = sorted(k for k in new.collect_params() if "_depth" in k)
    assert sorted(report["kept"]) == depth_params and len(depth_params) == 2 * 12  # per stack: 2 conv-BN, 1 conv
    x = mx.nd.random.uniform(0, 255, (1, 3, 64, 64))
    np.testing.assert_allclose(new(x)[-1][:, :68].asnumpy(), old(x)[-1].asnumpy(), rtol=1e-5, atol=1e-5)


def test_the_xy_part_of_a_z_model_starts_and_learns_exactly_as_the_2d_model():
    """The depth branch is built last and reads the features through stop_gradient: same initial weights,
    and every gradient of the 2D layers bit for bit the 2D model's, the depth loss included."""
    import mxnet as mx

    from facealign.models import get_model, initialize
    from facealign.train.losses import LossSettings, stacked_loss

    shape = dict(width=32, depth=2, input_size=64, heatmap_size=32)
    two, three = (initialize(get_model(name, **shape), seed=3) for name in ("hg2-d3-cab", "hg2-d3-cab-3dz"))
    for net in (two, three):
        net.hybridize()  # as the trainer runs them
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.uniform(0, 255, (4, 3, 64, 64)))
    target = mx.nd.array(rng.uniform(0, 1, (4, 68, 32, 32)))
    z, box = mx.nd.array(rng.normal(0, 5, (4, 68))), mx.nd.array([30.0, 40.0, 35.0, 28.0])
    with mx.autograd.record():
        loss2 = stacked_loss(two(x), target)[0]
    loss2.backward()
    with mx.autograd.record():
        loss3 = stacked_loss(three(x), target, depth=(z, box), settings=LossSettings(z_weight=1.0, input_size=64))[0]
    loss3.backward()
    p2, p3 = two.collect_params(), three.collect_params()
    assert set(p3) - set(p2) == {k for k in p3 if "_depth" in k}
    for name, param in p2.items():
        np.testing.assert_array_equal(p3[name].data().asnumpy(), param.data().asnumpy(), err_msg=name)
        if param.grad_req != "null":
            np.testing.assert_array_equal(p3[name].grad().asnumpy(), param.grad().asnumpy(), err_msg=name)
    assert loss3.asscalar() > loss2.asscalar()  # the depth term is there, and it trains the branch
    assert all(np.abs(p3[k].grad().asnumpy()).sum() > 0 for k in p3 if "_depth" in k and p3[k].grad_req != "null")


@pytest.mark.slow
def test_a_model_that_predicts_z_on_records_without_z_stops_before_training(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, write_tiny_job
    from facealign.cli.pack import main as pack_main
    from facealign.data.records import RecordWriter, pack_sample, read_records

    assert pack_main(["--synthetic", "8", "--seed", "1", "--quiet", str(tmp_path / "src")]) == 0
    with RecordWriter(tmp_path / "train") as w:  # the same faces with x, y only
        for i, sample in enumerate(read_records(tmp_path / "src")):
            sample.landmarks = sample.landmarks[:, :2]
            w.write(pack_sample(sample, i))
    # every training file is checked: the first has z, the second not
    job = write_tiny_job(tmp_path / "z.yaml", tmp_path, model={"name": "hg2-d3-cab-3dz"},
                         data={"train": [str(tmp_path / "src"), str(tmp_path / "train")]})
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(job), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"{tmp_path / 'train'} holds x, y landmarks only; train it on records with z (AFLW2000-3D, procedural faces) "
        "or drop model.predict_z")
