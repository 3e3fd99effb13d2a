"""Moved to facealign.train.losses; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.train.losses")
