"""Minimal numpy versions of mmengine's ``BaseDataElement`` / ``PixelData`` and
mmseg's ``SegDataSample``.

A data element holds *metainfo* (image-level facts such as ``img_path`` or
``ori_shape``) and *data fields* (arrays). Fields are plain attributes::

    sample = SegDataSample(metainfo=dict(img_path="a.png", ori_shape=(480, 640)))
    sample.pred_sem_seg = PixelData(data=pred[None])      # (1, H, W)
    sample.pred_sem_seg.data.shape, sample.metainfo["ori_shape"]

Arrays are numpy (there is no torch here); ``.numpy()`` and ``.cpu()`` return the
element itself so mmseg-style ``result.pred_sem_seg.cpu().data`` code keeps working.
"""
import copy

import numpy as np

__all__ = ["BaseDataElement", "PixelData", "SegDataSample"]


class BaseDataElement:
    """Metainfo plus data fields, with mmengine's accessor names."""

    def __init__(self, *, metainfo=None, **kwargs):
        object.__setattr__(self, "_metainfo_fields", set())
        object.__setattr__(self, "_data_fields", set())
        if metainfo:
            self.set_metainfo(metainfo)
        if kwargs:
            self.set_data(kwargs)

    # metainfo ----------------------------------------------------------------
    def set_metainfo(self, metainfo):
        for key, value in dict(metainfo).items():
            if key in self._data_fields:
                raise AttributeError(f"{key!r} is already a data field")
            self._metainfo_fields.add(key)
            object.__setattr__(self, key, copy.deepcopy(value))

    @property
    def metainfo(self):
        return {k: getattr(self, k) for k in sorted(self._metainfo_fields)}

    def metainfo_keys(self):
        return sorted(self._metainfo_fields)

    def metainfo_values(self):
        return [getattr(self, k) for k in self.metainfo_keys()]

    # data --------------------------------------------------------------------
    def set_data(self, data):
        for key, value in dict(data).items():
            setattr(self, key, value)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name in self._metainfo_fields:
            raise AttributeError(f"{name!r} is metainfo; change it with set_metainfo()")
        self._check_field(name, value)
        self._data_fields.add(name)
        object.__setattr__(self, name, value)

    def _check_field(self, name, value):
        """Hook for subclasses."""

    def __delattr__(self, name):
        self._data_fields.discard(name)
        self._metainfo_fields.discard(name)
        object.__delattr__(self, name)

    def keys(self):
        return sorted(self._data_fields)

    def values(self):
        return [getattr(self, k) for k in self.keys()]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def all_keys(self):
        return self.metainfo_keys() + self.keys()

    def get(self, key, default=None):
        return getattr(self, key, default)

    def __contains__(self, key):
        return key in self._data_fields or key in self._metainfo_fields

    def pop(self, key, *default):
        if key in self:
            value = getattr(self, key)
            delattr(self, key)
            return value
        if default:
            return default[0]
        raise KeyError(key)

    # conversions (numpy already) ---------------------------------------------
    def numpy(self):
        return self

    def cpu(self):
        return self

    def to(self, device="cpu"):
        """``to('cpu')`` is the element itself; the arrays are numpy, there is no other device."""
        if str(device) != "cpu":
            raise ValueError(f"{type(self).__name__}.to({device!r}): the fields are numpy arrays "
                             "(CPU); only 'cpu' is possible")
        return self

    def clone(self):
        return copy.deepcopy(self)

    def new(self, *, metainfo=None, **kwargs):
        other = self.__class__(metainfo=self.metainfo)
        if metainfo:
            other.set_metainfo(metainfo)
        other.set_data(kwargs if kwargs else dict(self.items()))
        return other

    def __repr__(self):
        def fmt(value):
            if isinstance(value, np.ndarray):
                return f"array(shape={value.shape}, dtype={value.dtype})"
            return repr(value)
        meta = "".join(f"\n        {k}: {fmt(v)}" for k, v in self.metainfo.items())
        data = "".join(f"\n    {k}: {fmt(v)}".replace("\n", "\n    ") if isinstance(v, BaseDataElement)
                       else f"\n    {k}: {fmt(v)}" for k, v in self.items())
        return f"<{type(self).__name__}(\n    META INFORMATION{meta}\n    DATA FIELDS{data}\n)>"


class PixelData(BaseDataElement):
    """Pixel-level data: every field is a (C, H, W) array (a (H, W) array gets C = 1)."""

    def _check_field(self, name, value):
        value = np.asarray(value)
        if value.ndim not in (2, 3):
            raise ValueError(f"PixelData.{name} must be (H, W) or (C, H, W), got shape {value.shape}")

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in getattr(self, "_metainfo_fields", ()):
            value = np.asarray(value)
            if value.ndim == 2:
                value = value[None]
        super().__setattr__(name, value)

    @property
    def shape(self):
        """(H, W) of the fields."""
        for value in self.values():
            return tuple(value.shape[-2:])
        return None


class SegDataSample(BaseDataElement):
    """One image's segmentation sample: ``gt_sem_seg``, ``pred_sem_seg``, ``seg_logits``
    (each a :class:`PixelData`) and metainfo such as ``img_path`` and ``ori_shape``."""

    _PIXEL_FIELDS = ("gt_sem_seg", "pred_sem_seg", "seg_logits")

    def _check_field(self, name, value):
        if name in self._PIXEL_FIELDS and not isinstance(value, PixelData):
            raise TypeError(f"SegDataSample.{name} must be a PixelData, got {type(value).__name__}")

