"""Indexed RecordIO files of annotated faces: the on-disk format, a reader and an atomic writer.

Files are MXNet/dmlc RecordIO (``.rec``) with MXNet's text index (``.idx``,
``key<TAB>offset`` per line), byte-compatible with ``mx.recordio`` both ways
(the tests check it). This module reads and writes them itself, without MXNet:
loader workers then never fork MXNet's engine, and a bad record is reported
with its file, index and offset instead of a C++ ``CHECK`` failure.

Record layout, version 1 (``FORMAT_VERSION``)::

    IRHeader (MXNet's 'IfQQ'): flag = number of label floats, label = 0, id = record index, id2 = 0
    label (float32):  K, D, box x0, y0, x1, y1, then K x D landmarks (x first, 0-based pixels of the stored image)
    payload:          b"FAR1" + uint32 little-endian n + n bytes of UTF-8 JSON meta + encoded image (JPEG or PNG)

The meta JSON holds at least ``source`` (the original file), ``image_crc32``
(checked on every read: a damaged image is an error, not a grey patch), and,
for packed photos, ``crop``: the 2x3 affine from original-photo pixels to
stored pixels, so predictions can be mapped back to the photo.

The reference's own records (seed-spec §4.2) are read too: no payload magic,
the payload is the image, and the label is 136 floats of (y, x) pairs, turned
into x-first landmarks here.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from facealign.errors import TrainerError

FORMAT_VERSION = 1
PAYLOAD_MAGIC = b"FAR1"
RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_IR_FORMAT = "IfQQ"  # MXNet's IRHeader: flag, label, id, id2
_IR_SIZE = struct.calcsize(_IR_FORMAT)
_MAX_RECORD = 1 << 29


class DataError(TrainerError):
    """A data file or record that cannot be used; the message names the file and the record index."""


@dataclass
class Sample:
    """One annotated face.

    image:     H x W x 3 uint8 RGB
    landmarks: K x D float32, x first, in the stored image's pixels (D = 2 or 3; z in the same pixel units)
    box:       (x0, y0, x1, y1) float32 face box in the stored image's pixels
    meta:      dict; always has ``source``, and ``file``/``index`` when read from a record file
    """

    image: np.ndarray
    landmarks: np.ndarray
    box: np.ndarray
    meta: dict = field(default_factory=dict)


def pose_degrees(meta: dict) -> dict | None:
    """A record's head pose in degrees, {"yaw", "pitch", "roll"}, where it carries one: ``pose_para``
    (AFLW2000's Pose_Para, radians: pitch, yaw, roll, ...) or ``pose`` (procedural faces: yaw, pitch,
    roll in degrees), as facealign-pack writes them."""
    import math

    para = meta.get("pose_para")
    if isinstance(para, list) and len(para) >= 3:
        return {"pitch": math.degrees(para[0]), "yaw": math.degrees(para[1]), "roll": math.degrees(para[2])}
    pose = meta.get("pose")
    if isinstance(pose, list) and len(pose) == 3:
        return {"yaw": float(pose[0]), "pitch": float(pose[1]), "roll": float(pose[2])}
    return None


def record_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(``.rec``, ``.idx``) for a path given with either suffix or as the bare prefix."""
    p = Path(path)
    if p.suffix in (".rec", ".idx"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".rec"), p.with_name(p.name + ".idx")


# --- encoding a sample ---------------------------------------------------------------------------

