"""The evaluation loop, shared by utils/eval.py, utils/api.py and training's validation.

Prediction modes (those of the reference's evaluator):

* **single scale** (``scales == (1.0,)``): the model runs on the native-size input.
* **multi-scale** (any other ``scales``): for each scale s the *normalised* inputs are
  resized (bilinear, align_corners=True) to ``ceil(int(s*H)/32)*32 x ceil(int(s*W)/32)*32``
  -- scale 1.0 included, as in the reference -- and the logits are resized back to
  H x W with align_corners=True.
* **flip** (either mode): each pass is repeated on horizontally flipped inputs and the
  logits are flipped back before resizing.
* **sliding window** (either mode): every pass uses :func:`sliding_logits` with the
  config's ``eval_crop_size`` and ``eval_stride_rate`` (raw logits averaged where
  windows overlap). Inputs smaller than the crop are first resized to the crop
  size; the result is resized back to H x W, so single scale + sliding works
  (the reference crashes there).

The class scores of all passes are softmax probabilities summed (not averaged) over
scales and flips; the prediction is their argmax.

NMF bases: the Hamburger decoder draws random bases at every forward, as in the
reference, so repeated evaluations differ slightly. ``seed`` makes a run
reproducible; ``model.set_nmf_bases`` fixes the bases outright.

Labels: pixels labelled 255 (``cfg.background``: unlabeled pixels and the SUN RGB-D
padding, which the dataset adds when ``cfg.pad_SUNRGBD``) are left out of the confusion
matrix.

Distributed evaluation (``mpirun -np N``, ``jt.in_mpi``): Jittor's Dataset gives
each rank its shard of every global batch (the batch size is global and must be
>= N; when the last batch does not split evenly over the ranks some samples are
evaluated by two ranks and counted twice, like the reference's DistributedSampler
padding). Each rank
accumulates its confusion matrix and the matrices are summed with
``mpi_all_reduce``; every rank returns the same metrics, and only rank 0 shows a
progress bar. A failure on one rank (a corrupt file) is raised on every rank before the
matrices are summed (utils.engine.distributed.agree), so no rank waits for ever.
"""
import math

import numpy as np
from tqdm import tqdm

import jittor as jt
from jittor import nn

from models.ops import resize
from utils.engine.distributed import agree, is_main_process
from utils.metrics import ConfusionMatrix, compute_metrics

MST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)  # the reference's --mst scales (configs' default)


def tta_modes(cfg):
    """(scales, flip) of multi-scale testing (--mst / --tta): the config's
    ``eval_scale_array`` and ``eval_flip``, the reference's values by default."""
    return (tuple(float(s) for s in (cfg.get("eval_scale_array") or MST_SCALES)),
            bool(cfg.get("eval_flip", True)))
SIZE_MULTIPLE = 32


# ----------------------------------------------------------------------------- helpers

def is_multi_scale(scales):
    """Multi-scale mode is any scale list other than exactly (1.0,)."""
    return tuple(float(s) for s in scales) != (1.0,)


def scaled_size(height, width, scale, multiple=SIZE_MULTIPLE):
    """The reference's multi-scale input size: ``int(scale * size)`` rounded up to ``multiple``."""
    return (int(math.ceil(int(scale * height) / multiple)) * multiple,
            int(math.ceil(int(scale * width) / multiple)) * multiple)


def flip_width(x):
    """Horizontal flip of an N C H W tensor."""
    return x.flip(3)


def as_var(x, dtype="float32"):
    """numpy array or jt.Var -> jt.Var of ``dtype``."""
    if isinstance(x, jt.Var):
        return x if str(x.dtype) == dtype else x.cast(dtype)
    return jt.array(np.ascontiguousarray(x)).cast(dtype)


def as_numpy(x):
    return x.numpy() if isinstance(x, jt.Var) else np.asarray(x)


# ----------------------------------------------------------------------------- sliding window

