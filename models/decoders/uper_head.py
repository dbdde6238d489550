"""UPerNet head: pyramid pooling on the last stage plus an FPN over all stages.

Unified Perceptual Parsing for Scene Understanding (https://arxiv.org/abs/1807.10221).
"""
import jittor as jt
from jittor import nn

from ..layers import BatchNorm2d, Conv2d, adaptive_avg_pool2d
from ..ops import resize
from .ham_head import init_decoder_weights

__all__ = ["AdaptiveAvgPool2d", "PPM", "UPerHead"]


class AdaptiveAvgPool2d(nn.Module):
    """Module form of :func:`models.layers.adaptive_avg_pool2d` (PyTorch bins)."""

    def __init__(self, output_size):
        self.output_size = output_size

    def execute(self, x):
        return adaptive_avg_pool2d(x, self.output_size)


def _conv_bn_relu(in_channels, out_channels, kernel_size, norm_kwargs):
    """Sequential(conv with bias, BN, ReLU) with the reference's indices 0/1/2."""
    return nn.Sequential(
        Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        BatchNorm2d(out_channels, **norm_kwargs),
        nn.ReLU(),
    )


class PPM(nn.ModuleList):
    """Pooling pyramid: per scale, adaptive pool -> 1x1 conv -> BN -> ReLU, upsampled back.

    Returns the list of upsampled branch outputs (the input itself not included).
    """

    def __init__(self, pool_scales, in_channels, channels, norm_kwargs, align_corners=False):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.align_corners = align_corners
        for scale in self.pool_scales:
            self.append(nn.Sequential(
                AdaptiveAvgPool2d(scale),
                Conv2d(in_channels, channels, 1),
                BatchNorm2d(channels, **norm_kwargs),
                nn.ReLU(),
            ))

    def execute(self, x):
        size = x.shape[2:]
        return [resize(branch(x), size, align_corners=self.align_corners) for branch in self]


class UPerHead(nn.Module):
    """UPerNet decode head.

    Args:
        in_channels (Sequence[int]): channels of the 4 backbone stages.
        num_classes (int): number of classes.
        channels (int): internal width (512 in the reference builder).
        pool_scales (Sequence[int]): PPM output sizes.
        bn_eps, bn_momentum, sync_bn: BatchNorm settings.
        align_corners (bool): bilinear resizing mode.

    ``execute(feats)`` takes the 4 features and returns logits at the stride of
    ``feats[0]``. There is no dropout before ``conv_seg`` (as in the reference).
    """

    def __init__(self, in_channels=(96, 192, 384, 768), num_classes=40, channels=512,
                 pool_scales=(1, 2, 3, 6), bn_eps=1e-3, bn_momentum=0.1, sync_bn=True,
                 align_corners=False):
        self.in_channels = list(in_channels)
        self.channels = channels
        self.align_corners = align_corners
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        norm_kwargs = dict(eps=bn_eps, momentum=bn_momentum, sync=sync_bn)
        self.psp_modules = PPM(pool_scales, self.in_channels[-1], channels, norm_kwargs,
                               align_corners=align_corners)
        self.bottleneck = _conv_bn_relu(self.in_channels[-1] + len(pool_scales) * channels,
                                        channels, 3, norm_kwargs)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for c in self.in_channels[:-1]:
            self.lateral_convs.append(_conv_bn_relu(c, channels, 1, norm_kwargs))
            self.fpn_convs.append(_conv_bn_relu(channels, channels, 3, norm_kwargs))
        self.fpn_bottleneck = _conv_bn_relu(len(self.in_channels) * channels, channels, 3,
                                            norm_kwargs)
        self.conv_seg = Conv2d(channels, num_classes, 1)

    def psp_forward(self, feats):
        """PPM on the last stage, concatenated with it, then ``bottleneck``."""
        x = feats[-1]
        return self.bottleneck(jt.concat([x] + self.psp_modules(x), dim=1))

    def execute(self, feats):
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(feats))
        levels = len(laterals)
        for i in range(levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], laterals[i - 1].shape[2:], align_corners=self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(levels - 1)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size, align_corners=self.align_corners) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(jt.concat(outs, dim=1)))

    def init_weights(self):
        """Reference decoder init (Kaiming-normal convs, BN weight 1 / bias 0)."""
        return init_decoder_weights(self, self.bn_eps, self.bn_momentum)
