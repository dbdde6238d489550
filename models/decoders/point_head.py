"""PointRend decode head (https://arxiv.org/abs/1912.08193), laid out as mmseg's
``pointrend`` model: an FPN neck, an FPN coarse head (``FPNHead``) at stride 4, and
a point head that re-predicts selected points from fine (FPN level 0) and coarse
features with shared 1x1 layers.

* **Training**: the coarse logits are what the segmentor's pixel loss sees; the
  point loss (:meth:`PointRendHead.extra_loss`) samples ``num_points`` points per
  image by uncertainty (``oversample_ratio * num_points`` uniform candidates, the
  ``importance_sample_ratio`` most uncertain of them kept, the rest uniform),
  classifies them and compares with the label sampled (nearest) at the same points.
* **Inference**: ``subdivision_steps`` rounds of: upsample the logits by
  ``scale_factor`` (bilinear, ``F.interpolate(scale_factor=...)``: size ``int(h * s)``,
  coordinates by ``1 / s``), pick the ``subdivision_num_points`` most uncertain
  cells, re-predict them with the point head, write them back.

Uncertainty is ``second-best minus best`` logit (higher = more uncertain).
Points are (x, y) in [0, 1] over the image, sampled as mmcv's ``point_sample`` with the
point head's ``align_corners`` (features bilinear, labels nearest).
"""
import math

import numpy as np
import jittor as jt
from jittor import nn

from ..errors import ConfigError, KeywordError
from ..layers import Dropout
from ..losses import cross_entropy
from ..ops import resize
from .decode_head import (DecodeHead, build_conv_module, check_act_cfg, check_conv_cfg,
                          mmseg_init, norm_settings, normal_init)

__all__ = ["point_sample", "nearest_sample", "calculate_uncertainty", "get_points_train",
           "get_points_test", "resize_nearest", "FPN", "FPNHead", "PointHead", "PointRendHead",
           "MMSEG_KEY_MAP"]


# ----------------------------------------------------------------------------- point ops

def _gather_points(x, index):
    """(B, C, H*W) gathered at int32 (B, P) flat indices -> (B, C, P)."""
    b, c, _ = x.shape
    return x.reindex([b, c, index.shape[1]], ["i0", "i1", "@e0(i0,i2)"], extras=[index])


def _pixel_coords(points, h, w, align_corners):
    """(x, y) pixel coordinates of ``points`` (B, P, 2) in [0, 1], as mmcv's ``point_sample``
    hands them to ``grid_sample`` (``2 * p - 1``) and PyTorch's CPU kernel maps them back,
    in float32: ``(g + 1) * (size - 1) / 2`` or, without ``align_corners``,
    ``(g + 1) * size / 2 - 0.5``."""
    grid = points.float32() * 2.0 - 1.0
    coords = []
    for i, size in ((0, w), (1, h)):
        if align_corners:
            coords.append((grid[:, :, i] + 1.0) * ((size - 1) / 2))
        else:
            coords.append((grid[:, :, i] + 1.0) * (size / 2) - 0.5)
    return coords


def _round_half_even(x):
    """``nearbyint``: PyTorch's ``grid_sample(mode="nearest")`` rounds ties to even."""
    r = jt.floor(x)
    frac = x - r
    up = (frac > 0.5) | ((frac == 0.5) & (r - 2.0 * jt.floor(r * 0.5) == 1.0))
    return r + up.float32()


def point_sample(x, points, align_corners=False):
    """Bilinear samples of ``x`` (B, C, H, W) at ``points`` (B, P, 2) -> (B, C, P).

    ``grid_sample(x, 2 * points - 1)`` with zero padding, written as four gathers:
    gradients reach ``x`` (the points are constants).
    """
    b, c, h, w = x.shape
    points = points.stop_grad()
    fx, fy = _pixel_coords(points, h, w, align_corners)
    x0, y0 = jt.floor(fx), jt.floor(fy)
    wx1, wy1 = fx - x0, fy - y0
    flat = x.reshape((b, c, h * w))
    out = None
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            xx, yy = x0 + dx, y0 + dy
            valid = ((xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)).float32()
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).int32()
            term = _gather_points(flat, index) * (wx * wy * valid).unsqueeze(1).stop_grad()
            out = term if out is None else out + term
    return out


