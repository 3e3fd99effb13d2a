"""Moved to facealign.runs.checkpoint; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.runs.checkpoint")
