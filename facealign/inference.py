"""Moved to facealign.serve.predictor; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.serve.predictor")
