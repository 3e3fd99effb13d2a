"""Moved to facealign.serve.smoothing; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.serve.smoothing")