def nearest_sample(label, points, align_corners=False):
    """Nearest samples of an integer map (B, H, W) at ``points`` (B, P, 2) -> (B, P).

    mmseg's point labels: ``point_sample(label, points, mode="nearest", align_corners)``,
    i.e. ``grid_sample`` with the pixel coordinate rounded half to even and 0 outside
    the map (zero padding).
    """
    b, h, w = label.shape
    fx, fy = _pixel_coords(points.stop_grad(), h, w, align_corners)
    ix, iy = _round_half_even(fx), _round_half_even(fy)
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    index = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).int32()
    flat = label.reshape((b, 1, h * w))
    return _gather_points(flat, index)[:, 0] * inside.cast(label.dtype)


def calculate_uncertainty(logits):
    """(B, C, ...) logits -> (B, 1, ...) second-best minus best score."""
    top, _ = jt.topk(logits, 2, dim=1)
    return (top[:, 1] - top[:, 0]).unsqueeze(1)


def get_points_train(logits, num_points, oversample_ratio=3, importance_sample_ratio=0.75):
    """(B, num_points, 2) training points: the most uncertain of an oversampled
    uniform draw, completed with uniform points."""
    with jt.no_grad():
        b = logits.shape[0]
        num_sampled = int(num_points * oversample_ratio)
        coords = jt.rand((b, num_sampled, 2))
        uncertainty = calculate_uncertainty(point_sample(logits, coords))[:, 0]  # (B, Ns)
        num_uncertain = int(importance_sample_ratio * num_points)
        num_random = num_points - num_uncertain
        parts = []
        if num_uncertain > 0:
            _, idx = jt.topk(uncertainty, num_uncertain, dim=1)
            parts.append(coords.reindex([b, num_uncertain, 2], ["i0", "@e0(i0,i1)", "i2"],
                                        extras=[idx.int32()]))
        if num_random > 0:
            parts.append(jt.rand((b, num_random, 2)))
        points = parts[0] if len(parts) == 1 else jt.concat(parts, dim=1)
    return points.stop_grad()