def encode_image(image_rgb: np.ndarray, encoding: str = ".jpg", quality: int = 95) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if encoding == ".jpg" else []
    ok, buf = cv2.imencode(encoding, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image as {encoding}")
    return buf.tobytes()


def pack_sample(sample: Sample, index: int, *, encoding: str = ".jpg", quality: int = 95,
                image_bytes: bytes | None = None) -> bytes:
    """The bytes of one version-1 record (an MXNet IRHeader record body)."""
    lm = np.asarray(sample.landmarks, np.float32)
    if lm.ndim != 2 or lm.shape[1] not in (2, 3):
        raise ValueError(f"landmarks must be K x 2 or K x 3, got shape {lm.shape}")
    label = np.concatenate([[lm.shape[0], lm.shape[1]], np.asarray(sample.box, np.float32).reshape(4),
                            lm.reshape(-1)]).astype(np.float32)
    if image_bytes is None:
        image_bytes = encode_image(sample.image, encoding, quality)
    meta = json.dumps({"version": FORMAT_VERSION, **sample.meta, "image_crc32": zlib.crc32(image_bytes)},
                      separators=(",", ":")).encode()
    header = struct.pack(_IR_FORMAT, label.size, 0.0, index, 0)
    return header + label.tobytes() + PAYLOAD_MAGIC + struct.pack("<I", len(meta)) + meta + image_bytes


def unpack_sample(body: bytes, *, decode: bool = True, reduce: int = 1) -> Sample:
    """A ``Sample`` from one record body, ours (version 1) or the reference's.

    ``decode=False`` leaves ``image`` as the encoded bytes (a 1-D uint8 array);
    ``reduce`` in (1, 2, 4, 8) decodes JPEGs at that fraction of full size in
    the DCT domain, several times faster (landmarks are not rescaled).
    Raises ``ValueError`` on a malformed body; callers add file and index.
    """
    if len(body) < _IR_SIZE:
        raise ValueError(f"record body of {len(body)} bytes is shorter than its {_IR_SIZE}-byte header")
    flag, _, _, _ = struct.unpack(_IR_FORMAT, body[:_IR_SIZE])
    end = _IR_SIZE + 4 * flag
    if len(body) < end:
        raise ValueError(f"header announces {flag} label floats but the record has {len(body) - _IR_SIZE} bytes")
    label = np.frombuffer(body, np.float32, flag, _IR_SIZE)
    payload = memoryview(body)[end:]
    if bytes(payload[:4]) == PAYLOAD_MAGIC:
        (n,) = struct.unpack("<I", payload[4:8])
        if 8 + n > len(payload):
            raise ValueError("meta block runs past the end of the record")
        meta = json.loads(bytes(payload[8:8 + n]))
        image_bytes = payload[8 + n:]
        if "image_crc32" in meta and zlib.crc32(image_bytes) != meta["image_crc32"]:
            raise ValueError(f"image bytes fail their CRC-32 check (stored {meta['image_crc32']:#010x}, "
                             f"computed {zlib.crc32(image_bytes):#010x}): the record is corrupt")
        if flag < 6:
            raise ValueError(f"label has {flag} floats, fewer than the 6 of K, D and the box")
        k, d = int(label[0]), int(label[1])
        if d not in (2, 3) or k < 1 or flag != 6 + k * d:
            raise ValueError(f"label of {flag} floats does not hold K={k} x D={d} landmarks")
        landmarks = label[6:].reshape(k, d).copy()
        box = label[2:6].copy()
    else:  # the reference's layout: 68 (y, x) pairs, the payload is the image
        if flag == 0 or flag % 2:
            raise ValueError(f"not a facealign record, and a reference record needs an even label size (got {flag})")
        landmarks = label.reshape(-1, 2)[:, ::-1].copy()
        box = np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float32)
        meta = {"format": "reference"}
        image_bytes = payload
        # No checksum in the reference's records; a JPEG must at least end with its EOI marker
        # (libjpeg decodes a truncated one into a partly grey image without complaint).
        if bytes(payload[:2]) == b"\xff\xd8" and bytes(payload).rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise ValueError("JPEG image is truncated (no end-of-image marker)")
    if decode:
        image = decode_image(image_bytes, reduce)
    else:
        image = np.frombuffer(image_bytes, np.uint8)
    return Sample(image=image, landmarks=landmarks, box=box, meta=meta)


