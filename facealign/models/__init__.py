"""The network zoo: stacked Hourglass and SAT heatmap networks with four block types.

``facealign.models.specs`` (names and structure) imports no MXNet; the builders
below load MXNet on first use, so job specs validate on machines without it.
"""
from .specs import MODELS, ModelSpec, ModelSpecError, get_model_spec, list_models

_BUILDERS = ("build_model", "count_parameters", "default_initializer", "get_model", "initialize",
             "structural_parameters")

__all__ = ["MODELS", "ModelSpec", "ModelSpecError", "get_model_spec", "list_models", *_BUILDERS]


def __getattr__(name):
    if name in _BUILDERS:
        from . import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'facealign.models' has no attribute {name!r}")
