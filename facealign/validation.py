"""Moved to facealign.train.validation; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.train.validation")
