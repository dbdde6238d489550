"""Palettes, colouring, overlays, side-by-side panels and class legends.

Conventions: every image handled here is RGB-ordered uint8 (H, W, 3) unless a
function says otherwise; :func:`save_rgb` converts to BGR only when writing with
OpenCV. Palettes are (256, 3) uint8 arrays so any uint8 class map (including the
ignore value 255) can be coloured by plain indexing.
"""
import colorsys
import os

import cv2
import numpy as np

NYU_PALETTE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nyucmap.npy")
IGNORE_INDEX = 255
IGNORE_COLOR = (224, 224, 192)  # the PASCAL-VOC "void" colour, also nyucmap[255]
# Datasets whose official outputs use the NYU (PASCAL-VOC bit-interleaved) colour map.
NYU_PALETTE_DATASETS = ("NYUDepthv2", "SUNRGBD")
SEPARATOR = 8      # pixels between panel tiles
TITLE_HEIGHT = 24  # pixels of the title strip above each panel tile
PANEL_MIN_HEIGHT = 120  # panels enlarge smaller images by an integer factor


def nyu_palette():
    """The reference's 256-entry NYU colour map (entry 0 is black, 255 the VOC void colour)."""
    if not os.path.isfile(NYU_PALETTE_PATH):
        raise FileNotFoundError(f"Palette file missing: {NYU_PALETTE_PATH}. Restore it from the "
                                "repository (git checkout utils/data/nyucmap.npy).")
    palette = np.load(NYU_PALETTE_PATH)
    if palette.shape != (256, 3):
        raise ValueError(f"{NYU_PALETTE_PATH} holds an array of shape {palette.shape}, expected (256, 3).")
    return palette.astype(np.uint8)


def distinct_palette(num_colors):
    """A (256, 3) palette whose first ``num_colors`` entries are well-separated colours.

    Hues follow the golden-ratio sequence; saturation and value cycle through three
    levels so that neighbouring classes also differ in brightness. Entry 255 is the
    ignore colour.
    """
    if not 0 < num_colors <= 255:
        raise ValueError(f"distinct_palette supports 1..255 classes, got {num_colors}.")
    palette = np.zeros((256, 3), dtype=np.uint8)
    hue = 0.0
    levels = ((0.85, 0.95), (0.6, 0.8), (0.95, 0.65))
    for i in range(num_colors):
        sat, val = levels[i % len(levels)]
        rgb = colorsys.hsv_to_rgb(hue, sat, val)
        palette[i] = np.round(np.array(rgb) * 255).astype(np.uint8)
        hue = (hue + 0.618033988749895) % 1.0
    palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette


def get_palette(cfg):
    """The palette of a config: NYU colour map for NYU/SUN (or ``cfg.palette == "nyu"``),
    an explicit ``cfg.palette`` list of RGB triples, or a generated distinct palette."""
    choice = cfg.get("palette")
    if isinstance(choice, str):
        if choice.lower() == "nyu":
            return nyu_palette()
        if choice.lower() not in ("auto", "distinct"):
            raise ValueError(f"Unknown palette {choice!r} in the config; use 'nyu', 'distinct' "
                             "or a list of RGB triples.")
    elif choice is not None:
        return _explicit_palette(choice)
    if cfg.get("dataset_name") in NYU_PALETTE_DATASETS:
        return nyu_palette()
    return distinct_palette(int(cfg.num_classes))


def _explicit_palette(colors):
    colors = np.asarray(colors, dtype=np.int64)
    if colors.ndim != 2 or colors.shape[1] != 3 or len(colors) > 256:
        raise ValueError("cfg.palette must be a list of at most 256 RGB triples.")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:len(colors)] = np.clip(colors, 0, 255)
    if len(colors) <= IGNORE_INDEX:
        palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette


def colorize(class_map, palette):
    """(H, W) class indices -> (H, W, 3) RGB uint8 using ``palette``."""
    class_map = np.asarray(class_map)
    if class_map.size and (class_map.min() < 0 or class_map.max() > 255):
        raise ValueError("colorize expects class indices in 0..255.")
    return palette[class_map.astype(np.uint8)]


