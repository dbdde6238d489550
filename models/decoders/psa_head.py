"""PSANet decode head: point-wise spatial attention (https://hszhao.github.io/papers/eccv18_psanet.pdf).

Every position p predicts, from its own feature, a ``mask_h x mask_w`` window of
attention weights centred on itself. The *PSA mask* op turns that window-shaped
prediction (B, mask_h*mask_w, H, W) into a dense (B, H*W, H, W) map over all
position pairs, with zeros where the other position falls outside the window:

* ``collect``: entry ``[q, p]`` is the weight position p gives to q
  (p gathers information from its neighbours);
* ``distribute``: entry ``[p, q]`` is the weight with which p sends its own
  information to q.

Both are pure index rearrangements, so :func:`psa_mask_index` precomputes, for an
(H, W, mask) combination, which input element lands in each output element
(or the zero slot), and :func:`psa_mask` is one gather with that index. The
aggregated feature is ``x (C, HW) @ softmax(mask(y)) (HW, HW)``, as in mmseg.
"""
import functools

import numpy as np
import jittor as jt
from jittor import nn

from ..errors import ConfigError
from ..ops import resize
from ..layers import Conv2d
from .decode_head import DecodeHead

__all__ = ["psa_mask_index", "psa_mask", "PSAHead", "default_mask_size"]

PSA_TYPES = ("collect", "distribute", "bi-direction")


@functools.lru_cache(maxsize=32)
def psa_mask_index(height, width, mask_h, mask_w, psa_type):
    """int32 index (H*W*H*W,) into the flattened (mask_h*mask_w*H*W + 1) input.

    Output element ``o * H*W + p`` (channel o, position p of the (H*W, H, W) map)
    reads input element ``index[o * H*W + p]``; the last input slot is a zero.
    """
    if psa_type not in ("collect", "distribute"):
        raise ValueError(f"psa_type must be 'collect' or 'distribute', got {psa_type!r}")
    hw = height * width
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    index = np.full(hw * hw, mask_h * mask_w * hw, dtype=np.int64)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    here = (rows * width + cols).ravel()
    rows, cols = rows.ravel(), cols.ravel()
    for i in range(mask_h):
        other_r = rows + i - half_h
        ok_r = (other_r >= 0) & (other_r < height)
        for j in range(mask_w):
            other_c = cols + j - half_w
            ok = ok_r & (other_c >= 0) & (other_c < width)
            p = here[ok]
            q = other_r[ok] * width + other_c[ok]
            source = (i * mask_w + j) * hw + p
            target = q * hw + p if psa_type == "collect" else p * hw + q
            index[target] = source
    if index.max() >= 2 ** 31 - 1:
        raise ValueError(f"PSA mask of {height}x{width} with a {mask_h}x{mask_w} window is too large.")
    return index.astype(np.int32)


def psa_mask(y, mask_size, psa_type):
    """The PSA mask op: (B, mask_h*mask_w, H, W) -> (B, H*W, H, W)."""
    b, m, h, w = y.shape
    mask_h, mask_w = mask_size
    if m != mask_h * mask_w:
        raise ValueError(f"psa_mask: {m} channels for a {mask_h}x{mask_w} mask")
    index = jt.array(psa_mask_index(h, w, mask_h, mask_w, psa_type)).stop_grad()
    flat = jt.concat([y.reshape((b, m * h * w)), jt.zeros((b, 1), dtype=y.dtype)], dim=1)
    out = flat.reindex([b, h * w * h * w], ["i0", "@e0(i1)"], extras=[index])
    return out.reshape((b, h * w, h, w))


