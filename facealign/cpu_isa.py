"""Moved to facealign.platform.cpu_isa; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.platform.cpu_isa")