def window_grid(height, width, crop, stride):
    """(y1, y2, x1, x2) of every sliding window, last windows shifted back inside."""
    (hc, wc), (hs, ws) = crop, stride
    n_h = max(height - hc + hs - 1, 0) // hs + 1
    n_w = max(width - wc + ws - 1, 0) // ws + 1
    windows = []
    for i in range(n_h):
        for j in range(n_w):
            y2, x2 = min(i * hs + hc, height), min(j * ws + wc, width)
            windows.append((max(y2 - hc, 0), y2, max(x2 - wc, 0), x2))
    return windows


def _window_counts(height, width, windows):
    count = np.zeros((1, 1, height, width), dtype=np.float32)
    for y1, y2, x1, x2 in windows:
        count[..., y1:y2, x1:x2] += 1
    return count


def sliding_logits(model, rgb, depth, crop_size, stride_rate):
    """Sliding-window logits (reference 5.4).

    ``crop_size`` (hc, wc); stride = ``int(hc * stride_rate), int(wc * stride_rate)``.
    Inputs smaller than the crop along either axis are resized to exactly the crop size
    (bilinear, align_corners=True) and the logits stay at that size. Overlapping
    windows average their raw logits.
    """
    hc, wc = int(crop_size[0]), int(crop_size[1])
    if hc > rgb.shape[2] or wc > rgb.shape[3]:
        rgb = resize(rgb, (hc, wc), align_corners=True)
        depth = resize(depth, (hc, wc), align_corners=True)
    height, width = rgb.shape[2], rgb.shape[3]
    stride = (int(stride_rate * hc), int(stride_rate * wc))
    if min(stride) < 1:
        raise ValueError(f"eval_stride_rate {stride_rate} gives a zero stride for crop {hc}x{wc}; "
                         "use a rate in (0, 1] in the config.")
    windows = window_grid(height, width, (hc, wc), stride)
    if len(windows) == 1:
        y1, y2, x1, x2 = windows[0]
        return model(rgb[:, :, y1:y2, x1:x2], depth[:, :, y1:y2, x1:x2])
    total = None
    for y1, y2, x1, x2 in windows:
        out = model(rgb[:, :, y1:y2, x1:x2], depth[:, :, y1:y2, x1:x2])
        out = nn.pad(out, (x1, width - x2, y1, height - y2))
        total = out if total is None else total + out
        total.sync()
    return total / jt.array(_window_counts(height, width, windows))


# ----------------------------------------------------------------------------- prediction

def model_logits(model, rgb, depth, cfg, sliding=False):
    """Logits of one pass: a plain forward or a sliding-window forward."""
    if sliding:
        return sliding_logits(model, rgb, depth, cfg.eval_crop_size, cfg.eval_stride_rate)
    return model(rgb, depth)


def _pass_probs(model, rgb, depth, cfg, size, sliding, flip):
    """Softmax of one (possibly flipped) pass, resized to ``size`` with align_corners=True."""
    if flip:
        rgb, depth = flip_width(rgb), flip_width(depth)
    logits = model_logits(model, rgb, depth, cfg, sliding)
    if flip:
        logits = flip_width(logits)
    logits = resize(logits, size, align_corners=True)
    return nn.softmax(logits, dim=1)


def predict_probs(model, rgb, depth, cfg, scales=(1.0,), flip=False, sliding=False):
    """Summed class probabilities (B, C, H, W) over all scales and flips.

    ``rgb``/``depth``: normalised (B, 3, H, W) inputs (numpy or jt.Var). Returns a jt.Var
    and the number of passes summed (divide to get an average probability).
    """
    rgb, depth = as_var(rgb), as_var(depth)
    if rgb.ndim != 4 or depth.ndim != 4 or rgb.shape[2:] != depth.shape[2:]:
        raise ValueError(f"expected (B, 3, H, W) RGB and depth of equal size, got "
                         f"{tuple(rgb.shape)} and {tuple(depth.shape)}")
    size = (rgb.shape[2], rgb.shape[3])
    multi = is_multi_scale(scales)
    total, passes = None, 0
    for scale in scales:
        r, d = rgb, depth
        if multi:
            target = scaled_size(size[0], size[1], scale)
            r, d = resize(rgb, target, align_corners=True), resize(depth, target, align_corners=True)
        for flipped in ((False, True) if flip else (False,)):
            probs = _pass_probs(model, r, d, cfg, size, sliding, flipped)
            total = probs if total is None else total + probs
            total.sync()
            passes += 1
    return total, passes


