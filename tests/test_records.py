"""The record format: round trips, byte compatibility with MXNet's RecordIO, and clear errors."""
import json
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest

from facealign.data.pack import reindex
from facealign.data.records import (RECORDIO_MAGIC, DataError, RecordFile, RecordWriter, Sample, pack_sample,
                                    read_records)


def _sample(k=68, d=2, seed=0, size=64):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    lm = rng.uniform(0, size - 1, (k, d)).astype(np.float32)
    box = np.concatenate([lm[:, :2].min(0), lm[:, :2].max(0)])
    return Sample(image=image, landmarks=lm, box=box, meta={"source": f"face{seed}.jpg", "crop": [[1, 0, 0], [0, 1, 0]]})


def _write(prefix, samples, encoding=".png"):
    with RecordWriter(prefix) as w:
        for i, s in enumerate(samples):
            w.write(pack_sample(s, i, encoding=encoding))


@pytest.mark.parametrize("k,d", [(68, 2), (68, 3), (29, 2), (98, 3), (5, 3)])
def test_round_trip(tmp_path, k, d):
    samples = [_sample(k, d, seed) for seed in range(3)]
    _write(tmp_path / "set", samples)  # PNG: lossless, so images compare exactly
    got = list(read_records(tmp_path / "set"))
    assert len(got) == 3
    for s, g in zip(samples, got):
        np.testing.assert_array_equal(g.image, s.image)
        np.testing.assert_array_equal(g.landmarks, s.landmarks)
        np.testing.assert_array_equal(g.box, s.box)
        assert g.meta["source"] == s.meta["source"] and g.meta["version"] == 1
        assert g.meta["file"].endswith("set.rec") and g.landmarks.shape == (k, d)


def test_mxnet_reads_our_files(tmp_path):
    _write(tmp_path / "set", [_sample(seed=s) for s in range(4)])
    rec = mx.recordio.MXIndexedRecordIO(str(tmp_path / "set.idx"), str(tmp_path / "set.rec"), "r")
    assert sorted(rec.keys) == [0, 1, 2, 3]
    header, payload = mx.recordio.unpack(rec.read_idx(2))
    assert header.id == 2 and header.flag == 6 + 68 * 2
    assert header.label[0] == 68 and header.label[1] == 2
    assert payload[:4] == b"FAR1"


def test_we_read_mxnet_written_files_including_escaped_magic(tmp_path):
    # dmlc RecordIO splits a record where its data holds the magic at an aligned offset: a payload
    # full of magic words exercises that path on both sides.
    magic = struct.pack("<I", RECORDIO_MAGIC)
    bodies = [b"abcd" + magic * 3 + b"xyz", magic + b"12345678", b"no magic here", magic * 2]
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "mx.idx"), str(tmp_path / "mx.rec"), "w")
    for i, body in enumerate(bodies):
        w.write_idx(i, body)
    w.close()
    f = RecordFile(tmp_path / "mx")
    assert [f.read(i) for i in range(len(f))] == bodies
    # ...and our writer produces the very same bytes as MXNet's
    with RecordWriter(tmp_path / "ours") as ours:
        for body in bodies:
            ours.write(body)
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_text() == (tmp_path / "mx.idx").read_text()


def test_reads_the_reference_record_layout(tmp_path):
    # seed-spec §4.2: 136 floats of (y, x) pairs, image bytes as the payload, written by MXNet.
    rng = np.random.default_rng(1)
    xy = rng.uniform(50, 330, (68, 2)).astype(np.float32)
    image = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ibug.idx"), str(tmp_path / "ibug.rec"), "w")
    header = mx.recordio.IRHeader(0, xy[:, ::-1].reshape(-1), 0, 0)
    w.write_idx(0, mx.recordio.pack(header, cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()))
    w.close()
    (s,) = list(read_records(tmp_path / "ibug.rec"))
    np.testing.assert_array_equal(s.landmarks, xy)  # x first
    np.testing.assert_array_equal(s.image, image)  # RGB
    assert s.meta["format"] == "reference"
    np.testing.assert_allclose(s.box, [*xy.min(0), *xy.max(0)])


def test_missing_index_names_the_file(tmp_path):
    _write(tmp_path / "set", [_sample()])
    (tmp_path / "set.idx").unlink()
    with pytest.raises(DataError, match=r"set\.idx: index file missing"):
        RecordFile(tmp_path / "set")


