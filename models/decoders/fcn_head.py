"""FCN heads.

* :class:`FCNHead`: mmseg's ``FCNHead`` (``num_convs`` dilated ConvModules, the
  input optionally concatenated back by ``conv_cat``), the base of ``CCHead``.
* :class:`DFormerFCNHead`: the DFormer reference's own FCN head, used as the
  fallback decode head ("FCN-32s", on the last backbone stage) and as the
  auxiliary head (on backbone stage index 2); its keys (``conv.0``,
  ``classifier``) are those of the released DFormer checkpoints.
"""
import jittor as jt
from jittor import nn

from ..errors import ConfigError
from ..layers import BatchNorm2d, Conv2d
from .decode_head import DecodeHead
from .ham_head import init_decoder_weights

__all__ = ["FCNHead", "DFormerFCNHead"]


class FCNHead(DecodeHead):
    """mmseg ``FCNHead``: ``convs`` (``num_convs`` k x k ConvModules with ``dilation``),
    ``conv_cat`` on [input, convs output] when ``concat_input``, then ``conv_seg``.

    Args:
        num_convs (int): convolutions in ``convs`` (0: identity, needs
            ``in_channels == channels``).
        kernel_size (int): their kernel; padding ``(kernel_size // 2) * dilation``.
        concat_input (bool): concatenate the input before ``conv_seg``.
        dilation (int): dilation of the ``convs``.
        Others: :class:`~models.decoders.decode_head.DecodeHead` (mmseg's
        ``BaseDecodeHead`` arguments).
    """

    def __init__(self, num_convs=2, kernel_size=3, concat_input=True, dilation=1, **kwargs):
        owner = type(self).__name__
        if not isinstance(num_convs, int) or num_convs < 0:
            raise ConfigError(f"{owner}: num_convs must be an int >= 0, got {num_convs!r}")
        if not isinstance(dilation, int) or dilation < 1:
            raise ConfigError(f"{owner}: dilation must be an int >= 1, got {dilation!r}")
        super().__init__(**kwargs)
        self.num_convs = num_convs
        self.kernel_size = kernel_size
        self.concat_input = concat_input
        self.dilation = dilation
        if num_convs == 0 and self.in_channels != self.channels:
            raise ConfigError(f"{owner}: num_convs=0 needs in_channels == channels, got "
                              f"{self.in_channels} and {self.channels}")
        pad = (kernel_size // 2) * dilation
        convs = [self.conv_module(self.in_channels if i == 0 else self.channels, self.channels,
                                  kernel_size, padding=pad, dilation=dilation)
                 for i in range(num_convs)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        if concat_input:
            self.conv_cat = self.conv_module(self.in_channels + self.channels, self.channels,
                                             kernel_size, padding=kernel_size // 2)

    def execute(self, inputs):
        x = self.transform_inputs(inputs)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(jt.concat([x, out], dim=1))
        return self.cls_seg(out)


class DFormerFCNHead(nn.Module):
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
