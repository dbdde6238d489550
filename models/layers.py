"""Building blocks shared by the encoders and decoders.

Every block here reproduces the PyTorch reference numerically (see
``shared/parity/README.md`` section 6): exact-erf GELU, PyTorch's half-pixel
bilinear rule, PyTorch adaptive-pool bins, BatchNorm with an unbiased running
variance and a ``num_batches_tracked`` counter so state dicts keep the official
key names.

Resizing and pooling are written as products with small interpolation / pooling
matrices: the products run in oneDNN (CPU) or cuBLAS (CUDA) instead of Jittor's
generic gather kernels, and the result is exact up to float32 rounding.
"""
import functools

import numpy as np
import jittor as jt
from jittor import nn

__all__ = ["BatchNorm2d", "LayerNorm", "DropPath", "GELU", "gelu", "ConvModule", "resize",
           "adaptive_avg_pool2d", "interp_matrix", "pool_matrix", "use_fused_cpu_kernels",
           "fused_cpu", "CPU_MATH_HEADER"]


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
        if self.is_training():
            mean = x.mean(dims=dims)
            sq_mean = (x * x).mean(dims=dims)
            count = x.numel() // x.shape[1]
            if self.sync and jt.in_mpi:
                mean = mean.mpi_all_reduce("mean")
                sq_mean = sq_mean.mpi_all_reduce("mean")
                count = count * jt.world_size
            var = (sq_mean - mean * mean).maximum(0.0)
            unbiased = var * (count / max(count - 1, 1))
            m = self.momentum
            self.running_mean.update((1 - m) * self.running_mean + m * mean.detach())
            self.running_var.update((1 - m) * self.running_var + m * unbiased.detach())
            self.num_batches_tracked.update(self.num_batches_tracked + 1)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight / jt.sqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale.broadcast(x, dims) + shift.broadcast(x, dims)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` over the last dimension (channels-last tensors)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__(dim, eps=eps, elementwise_affine=True)


# ---------------------------------------------------------------------------
# C++ CPU kernels
#
# Jittor's generated element-wise kernels run on one thread and call the scalar
# libm ``erf``. On the CPU the hot element-wise / normalisation operations of the
# encoders therefore run as small ``jt.code`` kernels compiled with OpenMP and
# written so the compiler vectorises them. Each has an exact gradient and a
# pure-Jittor fallback, used on CUDA and after ``use_fused_cpu_kernels(False)``.

_FUSED_CPU = {"enabled": True}


def use_fused_cpu_kernels(enabled=True):
    """Switch the C++ CPU kernels of all models on or off (off: pure Jittor operators)."""
    _FUSED_CPU["enabled"] = bool(enabled)


def fused_cpu(*tensors):
    """True when the C++ kernels apply: enabled, running on the CPU, float32 inputs."""
    return (_FUSED_CPU["enabled"] and not jt.flags.use_cuda
            and all(str(t.dtype) == "float32" for t in tensors))


CPU_MATH_HEADER = r"""
#include <cmath>
#include <cstring>
#include <cstdint>
#include <algorithm>
// exp(x) for x <= 0 without a libm call, so loops using it vectorise:
// x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts, exact under -Ofast
// thanks to fma), e^r by its Taylor series to r^7 (truncation < 1e-8), 2^n
// through the exponent bits. Inputs below -80 give 0 (no denormals).
static inline float lyr_exp_neg(float x) {
    const bool tiny = x < -80.0f;
    x = std::max(x, -80.0f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = std::fma(n, -0.693359375f, x);
    r = std::fma(n, 2.12194440e-4f, r);
    float p = 1.0f / 5040.0f;
    p = std::fma(p, r, 1.0f / 720.0f);
    p = std::fma(p, r, 1.0f / 120.0f);
    p = std::fma(p, r, 1.0f / 24.0f);
    p = std::fma(p, r, 1.0f / 6.0f);
    p = std::fma(p, r, 0.5f);
    p = std::fma(p, r, 1.0f);
    p = std::fma(p, r, 1.0f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return tiny ? 0.0f : p * scale;
}
// GELU pieces for x: *cdf = Phi(x) = (1 + erf(x / sqrt2)) / 2 and the return
// value pdf = phi(x) = exp(-x^2 / 2) / sqrt(2 pi). erf(z), z >= 0, is
// 1 - t (a1 + t (a2 + ... a5)) exp(-z^2) with t = 1 / (1 + p z)
// (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7); odd symmetry
// gives negative z.
static inline float lyr_gelu_parts(float x, float* cdf) {
    const float z = std::fabs(x) * 0.70710678118654752f;
    const float t = 1.0f / std::fma(0.3275911f, z, 1.0f);
    const float e = lyr_exp_neg(-z * z);
    float q = 1.061405429f;
    q = std::fma(q, t, -1.453152027f);
    q = std::fma(q, t, 1.421413741f);
    q = std::fma(q, t, -0.284496736f);
    q = std::fma(q, t, 0.254829592f);
    const float tail = 0.5f * (q * t * e);          // (1 - erf(z)) / 2
    *cdf = x >= 0.0f ? 1.0f - tail : tail;
    return e * 0.39894228040143268f;
}
"""

# y = x Phi(x) over the flat tensor, blocks of 4096 elements per task.
_GELU_SRC = r"""
const long long N = in0->num;
#pragma omp parallel for schedule(static)
for (long long b = 0; b < N; b += 4096) {
    const long long e = std::min(N, b + 4096);
    const float* __restrict__ x = in0_p;
    float* __restrict__ y = out0_p;
#pragma omp simd
    for (long long i = b; i < e; i++) {
        float cdf;
        lyr_gelu_parts(x[i], &cdf);
        y[i] = x[i] * cdf;
    }
}
"""

# dx = g (Phi(x) + x phi(x)); in0 x, in1 g.
_GELU_GRAD_SRC = r"""
const long long N = in0->num;
#pragma omp parallel for schedule(static)
for (long long b = 0; b < N; b += 4096) {
    const long long e = std::min(N, b + 4096);
    const float* __restrict__ x = in0_p;
    const float* __restrict__ g = in1_p;
    float* __restrict__ dx = out0_p;
#pragma omp simd
    for (long long i = b; i < e; i++) {
        float cdf;
        const float pdf = lyr_gelu_parts(x[i], &cdf);
        dx[i] = g[i] * std::fma(x[i], pdf, cdf);
    }
}
"""


class _GELUCPU(jt.Function):
    """GELU through the C++ kernel; the gradient is a second kernel."""

    def execute(self, x):
        self.x = x
        return jt.code(x.shape, x.dtype, [x], cpu_header=CPU_MATH_HEADER, cpu_src=_GELU_SRC)

    def grad(self, g):
        return jt.code(self.x.shape, self.x.dtype, [self.x, g], cpu_header=CPU_MATH_HEADER,
                       cpu_src=_GELU_GRAD_SRC)


def gelu(x):
    """Exact (erf) GELU; on the CPU a vectorised OpenMP kernel (erf to ~1.5e-7)."""
    if fused_cpu(x):
        return _GELUCPU()(x)
    return x * 0.5 * (1.0 + jt.erf(x * 0.7071067811865476))


class GELU(nn.Module):
    """Exact (erf) GELU, as ``torch.nn.GELU()``."""

    def execute(self, x):
        return gelu(x)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or when ``p == 0``)."""

    def __init__(self, p=0.0):
        self.p = float(p)

    def execute(self, x):
        if self.p == 0.0 or not self.is_training():
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (jt.rand(shape) < keep).float32()
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"


class ConvModule(nn.Module):
    """mmcv-style conv -> BN -> activation with the submodule names ``conv``/``bn``.

    As in mmcv, the convolution has a bias only when there is no norm layer.
    ``act`` is a module (default ReLU) or None.
    """

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0,
                 dilation=1, groups=1, norm=True, act="relu", bn_eps=1e-5, bias="auto"):
        if bias == "auto":
            bias = not norm
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
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
def interp_matrix(out_size, in_size, align_corners=False):
    """(out_size, in_size) float32 matrix of 1-D linear interpolation weights.

    ``align_corners=False`` follows PyTorch's half-pixel rule:
    src = max(0, (dst + 0.5) * in / out - 0.5), no antialiasing.
    """
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for dst in range(out_size):
        if align_corners:
            src = dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        else:
            src = max(0.0, (dst + 0.5) * in_size / out_size - 0.5)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = src - i0
        m[dst, i0] += 1.0 - w1
        m[dst, i1] += w1
    return m.astype(np.float32)


@functools.lru_cache(maxsize=256)
def pool_matrix(out_size, in_size):
    """(out_size, in_size) averaging matrix with PyTorch's adaptive-pool bins."""
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m.astype(np.float32)


def _separable(x, mat_h, mat_w):
    """Apply (Ho,H) along rows and (Wo,W) along columns of an N C H W tensor."""
    n, c, h, w = x.shape
    ho, wo = mat_h.shape[0], mat_w.shape[0]
    if (ho, wo) == (h, w) and np.array_equal(mat_h, np.eye(h)) and np.array_equal(mat_w, np.eye(w)):
        return x
    mh = jt.array(mat_h).stop_grad()
    mw_t = jt.array(np.ascontiguousarray(mat_w.T)).stop_grad()
    y = jt.matmul(x.reshape((n * c * h, w)), mw_t)                  # (N C H, Wo)
    y = y.reshape((n * c, h, wo)).transpose((1, 0, 2)).reshape((h, n * c * wo))
    y = jt.matmul(mh, y)                                            # (Ho, N C Wo)
    return y.reshape((ho, n * c, wo)).transpose((1, 0, 2)).reshape((n, c, ho, wo))


def resize(x, size, align_corners=False):
    """Bilinear resize of an N C H W tensor, identical to ``F.interpolate(mode="bilinear")``."""
    size = (int(size[0]), int(size[1]))
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    return _separable(x, interp_matrix(size[0], h, align_corners),
                      interp_matrix(size[1], w, align_corners))


def adaptive_avg_pool2d(x, size):
    """``F.adaptive_avg_pool2d`` with PyTorch's (possibly overlapping) bins."""
    if isinstance(size, int):
        size = (size, size)
    h, w = x.shape[-2:]
    return _separable(x, pool_matrix(size[0], h), pool_matrix(size[1], w))