_REDUCED_FLAGS = {1: "IMREAD_COLOR", 2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4",
                  8: "IMREAD_REDUCED_COLOR_8"}  # cv2's flags, by name: OpenCV loads when an image is coded


def decode_image(data, reduce: int = 1) -> np.ndarray:
    """Encoded bytes -> H x W x 3 uint8 RGB (greyscale is expanded); ``ValueError`` if it does not decode."""
    buf = np.frombuffer(data, np.uint8)
    import cv2

    image = cv2.imdecode(buf, getattr(cv2, _REDUCED_FLAGS[reduce])) if buf.size else None
    if image is None:
        raise ValueError(f"image of {buf.size} bytes does not decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --- the container -------------------------------------------------------------------------------

class RecordFile:
    """Random access to an indexed RecordIO file; safe to open once per worker process.

    ``len(f)``, ``f.read(i)`` (the raw body of the i-th record in index order),
    ``f.sample(i)``. Every failure is a ``DataError`` naming the file and index.
    """

    def __init__(self, path: str | os.PathLike):
        self.rec_path, self.idx_path = record_paths(path)
        if not self.rec_path.exists():
            raise DataError(f"{self.rec_path}: no such record file")
        if not self.idx_path.exists():
            raise DataError(f"{self.idx_path}: index file missing for {self.rec_path} "
                            f"(facealign-pack writes both; repack, or rebuild the index with facealign-pack --reindex)")
        self.size = self.rec_path.stat().st_size
        self.keys, self.offsets = self._read_index()
        self._fh = None
        self._pid = None

    def _read_index(self):
        keys, offsets = [], []
        with open(self.idx_path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                try:
                    keys.append(int(parts[0]))
                    offsets.append(int(parts[1]))
                except (IndexError, ValueError):
                    raise DataError(f"{self.idx_path}: line {lineno} is not 'key<TAB>offset': {line.strip()[:80]!r}")
        bad = [i for i, off in enumerate(offsets) if not 0 <= off < self.size]
        if bad:
            i = bad[0]
            raise DataError(f"{self.rec_path}: record {i} (key {keys[i]}) starts at offset {offsets[i]}, "
                            f"beyond the file's {self.size} bytes: the .rec is truncated or the .idx belongs "
                            f"to another file ({len(bad)} records affected)")
        if offsets:  # the record that ends the file must end inside it: a cut .rec is found at open
            last = max(range(len(offsets)), key=offsets.__getitem__)
            with open(self.rec_path, "rb") as fh:
                fh.seek(offsets[last])
                head = fh.read(8)
            length = struct.unpack("<II", head)[1] & (_MAX_RECORD - 1) if len(head) == 8 else -1
            if length < 0 or offsets[last] + 8 + length > self.size:
                raise DataError(f"{self.rec_path}: record {last} (key {keys[last]}) at offset {offsets[last]} runs "
                                f"past the end of the file ({self.size} bytes): the .rec is truncated")
        return keys, offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def _handle(self):
        # Reopen after fork: a file position shared between processes would interleave reads.
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")
            self._pid = os.getpid()
        return self._fh

    def read(self, i: int) -> bytes:
        """The body of record ``i`` (0-based position in the index)."""
        if not 0 <= i < len(self.offsets):
            raise IndexError(f"{self.rec_path}: record {i} out of range (0..{len(self.offsets) - 1})")
        fh = self._handle()
        fh.seek(self.offsets[i])
        parts = []
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise DataError(f"{self.rec_path}: record {i} (key {self.keys[i]}) at offset {self.offsets[i]}: "
                                f"truncated header (file is {self.size} bytes)")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise DataError(f"{self.rec_path}: record {i} (key {self.keys[i]}) at offset {self.offsets[i]}: "
                                f"bad RecordIO magic {magic:#010x}: corrupt file or wrong .idx")
            cflag, length = lrec >> 29, lrec & (_MAX_RECORD - 1)
            data = fh.read((length + 3) & ~3)
            if len(data) < length:
                raise DataError(f"{self.rec_path}: record {i} (key {self.keys[i]}) at offset {self.offsets[i]}: "
                                f"truncated, {len(data)} of {length} bytes present")
            parts.append(data[:length])
            if cflag in (0, 3):
                break
            parts.append(_MAGIC_BYTES)  # dmlc splits a record where its data holds the magic; put it back
        return b"".join(parts)

    def sample(self, i: int, *, decode: bool = True, reduce: int = 1) -> Sample:
        body = self.read(i)
        try:
            s = unpack_sample(body, decode=decode, reduce=reduce)
        except (ValueError, KeyError, struct.error, json.JSONDecodeError) as e:
            raise DataError(f"{self.rec_path}: record {i} (key {self.keys[i]}): {e}") from None
        s.meta.setdefault("source", f"{self.rec_path.name}#{i}")
        s.meta["file"] = str(self.rec_path)
        s.meta["index"] = i
        return s

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self):  # pickles by path: each process opens its own handle
        return {k: v for k, v in self.__dict__.items() if k != "_fh"} | {"_fh": None, "_pid": None}


def read_records(path: str | os.PathLike, *, on_error: str = "raise", report: dict | None = None) -> Iterator[Sample]:
    """Yield every sample of a record file in index order.

    ``on_error="raise"`` (default) stops at the first bad record with a
    ``DataError`` naming file and index; ``"skip"`` skips it, counts it in
    ``report["skipped"]`` and lists it in ``report["errors"]`` (pass a dict).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    f = RecordFile(path)
    if report is not None:
        report.setdefault("skipped", 0)
        report.setdefault("errors", [])
    try:
        for i in range(len(f)):
            try:
                yield f.sample(i)
            except DataError as e:
                if on_error == "raise":
                    raise
                if report is not None:
                    report["skipped"] += 1
                    report["errors"].append(str(e))
    finally:
        f.close()


class RecordWriter:
    """Writes an indexed RecordIO pair atomically: temporary names, fsync, then rename.

    Readers never see a half-written ``.rec``: until ``close()`` the data lives
    in ``PREFIX.rec.tmp-<pid>`` / ``.idx.tmp-<pid>``; ``abort()`` (or an
    exception inside ``with``) deletes them.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.rec_path, self.idx_path = record_paths(prefix)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        suffix = f".tmp-{os.getpid()}"
        self._rec_tmp = self.rec_path.with_name(self.rec_path.name + suffix)
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + suffix)
        self._rec = open(self._rec_tmp, "wb")
        self._idx = open(self._idx_tmp, "w")
        self.count = 0

    def write(self, body: bytes, key: int | None = None) -> None:
        """Append one record body under ``key`` (default: the running count)."""
        if len(body) >= _MAX_RECORD:
            raise ValueError(f"record of {len(body)} bytes exceeds RecordIO's 2^29-byte limit")
        key = self.count if key is None else key
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        # dmlc's escaping: the data is split wherever the magic sits at a 4-byte-aligned offset.
        start, n = 0, len(body)
        pos = body.find(_MAGIC_BYTES)
        while pos != -1 and pos + 4 <= (n & ~3):
            if pos % 4 == 0:
                self._rec.write(struct.pack("<II", RECORDIO_MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start)))
                self._rec.write(body[start:pos])
                start = pos + 4
            pos = body.find(_MAGIC_BYTES, pos + 1)
        self._rec.write(struct.pack("<II", RECORDIO_MAGIC, ((3 if start else 0) << 29) | (n - start)))
        self._rec.write(body[start:])
        self._rec.write(b"\0" * (-n % 4))
        self.count += 1

    def close(self) -> None:
        for fh in (self._rec, self._idx):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)
        dir_fd = os.open(self.rec_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        for fh in (self._rec, self._idx):
            fh.close()
        for p in (self._rec_tmp, self._idx_tmp):
            p.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