def default_mask_size(cfg, stride=8, shrink_factor=2):
    """Window covering the whole feature map at the config's evaluation size.

    The head runs at ``stride`` and shrinks by ``shrink_factor``; a window of
    ``2 n - 1`` reaches every position of an ``n``-long side (mmseg's 97 x 97 for
    its 769 x 769 Cityscapes crops follows the same rule).
    """
    height = int(cfg.get("image_height", 480))
    width = int(cfg.get("image_width", 640))
    sides = []
    for size in (height, width):
        n = -(-size // stride)
        n = -(-n // shrink_factor)
        sides.append(2 * n - 1)
    return tuple(sides)


class PSAHead(DecodeHead):
    """mmseg ``PSAHead`` (point-wise spatial attention).

    ``reduce`` (1x1) -> shrink by ``shrink_factor`` -> ``attention`` (1x1
    ConvModule, 1x1 conv to mask_h*mask_w) -> PSA mask -> softmax over the
    source positions -> aggregation; the ``bi-direction`` type has a second
    (``reduce_p`` / ``attention_p``) distribute branch. ``proj`` (1x1 ConvModule
    with padding 1, as in mmseg: its output has a one-pixel border of
    ``act(norm(bias))``) maps back to the input width and is resized to the
    input size, concatenated with the input and fused by ``bottleneck`` (3x3)
    before ``conv_seg``.

    Args:
        mask_size (tuple[int, int]): attention window (mask_h, mask_w); required.
        psa_type (str): "collect", "distribute" or "bi-direction".
        compact (bool): predict the dense (H*W) attention directly (only when
            the window covers the map exactly, mask = (H, W)), no mask op.
        shrink_factor (int): spatial reduction before the attention.
        normalization_factor (float | None): the aggregation is divided by it;
            None means mask_h * mask_w.
        psa_softmax (bool): softmax over the source positions.
        Others: :class:`~models.decoders.decode_head.DecodeHead`.
    """

    def __init__(self, mask_size, psa_type="bi-direction", compact=False, shrink_factor=2,
                 normalization_factor=1.0, psa_softmax=True, **kwargs):
        owner = type(self).__name__
        if psa_type not in PSA_TYPES:
            raise ConfigError(f"{owner}: psa_type must be one of {PSA_TYPES}, got {psa_type!r}")
        if (not isinstance(mask_size, (list, tuple)) or len(mask_size) != 2
                or not all(isinstance(v, int) and v > 0 for v in mask_size)):
            raise ConfigError(f"{owner}: mask_size must be two positive ints (mask_h, mask_w), "
                              f"got {mask_size!r}")
        if not isinstance(shrink_factor, int) or shrink_factor < 1:
            raise ConfigError(f"{owner}: shrink_factor must be an int >= 1, got {shrink_factor!r}")
        super().__init__(**kwargs)
        self.psa_type = psa_type
        self.mask_size = (int(mask_size[0]), int(mask_size[1]))
        self.compact = bool(compact)
        self.shrink_factor = shrink_factor
        mask_channels = self.mask_size[0] * self.mask_size[1]
        self.normalization_factor = float(mask_channels if normalization_factor is None
                                          else normalization_factor)
        self.psa_softmax = bool(psa_softmax)
        width, channels = self.in_channels, self.channels
        self.reduce = self.conv_module(width, channels, 1)
        self.attention = nn.Sequential(self.conv_module(channels, channels, 1),
                                       Conv2d(channels, mask_channels, 1, bias=False))
        if psa_type == "bi-direction":
            self.reduce_p = self.conv_module(width, channels, 1)
            self.attention_p = nn.Sequential(self.conv_module(channels, channels, 1),
                                             Conv2d(channels, mask_channels, 1, bias=False))
        branches = 2 if psa_type == "bi-direction" else 1
        self.proj = self.conv_module(channels * branches, width, 1, padding=1)
        self.bottleneck = self.conv_module(width * 2, channels, 3, padding=1)

    def _shrink(self, x):
        """mmseg's rule: both sides odd-divisible -> ceil with align_corners, else floor."""
        h, w = x.shape[2:]
        f = self.shrink_factor
        if f == 1:
            return x, self.align_corners
        if h % f and w % f:
            size, corners = ((h - 1) // f + 1, (w - 1) // f + 1), True
        else:
            size, corners = (h // f, w // f), False
        return resize(x, size, align_corners=corners), corners

    def _attend(self, x, attention, psa_type, transpose_compact):
        """Aggregate ``x`` (B, C, h, w) with the point-wise attention predicted from it."""
        b, c, h, w = x.shape
        y = attention(x)
        if self.compact:
            if (h, w) != self.mask_size:
                raise ValueError(f"compact PSA needs a {self.mask_size} feature map, got {(h, w)}")
            if transpose_compact:
                y = y.reshape((b, h * w, h * w)).transpose((0, 2, 1)).reshape((b, h * w, h, w))
        else:
            y = psa_mask(y, self.mask_size, psa_type)
        if self.psa_softmax:
            y = nn.softmax(y, dim=1)
        out = nn.bmm(x.reshape((b, c, h * w)), y.reshape((b, h * w, h * w)))
        return out.reshape((b, c, h, w)) * (1.0 / self.normalization_factor)

    def execute(self, feats):
        x = self.transform_inputs(feats)
        identity = x
        if self.psa_type in ("collect", "distribute"):
            out, corners = self._shrink(self.reduce(x))
            out = self._attend(out, self.attention, self.psa_type, self.psa_type == "collect")
        else:
            x_col, corners = self._shrink(self.reduce(x))
            x_dis, _ = self._shrink(self.reduce_p(x))
            out = jt.concat([self._attend(x_col, self.attention, "collect", False),
                             self._attend(x_dis, self.attention_p, "distribute", True)], dim=1)
        out = self.proj(out)
        out = resize(out, identity.shape[2:], align_corners=corners)
        out = self.bottleneck(jt.concat([identity, out], dim=1))
        return self.cls_seg(out)
