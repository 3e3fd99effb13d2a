"""Procedural faces with exact landmarks: the embedded default data.

Two styles, each a pure function of (seed, index):

* ``photo`` (default, ``photo.py``): a smooth, textured, lit 3D head in a photographed scene, through
  a camera; made so that models trained on it work on real photographs;
* ``flat`` (``faces.py``): the first renderer's flat-shaded low-poly masks, kept for comparison
  and for the records packed with it.
"""
from . import faces, photo
from .faces import CANVAS, SyntheticFace, face_shape, mean_face

STYLES = {"photo": photo.render_face, "flat": faces.render_face}
JAW_LABELS = ("visible", "projected")  # 300-W's jaw on the visible outline, or the 3D jaw projected (x-ray)


def render_face(seed: int, index: int, size: int = CANVAS, style: str = "photo", without=()) -> SyntheticFace:
    """The procedural face number ``index`` of the set ``seed`` in ``style``; ``without`` leaves parts of the
    photographic style out (``photo.PARTS``), for ablations."""
    if style not in STYLES:
        raise ValueError(f"unknown face style {style!r}; expected one of {sorted(STYLES)}")
    if without and style != "photo":
        raise ValueError(f"only the photo style has parts to leave out, not {style!r}")
    return photo.render_face(seed, index, size, without) if style == "photo" else STYLES[style](seed, index, size)


__all__ = ["CANVAS", "JAW_LABELS", "STYLES", "SyntheticFace", "face_shape", "mean_face", "render_face"]
