"""Re-derive ``mean_face_68.txt`` (and ``mean_face_68_spiga.txt``): ``python -m facealign.synth.derive_template``
(downloads ~100 MB from PyPI).

The photographic procedural faces start from this 68-point 3D mean face (the flat ones from SPIGA's alone,
``mean_face_68_spiga.txt``, as they always did). It joins two public means:

* depth (z) from SPIGA's 3D mean face: the ``spiga==0.0.6`` wheel (BSD-3-Clause, (c) 2022 Andres Prados,
  https://github.com/andresprados/SPIGA), file ``spiga/data/models3D/mean_face_3D_68.txt``, 68 rows
  ``id|x|y|z`` in SPIGA's landmark-id order, put in iBUG-68 order with the id list of
  ``spiga/data/annotations/300wpublic/db_info.json`` (``ldm_ids``), as SPIGA's own
  ``modern_posit.load_world_model`` does;
* the frontal outline (x, y) from the mean shape of dlib's 68-point shape predictor, the mean of the iBUG 300-W
  annotations it was trained on: ``shape_predictor_68_face_landmarks.dat`` in the ``face_recognition_models==0.3.0``
  sdist (CC0 1.0, Davis King). Seen from the front, SPIGA's points are not where 300-W's annotators put them:
  faces built on them had a narrow V jaw inside 300-W's rounder, wider one (up to 17% of the eye distance
  inward, 21% lower) and a nose bridge starting 13% higher, and a model trained on them drew real faces that
  way (docs/data.md measures it on the development photographs). Only the annotations' mean enters, no image.

The 300-W mean is fitted onto SPIGA's face by a similarity on the inner points (brows, eyes, nose, mouth), its
half-open mean mouth closed as ``face_shape`` closes a mouth (the renderer opens mouths itself), mirror pairs
made symmetric; axes are image axes: x to the viewer's right, y down, z toward the camera, nose tip (point 30)
at the origin. Units are SPIGA's (eye-corner distance 36-45 about 0.84).
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from facealign.data.schemes import IBUG68
from facealign.data.transforms import umeyama

from .faces import LOWER_LIP_FOLLOWS, open_mouth_by

OUT = Path(__file__).with_name("mean_face_68.txt")
OUT_SPIGA = Path(__file__).with_name("mean_face_68_spiga.txt")  # SPIGA's alone: the flat style's template
SPIGA = "spiga==0.0.6"
DLIB_MODELS = "face_recognition_models==0.3.0"
DLIB_PREDICTOR = "face_recognition_models/models/shape_predictor_68_face_landmarks.dat"
HEADER = """\
68-point 3D mean face in iBUG-68 order: x (viewer's right), y (down), z (toward the camera).
x, y: the mean shape of dlib's shape_predictor_68_face_landmarks.dat (face_recognition_models 0.3.0, CC0 1.0,
Davis King; the mean of the iBUG 300-W annotations), fitted onto SPIGA's face, mouth closed, made symmetric.
z: SPIGA 0.0.6 (spiga/data/models3D/mean_face_3D_68.txt), BSD-3-Clause, Copyright (c) 2022, Andres Prados;
rows re-ordered by spiga/data/annotations/300wpublic/db_info.json ldm_ids, y negated.
Regenerate with: python -m facealign.synth.derive_template"""
HEADER_SPIGA = """\
68-point 3D mean face in iBUG-68 order: x (viewer's right), y (down), z (toward the camera).
Derived from SPIGA 0.0.6 (spiga/data/models3D/mean_face_3D_68.txt), BSD-3-Clause,
Copyright (c) 2022, Andres Prados. Rows re-ordered by spiga/data/annotations/300wpublic/db_info.json
ldm_ids and y negated; regenerate with: python -m facealign.synth.derive_template"""

INNER = np.arange(17, 68)  # brows, eyes, nose, mouth: the points both conventions put in the same places


def spiga_mean_face(wheel: Path) -> np.ndarray:
    """(68, 3) SPIGA 3D mean face in iBUG-68 order, image axes (y down)."""
    with zipfile.ZipFile(wheel) as z:
        raw = np.genfromtxt(io.BytesIO(z.read("spiga/data/models3D/mean_face_3D_68.txt")), delimiter="|")
        ids = json.loads(z.read("spiga/data/annotations/300wpublic/db_info.json"))["ldm_ids"]
    by_id = {int(row[0]): row[1:] for row in raw}
    template = np.array([by_id[i] for i in ids], np.float64)
    template[:, 1] *= -1
    return template


def _dlib_int(data: bytes, at: int) -> tuple[int, int]:
    """dlib's serialised integer at ``at``: a control byte (bit 7: negative; low 4 bits: how many bytes follow),
    then the magnitude's bytes, least significant first. Returns (value, next offset)."""
    control = data[at]
    n = control & 0x0F
    value = int.from_bytes(data[at + 1:at + 1 + n], "little")
    return (-value if control & 0x80 else value), at + 1 + n


def dlib_mean_shape(data: bytes) -> np.ndarray:
    """(68, 2) mean shape of a serialised dlib ``shape_predictor`` (its ``initial_shape``, in the detector box's
    unit square): the version (1), the shape as a column matrix (-rows, -columns), then each float as two
    integers, mantissa and exponent (value = mantissa * 2^exponent)."""
    version, at = _dlib_int(data, 0)
    rows, at = _dlib_int(data, at)
    cols, at = _dlib_int(data, at)
    if version != 1 or rows != -136 or cols != -1:
        raise ValueError(f"not a 68-point dlib shape predictor: version {version}, shape {-rows} x {-cols}, "
                         "expected version 1 and 136 x 1")
    values = []
    for _ in range(136):
        mantissa, at = _dlib_int(data, at)
        exponent, at = _dlib_int(data, at)
        values.append(mantissa * 2.0 ** exponent)
    return np.array(values).reshape(68, 2)


def adapt(spiga: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """SPIGA's 3D face (68, 3) with the frontal x, y of ``outline`` (68, 2; 300-W's mean): fitted onto SPIGA's
    inner points, its mouth closed to SPIGA's inner-lip gap, symmetric (SPIGA's depths of a mirror pair averaged:
    its point 4 lay 0.1 deeper than 12), the nose tip at the origin."""
    face = spiga.astype(np.float64).copy()
    fit = umeyama(outline[INNER].astype(np.float64), spiga[INNER, :2].astype(np.float64))
    face[:, :2] = outline @ fit[:, :2].T + fit[:, 2]

    def gap(t):
        return t[[65, 66, 67], 1].mean() - t[[61, 62, 63], 1].mean()

    inner_lower = np.mean([LOWER_LIP_FOLLOWS[i] for i in (65, 66, 67)])  # the gap opens this much per unit
    open_mouth_by(face, (gap(spiga) - gap(face)) / inner_lower)
    out = (face + face[list(IBUG68.flip)] * [-1, 1, 1]) / 2  # the mirror image, relabelled, averaged in
    out[:, :2] -= out[30, :2]
    return out


class SourceError(Exception):
    """A source package that cannot be fetched or does not hold what the derivation reads."""


def _download(requirement: str, into: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", into, requirement],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceError(f"pip could not download {requirement} ({last})")
    return next(Path(into).glob(requirement.split("==")[0] + "-*"))


def main() -> int:
    """Exit status: 0 written, 2 a source package could not be fetched or read (one line; nothing written)."""
    try:
        with tempfile.TemporaryDirectory() as d:
            spiga = spiga_mean_face(_download(SPIGA, d))
            with tarfile.open(_download(DLIB_MODELS, d)) as sdist:
                member = next((m for m in sdist.getmembers() if m.name.endswith(DLIB_PREDICTOR)), None)
                if member is None:
                    raise SourceError(f"{DLIB_MODELS} holds no {DLIB_PREDICTOR}")
                outline = dlib_mean_shape(sdist.extractfile(member).read(4096))  # the mean comes first
    except (SourceError, ValueError, KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as e:
        print(f"derive_template: {e}; nothing written", file=sys.stderr)
        return 2
    np.savetxt(OUT, adapt(spiga, outline), fmt="%.9f", header=HEADER, comments="# ")
    np.savetxt(OUT_SPIGA, spiga, fmt="%.9f", header=HEADER_SPIGA, comments="# ")
    print(f"wrote {OUT} and {OUT_SPIGA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
