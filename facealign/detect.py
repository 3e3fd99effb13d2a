"""Moved to facealign.serve.detect; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.serve.detect")
