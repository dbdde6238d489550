"""DFormer (v1) RGB-D backbone.

Two streams run side by side: an RGB stream of width C per stage and a depth
stream of width C/2 that reads channel 0 of the depth input. Every block mixes
them inside its attention; only the RGB stream is returned (four NCHW maps at
strides 4, 8, 16, 32).

Layout: stems and inter-stage downsampling work on NCHW tensors; blocks work on
channels-last (B, H, W, C) tensors so that every Linear is one 2-D product.
The depthwise convolutions of the blocks run on channels-last data directly
(:func:`models.ops.depthwise_conv`), the pooled attention and its upsampling
are written as 2-D products with small pooling / interpolation matrices, so a
stage needs no layout permutes between its first and last block.

Parameter names and state-dict order equal the official checkpoints.
"""
import functools
import math
from collections import OrderedDict

import numpy as np
import jittor as jt
from jittor import nn

from ..layers import BatchNorm2d, DropPath, GELU, drop_path_rates, pool_matrix
from ..ops import (concat, depthwise_conv, interp_matrix, layer_norm, scalar, softmax, stack,
                   unstack)

__all__ = ["DFormer", "dformer_tiny", "dformer_small", "dformer_base", "dformer_large"]


# ---------------------------------------------------------------------------
# helpers


def checkpoint_filter_fn(state_dict, prefix=""):
    """Drop what released DFormer checkpoints hold beyond the model: four output norms
    (``norm0..3``) whose construction the reference comments out.

    ``prefix`` is the backbone's key prefix in ``state_dict``. Returns the filtered
    state dict and the dropped keys.
    """
    extras = {f"{prefix}norm{i}.{name}" for i in range(4) for name in ("weight", "bias")}
    kept = OrderedDict((k, v) for k, v in state_dict.items() if k not in extras)
    return kept, [k for k in state_dict if k in extras]


@functools.lru_cache(maxsize=64)
def _pool_interp_matrices(h, w, window, dtype=np.float32):
    """(window^2, h*w) adaptive-average-pool and (h*w, window^2) bilinear matrices.

    Both act on flattened (row-major) spatial positions of one image, so pooling
    a channels-last map is ``P @ x`` and upsampling back is ``U @ y``. The 2-D
    operators are Kronecker products of PyTorch's 1-D bins / half-pixel weights.
    """
    pool = np.kron(pool_matrix(window, h, dtype), pool_matrix(window, w, dtype))
    up = np.kron(interp_matrix(h, window, dtype=dtype), interp_matrix(w, window, dtype=dtype))
    return pool.astype(dtype), up.astype(dtype)


class FoldedBiasLinear(nn.Linear):
    """``nn.Linear`` with the bias folded into the product.

    ``x`` gets a trailing column of ones and the weight the bias as an extra
    column, so the (wide) output is written once instead of being re-read and
    re-written by a separate bias addition; padding the narrow input is cheaper.
    Used where the output feeds an opaque op (a convolution) that cannot absorb
    the addition. Same parameters (and names) as ``nn.Linear``.
    """

    def execute(self, x):
        c = x.shape[-1]
        ones = x.reindex(list(x.shape[:-1]) + [c + 1], [f"i{d}" for d in range(x.ndim)],
                         overflow_value=1.0)
        weight = jt.concat([self.weight, self.bias.unsqueeze(1)], 1)
        return nn.matmul_transpose(ones, weight)


def _mix_rows(mat, x):
    """``mat @ x[b]`` for every b: mat (P, N), x (B, N, C) -> (B, P, C), as 2-D products."""
    return stack([jt.matmul(mat, xb) for xb in unstack(x)])


