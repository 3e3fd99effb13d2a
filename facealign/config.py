"""Moved to facealign.spec.schema; this path is kept for one release."""
from facealign._moved import alias

alias(__name__, "facealign.spec.schema")
