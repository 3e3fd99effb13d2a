"""Data: record files, landmark schemes, the heatmap codec, crops and augmentation, the sharded loader.

Nothing here imports MXNet: the loader's worker processes and the packer run without it.
"""
from .codec import HeatmapCodec
from .records import DataError, RecordFile, RecordWriter, Sample, read_records
from .schemes import IBUG68, LandmarkScheme, get_scheme

__all__ = ["DataError", "HeatmapCodec", "IBUG68", "LandmarkScheme", "RecordFile", "RecordWriter", "Sample",
           "get_scheme", "read_records"]
