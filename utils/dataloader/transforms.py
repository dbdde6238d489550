"""Per-sample preprocessing of (rgb, depth, label) triplets, numpy/OpenCV only.

Reproduces the reference's training and evaluation pipelines value for value:

* training: random mirror (p=0.5) -> random scale (OpenCV bilinear for images,
  nearest for labels) -> normalisation -> random crop with centred padding
  (0 for images in normalised space, 255 for labels) -> HWC to CHW;
* evaluation: optional bottom/right padding (SUN RGB-D + DFormerv2) ->
  normalisation -> HWC to CHW.

Normalisation is computed in float64 and only the final arrays are cast to
float32; doing the arithmetic in float32 would differ by 1-2 ulp.

All randomness comes from the ``numpy.random.Generator`` the caller passes in,
so a sample is a pure function of its inputs and that generator's seed.

Depth files (:func:`read_depth_file`, :func:`depth_to_uint8`) are read here for the
dataset, ``utils/infer.py`` and ``utils/api.py`` alike.
"""
import os
import sys
import threading

import cv2
import numpy as np

DEPTH_MEAN = 0.48
DEPTH_STD = 0.28
IGNORE_LABEL = 255
SUN_PAD_SIZE = (531, 730)  # (H, W) every SUN RGB-D image fits in


# ----------------------------------------------------------------------------- depth input

# Grey levels of matplotlib's 256-entry "gray" colour map as bytes (24 of them are one
# lower than their index: its float -> byte conversion truncates).
_GREY_LEVELS = (np.linspace(0.0, 1.0, 256) * 255.0).astype(np.uint8)
_NOTED = set()
_NOTE_LOCK = threading.Lock()


def depth_to_uint8(depth, source="<array>"):
    """Depth as the models were trained on it: H x W uint8, per image 0..255, near = dark.

    8-bit input is returned unchanged. 16-bit (sensor millimetres) and float (metres)
    depth is normalised per image exactly as the official NYU/SUN depth PNGs were made
    (matplotlib ``imsave(..., cmap="gray")`` of the depth array), in float64::

        x = (d - min(d)) / (max(d) - min(d))                  # min/max over finite pixels
        v = GREY[min(floor(256 * x), 255)]                    # GREY = uint8(255 * linspace(0, 1, 256))

    so the nearest pixel becomes 0 and the farthest 255 (zeros that mark missing sensor
    values count as the nearest depth, as in a plain min-max); non-finite pixels and a
    constant image give 0. A note is printed once per process. Several channels are
    converted to grey first (OpenCV ``BGR2GRAY``).
    """
    depth = np.asarray(depth)
    if depth.dtype == np.uint8 and depth.ndim == 2:
        return depth
    if depth.ndim == 3 and depth.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if depth.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        depth = cv2.cvtColor(np.ascontiguousarray(depth), code)
    elif depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or depth.dtype == np.bool_ or not np.issubdtype(depth.dtype, np.number):
        raise ValueError(f"expected a single-channel depth image, got dtype {depth.dtype} and "
                         f"shape {depth.shape}")
    if depth.dtype == np.uint8:
        return depth
    d = depth.astype(np.float64)
    finite = np.isfinite(d)
    out = np.zeros(d.shape, np.uint8)
    if finite.any():
        lo, hi = d[finite].min(), d[finite].max()
        if hi > lo:
            x = (d[finite] - lo) / (hi - lo)
            out[finite] = _GREY_LEVELS[np.minimum(np.floor(x * 256.0), 255).astype(np.intp)]
    _note_once(depth.dtype, source)
    return out


def _note_once(dtype, source):
    kind = "float" if np.issubdtype(dtype, np.floating) else f"{dtype.itemsize * 8}-bit"
    with _NOTE_LOCK:
        if kind in _NOTED:
            return
        _NOTED.add(kind)
    print(f"note: {kind} depth ({source}, ...) is normalised per image to 8 bits (min-max to "
          "0..255, near = dark), as the official NYU/SUN depth PNGs were made; 8-bit depth is "
          "used as it is.", file=sys.stderr, flush=True)


