"""Moved to facealign.runs.lock; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.runs.lock")
