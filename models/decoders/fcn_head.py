"""FCN head: one conv block and a 1x1 classifier.

Used as the fallback decode head ("FCN-32s", on the last backbone stage) and as
the auxiliary head (on backbone stage index 2).
"""
from jittor import nn

from ..layers import BatchNorm2d, Conv2d
from .ham_head import init_decoder_weights

__all__ = ["FCNHead"]


class FCNHead(nn.Module):
    """Conv(k x k, with bias) -> BN -> ReLU -> 1x1 classifier.

    Args:
        in_channels (int): input channels.
        channels (int | None): hidden width, ``in_channels // 4`` when None.
        kernel_size (int): kernel of the first conv.
        dilation (int): only enlarges the padding to ``(k // 2) * dilation``;
            the conv itself is not dilated (as in the reference).
        num_classes (int): number of classes.
        in_index (int): feature picked when ``execute`` receives a list.
        bn_eps, bn_momentum, sync_bn: BatchNorm settings.

    ``execute(x)`` accepts either a single (B, C, H, W) map (the auxiliary-head
    use) or the list of backbone features, from which ``x[in_index]`` is taken.
    Returns logits at the input map's resolution.
    """

    def __init__(self, in_channels=384, channels=None, kernel_size=3, dilation=1, num_classes=40,
                 in_index=-1, bn_eps=1e-3, bn_momentum=0.1, sync_bn=True):
        self.in_channels = in_channels
        self.channels = channels or in_channels // 4
        self.kernel_size = kernel_size
        self.in_index = in_index
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        pad = (kernel_size // 2) * dilation
        self.conv = nn.Sequential(
            Conv2d(in_channels, self.channels, kernel_size, padding=pad),
            BatchNorm2d(self.channels, eps=bn_eps, momentum=bn_momentum, sync=sync_bn),
            nn.ReLU(),
        )
        self.classifier = Conv2d(self.channels, num_classes, 1)

    def execute(self, x):
        if isinstance(x, (list, tuple)):
            x = x[self.in_index]
        return self.classifier(self.conv(x))

    def init_weights(self):
        """Reference decoder init (Kaiming-normal convs, BN weight 1 / bias 0)."""
        return init_decoder_weights(self, self.bn_eps, self.bn_momentum)
