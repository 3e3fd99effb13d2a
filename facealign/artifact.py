"""Moved to facealign.runs.artifact; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.runs.artifact")
