"""Moved to facealign.evaluation.metrics; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.evaluation.metrics")
