"""Training: the loop (``loop``; ``python -m facealign.train``) and what only training uses: losses,
the optimizer and schedule, loss scaling, AMP, the Horovod facade and sharded validation."""
from __future__ import annotations

_MOVED = {"main": "facealign.cli.train", "parse_args": "facealign.cli.train"}
_LOOP = ("train", "NonFiniteLoss", "exit_code_for", "EXIT_OK", "EXIT_ERROR", "EXIT_SPEC", "EXIT_REQUEUE")


def __getattr__(name):
    # facealign.train was the loop's module; its names stay reachable here for one release
    import importlib
    import warnings

    if name in _LOOP:
        return getattr(importlib.import_module("facealign.train.loop"), name)
    if name in _MOVED:
        warnings.warn(f"facealign.train.{name} moved to {_MOVED[name]}.{name}; the old path goes in the next "
                      f"release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'facealign.train' has no attribute {name!r}")
