"""Procedural faces with exact landmarks: the embedded default data."""
from .faces import CANVAS, SyntheticFace, mean_face, render_face

__all__ = ["CANVAS", "SyntheticFace", "mean_face", "render_face"]
