"""Building blocks shared by the encoders and decoders.

Every block here reproduces the PyTorch reference numerically: exact-erf GELU,
PyTorch adaptive-pool bins (products with a small pooling matrix, no gather
kernels), BatchNorm with an unbiased running variance and a
``num_batches_tracked`` counter so state dicts keep the official key names,
and ``torch.linspace``'s drop-path rates. The operations with fused CPU
kernels live in :mod:`models.ops`.
"""
import functools

import numpy as np
import jittor as jt
from jittor import nn

from .ops import (batch_norm_train, batch_norm_train_synced, gelu, interpolate, layer_norm,
                  pointwise_conv, scalar)

__all__ = ["BatchNorm2d", "Conv2d", "LayerNorm", "DropPath", "Dropout", "Dropout2d", "GELU", "ConvModule",
           "adaptive_avg_pool2d", "pool_matrix", "drop_path_rates"]


class BatchNorm2d(nn.Module):
    """BatchNorm over NCHW (or N C ... ) tensors, state-dict compatible with PyTorch.

    Differences from ``jittor.nn.BatchNorm`` that matter for faithfulness:
    the running variance is updated with the unbiased batch variance (as PyTorch
    does) and a ``num_batches_tracked`` counter is kept. Under MPI the batch
    statistics are averaged across processes when ``sync`` is true (SyncBN).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, sync=True):
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.sync = sync
        self.weight = jt.ones((num_features,), dtype="float32")
        self.bias = jt.zeros((num_features,), dtype="float32")
        self.running_mean = jt.zeros((num_features,), dtype="float32").stop_grad()
        self.running_var = jt.ones((num_features,), dtype="float32").stop_grad()
        self.num_batches_tracked = jt.zeros((1,), dtype="int64").stop_grad()

    def execute(self, x):
        dims = [0] + list(range(2, x.ndim))
        if not self.is_training():
            return self._normalize(x, self.running_mean, self.running_var, dims)
        count = x.numel() // x.shape[1]
        if self.sync and jt.in_mpi:
            # statistics of every process's batch, combined exactly (models.ops.batch_norm)
            y, mean, var, count = batch_norm_train_synced(x, self.weight, self.bias, self.eps)
            count = count.detach()
            unbiased = var * (count / (count - 1).maximum(1))
        else:
            # local statistics: one fused pass on the CPU (models.ops.batch_norm)
            y, mean, var = batch_norm_train(x, self.weight, self.bias, self.eps)
            unbiased = var * scalar(count / max(count - 1, 1), var)
        keep, m = scalar(1 - self.momentum, mean), scalar(self.momentum, mean)
        self.running_mean.update(keep * self.running_mean + m * mean.detach())
        self.running_var.update(keep * self.running_var + m * unbiased.detach())
        self.num_batches_tracked.update(self.num_batches_tracked + 1)
        return y

    def _normalize(self, x, mean, var, dims):
        scale = self.weight / jt.sqrt(var + scalar(self.eps, var))
        shift = self.bias - mean * scale
        return x * scale.broadcast(x, dims) + shift.broadcast(x, dims)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` over the last dimension (channels-last tensors).

    Stays an ``nn.LayerNorm`` so parameter groups, state dicts and FLOP counting
    treat it like the reference's, whichever path :func:`models.ops.layer_norm` takes.
    """

    def __init__(self, dim, eps=1e-5):
        super().__init__(dim, eps=eps, elementwise_affine=True)

    def execute(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class GELU(nn.Module):
    """Exact (erf) GELU, as ``torch.nn.GELU()``; ``execute(x, bias)`` is GELU(x + bias)."""

    def execute(self, x, bias=None):
        return gelu(x, bias)


def _keep_mask(x, shape, keep):
    """Bernoulli(``keep``) draws of ``shape`` as 0/1 in ``x``'s dtype, divided by ``keep``
    in that dtype (a Python float would be a float32 constant, off by up to 3e-8 in float64)."""
    mask = (jt.rand(shape) < keep).cast(x.dtype)
    return mask / scalar(keep, x)


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm's ``drop_path``: each sample's branch is zeroed
    with probability ``p``, else scaled by ``1 / (1 - p)``; the identity at eval or when
    ``p == 0`` (nothing is drawn)."""

    def __init__(self, p=0.0):
        self.p = float(p)

    def execute(self, x):
        if self.p == 0.0 or not self.is_training():
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * _keep_mask(x, shape, 1.0 - self.p)

    def extra_repr(self):
        return f"p={self.p}"


class Dropout(nn.Dropout):
    """``torch.nn.Dropout``: every element zeroed with probability ``p``, the others scaled
    by ``1 / (1 - p)`` in the input's dtype (Jittor's own divides float64 input by a float32
    constant); the identity at eval or when ``p == 0``."""

    def execute(self, x):
        if self.p == 0.0 or not self.is_training():
            return x
        if self.p == 1.0:
            return x * 0
        return x * _keep_mask(x, x.shape, 1.0 - self.p)


class Dropout2d(nn.Dropout2d):
    """``torch.nn.Dropout2d``: whole channels (one draw per sample and channel of N C H W;
    per channel of an unbatched C H W) zeroed with probability ``p``, the others scaled by
    ``1 / (1 - p)`` in the input's dtype; the identity at eval or when ``p == 0``."""

    def execute(self, x):
        if x.ndim not in (3, 4):
            raise ValueError(f"Dropout2d expects (N, C, H, W) or (C, H, W) input, got shape {x.shape}")
        if self.p == 0.0 or not self.is_training():
            return x
        if self.p == 1.0:
            return x * 0
        return x * _keep_mask(x, tuple(x.shape[:-2]) + (1, 1), 1.0 - self.p)


