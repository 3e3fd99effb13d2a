"""The network zoo: stacked Hourglass and SAT heatmap networks with four block types."""
from .zoo import (MODELS, ModelSpec, build_model, count_parameters, default_initializer, get_model,
                  get_model_spec, initialize, list_models)

__all__ = ["MODELS", "ModelSpec", "build_model", "count_parameters", "default_initializer", "get_model",
           "get_model_spec", "initialize", "list_models"]
