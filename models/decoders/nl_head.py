"""Non-local decode head: the LightHamHead layout with a non-local block
(embedded Gaussian, https://arxiv.org/abs/1711.07971) in place of the Hamburger."""
import math

import jittor as jt
from jittor import nn

from ..layers import ConvModule
from .ham_head import BaseDecodeHead, configure_norms

__all__ = ["NonLocal2d", "NLHead"]


class NonLocal2d(nn.Module):
    """2-D non-local block, embedded-Gaussian mode, no sub-sampling.

    ``g``, ``theta``, ``phi``: 1x1 convs with bias to ``in_channels // reduction``;
    ``conv_out``: 1x1 conv (+ BN when ``norm``) back to ``in_channels``;
    output ``x + conv_out(softmax(theta^T phi [/ sqrt(inter)]) g)``.
    """

    def __init__(self, in_channels, reduction=2, use_scale=True, norm=True, bn_eps=1e-3,
                 bn_momentum=0.1, sync_bn=True):
        self.in_channels = in_channels
        self.reduction = reduction
        self.use_scale = use_scale
        self.inter_channels = max(in_channels // reduction, 1)
        inter = self.inter_channels
        self.g = ConvModule(in_channels, inter, 1, norm=False, act=None)
        self.conv_out = configure_norms(
            ConvModule(inter, in_channels, 1, norm=norm, act=None, bn_eps=bn_eps),
            momentum=bn_momentum, sync=sync_bn)
        self.theta = ConvModule(in_channels, inter, 1, norm=False, act=None)
        self.phi = ConvModule(in_channels, inter, 1, norm=False, act=None)

    def execute(self, x):
        b, c, h, w = x.shape
        inter = self.inter_channels
        g = self.g(x).reshape((b, inter, h * w))
        theta = self.theta(x).reshape((b, inter, h * w))
        phi = self.phi(x).reshape((b, inter, h * w))
        scale = math.sqrt(inter)
        ys = []
        for i in range(b):
            # (N, inter) @ (inter, N) -> (N, N) affinities over key positions
            aff = jt.matmul(theta[i].transpose(), phi[i])
            if self.use_scale:
                aff = aff / scale
            aff = nn.softmax(aff, dim=1)
            ys.append(jt.matmul(g[i], aff.transpose()))     # (inter, N)
        y = jt.stack(ys, dim=0).reshape((b, inter, h, w))
        return x + self.conv_out(y)


class NLHead(BaseDecodeHead):
    """Non-local decode head.

    Selected features are resized to the first one and concatenated,
    ``squeeze`` (1x1 ConvModule) maps them to ``channels``, then the non-local
    block, ``align`` (1x1 ConvModule) and ``conv_seg``. ``execute(feats)``
    takes the 4 backbone features and returns logits at the stride of
    ``feats[in_index[0]]``. See :class:`BaseDecodeHead` for the arguments.
    """

    def __init__(self, in_channels, num_classes, channels=512, in_index=(1, 2, 3),
                 dropout_ratio=0.1, bn_eps=1e-3, bn_momentum=0.1, sync_bn=True,
                 align_corners=False, reduction=2, use_scale=True):
        super().__init__(in_channels, channels, num_classes, in_index=in_index,
                         dropout_ratio=dropout_ratio, bn_eps=bn_eps, bn_momentum=bn_momentum,
                         sync_bn=sync_bn, align_corners=align_corners)
        self.squeeze = self._conv_module(sum(self.in_channels), channels, 1)
        self.nl_block = NonLocal2d(channels, reduction=reduction, use_scale=use_scale,
                                   bn_eps=bn_eps, bn_momentum=bn_momentum, sync_bn=sync_bn)
        self.align = self._conv_module(channels, channels, 1)

    def execute(self, feats):
        x = self.squeeze(self.fuse_inputs(feats))
        x = self.nl_block(x)
        return self.cls_seg(self.align(x))
