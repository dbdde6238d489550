"""DFormerv2 backbone: RGB tokens attended with a depth-aware geometry prior.

Only the RGB image goes through the network; depth (channel 0 of the depth
input) enters every block through the *geometry prior*, an additive attention
bias built from spatial distance and depth difference between token pairs:

    bias[n, i, j] = w0 * (dist(i, j) * decay[n]) + w1 * (|d_i - d_j| * decay[n])

``decay[n] < 0`` is a fixed per-head rate and ``(w0, w1)`` a per-block weight.
Stages 1-3 use the decomposed form (attention along each row, then along each
column, with 1-D distances); stage 4 attends over all tokens with the
Manhattan distance. Queries and keys also get a rotary position encoding over
the flattened token index.

Inside the stages tensors are channels-last ``(B, H, W, C)``; outputs are NCHW.
Module and parameter names follow the official checkpoints.

Everything that depends only on the token grid and the depth map at a stage's
resolution (rotary tables, distance terms, resized depth:
:class:`models.ops.StageGeometry`) is computed once per stage and shared by its
blocks; each block only mixes them with its own ``Geo.weight`` and ``Geo.decay``.
"""
import numpy as np
import jittor as jt
from jittor import nn

from ..layers import BatchNorm2d, DropPath, GELU, LayerNorm, drop_path_rates
from ..ops import COLS, FULL, ROWS, StageGeometry, depthwise_conv, geo_attention

__all__ = ["DFormerv2", "dformerv2_s", "dformerv2_b", "dformerv2_l", "rotary_angle", "geo_decay"]


# ----------------------------------------------------------------------------
# computed buffers
# ----------------------------------------------------------------------------

def rotary_angle(key_dim):
    """Rotary frequencies ``1 / 10000 ** linspace(0, 1, key_dim // 2)``, each repeated twice.

    Reproduces the float32 values PyTorch stores in the checkpoints bit for bit:
    the linspace points are float32 (step ``1/(n-1)`` in float32, second half
    counted back from 1 with a single rounding), the power is rounded once to
    float32 and inverted in float32.
    """
    n = key_dim // 2
    f32 = np.float32
    step = float(f32(1.0) / f32(n - 1)) if n > 1 else 0.0
    pts = [step * i if i < n // 2 else 1.0 - step * (n - 1 - i) for i in range(n)]
    pts = np.asarray(pts, dtype=np.float64).astype(f32)
    power = (10000.0 ** pts.astype(np.float64)).astype(f32)
    return np.repeat(f32(1.0) / power, 2).astype(f32)


def geo_decay(num_heads, initial_value, heads_range):
    """Per-head decay ``log(1 - 2 ** (-initial_value - heads_range * h / num_heads))`` (float32)."""
    f32 = np.float32
    heads = np.arange(num_heads, dtype=f32)
    expo = f32(-initial_value) - (f32(heads_range) * heads) / f32(num_heads)
    power = (2.0 ** expo.astype(np.float64)).astype(f32)
    return np.log((f32(1.0) - power).astype(np.float64)).astype(f32)


# ----------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------

def _linear(layer, x, add_bias=True):
    """``nn.Linear`` over the last axis of an N-D tensor, as one 2-D matrix product.

    The bias is added after the reshape so Jittor can fuse it with the
    element-wise operation that follows (residual sum); with ``add_bias=False``
    the caller adds it.
    """
    shape = x.shape
    y = nn.matmul_transpose(x.reshape((-1, shape[-1])), layer.weight)
    y = y.reshape(tuple(shape[:-1]) + (y.shape[-1],))
    return y + layer.bias if add_bias and layer.bias is not None else y


class DWConv2d(nn.Module):
    """Depthwise ``k x k`` convolution (stride 1, 'same' padding) on a channels-last tensor.

    ``execute(x, residual=True)`` returns ``x + dwconv(x)``.
    """

    def __init__(self, dim, kernel_size, padding):
        assert padding == kernel_size // 2
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, 1, padding, groups=dim)

    def execute(self, x, residual=False):
        return depthwise_conv(x, self.dwconv.weight, self.dwconv.bias, residual)


