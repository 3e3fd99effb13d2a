"""Compiled fast paths built from native/*.pyx (see setup.py)."""
