"""CCNet decode head: recurrent criss-cross attention (https://arxiv.org/abs/1811.11721).

Each position attends to the H + W - 1 positions of its own row and column: the
vertical branch scores the H positions of the column with the position itself
masked out (-inf on the diagonal), the horizontal branch the W positions of the
row (the position itself included), and one softmax runs over both branches
together, so the position is counted exactly once.
"""
import numpy as np
import jittor as jt
from jittor import nn

from ..errors import ConfigError
from ..layers import Conv2d
from .fcn_head import FCNHead

__all__ = ["Scale", "CrissCrossAttention", "criss_cross", "CCHead"]


class Scale(nn.Module):
    """A learnable scalar multiplier (mmcv ``Scale``), state key ``scale``."""

    def __init__(self, value=1.0):
        self.scale = jt.array(np.array([value], dtype=np.float32))

    def execute(self, x):
        return x * self.scale


def _neg_inf_diagonal(n):
    return jt.array(np.where(np.eye(n, dtype=bool), -np.inf, 0.0).astype(np.float32)).stop_grad()


def criss_cross(query, key, value):
    """Criss-cross aggregation of ``value`` (B, C, H, W) with (B, C', H, W) query/key."""
    b, c, h, w = value.shape
    # vertical: e_h[b, w, y, i] = <q[:, y, w], k[:, i, w]>, self position masked
    e_h = jt.matmul(query.transpose((0, 3, 2, 1)), key.transpose((0, 3, 1, 2)))
    e_h = (e_h + _neg_inf_diagonal(h)).transpose((0, 2, 1, 3))            # (B, H, W, H)
    # horizontal: e_w[b, y, x, j] = <q[:, y, x], k[:, y, j]>
    e_w = jt.matmul(query.transpose((0, 2, 3, 1)), key.transpose((0, 2, 1, 3)))  # (B, H, W, W)
    attn = nn.softmax(jt.concat([e_h, e_w], dim=3), dim=3)
    a_h, a_w = attn[:, :, :, :h], attn[:, :, :, h:]
    # out_h[b, c, y, x] = sum_i v[b, c, i, x] a_h[b, y, x, i]
    out_h = jt.matmul(value.transpose((0, 3, 1, 2)), a_h.transpose((0, 2, 3, 1)))  # (B, W, C, H)
    out_h = out_h.transpose((0, 2, 3, 1))
    # out_w[b, c, y, x] = sum_j v[b, c, y, j] a_w[b, y, x, j]
    out_w = jt.matmul(value.transpose((0, 2, 1, 3)), a_w.transpose((0, 1, 3, 2)))  # (B, H, C, W)
    out_w = out_w.transpose((0, 2, 1, 3))
    return out_h + out_w


class CrissCrossAttention(nn.Module):
    """mmcv's criss-cross attention block: ``x + gamma * criss_cross(q(x), k(x), v(x))``.

    ``query_conv`` / ``key_conv`` reduce to ``in_channels // 8``; ``gamma`` starts
    at 0, so a fresh block is the identity.
    """

    def __init__(self, in_channels):
        self.in_channels = in_channels
        inner = max(in_channels // 8, 1)
        self.query_conv = Conv2d(in_channels, inner, 1)
        self.key_conv = Conv2d(in_channels, inner, 1)
        self.value_conv = Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)

    def execute(self, x):
        out = criss_cross(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma(out) + x


class CCHead(FCNHead):
    """mmseg ``CCHead``: an :class:`FCNHead` with two convolutions and ``recurrence``
    passes of one shared criss-cross attention block (``cca``) between them.

    Args:
        recurrence (int): passes of ``cca`` (2 in CCNet).
        Others: :class:`FCNHead` (``kernel_size``, ``concat_input``, ``dilation``;
        ``num_convs`` is fixed at 2) and mmseg's ``BaseDecodeHead`` arguments.
    """

    def __init__(self, recurrence=2, **kwargs):
        if not isinstance(recurrence, int) or recurrence < 0:
            raise ConfigError(f"CCHead: recurrence must be an int >= 0, got {recurrence!r}")
        super().__init__(num_convs=2, **kwargs)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(self.channels)

    def execute(self, inputs):
        x = self.transform_inputs(inputs)
        out = self.convs[0](x)
        for _ in range(self.recurrence):
            out = self.cca(out)
        out = self.convs[1](out)
        if self.concat_input:
            out = self.conv_cat(jt.concat([x, out], dim=1))
        return self.cls_seg(out)