class PatchEmbed(nn.Module):
    """Stem: four 3x3 convolutions (strides 2, 1, 2, 1) with BN, GELU between them.

    Output is channels-last at stride 4.
    """

    def __init__(self, in_chans=3, embed_dim=64, sync_bn=True):
        half = embed_dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1), BatchNorm2d(half, sync=sync_bn), GELU(),
            nn.Conv2d(half, half, 3, 1, 1), BatchNorm2d(half, sync=sync_bn), GELU(),
            nn.Conv2d(half, embed_dim, 3, 2, 1), BatchNorm2d(embed_dim, sync=sync_bn), GELU(),
            nn.Conv2d(embed_dim, embed_dim, 3, 1, 1), BatchNorm2d(embed_dim, sync=sync_bn),
        )

    def execute(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class PatchMerging(nn.Module):
    """Downsampling between stages: 3x3 stride-2 convolution + BN, channels-last in and out."""

    def __init__(self, dim, out_dim, sync_bn=True):
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = BatchNorm2d(out_dim, sync=sync_bn)

    def execute(self, x):
        x = self.norm(self.reduction(x.permute(0, 3, 1, 2)))
        return x.permute(0, 2, 3, 1)


class GeoPriorGen(nn.Module):
    """Geometry prior parameters of one block.

    ``weight`` mixes the position and depth terms (learnable, never updated by
    the reference optimiser); ``angle`` (rotary frequencies) and ``decay``
    (per-head rates) are fixed, persistent buffers.
    """

    def __init__(self, embed_dim, num_heads, initial_value, heads_range):
        self.weight = jt.ones((2, 1, 1, 1), dtype="float32")
        self.angle = jt.array(rotary_angle(embed_dim // num_heads)).stop_grad()
        self.decay = jt.array(geo_decay(num_heads, initial_value, heads_range)).stop_grad()


class _GSA(nn.Module):
    """Shared parts of the two geometry self-attentions: projections and LePE."""

    def __init__(self, embed_dim, num_heads):
        self.num_heads = num_heads
        self.key_dim = embed_dim // num_heads
        self.scaling = self.key_dim ** -0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.lepe = DWConv2d(embed_dim, 5, 2)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _project(self, x):
        """Raw q|k projections from one matrix product (B, H, W, 2C), values and the LePE term.

        The q and k biases, the key scaling and the rotary transform are
        applied by :func:`geo_attention`.
        """
        b, h, w, c = x.shape
        weight = jt.concat([self.q_proj.weight, self.k_proj.weight], dim=0)
        qk = nn.matmul_transpose(x.reshape((-1, c)), weight).reshape((b, h, w, 2 * c))
        v = _linear(self.v_proj, x)
        return qk, v, self.lepe(v)

    def _attend(self, qk, v, geo, prior, mode):
        return geo_attention(qk, v, geo, prior.decay, prior.weight, self.q_proj.bias,
                             self.k_proj.bias, self.scaling, mode)


class DecomposedGSA(_GSA):
    """Geometry self-attention along each row, then along each column (stages 1-3).

    The column pass reuses the rotated queries/keys and attends over the
    row-attended values.
    """

    def execute(self, x, geo, prior):
        qk, v, lepe = self._project(x)
        v = self._attend(qk, v, geo, prior, ROWS)
        out = self._attend(qk, v, geo, prior, COLS)
        return _linear(self.out_proj, out + lepe)


class FullGSA(_GSA):
    """Geometry self-attention over all tokens of the map (stage 4)."""

    def execute(self, x, geo, prior):
        qk, v, lepe = self._project(x)
        out = self._attend(qk, v, geo, prior, FULL)
        return _linear(self.out_proj, out + lepe)


class FeedForwardNetwork(nn.Module):
    """fc1 -> GELU -> (depthwise 3x3 + identity) -> fc2."""

    def __init__(self, embed_dim, ffn_dim):
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.dwconv = DWConv2d(ffn_dim, 3, 1)
        self.act = GELU()

    def execute(self, x):
        x = self.act(_linear(self.fc1, x, add_bias=False), self.fc1.bias)   # one pass on CPU
        return _linear(self.fc2, self.dwconv(x, residual=True))


class RGBDBlock(nn.Module):
    """Conv position encoding, geometry self-attention and FFN, both pre-norm residual.

    ``layerscale`` adds the per-channel scales ``gamma_1``/``gamma_2``
    (declared first so the state dict lists them first, as PyTorch does for a
    module's own parameters).
    """

    def __init__(self, decomposed, embed_dim, num_heads, ffn_dim, drop_path=0.0,
                 layerscale=False, layer_init_values=1e-6, init_value=2, heads_range=4):
        self.layerscale = layerscale
        if layerscale:
            self.gamma_1 = jt.full((1, 1, 1, embed_dim), layer_init_values, dtype="float32")
            self.gamma_2 = jt.full((1, 1, 1, embed_dim), layer_init_values, dtype="float32")
        self.layer_norm1 = LayerNorm(embed_dim, eps=1e-6)
        self.layer_norm2 = LayerNorm(embed_dim, eps=1e-6)
        attention = DecomposedGSA if decomposed else FullGSA
        self.Attention = attention(embed_dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.ffn = FeedForwardNetwork(embed_dim, ffn_dim)
        self.cnn_pos_encode = DWConv2d(embed_dim, 3, 1)
        self.Geo = GeoPriorGen(embed_dim, num_heads, init_value, heads_range)

    def execute(self, x, geo):
        x = self.cnn_pos_encode(x, residual=True)
        y = self.Attention(self.layer_norm1(x), geo, self.Geo)
        if self.layerscale:
            y = self.gamma_1 * y
        x = x + self.drop_path(y)
        y = self.ffn(self.layer_norm2(x))
        if self.layerscale:
            y = self.gamma_2 * y
        return x + self.drop_path(y)


class BasicLayer(nn.Module):
    """One stage: blocks at a fixed resolution, then an optional downsampling.

    Returns ``(stage_output, input_of_next_stage)``.
    """

    def __init__(self, embed_dim, out_dim, depth, num_heads, init_value, heads_range, ffn_dim,
                 drop_path, decomposed, downsample, layerscale, layer_init_values, sync_bn=True):
        self.blocks = nn.ModuleList([
            RGBDBlock(decomposed, embed_dim, num_heads, ffn_dim, drop_path[i], layerscale,
                      layer_init_values, init_value=init_value, heads_range=heads_range)
            for i in range(depth)])
        self.downsample = PatchMerging(embed_dim, out_dim, sync_bn) if downsample else None

    def execute(self, x, depth):
        _, h, w, _ = x.shape
        # Every block's Geo.angle holds the same computed values; the first one
        # stands for all when the rotary tables are built once per stage.
        geo = StageGeometry(h, w, depth, self.blocks[0].Geo.angle)
        for blk in self.blocks:
            x = blk(x, geo)
        if self.downsample is not None:
            return x, self.downsample(x)
        return x, x


# ----------------------------------------------------------------------------
# backbone
# ----------------------------------------------------------------------------

class DFormerv2(nn.Module):
    """DFormerv2 encoder. ``execute(rgb, depth)`` -> list of 4 NCHW maps (strides 4-32).

    ``depth`` is (B, C, H, W) with the depth in channel 0 (the dataset feeds 3
    identical channels). Outputs of stages 2-4 go through ``extra_norms``
    (LayerNorm, eps 1e-5); stage 1's output is returned as is.
    """

    def __init__(self, embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2),
                 num_heads=(4, 4, 8, 16), init_values=(2, 2, 2, 2), heads_ranges=(4, 4, 6, 6),
                 mlp_ratios=(4, 4, 3, 3), drop_path_rate=0.1,
                 layerscales=(False, False, False, False), layer_init_values=1e-6,
                 sync_bn=True):
        self.out_channels = list(embed_dims)
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(3, embed_dims[0], sync_bn)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            start = sum(depths[:i])
            last = i == self.num_layers - 1
            self.layers.append(BasicLayer(
                embed_dim=embed_dims[i],
                out_dim=None if last else embed_dims[i + 1],
                depth=depths[i],
                num_heads=num_heads[i],
                init_value=init_values[i],
                heads_range=heads_ranges[i],
                ffn_dim=int(mlp_ratios[i] * embed_dims[i]),
                drop_path=rates[start:start + depths[i]],
                decomposed=not last,
                downsample=not last,
                layerscale=layerscales[i],
                layer_init_values=layer_init_values,
                sync_bn=sync_bn))
        self.extra_norms = nn.ModuleList([LayerNorm(c) for c in embed_dims[1:]])

    def init_weights(self):
        """From-scratch init: Linear trunc-normal(0.02) / zero bias, LayerNorm 1 / 0.

        Convolutions keep the PyTorch default (uniform +-1/sqrt(fan_in)),
        BatchNorm 1 / 0, ``Geo.weight`` 1 and layer scales their init value,
        as in the reference. Pretrained weights are loaded elsewhere.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                jt.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    jt.init.zero_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                jt.init.one_(m.weight)
                jt.init.zero_(m.bias)

    def execute(self, rgb, depth):
        x = self.patch_embed(rgb)
        depth = depth[:, :1]
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x, depth)
            if i > 0:
                out = self.extra_norms[i - 1](out)
            outs.append(out.permute(0, 3, 1, 2))
        return outs


def dformerv2_s(drop_path_rate=0.1, sync_bn=True):
    return DFormerv2(embed_dims=(64, 128, 256, 512), depths=(3, 4, 18, 4),
                     num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
                     drop_path_rate=drop_path_rate, sync_bn=sync_bn)


def dformerv2_b(drop_path_rate=0.1, sync_bn=True):
    return DFormerv2(embed_dims=(80, 160, 320, 512), depths=(4, 8, 25, 8),
                     num_heads=(5, 5, 10, 16), heads_ranges=(5, 5, 6, 6),
                     layerscales=(False, False, True, True), layer_init_values=1e-6,
                     drop_path_rate=drop_path_rate, sync_bn=sync_bn)


def dformerv2_l(drop_path_rate=0.1, sync_bn=True):
    return DFormerv2(embed_dims=(112, 224, 448, 640), depths=(4, 8, 25, 8),
                     num_heads=(7, 7, 14, 20), heads_ranges=(6, 6, 6, 6),
                     layerscales=(False, False, True, True), layer_init_values=1e-6,
                     drop_path_rate=drop_path_rate, sync_bn=sync_bn)
