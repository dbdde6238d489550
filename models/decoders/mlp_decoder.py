"""All-MLP decoder (SegFormer style), the reference's ``MLPDecoder.DecoderHead``."""
import jittor as jt
from jittor import nn

from ..layers import BatchNorm2d, Conv2d, Dropout2d
from ..ops import resize
from .ham_head import init_decoder_weights

__all__ = ["MLP", "MLPDecoder"]


class MLP(nn.Module):
    """Per-pixel linear embedding: (B, C, H, W) -> (B, H*W, E)."""

    def __init__(self, input_dim=2048, embed_dim=768):
        self.proj = nn.Linear(input_dim, embed_dim)

    def execute(self, x):
        b, c = x.shape[:2]
        tokens = x.reshape((b, c, -1)).transpose((0, 2, 1))
        return self.proj(tokens)


class MLPDecoder(nn.Module):
    """Embed each of the 4 stages with a Linear, upsample to stride 4, fuse, classify.

    Args:
        in_channels (Sequence[int]): channels of the 4 backbone stages.
        num_classes (int): number of classes.
        dropout_ratio (float): Dropout2d probability before ``linear_pred``.
        embed_dim (int): embedding width (config ``decoder_embed_dim``).
        bn_eps, bn_momentum, sync_bn: BatchNorm settings of ``linear_fuse``.
        align_corners (bool): bilinear resizing mode.

    ``execute(feats)`` takes the 4 features and returns logits at stride 4.
    """

    def __init__(self, in_channels=(64, 128, 320, 512), num_classes=40, dropout_ratio=0.1,
                 embed_dim=768, bn_eps=1e-3, bn_momentum=0.1, sync_bn=True, align_corners=False):
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        self.dropout = Dropout2d(dropout_ratio, is_train=True) if dropout_ratio > 0 else None
        c1, c2, c3, c4 = self.in_channels
        self.linear_c4 = MLP(c4, embed_dim)
        self.linear_c3 = MLP(c3, embed_dim)
        self.linear_c2 = MLP(c2, embed_dim)
        self.linear_c1 = MLP(c1, embed_dim)
        self.linear_fuse = nn.Sequential(
            Conv2d(embed_dim * 4, embed_dim, 1),
            BatchNorm2d(embed_dim, eps=bn_eps, momentum=bn_momentum, sync=sync_bn),
            nn.ReLU(),
        )
        self.linear_pred = Conv2d(embed_dim, num_classes, 1)

    def execute(self, feats):
        c1, c2, c3, c4 = feats
        size = c1.shape[2:]
        outs = []
        for x, mlp in ((c4, self.linear_c4), (c3, self.linear_c3),
                       (c2, self.linear_c2), (c1, self.linear_c1)):
            b, _, h, w = x.shape
            y = mlp(x).transpose((0, 2, 1)).reshape((b, -1, h, w))
            outs.append(resize(y, size, align_corners=self.align_corners))
        x = self.linear_fuse(jt.concat(outs, dim=1))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear_pred(x)

    def init_weights(self):
        """Reference decoder init (Kaiming-normal convs, BN weight 1 / bias 0; Linear untouched)."""
        return init_decoder_weights(self, self.bn_eps, self.bn_momentum)
