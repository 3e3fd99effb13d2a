"""Everything a run directory holds: ``layout`` names every file in it; ``checkpoint`` (the checkpoint
layout and manager), ``lock`` (one trainer per run), ``status`` (progress, exit, Slurm records and
what ``facealign-launch status`` prints) and ``artifact`` (what a trained model is on disk)."""
from __future__ import annotations


def __getattr__(name):
    # facealign.runs was the status module; its names stay reachable here for one release
    import importlib
    import warnings

    status = importlib.import_module("facealign.runs.status")
    if hasattr(status, name):
        warnings.warn(f"facealign.runs.{name} moved to facealign.runs.status.{name}; the old path goes in the "
                      f"next release", DeprecationWarning, stacklevel=2)
        return getattr(status, name)
    raise AttributeError(f"module 'facealign.runs' has no attribute {name!r}")