def drop_path_rates(rate, n):
    """``torch.linspace(0, rate, n)`` (float32) as Python floats: the stochastic-depth
    rate of each of ``n`` blocks.

    PyTorch's vectorised kernel evaluates both halves in float64 and rounds once;
    so does this, so the values match the reference bit for bit.
    """
    if n == 1:
        return [0.0]
    end = np.float32(rate)
    step = np.float64(np.float32(end / np.float32(n - 1)))
    return [float(np.float32(step * i)) if i < n // 2
            else float(np.float32(np.float64(end) - step * (n - 1 - i))) for i in range(n)]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict names) whose 1x1 convolutions with
    stride 1, no padding and one group run as matrix products (:func:`models.ops.pointwise_conv`)."""

    def execute(self, x):
        if (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and self.groups == 1):
            return pointwise_conv(x, self.weight, self.bias)
        return super().execute(x)


class ConvModule(nn.Module):
    """mmcv-style conv -> BN -> activation with the submodule names ``conv``/``bn``.

    As in mmcv, the convolution has a bias only when there is no norm layer.
    ``act`` is a module (default ReLU) or None.
    """

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0,
                 dilation=1, groups=1, norm=True, act="relu", bn_eps=1e-5, bias="auto"):
        if bias == "auto":
            bias = not norm
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                           padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.bn = BatchNorm2d(out_channels, eps=bn_eps) if norm else None
        self.act = nn.ReLU() if act == "relu" else act

    def execute(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act is not None:
            x = self.act(x)
        return x


@functools.lru_cache(maxsize=256)
def pool_matrix(out_size, in_size, dtype=np.float32):
    """(out_size, in_size) averaging matrix (``dtype``) with PyTorch's adaptive-pool bins."""
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m.astype(dtype)


def adaptive_avg_pool2d(x, size):
    """``F.adaptive_avg_pool2d`` with PyTorch's (possibly overlapping) bins."""
    if isinstance(size, int):
        size = (size, size)
    h, w = x.shape[-2:]
    dtype = np.dtype(str(x.dtype))
    return interpolate.separable(x, pool_matrix(size[0], h, dtype), pool_matrix(size[1], w, dtype))
