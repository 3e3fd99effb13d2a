"""Old import paths of modules that moved in the package-per-stage layout, kept for one release."""
from __future__ import annotations

import importlib
import sys
import warnings


def alias(old: str, new: str) -> None:
    """Make ``old`` the module ``new`` (the same object: attributes, monkeypatching and all), with a
    DeprecationWarning to the importer."""
    warnings.warn(f"{old} moved to {new}; the old path goes in the next release", DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
