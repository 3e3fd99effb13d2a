"""Moved to facealign.train.loss_scaling; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.train.loss_scaling")
