"""Moved to facealign.platform.gpu_probe; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.platform.gpu_probe")