def get_points_test(logits, num_points):
    """(flat indices (B, P) int32, points (B, P, 2)) of the most uncertain cells of
    ``logits`` (B, C, H, W); points are the cell centres."""
    uncertainty = calculate_uncertainty(logits)
    b, _, h, w = uncertainty.shape
    num_points = min(h * w, int(num_points))
    _, index = jt.topk(uncertainty.reshape((b, h * w)), num_points, dim=1)
    index = index.int32()
    px = ((index % w).float32() + 0.5) / w
    py = ((index // w).float32() + 0.5) / h
    return index, jt.stack([px, py], dim=2)


def resize_nearest(x, size):
    """PyTorch's legacy ``nearest`` resize: source index ``floor(dst * in / out)``."""
    n, c, h, w = x.shape
    ho, wo = int(size[0]), int(size[1])
    if (ho, wo) == (h, w):
        return x
    return x.reindex([n, c, ho, wo], ["i0", "i1", f"i2*{h}/{ho}", f"i3*{w}/{wo}"])


# ----------------------------------------------------------------------------- coarse part

class FPN(nn.Module):
    """mmseg's ``FPN`` neck: 1x1 ``lateral_convs``, nearest top-down sums, 3x3
    ``fpn_convs``; outputs beyond the inputs (``num_outs > len(in_channels)``) are
    stride-2 subsamplings of the last one (mmseg's ``max_pool2d(x, 1, stride=2)``).

    Supported: ``in_channels``, ``out_channels``, ``num_outs``, ``norm_cfg``
    (BN / SyncBN), ``act_cfg`` (ReLU), ``no_norm_on_lateral``; the remaining mmseg
    options only at their defaults. Conv weights start Xavier-uniform, biases 0.
    """

    def __init__(self, in_channels, out_channels, num_outs, start_level=0, end_level=-1,
                 add_extra_convs=False, extra_convs_on_inputs=False,
                 relu_before_extra_convs=False, no_norm_on_lateral=False, conv_cfg=None,
                 norm_cfg=None, act_cfg=None, upsample_cfg=dict(mode="nearest"),
                 init_cfg=dict(type="Xavier", layer="Conv2d", distribution="uniform")):
        unsupported = {k: v for k, v in dict(
            start_level=start_level, end_level=end_level, add_extra_convs=add_extra_convs,
            extra_convs_on_inputs=extra_convs_on_inputs,
            relu_before_extra_convs=relu_before_extra_convs, upsample_cfg=upsample_cfg,
            init_cfg=init_cfg).items() if v != _FPN_DEFAULTS[k]}
        if unsupported:
            raise ConfigError(f"FPN: options {unsupported!r} are not supported; leave them at "
                              "their defaults")
        check_conv_cfg(conv_cfg, "FPN")
        if not isinstance(in_channels, (list, tuple)):
            raise ConfigError(f"FPN: in_channels must be a list, got {in_channels!r}")
        if num_outs < len(in_channels):
            raise ConfigError(f"FPN: num_outs={num_outs} is fewer than the "
                              f"{len(in_channels)} inputs")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        norm = norm_settings(norm_cfg, "FPN")
        act = check_act_cfg(act_cfg, "FPN")
        self.lateral_convs = nn.ModuleList([
            build_conv_module(c, out_channels, 1, None if no_norm_on_lateral else norm, act)
            for c in self.in_channels])
        self.fpn_convs = nn.ModuleList([
            build_conv_module(out_channels, out_channels, 3, norm, act, padding=1)
            for _ in self.in_channels])

    def init_weights(self):
        mmseg_init(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight.shape[1] * int(np.prod(m.weight.shape[2:]))
                fan_out = m.weight.shape[0] * int(np.prod(m.weight.shape[2:]))
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                m.weight.assign(jt.rand(m.weight.shape) * (2 * bound) - bound)
                if m.bias is not None:
                    m.bias.assign(jt.zeros(m.bias.shape))
        return self

    def execute(self, feats):
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN: {len(feats)} inputs for {len(self.in_channels)} in_channels")
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(outs[-1][:, :, ::2, ::2])
        return outs


_FPN_DEFAULTS = dict(start_level=0, end_level=-1, add_extra_convs=False,
                     extra_convs_on_inputs=False, relu_before_extra_convs=False,
                     upsample_cfg=dict(mode="nearest"),
                     init_cfg=dict(type="Xavier", layer="Conv2d", distribution="uniform"))


class _Upsample2x(nn.Module):
    def __init__(self, align_corners=False):
        self.align_corners = align_corners

    def execute(self, x):
        return resize(x, (x.shape[2] * 2, x.shape[3] * 2), align_corners=self.align_corners)


class FPNHead(DecodeHead):
    """mmseg ``FPNHead`` (Semantic FPN): per level, 3x3 ConvModules with x2 bilinear
    upsampling down to the first stride, summed, then ``conv_seg``.

    Args:
        feature_strides (Sequence[int]): stride of each input, smallest first.
        Others: mmseg's ``BaseDecodeHead`` arguments (``input_transform`` is
        always ``"multiple_select"``).
    """

    def __init__(self, feature_strides, **kwargs):
        if "input_transform" in kwargs:
            raise KeywordError("FPNHead() got an unexpected keyword argument 'input_transform' "
                               "(always 'multiple_select')")
        super().__init__(input_transform="multiple_select", **kwargs)
        strides = list(feature_strides)
        if len(strides) != len(self.in_channels) or min(strides) != strides[0]:
            raise ConfigError(f"FPNHead: feature_strides {strides} must have one stride per "
                              f"input ({len(self.in_channels)}), smallest first")
        self.feature_strides = strides
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(strides):
            length = max(1, int(np.log2(stride) - np.log2(strides[0])))
            layers = []
            for k in range(length):
                layers.append(self.conv_module(self.in_channels[i] if k == 0 else self.channels,
                                               self.channels, 3, padding=1))
                if stride != strides[0]:
                    layers.append(_Upsample2x(self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    def execute(self, inputs):
        x = self.transform_inputs(inputs)
        out = self.scale_heads[0](x[0])
        for i in range(1, len(self.scale_heads)):
            out = out + resize(self.scale_heads[i](x[i]), out.shape[2:],
                               align_corners=self.align_corners)
        return self.cls_seg(out)


# ----------------------------------------------------------------------------- point part

class PointConv1d(nn.Module):
    """``nn.Conv1d(in, out, 1)`` on (B, C, P) point features; weight (out, in, 1)."""

    def __init__(self, in_channels, out_channels):
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = jt.rand((out_channels, in_channels, 1)) * (2 * bound) - bound
        self.bias = jt.rand((out_channels,)) * (2 * bound) - bound

    def execute(self, x):
        return jt.matmul(self.weight[:, :, 0], x) + self.bias.reshape((1, -1, 1))


class PointFC(nn.Module):
    """mmcv ``ConvModule`` with ``conv_cfg=dict(type='Conv1d')``, no norm: conv (+ ReLU)."""

    def __init__(self, in_channels, out_channels, act):
        self.conv = PointConv1d(in_channels, out_channels)
        self.act = act

    def execute(self, x):
        x = self.conv(x)
        return nn.relu(x) if self.act is not None else x


class PointHead(DecodeHead):
    """mmseg ``PointHead``: ``num_fcs`` shared point-wise layers (Conv1d + bias + ReLU,
    no norm) on [fine, coarse] point features (coarse logits appended again after
    each layer when ``coarse_pred_each_layer``), Dropout, then ``fc_seg`` (Conv1d).

    ``execute(fine, coarse)``: (B, sum(in_channels), P) and (B, K, P) -> (B, K, P).
    Only ``conv_cfg=dict(type='Conv1d')`` and ``norm_cfg=None`` are supported.
    """

    default_init_cfg = dict(type="Normal", std=0.01, override=dict(name="fc_seg"))
    conv_cfgs = (dict(type="Conv1d"),)
    computes_own_loss = True

    def __init__(self, num_fcs=3, coarse_pred_each_layer=True, conv_cfg=dict(type="Conv1d"),
                 norm_cfg=None, act_cfg=dict(type="ReLU", inplace=False), **kwargs):
        if "input_transform" in kwargs:
            raise KeywordError("PointHead() got an unexpected keyword argument 'input_transform' "
                               "(always 'multiple_select')")
        if norm_cfg is not None:
            raise ConfigError(f"PointHead: norm_cfg {norm_cfg!r} is not supported (mmseg's point "
                              "head has no norm); remove it")
        kwargs.setdefault("init_cfg", self.default_init_cfg)
        super().__init__(input_transform="multiple_select", conv_cfg=conv_cfg, norm_cfg=None,
                         act_cfg=act_cfg, **kwargs)
        self.num_fcs = num_fcs
        self.coarse_pred_each_layer = coarse_pred_each_layer
        width = sum(self.in_channels) + self.num_classes
        self.fcs = nn.ModuleList()
        for _ in range(num_fcs):
            self.fcs.append(PointFC(width, self.channels, self.act))
            width = self.channels + (self.num_classes if coarse_pred_each_layer else 0)
        self.fc_seg = PointConv1d(width, self.num_classes)
        self.dropout = (Dropout(self.dropout_ratio, is_train=True) if self.dropout_ratio > 0
                        else None)
        del self.conv_seg

    def init_weights(self):
        """mmcv ConvModule's Kaiming normal (fan_out) for ``fcs``, Normal(0.01) for ``fc_seg``."""
        for fc in self.fcs:
            w = fc.conv.weight
            w.assign(jt.randn(w.shape) * math.sqrt(2.0 / w.shape[0]))
            fc.conv.bias.assign(jt.zeros(fc.conv.bias.shape))
        normal_init(self.fc_seg, std=0.01)
        return self

    def cls_seg(self, x):
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_seg(x)

    def execute(self, fine, coarse):
        x = jt.concat([fine, coarse], dim=1)
        for fc in self.fcs:
            x = fc(x)
            if self.coarse_pred_each_layer:
                x = jt.concat([x, coarse], dim=1)
        return self.cls_seg(x)

    def fine_point_feats(self, feats, points):
        """Bilinear samples of the selected ``in_index`` maps at ``points``, concatenated."""
        sampled = [point_sample(feats[i], points, self.align_corners) for i in self.in_index]
        return sampled[0] if len(sampled) == 1 else jt.concat(sampled, dim=1)


# mmseg's CascadeEncoderDecoder keys (left) -> this head's (right), for checkpoints.
MMSEG_KEY_MAP = (("neck.", "neck."), ("decode_head.0.", "coarse_head."),
                 ("decode_head.1.", "point_head."))

_TRAIN_CFG = dict(num_points=2048, oversample_ratio=3, importance_sample_ratio=0.75)
_TEST_CFG = dict(mode="whole", subdivision_steps=2, subdivision_num_points=8196, scale_factor=2)


def _settings(given, defaults, name):
    cfg = dict(defaults)
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ConfigError(f"PointRendHead: {name} keys {unknown} are not supported; known: "
                          f"{sorted(defaults)}")
    cfg.update(given or {})
    return cfg


class PointRendHead(nn.Module):
    """The ``point`` decoder: mmseg's PointRend ``CascadeEncoderDecoder`` without its
    backbone: ``neck`` (:class:`FPN`), ``coarse_head`` (mmseg ``decode_head.0``,
    :class:`FPNHead`) and ``point_head`` (``decode_head.1``, :class:`PointHead`).
    :data:`MMSEG_KEY_MAP` maps mmseg's checkpoint keys to these names.

    Args:
        neck, coarse_head, point_head: the three built modules.
        train_cfg (dict): ``num_points``, ``oversample_ratio``, ``importance_sample_ratio``.
        test_cfg (dict): ``mode`` ("whole"), ``subdivision_steps``,
            ``subdivision_num_points``, ``scale_factor``.

    ``execute(feats)`` returns coarse logits (stride 4) in training and the
    subdivided logits (stride 4 / scale_factor ** subdivision_steps) in eval.
    The segmentor adds :meth:`extra_loss` (the point loss) to its pixel loss.
    """

    def __init__(self, neck, coarse_head, point_head, train_cfg=None, test_cfg=None):
        train = _settings(train_cfg, _TRAIN_CFG, "train_cfg")
        test = _settings(test_cfg, _TEST_CFG, "test_cfg")
        if test["mode"] != "whole":
            raise ConfigError(f"PointRendHead: test_cfg mode {test['mode']!r} is not supported; "
                              "use 'whole'")
        self.neck = neck
        self.coarse_head = coarse_head
        self.point_head = point_head
        self.num_classes = point_head.num_classes
        self.num_points = int(train["num_points"])
        self.oversample_ratio = train["oversample_ratio"]
        self.importance_sample_ratio = train["importance_sample_ratio"]
        self.subdivision_steps = int(test["subdivision_steps"])
        self.subdivision_num_points = int(test["subdivision_num_points"])
        self.scale_factor = test["scale_factor"]
        self.align_corners = point_head.align_corners
        self._cache = None

    @classmethod
    def build(cls, in_channels, num_classes, norm_cfg=None, ignore_index=255, train_cfg=None,
              test_cfg=None):
        """mmseg's ``pointrend_r50`` layout on backbone widths ``in_channels``."""
        neck = FPN(list(in_channels), 256, num_outs=4)
        coarse = FPNHead(in_channels=[256] * 4, in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=128, dropout_ratio=-1,
                         num_classes=num_classes, norm_cfg=norm_cfg, ignore_index=ignore_index)
        point = PointHead(in_channels=[256], in_index=[0], channels=256, num_fcs=3,
                          coarse_pred_each_layer=True, dropout_ratio=-1,
                          num_classes=num_classes, ignore_index=ignore_index)
        return cls(neck, coarse, point, train_cfg=train_cfg, test_cfg=test_cfg)

    def checkpoint_key_map(self, prefix=""):
        """(checkpoint prefix, model prefix) pairs: mmseg's cascade keys (``neck.``,
        ``decode_head.0.``, ``decode_head.1.``) to this head's, ``prefix`` being this head's
        key prefix in the model (the checkpoint loader applies them)."""
        return [(old, prefix + new) for old, new in MMSEG_KEY_MAP]

    def init_weights(self):
        for part in (self.neck, self.coarse_head, self.point_head):
            part.init_weights()
        return self

    def point_logits(self, fpn, coarse, points):
        """Point head logits at ``points`` (B, P, 2) from the FPN levels and coarse logits."""
        fine = self.point_head.fine_point_feats(fpn, points)
        return self.point_head(fine, point_sample(coarse, points, self.align_corners))

    def execute(self, feats):
        fpn = self.neck(feats)
        coarse = self.coarse_head(fpn)
        if self.is_training():
            self._cache = (fpn, coarse)
            return coarse
        self._cache = None
        return self.subdivide(fpn, coarse)

    def subdivide(self, fpn, coarse):
        """Subdivision inference (module doc)."""
        refined = coarse
        for _ in range(self.subdivision_steps):
            refined = resize(refined, scale_factor=self.scale_factor,
                             align_corners=self.align_corners)
            b, c, h, w = refined.shape
            index, points = get_points_test(refined, self.subdivision_num_points)
            logits = self.point_logits(fpn, coarse, points)
            refined = _scatter_points(refined.reshape((b, c, h * w)), index, logits)
            refined = refined.reshape((b, c, h, w))
        return refined

    def point_loss(self, logits, points, label):
        """Cross-entropy of point ``logits`` (B, K, P) against ``label`` (B, H, W) sampled
        (nearest) at ``points``, averaged over all points (ignored ones count as 0, mmseg's
        ``avg_non_ignore=False``), times the point head's ``loss_weight``."""
        target = nearest_sample(label, points, self.align_corners).stop_grad()  # (B, P)
        total = cross_entropy(logits.unsqueeze(3), target.unsqueeze(2),
                              ignore_index=self.point_head.ignore_index, reduction="sum")
        return total * (self.point_head.loss_weight / (target.shape[0] * target.shape[1]))

    def extra_loss(self, label):
        """Point loss of the last training forward, against ``label`` (B, H, W)."""
        if self._cache is None:
            if not self.is_training():  # a loss asked of an eval-mode forward: pixel loss only
                return jt.zeros((1,), dtype="float32")
            raise RuntimeError("PointRendHead.extra_loss needs a training-mode forward first.")
        fpn, coarse = self._cache
        self._cache = None
        points = get_points_train(coarse, self.num_points, self.oversample_ratio,
                                  self.importance_sample_ratio)
        return self.point_loss(self.point_logits(fpn, coarse, points), points, label)


def _scatter_points(flat, index, values):
    """``flat`` (B, C, N) with columns ``index`` (B, P) replaced by ``values`` (B, C, P)."""
    b, c, n = flat.shape
    p = index.shape[1]
    ones = jt.ones((b, p), dtype="float32")
    mask = ones.reindex_reduce("add", [b, n], ["i0", "@e0(i0,i1)"], extras=[index])
    placed = values.reindex_reduce("add", [b, c, n], ["i0", "i1", "@e0(i0,i2)"], extras=[index])
    mask = (mask > 0).float32().unsqueeze(1)
    return flat * (1.0 - mask) + placed * mask