def overlay(rgb, color, opacity=0.5, mask=None):
    """Blend ``color`` over ``rgb``: ``(1 - opacity) * rgb + opacity * color``.

    ``mask`` (H, W bool), when given, limits the blend to those pixels.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}.")
    if rgb.shape != color.shape:
        raise ValueError(f"overlay: image {rgb.shape} and colour map {color.shape} differ in size.")
    blend = (1.0 - opacity) * rgb.astype(np.float32) + opacity * color.astype(np.float32)
    blend = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    if mask is not None:
        blend = np.where(mask[..., None], blend, rgb)
    return blend


def depth_to_color(depth):
    """(H, W) or (H, W, C) depth -> (H, W, 3) RGB with a perceptual colour map.

    The depth is min-max stretched first (the distributed PNGs are already
    per-image normalised, so this is usually a no-op).
    """
    depth = np.asarray(depth)
    if depth.ndim == 3:
        depth = depth[..., 0]
    d = depth.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    d = (d - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(d)
    bgr = cv2.applyColorMap(d.astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _text_color(rgb):
    """Black or white, whichever reads better on ``rgb``."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def legend(class_ids, class_names, palette, height=None, row_height=22, width=220):
    """A white legend column: one colour swatch and name per class in ``class_ids``.

    Classes that do not fit in ``height`` flow into further columns.
    """
    class_ids = [int(c) for c in class_ids]
    rows = max(len(class_ids), 1)
    height = height or rows * row_height + 8
    per_col = max((height - 8) // row_height, 1)
    ncols = max((len(class_ids) + per_col - 1) // per_col, 1)
    canvas = np.full((height, width * ncols, 3), 255, dtype=np.uint8)
    for k, cid in enumerate(class_ids):
        col, row = divmod(k, per_col)
        x0, y0 = col * width + 6, row * row_height + 4
        colour = tuple(int(v) for v in palette[cid])
        cv2.rectangle(canvas, (x0, y0), (x0 + 28, y0 + row_height - 6), colour, thickness=-1)
        cv2.rectangle(canvas, (x0, y0), (x0 + 28, y0 + row_height - 6), (0, 0, 0), thickness=1)
        name = class_names[cid] if 0 <= cid < len(class_names) else f"class {cid}"
        label = f"{cid}: {name}" if cid != IGNORE_INDEX else "ignore"
        cv2.putText(canvas, label[:26], (x0 + 36, y0 + row_height - 9), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _text_width(text, scale):
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]


def _titled(image, title):
    """``image`` with a white title strip on top (the font shrinks to fit narrow images)."""
    strip = np.full((TITLE_HEIGHT, image.shape[1], 3), 255, dtype=np.uint8)
    scale = 0.55
    while scale > 0.3 and _text_width(title, scale) > image.shape[1] - 8:
        scale -= 0.05
    cv2.putText(strip, title, (4, TITLE_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _enlarge(image, factor):
    """Nearest-neighbour upscaling by an integer factor (keeps class colours exact)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def hstack(images, separator=SEPARATOR, fill=255):
    """Concatenate RGB images left to right (bottom-padded to equal height) with gaps."""
    height = max(im.shape[0] for im in images)
    tiles = []
    for i, im in enumerate(images):
        if im.shape[0] < height:
            pad = np.full((height - im.shape[0], im.shape[1], 3), fill, dtype=np.uint8)
            im = np.concatenate([im, pad], axis=0)
        if i:
            tiles.append(np.full((height, separator, 3), fill, dtype=np.uint8))
        tiles.append(im)
    return np.concatenate(tiles, axis=1)


def make_panel(rgb, depth, pred, palette, class_names, label=None, min_height=PANEL_MIN_HEIGHT):
    """RGB | depth (colour-mapped) | prediction | ground truth (if any) | legend.

    ``rgb`` is RGB-ordered, ``pred``/``label`` are class maps (label may hold 255).
    The legend lists the classes present in the prediction and the label. Images lower
    than ``min_height`` are enlarged by an integer factor (nearest neighbour).
    """
    factor = max(1, -(-min_height // rgb.shape[0]))
    images = [("RGB", rgb), ("depth", depth_to_color(depth)), ("prediction", colorize(pred, palette))]
    present = set(np.unique(pred).tolist())
    if label is not None:
        images.append(("ground truth", colorize(label, palette)))
        present |= set(np.unique(label).tolist())
    tiles = [_titled(_enlarge(image, factor), title) for title, image in images]
    tiles.append(legend(sorted(present), class_names, palette, height=tiles[0].shape[0]))
    return hstack(tiles)


def save_rgb(path, image):
    """Write an RGB uint8 image (creating parent folders)."""
    _ensure_parent(path)
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"Could not write {path}: check the folder is writable and the extension "
                      "is an image format OpenCV knows (.png).")


def save_index(path, class_map):
    """Write a class-index map as a single-channel 8-bit PNG (values 0..255)."""
    _ensure_parent(path)
    class_map = np.asarray(class_map)
    if class_map.size and (class_map.min() < 0 or class_map.max() > 255):
        raise ValueError("save_index: class indices must fit in 0..255 for an 8-bit PNG.")
    if not cv2.imwrite(path, class_map.astype(np.uint8)):
        raise OSError(f"Could not write {path}: check the folder is writable.")


def _ensure_parent(path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
