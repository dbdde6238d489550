"""Building blocks shared by the encoders and decoders.

Every block here reproduces the PyTorch reference numerically (see
``shared/parity/README.md`` section 6): exact-erf GELU, PyTorch's half-pixel
bilinear rule, PyTorch adaptive-pool bins, BatchNorm with an unbiased running
variance and a ``num_batches_tracked`` counter so state dicts keep the official
key names.

Nothing here uses Jittor's generic gather kernels: adaptive pooling is a product
with a small pooling matrix, bilinear resizing a two-tap OpenMP C++ kernel on the
CPU (products with interpolation matrices on CUDA), GELU an OpenMP kernel with a
vectorisable erf. ``use_fused_cpu_kernels(False)`` switches every C++ kernel of
the model zoo off (plain Jittor operators, as on CUDA).
"""
import functools

import numpy as np
import jittor as jt
from jittor import nn

__all__ = ["BatchNorm2d", "LayerNorm", "DropPath", "GELU", "gelu", "ConvModule", "resize",
           "adaptive_avg_pool2d", "interp_matrix", "interp_taps", "pool_matrix", "use_fused_cpu_kernels",
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
# Jittor's generated element-wise kernels run on one thread, and a bias addition
# in front of an opaque operator is a pass of its own. On the CPU the hot
# element-wise operations (GELU with the preceding bias, bilinear resizing)
# therefore run as small ``jt.code`` kernels compiled with OpenMP and written so
# the compiler vectorises them. Each has an exact gradient and a pure-Jittor
# fallback, used on CUDA and after ``use_fused_cpu_kernels(False)``; the switch
# also covers the encoders' kernels (DFormerv2's depthwise convolution,
# attention and LayerNorm, also used by DFormer).

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

# GELU of x (+ bias along the last axis), flat tensors in rows of ROW elements
# (the bias length, else blocks of 4096). FORWARD: out0 = v Phi(v); otherwise
# out0 = g (Phi(v) + v phi(v)), the gradient w.r.t. v, for g = in1. v = x + bias.
_GELU_SRC = r"""
const long long N = in0->num;
const long long R = (N + ROW - 1) / ROW;
const float* __restrict__ src = in0_p;
float* __restrict__ dst = out0_p;
#pragma omp parallel for schedule(static)
for (long long r = 0; r < R; r++) {
    const long long base = r * ROW;
    const int len = (int)std::min<long long>(ROW, N - base);
#pragma omp simd
    for (int c = 0; c < len; c++) {
        const float v = src[base + c] BIAS_TERM(c);
        float cdf;
        const float pdf = lyr_gelu_parts(v, &cdf);
#if FORWARD
        (void)pdf;
        dst[base + c] = v * cdf;
#else
        dst[base + c] = in1_p[base + c] * std::fma(v, pdf, cdf);
#endif
    }
}
"""


def _gelu_kernel(x, bias, grad=None):
    """Run :data:`_GELU_SRC`: GELU(x + bias), or its gradient w.r.t. x for ``grad``."""
    inputs = [x] if grad is None else [x, grad]
    if bias is None:
        defines = "#define ROW 4096\n#define BIAS_TERM(c)\n"
    else:
        defines = (f"#define ROW in{len(inputs)}_shape0\n"
                   f"#define BIAS_TERM(c) + in{len(inputs)}_p[c]\n")
        inputs.append(bias)
    defines += f"#define FORWARD {int(grad is None)}\n"
    return jt.code(x.shape, x.dtype, inputs, cpu_header=CPU_MATH_HEADER,
                   cpu_src=defines + _GELU_SRC)


class _GELUCPU(jt.Function):
    """GELU(x [+ bias]) through the C++ kernel; the gradient is a second kernel."""

    def execute(self, x, bias=None):
        self.x, self.bias = x, bias
        return _gelu_kernel(x, bias)

    def grad(self, g):
        dx = _gelu_kernel(self.x, self.bias, g)
        if self.bias is None:
            return dx
        return dx, dx.reshape((-1, self.bias.shape[0])).sum(0)


def gelu(x, bias=None):
    """Exact (erf) GELU of ``x`` (plus ``bias`` along the last axis when given).

    On the CPU one vectorised OpenMP pass (erf to ~1.5e-7) that also adds the
    bias, e.g. of the Linear layer before it.
    """
    if fused_cpu(x):
        return _GELUCPU()(x) if bias is None else _GELUCPU()(x, bias)
    if bias is not None:
        x = x + bias
    return x * 0.5 * (1.0 + jt.erf(x * 0.7071067811865476))


class GELU(nn.Module):
    """Exact (erf) GELU, as ``torch.nn.GELU()``; ``execute(x, bias)`` is GELU(x + bias)."""

    def execute(self, x, bias=None):
        return gelu(x, bias)


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


@functools.lru_cache(maxsize=256)
def interp_taps(out_size, in_size, align_corners=False):
    """The rows of :func:`interp_matrix` as (index, weight) pairs.

    Returns int32 (out_size, 2) indices and float32 (out_size, 2) weights (the
    matrix entries, so both forms give the same result); a row with a single
    non-zero gets a second tap of weight 0 at the same index.
    """
    mat = interp_matrix(out_size, in_size, align_corners)
    idx = np.zeros((out_size, 2), np.int32)
    wts = np.zeros((out_size, 2), np.float32)
    for r in range(out_size):
        cols = np.flatnonzero(mat[r])
        assert len(cols) <= 2
        if len(cols):
            idx[r] = cols[0], cols[-1]
            wts[r, :len(cols)] = mat[r, cols]
    return idx, wts


# Bilinear resize of (M, H, W) planes with two taps per output row and column:
# in0 x, in1 / in2 row taps / weights (Ho, 2), in3 / in4 column taps / weights
# (Wo, 2) -> out0 (M, Ho, Wo). One task per output row of a plane: the two
# input rows are blended into a small buffer first (vectorised), then each
# output reads two entries of it.
_RESIZE_SRC = r"""
const int M = in0_shape0, H = in0_shape1, W = in0_shape2;
const int HO = out0_shape1, WO = out0_shape2;
#pragma omp parallel
{
    std::vector<float> blend(W);
    float* __restrict__ t = blend.data();
#pragma omp for collapse(2) schedule(static)
    for (int m = 0; m < M; m++)
    for (int i = 0; i < HO; i++) {
        const float* __restrict__ r0 = in0_p + ((long long)m * H + in1_p[2 * i]) * W;
        const float* __restrict__ r1 = in0_p + ((long long)m * H + in1_p[2 * i + 1]) * W;
        const float a0 = in2_p[2 * i], a1 = in2_p[2 * i + 1];
        for (int k = 0; k < W; k++) t[k] = a0 * r0[k] + a1 * r1[k];
        float* __restrict__ y = out0_p + ((long long)m * HO + i) * WO;
#pragma omp simd
        for (int j = 0; j < WO; j++)
            y[j] = in4_p[2 * j] * t[in3_p[2 * j]] + in4_p[2 * j + 1] * t[in3_p[2 * j + 1]];
    }
}
"""


class _ResizeCPU(jt.Function):
    """Separable two-tap resize (bilinear) through the C++ kernel.

    The operator is linear, y = Mh x Mw^T per plane, so the input gradient is
    the transposed operator, Mh^T g Mw, applied as products.
    """

    def __init__(self, size, align_corners):
        self.size, self.align_corners = size, align_corners

    def execute(self, x):
        n, c, h, w = x.shape
        ho, wo = self.size
        self.mat_h = interp_matrix(ho, h, self.align_corners)
        self.mat_w = interp_matrix(wo, w, self.align_corners)
        taps = [jt.array(a) for a in interp_taps(ho, h, self.align_corners)
                + interp_taps(wo, w, self.align_corners)]
        y = jt.code((n * c, ho, wo), x.dtype, [x.reshape((n * c, h, w))] + taps,
                    cpu_header="#include <vector>", cpu_src=_RESIZE_SRC)
        return y.reshape((n, c, ho, wo))

    def grad(self, g):
        return _separable(g, np.ascontiguousarray(self.mat_h.T),
                          np.ascontiguousarray(self.mat_w.T))


def resize(x, size, align_corners=False):
    """Bilinear resize of an N C H W tensor, identical to ``F.interpolate(mode="bilinear")``.

    On the CPU a two-tap OpenMP kernel; elsewhere products with the
    interpolation matrices (see :func:`_separable`).
    """
    size = (int(size[0]), int(size[1]))
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if fused_cpu(x) and x.ndim == 4:
        return _ResizeCPU(size, align_corners)(x)
    return _separable(x, interp_matrix(size[0], h, align_corners),
                      interp_matrix(size[1], w, align_corners))


def adaptive_avg_pool2d(x, size):
    """``F.adaptive_avg_pool2d`` with PyTorch's (possibly overlapping) bins."""
    if isinstance(size, int):
        size = (size, size)
    h, w = x.shape[-2:]
    return _separable(x, pool_matrix(size[0], h), pool_matrix(size[1], w))