def test_truncated_file_names_file_and_record(tmp_path):
    _write(tmp_path / "set", [_sample(seed=s) for s in range(3)])
    rec = tmp_path / "set.rec"
    data = rec.read_bytes()
    rec.write_bytes(data[:len(data) - 100])  # cut into the last record: found when the file is opened
    with pytest.raises(DataError, match=r"set\.rec: record 2 \(key 2\) at offset \d+ runs past the end of the "
                                        r"file \(\d+ bytes\): the \.rec is truncated"):
        RecordFile(tmp_path / "set")
    rec.write_bytes(data[:50])  # records 1 and 2 now start past the end
    with pytest.raises(DataError, match=r"record 1 \(key 1\) starts at offset \d+, beyond the file"):
        RecordFile(tmp_path / "set")


def test_corrupt_record_names_file_and_index(tmp_path):
    _write(tmp_path / "set", [_sample(seed=s) for s in range(3)])
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "set.idx").read_text().split("\n") if line]
    data = bytearray((tmp_path / "set.rec").read_bytes())
    data[offsets[1]:offsets[1] + 4] = b"XXXX"  # destroy record 1's magic
    (tmp_path / "set.rec").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"set\.rec: record 1 \(key 1\) at offset \d+: bad RecordIO magic"):
        list(read_records(tmp_path / "set"))


def test_undecodable_image_names_file_and_index_and_skip_policy_counts(tmp_path):
    good = [pack_sample(_sample(seed=s), s) for s in range(3)]
    bad = pack_sample(_sample(seed=9), 1, image_bytes=b"not an image at all")
    with RecordWriter(tmp_path / "set") as w:
        for body in (good[0], bad, good[2]):
            w.write(body)
    with pytest.raises(DataError, match=r"set\.rec: record 1 \(key 1\): image of \d+ bytes does not decode"):
        list(read_records(tmp_path / "set"))
    report = {}
    got = list(read_records(tmp_path / "set", on_error="skip", report=report))
    assert len(got) == 2 and report["skipped"] == 1 and "record 1" in report["errors"][0]


def test_truncated_reference_jpeg_is_detected(tmp_path):
    xy = np.full((68, 2), 100, np.float32)
    jpeg = cv2.imencode(".jpg", np.full((384, 384, 3), 128, np.uint8))[1].tobytes()
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "ref.idx"), str(tmp_path / "ref.rec"), "w")
    w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, xy.reshape(-1), 0, 0), jpeg))
    w.write_idx(1, mx.recordio.pack(mx.recordio.IRHeader(0, xy.reshape(-1), 1, 0), jpeg[:len(jpeg) // 2]))
    w.close()
    f = RecordFile(tmp_path / "ref")
    f.sample(0)
    with pytest.raises(DataError, match=r"ref\.rec: record 1 \(key 1\): JPEG image is truncated"):
        f.sample(1)


def test_malformed_label_is_reported(tmp_path):
    body = pack_sample(_sample(), 0)
    # claim K = 67 while 68 points follow
    flag = struct.unpack("IfQQ", body[:24])[0]
    label = np.frombuffer(body, np.float32, flag, 24).copy()
    label[0] = 67
    broken = body[:24] + label.tobytes() + body[24 + 4 * flag:]
    with RecordWriter(tmp_path / "set") as w:
        w.write(broken)
    with pytest.raises(DataError, match=r"record 0 \(key 0\): label of 142 floats does not hold K=67 x D=2"):
        RecordFile(tmp_path / "set").sample(0)


def test_writer_is_atomic(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordWriter(tmp_path / "set") as w:
            w.write(pack_sample(_sample(), 0))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []  # no .rec, no .idx, no temporaries


def test_reindex_rebuilds_the_same_index(tmp_path):
    magic = struct.pack("<I", RECORDIO_MAGIC)
    with RecordWriter(tmp_path / "set") as w:
        for s in range(4):
            w.write(pack_sample(_sample(seed=s), s) + (magic * 2 if s == 1 else b""))
    original = (tmp_path / "set.idx").read_text()
    (tmp_path / "set.idx").unlink()
    assert reindex(tmp_path / "set") == 4
    assert (tmp_path / "set.idx").read_text() == original


def test_meta_is_json_in_the_payload(tmp_path):
    s = _sample()
    s.meta["pose"] = [1.5, -2.0, 3.0]
    _write(tmp_path / "set", [s])
    (g,) = list(read_records(tmp_path / "set"))
    assert g.meta["pose"] == [1.5, -2.0, 3.0]
    assert json.dumps(g.meta)  # serialisable