def read_depth_file(path):
    """Depth file -> H x W uint8 (:func:`depth_to_uint8`), or None when it cannot be read.

    Images are decoded as greyscale keeping their bit depth (``IMREAD_ANYDEPTH``), so an
    8-bit file gives exactly what ``cv2.IMREAD_GRAYSCALE`` gives; ``.npy`` files hold a
    depth array (any numeric dtype).
    """
    if str(path).lower().endswith(".npy"):
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
    else:
        depth = cv2.imread(os.fspath(path), cv2.IMREAD_ANYDEPTH)
        if depth is None:
            return None
    try:
        return depth_to_uint8(depth, os.fspath(path))
    except ValueError:
        return None


# ----------------------------------------------------------------------------- normalisation

def normalize(img, mean, std):
    """``(img / 255 - mean) / std`` per channel, in float64."""
    out = img.astype(np.float64) / 255.0
    out = out - np.asarray(mean, dtype=np.float64)
    return out / np.asarray(std, dtype=np.float64)


def normalize_depth(depth):
    """Depth constants used for single-channel (replicated) depth maps."""
    return normalize(depth, (DEPTH_MEAN,) * 3, (DEPTH_STD,) * 3)


def to_chw_float32(img):
    """HWC float64 -> contiguous CHW float32."""
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


class ChannelTable:
    """``to_chw_float32(normalize(img, mean, std))`` for uint8 images, by table look-up.

    A uint8 pixel has 256 possible values, so each channel's float64 arithmetic is done
    once per value (the same operations in the same order, hence the same bits) and the
    image is then a gather: ~10x faster than the arithmetic over every pixel, which was
    the largest cost of a training batch. Other dtypes take the arithmetic.
    """

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        values = np.arange(256, dtype=np.uint8).reshape(256, 1, 1).repeat(len(self.mean), 2)
        self.table = to_chw_float32(normalize(values, self.mean, self.std))[:, :, 0]  # (C, 256)

    def __call__(self, img, out=None):
        """CHW float32 of an HWC image; written into ``out`` (C, H, W) when given."""
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != len(self.mean):
            result = to_chw_float32(normalize(img, self.mean, self.std))
            if out is None:
                return result
            out[...] = result
            return out
        if out is None:
            out = np.empty((img.shape[2],) + img.shape[:2], np.float32)
        for c in range(img.shape[2]):
            np.take(self.table[c], img[:, :, c], out=out[c])
        return out


def mirror(rgb, depth, label):
    """Horizontal flip of all three arrays."""
    return rgb[:, ::-1], depth[:, ::-1], label[:, ::-1]


def rescale(rgb, depth, label, scale):
    """Resize by ``scale``; the new size truncates ``H * scale`` and ``W * scale``."""
    h, w = label.shape[:2]
    size = (int(w * scale), int(h * scale))  # cv2 wants (width, height)
    rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_LINEAR)
    depth = cv2.resize(np.ascontiguousarray(depth), size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(np.ascontiguousarray(label), size, interpolation=cv2.INTER_NEAREST)
    return rgb, depth, label


def random_crop_origin(rng, size, crop_size):
    """Crop origin per axis, drawn like the reference.

    When the image is larger than the crop along an axis, the origin is uniform
    on ``0 .. size - crop + 1`` *inclusive*: the last value lies one past the last
    valid origin, giving a crop one pixel short that the padding then completes.
    Axes not larger than the crop use origin 0 and draw nothing.
    """
    origin = []
    for n, c in zip(size, crop_size):
        origin.append(int(rng.integers(0, n - c + 2)) if n > c else 0)
    return tuple(origin)


def _centred_margins(have, want):
    pad = max(want - have, 0)
    return pad // 2, pad - pad // 2


def crop_and_pad(img, origin, crop_size, value):
    """Cut ``crop_size`` at ``origin`` (clipped) and pad, centred, to exactly ``crop_size``."""
    cut, (top, bottom, left, right) = _crop_window(img, origin, crop_size)
    return _pad(cut, top, bottom, left, right, value)


def crop_normalize_pad(img, origin, crop_size, table):
    """``to_chw_float32(crop_and_pad(normalize(img), origin, crop_size, 0.0))`` with only
    the cut normalised (``table``: a :class:`ChannelTable`); the same values, bit for bit."""
    cut, (top, _, left, _) = _crop_window(img, origin, crop_size)
    out = np.zeros((img.shape[2],) + tuple(crop_size), np.float32)
    h, w = cut.shape[:2]
    table(cut, out=out[:, top:top + h, left:left + w])
    return out


def _crop_window(img, origin, crop_size):
    """The cut at ``origin`` and its centred margins (top, bottom, left, right)."""
    (y, x), (ch, cw) = origin, crop_size
    cut = img[y:y + ch, x:x + cw]
    return cut, _centred_margins(cut.shape[0], ch) + _centred_margins(cut.shape[1], cw)


def pad_bottom_right(img, size, value):
    """Pad at the bottom and right up to ``size`` (H, W)."""
    h, w = img.shape[:2]
    if h > size[0] or w > size[1]:
        raise ValueError(f"image of size {h}x{w} is larger than the padding target "
                         f"{size[0]}x{size[1]}")
    return _pad(img, 0, size[0] - h, 0, size[1] - w, value)


def _pad(img, top, bottom, left, right, value):
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, widths, mode="constant", constant_values=value)


