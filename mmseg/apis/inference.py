"""mmseg 1.x's ``init_model`` / ``inference_model`` / ``show_result_pyplot`` on this project's engine.

``inference_model`` is :func:`utils.api.inference_model` (the evaluation pipeline's
preprocessing and :func:`utils.engine.evaluator.predict_probs`), packed into a
:class:`~mmseg.structures.SegDataSample`:

* ``pred_sem_seg.data``: (1, H, W) int64 class map at the input size;
* ``seg_logits.data``: (C, H, W) float32, the log of the class probabilities: the
  softmax of each test-time pass, averaged over the passes (one pass without TTA), then
  the log. ``exp`` (or ``softmax``) of them gives the engine's probabilities and their
  argmax is ``pred_sem_seg``. mmseg stores raw logits here; the argmax is the same.
"""
import copy
import os
import warnings

import numpy as np

from utils.errors import ConfigError, InputError

__all__ = ["init_model", "inference_model", "show_result_pyplot", "parse_device", "split_rgbd"]

_WARNED_CPU = []


def parse_device(device):
    """'cpu' | 'cuda' | 'cuda:N' | None -> use_cuda flag, falling back to the CPU with one
    warning when no GPU is usable."""
    import jittor as jt
    if device is None or device == "auto":
        return bool(jt.has_cuda)
    text = str(device).lower()
    if text == "cpu":
        return False
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"bad device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
        if not jt.has_cuda:
            if not _WARNED_CPU:
                warnings.warn(f"device {device!r} requested but no usable GPU was found; "
                              "running on the CPU.", RuntimeWarning, stacklevel=3)
                _WARNED_CPU.append(True)
            return False
        if index and int(index) != 0:
            warnings.warn(f"{device}: Jittor uses the first visible GPU; select GPU {index} with "
                          f"CUDA_VISIBLE_DEVICES={index}.", RuntimeWarning, stacklevel=3)
        return True
    raise ConfigError(f"bad device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def _load_cfg(config, cfg_options=None):
    from easydict import EasyDict
    from utils.api import override_config
    from utils.config import load_config
    if isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config), cfg_options)
    if isinstance(config, dict):
        cfg = EasyDict(copy.deepcopy(dict(config)))
        if cfg_options:
            options = cfg_options if not isinstance(cfg_options, dict) else \
                [f"{k}={v!r}" for k, v in cfg_options.items()]
            try:
                override_config(cfg, options)
            except ValueError as exc:
                raise ConfigError(f"cfg_options: {exc}") from None
        return cfg
    raise ConfigError("config must be a config name or path (local_configs.NYUDepthv2.DFormer_Large, "
                      f"configs/dformer/....py) or a config dict, got {type(config).__name__}")


def init_model(config, checkpoint=None, device="cuda:0", cfg_options=None):
    """Build the segmentor of ``config`` in eval mode with ``checkpoint`` loaded (strictly).

    Sets ``model.cfg`` (the internal config) and ``model.dataset_meta``. Without a
    checkpoint the weights are random (one warning).
    """
    from mmseg.utils import dataset_meta
    from utils import api
    from utils import runtime
    use_cuda = parse_device(device)
    runtime.init_device(use_cuda)
    cfg = _load_cfg(config, cfg_options)
    if checkpoint is not None and not os.path.isfile(checkpoint):
        from utils.errors import CheckpointError
        raise CheckpointError(f"checkpoint not found: {checkpoint} (official checkpoints go to "
                              "checkpoints/trained/, see the README; without a checkpoint the "
                              "weights are random)")
    model = api.init_model(cfg, checkpoint, device="cuda" if use_cuda else "cpu")
    model.cfg = cfg
    model.dataset_meta = dataset_meta(cfg)
    return model


# ----------------------------------------------------------------------------- inputs

def split_rgbd(img):
    """(rgb, depth) of one RGB-D input: a dict with 'img' and 'modal_x' (or 'depth'),
    or an (rgb, depth) pair. A lone image is an InputError (no RGB-only runs)."""
    if isinstance(img, dict):
        rgb = img.get("img", img.get("rgb"))
        depth = img.get("modal_x", img.get("depth"))
    elif isinstance(img, tuple) and len(img) == 2:
        rgb, depth = img
    else:
        what = img if isinstance(img, (str, os.PathLike)) else type(img).__name__
        raise InputError(f"input {what} has no depth: DFormer needs RGB-D input, give "
                         "{'img': rgb, 'modal_x': depth} or (rgb, depth).")
    if rgb is None:
        raise InputError("RGB-D input without an RGB image ('img')")
    if depth is None:
        raise InputError(f"input {rgb if isinstance(rgb, str) else '<array>'} has no depth "
                         "('modal_x'): DFormer needs RGB-D input.")
    return rgb, depth


