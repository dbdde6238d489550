"""DeepLabV3+ head: ASPP on the last stage, fused with a stride-4 low-level branch."""
import jittor as jt
from jittor import nn

from ..layers import BatchNorm2d, Conv2d, Dropout, adaptive_avg_pool2d
from ..ops import resize
from .ham_head import init_decoder_weights

__all__ = ["ASPPConv", "AsppPooling", "ASPP", "DeepLabV3Plus"]


class ASPPConv(nn.Module):
    """Dilated 3x3 conv (no bias) -> BN -> ReLU, as ``block``."""

    def __init__(self, in_channels, out_channels, atrous_rate, norm_kwargs):
        self.block = nn.Sequential(
            Conv2d(in_channels, out_channels, 3, padding=atrous_rate, dilation=atrous_rate,
                   bias=False),
            BatchNorm2d(out_channels, **norm_kwargs),
            nn.ReLU(),
        )

    def execute(self, x):
        return self.block(x)


class _GlobalAvgPool(nn.Module):
    """Adaptive average pooling to 1x1."""

    def execute(self, x):
        return adaptive_avg_pool2d(x, 1)


class AsppPooling(nn.Module):
    """Image-level branch: global pool -> 1x1 conv -> BN -> ReLU, broadcast back
    (bilinear, align_corners=True, as in the reference)."""

    def __init__(self, in_channels, out_channels, norm_kwargs):
        self.gap = nn.Sequential(
            _GlobalAvgPool(),
            Conv2d(in_channels, out_channels, 1, bias=False),
            BatchNorm2d(out_channels, **norm_kwargs),
            nn.ReLU(),
        )

    def execute(self, x):
        return resize(self.gap(x), x.shape[2:], align_corners=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with 256-channel branches b0..b4 and ``project``."""

    def __init__(self, in_channels, atrous_rates, norm_kwargs, out_channels=256):
        self.b0 = nn.Sequential(
            Conv2d(in_channels, out_channels, 1, bias=False),
            BatchNorm2d(out_channels, **norm_kwargs),
            nn.ReLU(),
        )
        r1, r2, r3 = tuple(atrous_rates)
        self.b1 = ASPPConv(in_channels, out_channels, r1, norm_kwargs)
        self.b2 = ASPPConv(in_channels, out_channels, r2, norm_kwargs)
        self.b3 = ASPPConv(in_channels, out_channels, r3, norm_kwargs)
        self.b4 = AsppPooling(in_channels, out_channels, norm_kwargs)
        self.project = nn.Sequential(
            Conv2d(5 * out_channels, out_channels, 1, bias=False),
            BatchNorm2d(out_channels, **norm_kwargs),
            nn.ReLU(),
            Dropout(0.5, is_train=True),
        )

    def execute(self, x):
        branches = [self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)]
        return self.project(jt.concat(branches, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ decode head.

    Args:
        in_channels (Sequence[int]): channels of the 4 backbone stages (only the
            first and the last are used).
        num_classes (int): number of classes.
        bn_eps, bn_momentum, sync_bn: BatchNorm settings.

    ``execute(feats)`` takes the 4 features and returns logits at the stride of
    ``feats[0]``. ASPP rates are 12/24/36; the ASPP output is upsampled with
    align_corners=True, as in the reference.
    """

    def __init__(self, in_channels=(256, 512, 1024, 2048), num_classes=40, bn_eps=1e-3,
                 bn_momentum=0.1, sync_bn=True):
        self.num_classes = num_classes
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        norm_kwargs = dict(eps=bn_eps, momentum=bn_momentum, sync=sync_bn)
        self.aspp = ASPP(in_channels[3], (12, 24, 36), norm_kwargs)
        self.low_level = nn.Sequential(
            Conv2d(in_channels[0], 48, 3, padding=1),
            BatchNorm2d(48, **norm_kwargs),
            nn.ReLU(),
        )
        self.block = nn.Sequential(
            Conv2d(256 + 48, 256, 3, padding=1),
            BatchNorm2d(256, **norm_kwargs),
            nn.ReLU(),
            Dropout(0.1, is_train=True),
            Conv2d(256, num_classes, 1),
        )

    def execute(self, feats):
        low = self.low_level(feats[0])
        high = resize(self.aspp(feats[3]), low.shape[2:], align_corners=True)
        return self.block(jt.concat([high, low], dim=1))

    def init_weights(self):
        """Reference decoder init (Kaiming-normal convs, BN weight 1 / bias 0)."""
        return init_decoder_weights(self, self.bn_eps, self.bn_momentum)
