"""Data: record files, landmark schemes, the heatmap codec, crops and augmentation, the sharded loader.

Nothing here imports MXNet: the loader's worker processes and the packer run without it. The names below
load their module on first use, so the job spec (which reads ``schemes`` and ``records``' paths) imports
no OpenCV on a login node.
"""
_NAMES = {"HeatmapCodec": "codec", "DataError": "records", "RecordFile": "records", "RecordWriter": "records",
          "Sample": "records", "read_records": "records", "IBUG68": "schemes", "LandmarkScheme": "schemes",
          "get_scheme": "schemes"}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"facealign.data.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'facealign.data' has no attribute {name!r}")