def probs_to_pred(scores):
    """(B, C, H, W) class scores -> (B, H, W) int64 numpy class map (argmax over C)."""
    index, _ = jt.argmax(scores, dim=1)
    return index.numpy().astype(np.int64)


def predict(model, rgb, depth, cfg, scales=(1.0,), flip=False, sliding=False):
    """Class map (B, H, W) int64 numpy array: argmax of :func:`predict_probs`."""
    total, _ = predict_probs(model, rgb, depth, cfg, scales, flip, sliding)
    return probs_to_pred(total)


# ----------------------------------------------------------------------------- loop

def _unpack(batch):
    """(rgb, depth, label) of a batch dict from utils.dataloader (adds a batch axis if missing)."""
    try:
        rgb, depth, label = batch["rgb"], batch["depth"], batch["label"]
    except (KeyError, TypeError):
        raise ValueError("evaluate() expects batches as dicts with 'rgb', 'depth' and 'label' "
                         "(utils.dataloader.build_val_loader).") from None
    rgb, depth = as_var(rgb), as_var(depth)
    label = as_numpy(label)
    if rgb.ndim == 3:
        rgb, depth, label = rgb.unsqueeze(0), depth.unsqueeze(0), label[None]
    return rgb, depth, label


def _num_batches(loader, max_iters):
    try:
        n = len(loader)
    except TypeError:
        n = None
    if max_iters is not None:
        n = max_iters if n is None else min(n, max_iters)
    return n


def all_reduce_confusion(hist):
    """Sum a confusion matrix over MPI ranks (float64 transport: exact below 2**53)."""
    if not jt.in_mpi:
        return hist
    # dtype= explicitly: Jittor makes float32 Vars of float64 arrays otherwise (exact only
    # below 2**24 pixels per entry, which a real test set exceeds)
    summed = jt.array(hist.astype(np.float64), dtype="float64").mpi_all_reduce("add")
    return np.rint(summed.numpy()).astype(np.int64)


def evaluate(model, loader, cfg, scales=(1.0,), flip=False, sliding=False, max_iters=None,
             progress=True, seed=None, callback=None):
    """Evaluate ``model`` on ``loader``; returns ``utils.metrics.compute_metrics``'s dict
    (percentages: ``miou``, ``macc``, ``pixel_acc``, ``fwiou``, ``mf1``, ``per_class``...).

    Args:
        scales, flip, sliding: test-time modes (module docstring).
        max_iters: evaluate at most this many batches (per rank under MPI).
        progress: show a tqdm bar (rank 0 only).
        seed: seed Jittor's RNG first, making the NMF bases (and the run) reproducible.
        callback: called as ``callback(batch, pred)`` after each batch, ``pred`` the
            (B, H, W) int64 prediction (e.g. to save images).

    The model is put in eval mode and its previous mode is restored afterwards.
    """
    if seed is not None:
        jt.set_global_seed(int(seed))
    num_classes = int(cfg.num_classes)
    ignore = int(cfg.get("background", 255))
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore)
    was_training = model.is_training()
    model.eval()
    bar = tqdm(total=_num_batches(loader, max_iters), desc="eval", unit="batch", dynamic_ncols=True,
               disable=not (progress and is_main_process()))
    failure = None
    try:
        with jt.no_grad():
            for i, batch in enumerate(loader):
                if max_iters is not None and i >= max_iters:
                    break
                rgb, depth, label = _unpack(batch)
                pred = predict(model, rgb, depth, cfg, scales, flip, sliding)
                confusion.update(pred, label)
                if callback is not None:
                    callback(batch, pred)
                bar.update(1)
    except Exception as exc:  # under MPI the other ranks must hear of it (raised below)
        failure = exc
    finally:
        bar.close()
        if was_training:
            model.train()
    agree(failure, where="during evaluation")
    hist = all_reduce_confusion(confusion.hist)
    return compute_metrics(hist, class_names=cfg.get("class_names"))