def _is_single(img):
    return isinstance(img, dict) or (isinstance(img, tuple) and len(img) == 2
                                     and not isinstance(img[0], (dict, tuple)))


def _tta(model, tta):
    from utils.engine.evaluator import tta_modes
    return tta_modes(model.cfg) if tta else ((1.0,), False)


def _infer_one(model, img, scales, flip, sliding):
    from mmseg.structures import PixelData, SegDataSample
    from utils import api
    rgb, depth = split_rgbd(img)
    rgb_arr, rgb_name = api.read_rgb(rgb)
    depth_arr, depth_name = api.read_depth(depth)
    pred, probs = api.inference_model(model, rgb_arr, depth_arr, return_probs=True,
                                      scales=scales, flip=flip, sliding=sliding)
    h, w = pred.shape
    meta = dict(img_path=rgb if isinstance(rgb, str) else None,
                depth_path=depth if isinstance(depth, str) else None,
                ori_shape=(h, w), img_shape=(h, w), scale_factor=(1.0, 1.0),
                flip=bool(flip), scales=tuple(scales), sliding=bool(sliding))
    sample = SegDataSample(metainfo=meta)
    sample.pred_sem_seg = PixelData(data=pred[None].astype(np.int64))
    sample.seg_logits = PixelData(data=np.log(np.maximum(probs, 1e-30)).astype(np.float32))
    return sample


def inference_model(model, img, *, tta=False, scales=None, flip=None, sliding=False):
    """Segment RGB-D input(s) with the evaluation pipeline.

    ``img``: one input (``{'img': rgb, 'modal_x': depth}`` or ``(rgb, depth)``, paths or
    arrays) or a list of them. ``tta``: the config's multi-scale + flip passes
    (``scales`` / ``flip`` set them explicitly); ``sliding``: sliding-window passes.
    Returns a :class:`SegDataSample` (a list for a list).
    """
    if getattr(model, "cfg", None) is None:
        raise ConfigError("inference_model needs a model from mmseg.apis.init_model (model.cfg)")
    default_scales, default_flip = _tta(model, tta)
    scales = tuple(scales) if scales is not None else default_scales
    flip = default_flip if flip is None else bool(flip)
    if _is_single(img):
        return _infer_one(model, img, scales, flip, sliding)
    if isinstance(img, (list, tuple)):
        if not img:
            raise InputError("inference_model got an empty list of inputs")
        return [_infer_one(model, item, scales, flip, sliding) for item in img]
    split_rgbd(img)  # raises the no-depth error
    raise InputError(f"unsupported input {type(img).__name__}")


def show_result_pyplot(model, img, result, opacity=0.5, title="", draw_gt=True, draw_pred=True,
                       wait_time=0, show=True, with_labels=True, save_dir=None, out_file=None):
    """Draw ``result`` over the RGB image of ``img`` and return the drawing (RGB uint8).

    ``img``: the RGB-D input (or just its RGB: a path or a BGR array). Writes
    ``out_file`` when given. ``show`` (default True, as in mmseg) opens a matplotlib
    window; without a display it warns once and only returns the drawing.
    """
    from mmseg.utils import dataset_meta
    from mmseg.visualization import SegLocalVisualizer
    from utils import api
    rgb = img
    if isinstance(img, dict) or (isinstance(img, tuple) and len(img) == 2):
        rgb, _ = split_rgbd(img)
    bgr, _ = api.read_rgb(rgb)
    image = bgr[:, :, ::-1].copy()
    meta = getattr(model, "dataset_meta", None) or dataset_meta(model.cfg)
    visualizer = SegLocalVisualizer(save_dir=save_dir, alpha=opacity)
    visualizer.set_dataset_meta(classes=meta["classes"], palette=meta["palette"])
    visualizer.add_datasample(name=title, image=image, data_sample=result, draw_gt=draw_gt,
                              draw_pred=draw_pred, wait_time=wait_time, out_file=out_file,
                              show=show, with_labels=with_labels)
    return visualizer.get_image()
