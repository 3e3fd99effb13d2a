"""Re-derive ``mean_face_68.txt`` from the SPIGA package: ``python -m facealign.synth.derive_template``.

Source: the ``spiga==0.0.6`` wheel on PyPI (BSD-3-Clause, (c) 2022 Andres Prados,
https://github.com/andresprados/SPIGA), file ``spiga/data/models3D/mean_face_3D_68.txt``:
68 rows ``id|x|y|z`` of a 3D mean face in SPIGA's landmark-id order. The rows
are put in iBUG-68 order with the id list of
``spiga/data/annotations/300wpublic/db_info.json`` (``ldm_ids``), as SPIGA's own
``modern_posit.load_world_model`` does, then the y axis is flipped so that the
template uses image axes: x to the viewer's right, y down, z toward the camera,
nose tip (point 30) at the origin. Units are SPIGA's (eye-corner distance 36-45
is about 0.84).
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("mean_face_68.txt")
HEADER = """\
# 68-point 3D mean face in iBUG-68 order: x (viewer's right), y (down), z (toward the camera).
# Derived from SPIGA 0.0.6 (spiga/data/models3D/mean_face_3D_68.txt), BSD-3-Clause,
# Copyright (c) 2022, Andres Prados. Rows re-ordered by spiga/data/annotations/300wpublic/db_info.json
# ldm_ids and y negated; regenerate with: python -m facealign.synth.derive_template
"""


def derive(wheel: Path) -> np.ndarray:
    with zipfile.ZipFile(wheel) as z:
        raw = np.genfromtxt(io.BytesIO(z.read("spiga/data/models3D/mean_face_3D_68.txt")), delimiter="|")
        ids = json.loads(z.read("spiga/data/annotations/300wpublic/db_info.json"))["ldm_ids"]
    by_id = {int(row[0]): row[1:] for row in raw}
    template = np.array([by_id[i] for i in ids], np.float64)
    template[:, 1] *= -1
    return template


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, "spiga==0.0.6"],
                       check=True)
        template = derive(next(Path(d).glob("spiga-*.whl")))
    np.savetxt(OUT, template, fmt="%.9f", header=HEADER.rstrip("\n").replace("# ", "", 1).replace("\n# ", "\n"),
               comments="# ")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
