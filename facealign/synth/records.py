"""Procedural faces as records: ``render_record((index, options))`` is facealign-pack's worker for
``--synthetic`` (facealign.cli.pack), a pure function of (seed, index) like the faces themselves."""
from __future__ import annotations

import cv2
import numpy as np

from facealign.data.records import Sample, encode_image
from facealign.data.transforms import apply, similarity
from facealign.synth import render_face


def render_record(payload):
    """(Sample, image bytes) of procedural face ``index`` under ``options`` (a facealign.data.pack.PackOptions)."""
    index, opt = payload
    face = render_face(opt.seed, index, opt.canvas, opt.style, opt.without)
    jaw = opt.jaw if face.visible_landmarks is not None else "projected"  # the flat style has only the projected
    lm = face.landmarks if jaw == "projected" else face.visible_landmarks
    lm = np.asarray(lm if opt.dims != 2 else lm[:, :2], np.float64)
    image, M = face.image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if opt.style == "photo":  # framed as photographs are packed (crop_item): centred on its labels' box, scaled to it
        lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
        M = similarity((lo + hi) / 2, ((opt.canvas - 1) / 2, (opt.canvas - 1) / 2),
                       opt.canvas / (opt.context * float(max(hi - lo))), 0.0)
        image = cv2.warpAffine(image, M, (opt.canvas, opt.canvas), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        lm = apply(M, lm)
    lm = lm.astype(np.float32)
    box = np.concatenate([lm[:, :2].min(0), lm[:, :2].max(0)]).astype(np.float32)
    meta = {"source": f"synthetic:{opt.seed}:{index}", "dataset": "synthetic", "scheme": "ibug68",
            "style": opt.style + "".join(f"-no-{part}" for part in opt.without), "jaw": jaw,
            "pose": [round(v, 3) for v in face.pose], "orig_size": [opt.canvas, opt.canvas],
            "crop": np.round(M, 8).tolist()}
    sample = Sample(image=image, landmarks=lm, box=box, meta=meta)
    return sample, encode_image(image, opt.encoding, opt.quality)
