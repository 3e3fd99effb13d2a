"""Annotated-face sources that ``facealign-pack`` reads: each yields ``Item``s or ``Skip``s.

Formats:
  ibug       image files with iBUG ``.pts`` files beside them (1-based), searched recursively
  aflw2000   AFLW2000-3D style ``.mat`` files (``pt3d_68``: 3 x 68) beside their ``.jpg``
  csv        a CSV file: header ``image,x0,y0[,z0],x1,...``; paths relative to the CSV; 0-based pixels
  json       a JSON list of ``{"image": path, "landmarks": [[x, y(, z)], ...], "box": [x0, y0, x1, y1]?}``
  reference  the reference project's ``.rec`` files (pre-cropped 384 x 384, 68 (y, x) pairs)
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMATS = ("ibug", "aflw2000", "csv", "json", "reference")


@dataclass
class Item:
    """One face to pack: an image (a path, or bytes from a record) and its landmarks in its pixels."""

    source: str  # what the skip report and the record's meta call it
    landmarks: np.ndarray  # K x D, 0-based pixels, x first
    image_path: str | None = None
    image_bytes: bytes | None = None
    box: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Skip:
    source: str
    reason: str


def parse_pts(path: str | os.PathLike) -> np.ndarray:
    """An iBUG ``.pts`` file -> (K, 2) 0-based points. ``ValueError`` with the reason if malformed."""
    text = Path(path).read_text(errors="replace").split("\n")
    lines = [ln.strip() for ln in text if ln.strip()]
    try:
        n_line = next(ln for ln in lines if ln.lower().startswith("n_points"))
        n = int(n_line.split(":", 1)[1])
        start, end = lines.index("{"), lines.index("}")
    except (StopIteration, ValueError, IndexError):
        raise ValueError("malformed .pts: expected 'n_points: N' and a '{ ... }' block")
    rows = lines[start + 1:end]
    if len(rows) != n:
        raise ValueError(f"malformed .pts: n_points says {n} but the block has {len(rows)} points")
    try:
        pts = np.array([[float(v) for v in row.split()[:2]] for row in rows], np.float64)
    except ValueError:
        raise ValueError("malformed .pts: a point is not two numbers")
    if pts.shape != (n, 2):
        raise ValueError("malformed .pts: a point is not two numbers")
    return pts - 1.0  # iBUG coordinates are 1-based (Matlab)


def _images_by_stem(root: Path) -> dict[Path, Path]:
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            p = Path(dirpath, name)
            if p.suffix.lower() in IMAGE_EXTS:
                found.setdefault(p.with_suffix(""), p)
    return found


def read_ibug(root: str | os.PathLike) -> Iterator[Item | Skip]:
    root = Path(root)
    images = _images_by_stem(root)
    annotations = sorted(Path(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".pts"))
    for pts_path in annotations:
        rel = str(pts_path.relative_to(root))
        image = images.pop(pts_path.with_suffix(""), None)
        if image is None:
            yield Skip(rel, "no image beside the .pts file")
            continue
        try:
            landmarks = parse_pts(pts_path)
        except ValueError as e:
            yield Skip(rel, str(e))
            continue
        yield Item(source=str(image.relative_to(root)), landmarks=landmarks, image_path=str(image))
    for stem, image in sorted(images.items()):
        yield Skip(str(image.relative_to(root)), "no .pts annotation beside the image")


def read_aflw2000(root: str | os.PathLike) -> Iterator[Item | Skip]:
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy is installed by install.sh
        raise RuntimeError("the aflw2000 format needs scipy (pip install scipy)")
    root = Path(root)
    for mat in sorted(Path(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".mat")):
        rel = str(mat.relative_to(root))
        image = next((mat.with_suffix(ext) for ext in (".jpg", ".png", ".jpeg") if mat.with_suffix(ext).exists()), None)
        if image is None:
            yield Skip(rel, "no image beside the .mat file")
            continue
        try:
            data = loadmat(str(mat))
            pts = np.asarray(data["pt3d_68"], np.float64)
        except KeyError:
            yield Skip(rel, "no pt3d_68 array in the .mat file")
            continue
        except Exception as e:  # scipy raises several types for unreadable files
            yield Skip(rel, f"unreadable .mat file: {e}")
            continue
        if pts.shape != (3, 68):
            yield Skip(rel, f"pt3d_68 has shape {pts.shape}, expected (3, 68)")
            continue
        # Pose_Para: pitch, yaw, roll in radians, then translation and scale (records.pose_degrees reads it)
        para = np.asarray(data.get("Pose_Para", np.zeros((1, 0))), np.float64).ravel().tolist()
        yield Item(source=str(image.relative_to(root)), landmarks=pts.T.copy(), image_path=str(image),
                   meta={"pose_para": para})


def read_csv(path: str | os.PathLike) -> Iterator[Item | Skip]:
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    header = [h.strip() for h in rows[0]]
    if not header or header[0] != "image":
        raise ValueError(f"{path}: the first column must be 'image' (header: image,x0,y0[,z0],x1,...)")
    dims = 3 if "z0" in header else 2
    if (len(header) - 1) % dims:
        raise ValueError(f"{path}: {len(header) - 1} coordinate columns are not a multiple of {dims}")
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        source = f"{path.name}:{lineno}"
        try:
            values = np.array([float(v) for v in row[1:]], np.float64)
        except ValueError:
            yield Skip(source, "a coordinate is not a number")
            continue
        if values.size != len(header) - 1:
            yield Skip(source, f"{values.size} coordinates, the header has {len(header) - 1}")
            continue
        image = (path.parent / row[0]).resolve()
        yield Item(source=row[0], landmarks=values.reshape(-1, dims), image_path=str(image))


def read_json(path: str | os.PathLike) -> Iterator[Item | Skip]:
    path = Path(path)
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{'image': ..., 'landmarks': [[x, y], ...]}}")
    for i, e in enumerate(entries):
        source = e.get("image", f"{path.name}[{i}]") if isinstance(e, dict) else f"{path.name}[{i}]"
        try:
            landmarks = np.asarray(e["landmarks"], np.float64)
            box = np.asarray(e["box"], np.float64) if e.get("box") is not None else None
        except (KeyError, TypeError, ValueError):
            yield Skip(str(source), "entry needs 'image' and 'landmarks' (a list of [x, y] or [x, y, z])")
            continue
        if landmarks.ndim != 2 or landmarks.shape[1] not in (2, 3):
            yield Skip(str(source), f"landmarks have shape {landmarks.shape}, expected K x 2 or K x 3")
            continue
        yield Item(source=str(source), landmarks=landmarks, image_path=str((path.parent / e["image"]).resolve()),
                   box=box)


def read_reference(path: str | os.PathLike) -> Iterator[Item | Skip]:
    from .records import DataError, RecordFile, unpack_sample

    f = RecordFile(path)
    for i in range(len(f)):
        source = f"{f.rec_path.name}#{i}"
        try:
            s = unpack_sample(f.read(i), decode=False)
        except (DataError, ValueError) as e:
            yield Skip(source, str(e))
            continue
        yield Item(source=source, landmarks=s.landmarks.astype(np.float64), image_bytes=s.image.tobytes())


READERS = {"ibug": read_ibug, "aflw2000": read_aflw2000, "csv": read_csv, "json": read_json,
           "reference": read_reference}
