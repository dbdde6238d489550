"""Data loading for RGB-D semantic segmentation.

Importing this package does not import Jittor: the Jittor-facing names below are
loaded on first use, so ``utils.dataloader.transforms`` and
``utils.dataloader.synthetic`` stay usable (and fast to import) without it.

Main entry points:

* :func:`build_train_loader`, :func:`build_val_loader` -> :class:`RGBXDataset`
  (a ``jittor.dataset.Dataset``; items are dicts ``rgb``, ``depth``, ``label``, ``fn``);
* :func:`ensure_synthetic_dataset` -> generates ``datasets/SynthRGBD`` on demand.
"""
import importlib

_LAZY = {
    "RGBXDataset": "rgbx_dataset",
    "EpochSampler": "rgbx_dataset",
    "DataError": "rgbx_dataset",
    "build_train_loader": "rgbx_dataset",
    "build_val_loader": "rgbx_dataset",
    "default_val_batch_size": "rgbx_dataset",
    "read_split": "rgbx_dataset",
    "ensure_synthetic_dataset": "synthetic",
    "generate_dataset": "synthetic",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)
