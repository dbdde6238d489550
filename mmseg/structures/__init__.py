"""Data containers with mmseg 1.x names: :class:`PixelData` and :class:`SegDataSample`."""
from .data import BaseDataElement, PixelData, SegDataSample

__all__ = ["BaseDataElement", "PixelData", "SegDataSample"]
