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
  ``scale_factor`` (bilinear), pick the ``subdivision_num_points`` most uncertain
  cells, re-predict them with the point head, write them back.

Uncertainty is ``second-best minus best`` logit (higher = more uncertain).
Points are (x, y) in [0, 1] over the image, sampled with ``align_corners=False``.
"""
import math

import numpy as np
import jittor as jt
from jittor import nn

from ..layers import Conv2d, ConvModule
from ..ops import resize
from ..losses import cross_entropy
from .ham_head import configure_norms, init_decoder_weights

__all__ = ["point_sample", "nearest_sample", "calculate_uncertainty", "get_points_train",
           "get_points_test", "resize_nearest", "FPN", "FPNHead", "PointHead", "PointRendHead"]


# ----------------------------------------------------------------------------- point ops

def _gather_points(x, index):
    """(B, C, H*W) gathered at int32 (B, P) flat indices -> (B, C, P)."""
    b, c, _ = x.shape
    return x.reindex([b, c, index.shape[1]], ["i0", "i1", "@e0(i0,i2)"], extras=[index])


def point_sample(x, points, align_corners=False):
    """Bilinear samples of ``x`` (B, C, H, W) at ``points`` (B, P, 2) -> (B, C, P).

    ``grid_sample(x, 2 * points - 1)`` with zero padding, written as four gathers:
    gradients reach ``x`` (the points are constants).
    """
    b, c, h, w = x.shape
    points = points.stop_grad()
    px, py = points[:, :, 0], points[:, :, 1]
    if align_corners:
        fx, fy = px * (w - 1), py * (h - 1)
    else:
        fx, fy = px * w - 0.5, py * h - 0.5
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


def nearest_sample(label, points):
    """Nearest samples of an integer map (B, H, W) at ``points`` (B, P, 2) -> (B, P)."""
    b, h, w = label.shape
    ix = jt.floor(points[:, :, 0] * w).clamp(0, w - 1)
    iy = jt.floor(points[:, :, 1] * h).clamp(0, h - 1)
    index = (iy * w + ix).int32()
    flat = label.reshape((b, 1, h * w))
    return _gather_points(flat, index)[:, 0]


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
    """mmseg FPN neck without norms or activations: 1x1 laterals, nearest top-down
    sums, 3x3 output convs (all with bias)."""

    def __init__(self, in_channels, out_channels=256):
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList([
            ConvModule(c, out_channels, 1, norm=False, act=None) for c in self.in_channels])
        self.fpn_convs = nn.ModuleList([
            ConvModule(out_channels, out_channels, 3, padding=1, norm=False, act=None)
            for _ in self.in_channels])

    def execute(self, feats):
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[2:])
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class _Upsample2x(nn.Module):
    def __init__(self, align_corners=False):
        self.align_corners = align_corners

    def execute(self, x):
        return resize(x, (x.shape[2] * 2, x.shape[3] * 2), align_corners=self.align_corners)


class FPNHead(nn.Module):
    """mmseg ``FPNHead`` (Semantic FPN): per level, 3x3 ConvModules with x2
    upsampling down to the first stride, summed, then ``conv_seg``."""

    def __init__(self, in_channels, num_classes, channels=128, feature_strides=(4, 8, 16, 32),
                 bn_eps=1e-3, bn_momentum=0.1, sync_bn=True, align_corners=False):
        self.align_corners = align_corners
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers = []
            for k in range(length):
                conv = ConvModule(in_channels[i] if k == 0 else channels, channels, 3, padding=1,
                                  bn_eps=bn_eps)
                layers.append(configure_norms(conv, momentum=bn_momentum, sync=sync_bn))
                if stride != feature_strides[0]:
                    layers.append(_Upsample2x(align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.conv_seg = Conv2d(channels, num_classes, 1)

    def execute(self, feats):
        out = self.scale_heads[0](feats[0])
        for i in range(1, len(self.scale_heads)):
            out = out + resize(self.scale_heads[i](feats[i]), out.shape[2:],
                               align_corners=self.align_corners)
        return self.conv_seg(out)


# ----------------------------------------------------------------------------- point part

class PointHead(nn.Module):
    """mmseg ``PointHead``: ``num_fcs`` shared point-wise layers on [fine, coarse]
    features (coarse logits appended again after each layer), then ``fc_seg``.

    Points are laid out as (B, C, P, 1) so the point-wise layers are 1x1 convs.
    """

    def __init__(self, in_channels, num_classes, channels=256, num_fcs=3,
                 coarse_pred_each_layer=True, bn_eps=1e-3, bn_momentum=0.1, sync_bn=True):
        self.coarse_pred_each_layer = coarse_pred_each_layer
        self.fcs = nn.ModuleList()
        width = in_channels + num_classes
        for _ in range(num_fcs):
            fc = ConvModule(width, channels, 1, bn_eps=bn_eps)
            self.fcs.append(configure_norms(fc, momentum=bn_momentum, sync=sync_bn))
            width = channels + (num_classes if coarse_pred_each_layer else 0)
        self.fc_seg = Conv2d(width, num_classes, 1)

    def execute(self, fine, coarse):
        """(B, Cf, P) and (B, K, P) point features -> (B, K, P) point logits."""
        fine, coarse = fine.unsqueeze(3), coarse.unsqueeze(3)
        x = jt.concat([fine, coarse], dim=1)
        for fc in self.fcs:
            x = fc(x)
            if self.coarse_pred_each_layer:
                x = jt.concat([x, coarse], dim=1)
        return self.fc_seg(x)[:, :, :, 0]


class PointRendHead(nn.Module):
    """The ``point`` decoder: FPN neck + FPN coarse head + point head (see module doc).

    ``execute(feats)`` returns coarse logits (stride 4) in training and the
    subdivided logits (stride 4 / scale_factor ** subdivision_steps) in eval.
    The segmentor adds :meth:`extra_loss` (the point loss) to its pixel loss.
    """

    def __init__(self, in_channels, num_classes, fpn_channels=256, coarse_channels=128,
                 point_channels=256, num_fcs=3, num_points=2048, oversample_ratio=3,
                 importance_sample_ratio=0.75, subdivision_steps=2, subdivision_num_points=8196,
                 scale_factor=2, ignore_index=255, loss_weight=1.0, bn_eps=1e-3,
                 bn_momentum=0.1, sync_bn=True, align_corners=False):
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points
        self.scale_factor = scale_factor
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self.align_corners = align_corners
        self.bn_eps, self.bn_momentum = bn_eps, bn_momentum
        norm = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, sync_bn=sync_bn)
        self.neck = FPN(self.in_channels, fpn_channels)
        self.coarse_head = FPNHead([fpn_channels] * len(self.in_channels), num_classes,
                                   channels=coarse_channels, align_corners=align_corners, **norm)
        self.point_head = PointHead(fpn_channels, num_classes, channels=point_channels,
                                    num_fcs=num_fcs, **norm)
        self._cache = None

    def init_weights(self):
        init_decoder_weights(self, self.bn_eps, self.bn_momentum)
        # mmseg: normal(std=0.001) for the point classifier, as for every ``cls_seg``
        fc = self.point_head.fc_seg
        fc.weight.assign(jt.randn(fc.weight.shape) * 0.001)
        fc.bias.assign(jt.zeros(fc.bias.shape))
        return self

    def _point_logits(self, fine_map, coarse_map, points):
        fine = point_sample(fine_map, points, self.align_corners)
        coarse = point_sample(coarse_map, points, self.align_corners)
        return self.point_head(fine, coarse)

    def execute(self, feats):
        fpn = self.neck(feats)
        coarse = self.coarse_head(fpn)
        if self.is_training():
            self._cache = (fpn[0], coarse)
            return coarse
        self._cache = None
        return self.subdivide(fpn[0], coarse)

    def subdivide(self, fine_map, coarse):
        """Subdivision inference (module doc)."""
        refined = coarse
        for _ in range(self.subdivision_steps):
            h, w = refined.shape[2:]
            refined = resize(refined, (h * self.scale_factor, w * self.scale_factor),
                             align_corners=self.align_corners)
            b, c, h, w = refined.shape
            index, points = get_points_test(refined, self.subdivision_num_points)
            point_logits = self._point_logits(fine_map, coarse, points)
            refined = _scatter_points(refined.reshape((b, c, h * w)), index, point_logits)
            refined = refined.reshape((b, c, h, w))
        return refined

    def extra_loss(self, label):
        """Point loss of the last training forward, against ``label`` (B, H, W)."""
        if self._cache is None:
            if not self.is_training():  # a loss asked of an eval-mode forward: pixel loss only
                return jt.zeros((1,), dtype="float32")
            raise RuntimeError("PointRendHead.extra_loss needs a training-mode forward first.")
        fine_map, coarse = self._cache
        self._cache = None
        points = get_points_train(coarse, self.num_points, self.oversample_ratio,
                                  self.importance_sample_ratio)
        logits = self._point_logits(fine_map, coarse, points)          # (B, K, P)
        target = nearest_sample(label, points).stop_grad()             # (B, P)
        loss = cross_entropy(logits.unsqueeze(3), target.unsqueeze(2), ignore_index=self.ignore_index)
        return loss * self.loss_weight


def _scatter_points(flat, index, values):
    """``flat`` (B, C, N) with columns ``index`` (B, P) replaced by ``values`` (B, C, P)."""
    b, c, n = flat.shape
    p = index.shape[1]
    ones = jt.ones((b, p), dtype="float32")
    mask = ones.reindex_reduce("add", [b, n], ["i0", "@e0(i0,i1)"], extras=[index])
    placed = values.reindex_reduce("add", [b, c, n], ["i0", "i1", "@e0(i0,i2)"], extras=[index])
    mask = (mask > 0).float32().unsqueeze(1)
    return flat * (1.0 - mask) + placed * mask
