"""Python API: build a segmentor and segment RGB-D images.

Example::

    from utils.api import MST_SCALES, inference_model, init_model
    model = init_model("local_configs.NYUDepthv2.DFormer_Large",
                       "checkpoints/trained/NYUv2_DFormer_Large.pth")
    classes = inference_model(model, "rgb.jpg", "depth.png")                # (H, W) int64
    classes, probs = inference_model(model, rgb_bgr, depth_u8, return_probs=True,
                                     scales=MST_SCALES, flip=True)           # probs (C, H, W)

Inputs are what OpenCV reads: RGB as H x W x 3 uint8 in **BGR** order (``cv2.imread``),
depth as H x W uint8 (per-image normalised, near = dark, as in the official PNGs) or
16-bit / float depth (normalised per image the same way, with a note), or file paths. The preprocessing is the evaluation pipeline's own
(``utils.dataloader.transforms.EvalTransform``, channel order from ``cfg.color_order``,
SUN RGB-D padding when ``cfg.pad_SUNRGBD``; the padding is cropped off the outputs).
"""
import copy
import os
import warnings

import cv2
import numpy as np

from utils import runtime
runtime.setup()  # before jittor is imported
import jittor as jt  # noqa: E402

from utils.dataloader.transforms import (SUN_PAD_SIZE, EvalTransform, depth_to_uint8,
                                         read_depth_file)
from utils.engine.evaluator import MST_SCALES, predict_probs, probs_to_pred

__all__ = ["InputError", "MST_SCALES", "check_sizes", "inference_model", "init_model",
           "override_config", "preprocess", "read_depth", "read_label", "read_rgb"]


from utils.errors import CheckpointError, ConfigError, InputError  # noqa: E402  (InputError re-exported)
from utils.config import override_config  # noqa: E402  (re-exported)


# ----------------------------------------------------------------------------- model

def _select_device(device):
    if device in (None, "auto"):
        return runtime.init_device()
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return runtime.init_device(device == "cuda")


def _resolve_config(config, cfg_options=None):
    from utils.config import load_config
    if isinstance(config, (str, dict)):
        return load_config(config if isinstance(config, str) else copy.deepcopy(dict(config)),
                           cfg_options)
    raise TypeError("config must be a config name (e.g. 'local_configs.NYUDepthv2.DFormer_Base') "
                    "or an EasyDict.")


def init_model(config, checkpoint=None, device=None, strict=True, cfg_options=None):
    """Build the segmentor of ``config`` in eval mode, with ``checkpoint`` loaded.

    ``config``: dotted config name, configs/ file or EasyDict (``cfg_options``:
    ``["key=value", ...]`` as ``--cfg-options``). ``checkpoint``: official ``.pth`` or our
    ``.pkl``; without one the model keeps random decoder weights (and the ImageNet
    backbone when its file exists) and a warning is issued. ``device``: "auto"
    (default: CUDA when available), "cpu" or "cuda". The config is kept as ``model.cfg``.
    """
    from utils.checkpoint import build_model
    _select_device(device)
    cfg = _resolve_config(config, cfg_options)
    if checkpoint is None:
        pretrained = cfg.get("pretrained_model")
        if pretrained and not os.path.isfile(pretrained):
            cfg.pretrained_model = None
        warnings.warn("init_model: no checkpoint given, predictions come from untrained weights.",
                      RuntimeWarning, stacklevel=2)
    elif not os.path.isfile(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint}. Pass the path of a trained "
                              "model (official .pth or a .pkl written by utils/train.py).")
    model = build_model(cfg, checkpoint=checkpoint, strict=strict)
    model.eval()
    model.cfg = cfg
    return model


# ----------------------------------------------------------------------------- inputs

def _imread(path, flags, what):
    if not os.path.isfile(path):
        raise InputError(f"{what} file not found: {path}")
    img = cv2.imread(path, flags)
    if img is None:
        raise InputError(f"cannot read {what} image {path}: unreadable or not an image.")
    return img


def read_rgb(rgb, name="<array>"):
    """(BGR uint8 H x W x 3, source name) from a path or an array (alpha is dropped)."""
    if isinstance(rgb, (str, os.PathLike)):
        name = os.fspath(rgb)
        rgb = _imread(name, cv2.IMREAD_UNCHANGED, "RGB")
    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"RGB input {name} must be an 8-bit 3-channel image, got dtype "
                         f"{rgb.dtype} and shape {rgb.shape}.")
    return np.ascontiguousarray(rgb), name