# ---------------------------------------------------------------------------
# building blocks


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the last (channel) axis with the reference's eps of 1e-6.

    A separate class (not ``layers.LayerNorm``): the reference optimizer treats
    these weights differently from ``nn.LayerNorm`` ones.
    """

    def __init__(self, dim, eps=1e-6):
        self.dim = dim
        self.eps = eps
        self.weight = jt.ones((dim,), dtype="float32")
        self.bias = jt.zeros((dim,), dtype="float32")

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class DepthwiseConv2d(nn.Module):
    """Depthwise k x k convolution (stride 1, 'same' padding) on channels-last tensors.

    Holds ``weight`` (C, 1, k, k) and ``bias`` (C,) like ``nn.Conv2d(C, C, k, groups=C)``.
    """

    def __init__(self, dim, kernel_size):
        self.dim = dim
        self.kernel_size = kernel_size
        bound = 1.0 / math.sqrt(kernel_size * kernel_size)
        self.weight = jt.init.uniform((dim, 1, kernel_size, kernel_size), "float32", -bound, bound)
        self.bias = jt.init.uniform((dim,), "float32", -bound, bound)

    def execute(self, x, residual=False, gelu=False):
        """``dwconv(x)``, or ``x + dwconv(x)`` when ``residual``; then GELU when ``gelu``."""
        return depthwise_conv(x, self.weight, self.bias, residual, gelu)

    def extra_repr(self):
        return f"{self.dim}, kernel_size={self.kernel_size}"


class MLP(nn.Module):
    """norm -> fc1 -> (x + depthwise3x3(x)) -> GELU -> fc2, channels-last."""

    def __init__(self, dim, mlp_ratio=4):
        hidden = dim * mlp_ratio
        self.norm = ChannelsLastLayerNorm(dim)
        self.fc1 = FoldedBiasLinear(dim, hidden)
        self.pos = DepthwiseConv2d(hidden, 3)
        self.fc2 = nn.Linear(hidden, dim)

    def execute(self, x):
        x = self.fc1(self.norm(x))
        x = self.pos(x, residual=True, gelu=True)    # the reference's GELU, in the same pass
        return self.fc2(x)


class Attention(nn.Module):
    """DFormer's RGB-depth attention.

    The RGB stream is gated by a 7x7 depthwise-conv branch (``q * a``); a
    projection of it (``q_cut``) is gated by the depth stream. In stages with a
    ``window`` the tokens are also attended by ``window**2`` queries pooled from
    both streams, whose result is upsampled back to full resolution. The
    concatenated branches feed ``proj`` (new RGB) and ``proj_e`` (new depth);
    ``drop_depth`` (last block of the network) drops the depth output.
    """

    def __init__(self, dim, num_heads=8, window=7, drop_depth=False):
        self.num_heads = num_heads
        self.window = window
        self.drop_depth = drop_depth
        half = dim // 2
        cat_dim = 2 * dim if window else dim + half

        # creation order = the reference's state-dict order
        self.q = nn.Linear(dim, dim)
        self.q_cut = nn.Linear(dim, half)
        self.a = nn.Linear(dim, dim)
        self.l = nn.Linear(dim, dim)
        self.conv = DepthwiseConv2d(dim, 7)
        self.e_conv = DepthwiseConv2d(half, 7)
        self.e_fore = nn.Linear(half, half)
        self.e_back = nn.Linear(half, half)
        self.proj = nn.Linear(cat_dim, dim)
        if not drop_depth:
            self.proj_e = nn.Linear(cat_dim, half)
        if window:
            self.short_cut_linear = nn.Linear(dim + half, half)
            self.kv = nn.Linear(dim, dim)
        self.act = GELU()
        self.norm = ChannelsLastLayerNorm(dim)
        self.norm_e = ChannelsLastLayerNorm(half)

    def pooled_attention(self, x, x_e, t):
        """Attention of ``window**2`` pooled queries over all tokens, upsampled to (H, W).

        x, x_e: normalised streams; t: GELU(l(x)), source of keys and values.
        Returns (B, H, W, C/2) with channel = head * head_dim + j.
        """
        b, h, w, c = t.shape
        half, heads = c // 2, self.num_heads
        head_dim = half // heads
        n, win2 = h * w, self.window * self.window
        pool_np, up_np = _pool_interp_matrices(h, w, self.window, np.dtype(str(t.dtype)))
        pool, up = scalar(pool_np, t), scalar(up_np, t)

        pooled = concat([_mix_rows(pool, x.reshape(b, n, c)),
                         _mix_rows(pool, x_e.reshape(b, n, half))], -1)
        query = self.short_cut_linear(pooled) * scalar(head_dim ** -0.5, t)  # (B, win2, C/2)

        # kv's output is [keys | values], head-major. Both halves are computed
        # without their bias: a key bias adds the same constant to every score
        # of a query row (softmax ignores it), and since softmax rows sum to 1
        # the value bias can be added after the weighted sum.
        tokens = t.reshape(b, n, c)
        keys = nn.matmul_transpose(tokens, self.kv.weight[:half])
        values = nn.matmul_transpose(tokens, self.kv.weight[half:])
        value_bias = self.kv.bias[half:]

        # All heads in one product: query rows are replicated per head and
        # masked to that head's columns, so row (head, i) only sees its head.
        head_mask = np.kron(np.eye(heads, dtype=np.float32), np.ones((1, head_dim), np.float32))
        head_mask = scalar(head_mask.reshape(heads, 1, half), t)
        query = (query.unsqueeze(1) * head_mask).reshape(b, heads * win2, half)

        outs = []
        for qi, ki, vi in zip(unstack(query), unstack(keys), unstack(values)):
            scores = nn.matmul_transpose(qi, ki)                             # (heads*win2, N)
            mixed = jt.matmul(softmax(scores, -1), vi)                       # (heads*win2, C/2)
            mixed = (mixed.reshape(heads, win2, half) * head_mask).sum(0)    # (win2, C/2)
            outs.append(jt.matmul(up, mixed + value_bias))                   # (N, C/2)
        return stack(outs).reshape(b, h, w, half)

    def execute(self, x, x_e):
        x = self.norm(x)
        x_e = self.norm_e(x_e)
        q = self.q(x)
        cut = self.q_cut(x)
        t = self.act(nn.matmul_transpose(x, self.l.weight), self.l.bias)   # bias in GELU's pass
        a = self.a(self.conv(t))
        e = self.e_back(self.e_conv(self.e_fore(x_e)))
        branches = [q * a]
        if self.window:
            branches.append(self.pooled_attention(x, x_e, t))
        branches.append(cut * e)
        mixed = concat(branches, -1)
        out_e = None if self.drop_depth else self.proj_e(mixed)
        return self.proj(mixed), out_e


class Block(nn.Module):
    """Attention + MLP residual block on both streams, with layer scales and DropPath.

    One DropPath module serves the four residual branches; each call draws
    its own mask.
    """

    def __init__(self, dim, num_heads, mlp_ratio=4, window=7, drop_path=0.0,
                 drop_depth=False, layer_scale_init=1e-6):
        self.drop_depth = drop_depth
        self.layer_scale_1 = jt.full((dim,), layer_scale_init, "float32")
        self.layer_scale_2 = jt.full((dim,), layer_scale_init, "float32")
        if not drop_depth:
            self.layer_scale_1_e = jt.full((dim // 2,), layer_scale_init, "float32")
            self.layer_scale_2_e = jt.full((dim // 2,), layer_scale_init, "float32")
        self.attn = Attention(dim, num_heads, window=window, drop_depth=drop_depth)
        self.mlp = MLP(dim, mlp_ratio)
        if not drop_depth:
            self.mlp_e2 = MLP(dim // 2, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def execute(self, x, x_e):
        attn_x, attn_e = self.attn(x, x_e)
        x = x + self.drop_path(self.layer_scale_1 * attn_x)
        x = x + self.drop_path(self.layer_scale_2 * self.mlp(x))
        if not self.drop_depth:
            x_e = x_e + self.drop_path(self.layer_scale_1_e * attn_e)
            x_e = x_e + self.drop_path(self.layer_scale_2_e * self.mlp_e2(x_e))
        return x, x_e


# ---------------------------------------------------------------------------
# backbone


def _stem(in_channels, out_channels):
    """Two stride-2 3x3 convs (BN after each, GELU between): stride 4 overall."""
    mid = out_channels // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 3, stride=2, padding=1),
        BatchNorm2d(mid, sync=False),
        GELU(),
        nn.Conv2d(mid, out_channels, 3, stride=2, padding=1),
        BatchNorm2d(out_channels, sync=False),
    )


def _downsample(in_channels, out_channels, sync_bn):
    return nn.Sequential(
        BatchNorm2d(in_channels, sync=sync_bn),
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
    )


class DFormer(nn.Module):
    """DFormer backbone: ``execute(rgb, depth)`` -> list of 4 NCHW RGB feature maps."""

    checkpoint_filter = staticmethod(checkpoint_filter_fn)

    def __init__(self, dims=(32, 64, 128, 256), depths=(2, 2, 8, 2), num_heads=(1, 2, 4, 8),
                 mlp_ratios=(8, 8, 4, 4), windows=(0, 7, 7, 7), drop_path_rate=0.1, sync_bn=True):
        self.dims = tuple(dims)
        self.depths = tuple(depths)
        self.out_channels = list(dims)

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(_stem(3, dims[0]))
        for i in range(len(dims) - 1):
            self.downsample_layers.append(_downsample(dims[i], dims[i + 1], sync_bn))
        self.downsample_layers_e = nn.ModuleList()
        self.downsample_layers_e.append(_stem(1, dims[0] // 2))
        for i in range(len(dims) - 1):
            self.downsample_layers_e.append(_downsample(dims[i] // 2, dims[i + 1] // 2, sync_bn))

        rates = drop_path_rates(drop_path_rate, sum(depths))
        last_stage = len(dims) - 1
        self.stages = nn.ModuleList()
        cur = 0
        for i, depth in enumerate(depths):
            blocks = [Block(dims[i], num_heads[i], mlp_ratio=mlp_ratios[i], window=windows[i],
                            drop_path=rates[cur + j],
                            drop_depth=(i == last_stage and j == depth - 1))
                      for j in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
            cur += depth

    def init_weights(self):
        """From-scratch initialisation matching PyTorch's defaults for each layer type."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, DepthwiseConv2d)):
                fan_in = int(np.prod(m.weight.shape[1:]))
                bound = 1.0 / math.sqrt(fan_in)
                m.weight.assign(jt.init.uniform(m.weight.shape, "float32", -bound, bound))
                if m.bias is not None:
                    m.bias.assign(jt.init.uniform(m.bias.shape, "float32", -bound, bound))
            elif isinstance(m, (ChannelsLastLayerNorm, BatchNorm2d)):
                m.weight.assign(jt.ones(m.weight.shape, "float32"))
                m.bias.assign(jt.zeros(m.bias.shape, "float32"))
                if isinstance(m, BatchNorm2d):
                    m.running_mean.assign(jt.zeros(m.running_mean.shape, "float32"))
                    m.running_var.assign(jt.ones(m.running_var.shape, "float32"))
                    m.num_batches_tracked.assign(jt.zeros(m.num_batches_tracked.shape, "int64"))
            elif isinstance(m, Block):
                for name in ("layer_scale_1", "layer_scale_2", "layer_scale_1_e", "layer_scale_2_e"):
                    if hasattr(m, name):
                        v = getattr(m, name)
                        v.assign(jt.full(v.shape, 1e-6, "float32"))

    def execute(self, rgb, depth=None):
        if depth is None:
            depth = rgb
        x, x_e = rgb, depth[:, 0:1]
        outs = []
        for i, stage in enumerate(self.stages):
            x = self.downsample_layers[i](x).permute(0, 2, 3, 1)
            x_e = self.downsample_layers_e[i](x_e).permute(0, 2, 3, 1)
            for block in stage:
                x, x_e = block(x, x_e)
            x = x.permute(0, 3, 1, 2)
            outs.append(x)
            if i + 1 < len(self.stages):
                x_e = x_e.permute(0, 3, 1, 2)
        return outs


# ---------------------------------------------------------------------------
# variants


def _dformer(dims, depths, drop_path_rate, sync_bn):
    return DFormer(dims=dims, depths=depths, num_heads=(1, 2, 4, 8), mlp_ratios=(8, 8, 4, 4),
                   windows=(0, 7, 7, 7), drop_path_rate=drop_path_rate, sync_bn=sync_bn)


def dformer_tiny(drop_path_rate=0.1, sync_bn=True):
    return _dformer((32, 64, 128, 256), (3, 3, 5, 2), drop_path_rate, sync_bn)


def dformer_small(drop_path_rate=0.1, sync_bn=True):
    return _dformer((64, 128, 256, 512), (2, 2, 4, 2), drop_path_rate, sync_bn)


def dformer_base(drop_path_rate=0.1, sync_bn=True):
    return _dformer((64, 128, 256, 512), (3, 3, 12, 2), drop_path_rate, sync_bn)


def dformer_large(drop_path_rate=0.1, sync_bn=True):
    return _dformer((96, 192, 288, 576), (3, 3, 12, 2), drop_path_rate, sync_bn)
