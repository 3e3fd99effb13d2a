"""Moved: what a model is on disk to facealign.runs.artifact, loading it for inference to
facealign.serve.loading; this path, which had both, is kept for one release."""
import warnings

from facealign.runs.artifact import *  # noqa: F401,F403  (the old module's public names)
from facealign.runs.artifact import ArtifactError, ModelInfo, ModelSource, resolve  # noqa: F401
from facealign.serve.loading import load_backend, load_network  # noqa: F401

warnings.warn("facealign.artifact moved to facealign.runs.artifact (loading: facealign.serve.loading); the old path "
              "goes in the next release", DeprecationWarning, stacklevel=2)
