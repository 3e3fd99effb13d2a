"""Moved to facealign.evaluation.scoring; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.evaluation.scoring")