class TrainTransform:
    """Training augmentation of the reference, driven by an explicit generator.

    Draw order per sample: mirror, scale, crop row origin, crop column origin.
    ``depth_single_channel`` selects the 0.48/0.28 depth constants (the
    reference's ``x_is_single_channel``); otherwise depth uses the RGB mean/std.
    """

    def __init__(self, crop_size, scales, mean, std, depth_single_channel=True,
                 ignore_label=IGNORE_LABEL):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scales = list(scales) if scales else []
        self.mean, self.std = tuple(mean), tuple(std)
        self.depth_single_channel = depth_single_channel
        self.ignore_label = ignore_label
        self.rgb_table = ChannelTable(self.mean, self.std)
        self.depth_table = ChannelTable((DEPTH_MEAN,) * 3, (DEPTH_STD,) * 3) \
            if depth_single_channel else self.rgb_table

    def __call__(self, rgb, depth, label, rng):
        if rng.random() >= 0.5:
            rgb, depth, label = mirror(rgb, depth, label)
        if self.scales:
            scale = self.scales[int(rng.integers(len(self.scales)))]
            rgb, depth, label = rescale(rgb, depth, label, scale)
        # normalisation draws nothing, so normalising only the crop afterwards changes
        # neither the random stream nor a value (padding is 0 in normalised space)
        origin = random_crop_origin(rng, label.shape[:2], self.crop_size)
        rgb = crop_normalize_pad(rgb, origin, self.crop_size, self.rgb_table)
        depth = crop_normalize_pad(depth, origin, self.crop_size, self.depth_table)
        label = crop_and_pad(label, origin, self.crop_size, self.ignore_label)
        return rgb, depth, label


class EvalTransform:
    """Evaluation preprocessing: no resize, crop or flip.

    With ``pad_to`` (H, W) the raw uint8 images are padded bottom/right with 0
    *before* normalisation (so padded pixels become ``-mean/std``) and the label
    with the ignore value, as the reference does for SUN RGB-D + DFormerv2.
    Depth always uses the 0.48/0.28 constants here, as in the reference.
    """

    def __init__(self, mean, std, pad_to=None, ignore_label=IGNORE_LABEL):
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad_to = tuple(pad_to) if pad_to else None
        self.ignore_label = ignore_label
        self.rgb_table = ChannelTable(self.mean, self.std)
        self.depth_table = ChannelTable((DEPTH_MEAN,) * 3, (DEPTH_STD,) * 3)

    def __call__(self, rgb, depth, label, rng=None):
        if self.pad_to:
            rgb = pad_bottom_right(rgb, self.pad_to, 0)
            depth = pad_bottom_right(depth, self.pad_to, 0)
            label = pad_bottom_right(label, self.pad_to, self.ignore_label)
        return self.rgb_table(rgb), self.depth_table(depth), label