def read_depth(depth, name="<array>"):
    """(depth uint8 H x W, source name) from a path or an array.

    8-bit depth is used as it is; 16-bit (millimetres) and float depth (also ``.npy``
    files) is normalised per image to 0..255, near = dark, as the official depth PNGs were
    made (``utils.dataloader.transforms.depth_to_uint8`` gives the formula).
    """
    if isinstance(depth, (str, os.PathLike)):
        name = os.fspath(depth)
        if not os.path.isfile(name):
            raise InputError(f"depth file not found: {name}")
        depth = read_depth_file(name)
        if depth is None:
            raise InputError(f"cannot read depth image {name}: unreadable, not an image or "
                             "not single-channel.")
    try:
        depth = depth_to_uint8(depth, name)
    except ValueError as exc:
        raise InputError(f"depth input {name}: {exc}") from None
    return np.ascontiguousarray(depth), name


def read_label(path, cfg):
    """Training-index label (H x W uint8, 255 = ignore) of a label PNG, decoded like the dataset."""
    label = _imread(os.fspath(path), cv2.IMREAD_GRAYSCALE, "label")
    if cfg.get("gt_transform", True):
        label = label - np.uint8(1)  # uint8 wrap: unlabeled 0 becomes 255, as in the reference
    return label


def check_sizes(rgb, depth, rgb_name, depth_name, label=None, label_name=None):
    """Raise InputError when depth (or label) and RGB sizes differ."""
    if depth.shape[:2] != rgb.shape[:2]:
        raise InputError(f"depth {depth_name} is {depth.shape[0]}x{depth.shape[1]} but RGB "
                         f"{rgb_name} is {rgb.shape[0]}x{rgb.shape[1]}; they must be the same size.")
    if label is not None and label.shape[:2] != rgb.shape[:2]:
        raise InputError(f"label {label_name} is {label.shape[0]}x{label.shape[1]} but RGB "
                         f"{rgb_name} is {rgb.shape[0]}x{rgb.shape[1]}; they must be the same size.")


def _eval_transform(cfg):
    pad_to = SUN_PAD_SIZE if cfg.get("pad_SUNRGBD") else None
    return EvalTransform(cfg.norm_mean, cfg.norm_std, pad_to=pad_to,
                         ignore_label=int(cfg.get("background", 255)))


def preprocess(rgb_bgr, depth, cfg, name="<array>"):
    """Network inputs (1, 3, H', W') float32 for RGB and depth, exactly as in evaluation.

    H' x W' is the image size, or the SUN padding size when ``cfg.pad_SUNRGBD``.
    """
    rgb = rgb_bgr
    if str(cfg.get("color_order", "BGR")).upper() == "RGB":
        rgb = cv2.cvtColor(rgb_bgr, cv2.COLOR_BGR2RGB)
    depth3 = np.dstack([depth, depth, depth])
    dummy_label = np.zeros(depth.shape, dtype=np.uint8)
    try:
        rgb, depth3, _ = _eval_transform(cfg)(rgb, depth3, dummy_label)
    except ValueError as exc:
        raise InputError(f"cannot preprocess {name}: {exc}") from exc
    return rgb[None], depth3[None]


# ----------------------------------------------------------------------------- inference

def inference_model(model, rgb, depth, return_probs=False, scales=(1.0,), flip=False,
                    sliding=False, cfg=None):
    """Segment one RGB-D pair.

    Args:
        model: from :func:`init_model` (or any segmentor; then pass ``cfg``).
        rgb, depth: arrays or file paths (module docstring).
        return_probs: also return the class probabilities (C, H, W) float32, averaged
            over the test-time passes (they sum to 1 per pixel).
        scales, flip, sliding: test-time modes, as in ``utils.engine.evaluator``
            (``scales=MST_SCALES, flip=True`` is the reference's --mst).

    Returns the class map (H, W) int64, or ``(class_map, probs)``.
    """
    cfg = cfg if cfg is not None else getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError("inference_model needs the config: build the model with init_model() "
                         "or pass cfg=...")
    rgb, rgb_name = read_rgb(rgb)
    depth, depth_name = read_depth(depth)
    check_sizes(rgb, depth, rgb_name, depth_name)
    height, width = rgb.shape[:2]
    x_rgb, x_depth = preprocess(rgb, depth, cfg, rgb_name)
    was_training = model.is_training()
    model.eval()
    try:
        with jt.no_grad():
            total, passes = predict_probs(model, x_rgb, x_depth, cfg, scales, flip, sliding)
            pred = probs_to_pred(total)[0, :height, :width]
            probs = (total / passes).numpy()[0, :, :height, :width] if return_probs else None
    finally:
        if was_training:
            model.train()
    return (pred, probs) if return_probs else pred
