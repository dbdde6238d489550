"""BatchNorm in training mode over (N, C, ...) tensors: batch statistics and the
normalised output in one OpenMP kernel on the CPU, the gradient in one more.

Jittor runs the plain formulation (two reductions over all but the channel axis,
then a scale and shift, and as many passes again for the gradient) as
single-threaded generated kernels; here each channel is one task: its values are
read once for the statistics and once for the output, and twice for the gradient.
"""
import jittor as jt

from ._common import HEADER, fused_for

# Both kernels see x as (N, C, S) and sum M = N * S values per channel.
_SHAPE = r"""
const int N = in0_shape0;
const int C = in0_shape1;
const long long S = in0_shape2;
const double M = (double)N * (double)S;
"""

# Statistics and output. in0 x (N, C, S), in1 weight (C,), in2 bias (C,) ->
# out0 y (N, C, S), out1 mean (C,), out2 biased variance (C,), out3 rstd (C,) =
# 1 / sqrt(var + eps), kept for the gradient. Sums accumulate in double around
# the channel's first value (so a constant channel gets a variance of exactly 0
# and offsets do not cancel away the variance); y = (x - mean) * (w * rstd) + b.
_BN_SRC = _SHAPE + r"""
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const float k = in0_p[(long long)c * S];
    double s1 = 0., s2 = 0.;
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) {
            const double d = (double)(x[i] - k);
            s1 += d;
            s2 += d * d;
        }
    }
    const double dm = s1 / M;
    const double var = std::max(s2 / M - dm * dm, 0.);
    const double rstd = 1. / std::sqrt(var + EPS);
    const float mean = (float)(k + dm);
    const float scale = (float)(in1_p[c] * rstd);
    const float b = in2_p[c];
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        float* __restrict__ y = out0_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) y[i] = (x[i] - mean) * scale + b;
    }
    out1_p[c] = mean;
    out2_p[c] = (float)var;
    out3_p[c] = (float)rstd;
}
"""

# Gradient of _BN_SRC. in0 x (N, C, S), in1 weight (C,), in2 mean (C,), in3 rstd
# (C,), in4 gy (N, C, S), in5 gmean (C,), in6 gvar (C,): the gradients of the
# three outputs (zeros for the statistics when they take none) -> out0 dx,
# out1 dweight (C,), out2 dbias (C,). With d = x - mean, xhat = d * rstd, M the
# values per channel: dbias = sum(gy), dweight = sum(gy * xhat),
# dx = w * rstd * (gy - dbias / M - xhat * dweight / M) + gmean / M + gvar * 2 d / M,
# run as dx = k1 * gy + kd * d + k0. NEED_DX leaves dx out.
_BN_GRAD_SRC = _SHAPE + r"""
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const float mean = in2_p[c];
    const double rstd = in3_p[c];
    double a = 0., b = 0.;
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        const float* __restrict__ g = in4_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) {
            const double gv = g[i];
            a += gv;
            b += gv * (double)(x[i] - mean);
        }
    }
    out1_p[c] = (float)(b * rstd);
    out2_p[c] = (float)a;
    if (!NEED_DX) continue;
    const double k1 = (double)in1_p[c] * rstd;
    const float k1f = (float)k1;
    const float k0 = (float)((double)in5_p[c] / M - k1 * a / M);
    const float kd = (float)(2. * (double)in6_p[c] / M - k1 * rstd * rstd * b / M);
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        const float* __restrict__ g = in4_p + ((long long)n * C + c) * S;
        float* __restrict__ dx = out0_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) dx[i] = k1f * g[i] + kd * (x[i] - mean) + k0;
    }
}
"""


def _dims(x):
    return [0] + list(range(2, x.ndim))


def batch_norm_train_plain(x, weight, bias, eps):
    """The plain formulation (what CUDA, MPI and the switch turned off run)."""
    dims = _dims(x)
    mean = x.mean(dims=dims)
    sq_mean = (x * x).mean(dims=dims)
    var = (sq_mean - mean * mean).maximum(0.0)
    scale = weight / jt.sqrt(var + eps)
    shift = bias - mean * scale
    y = x * scale.broadcast(x, dims) + shift.broadcast(x, dims)
    return y, mean, var


class _FusedBatchNorm(jt.Function):
    """The fused kernel with its fused gradient (:data:`_BN_GRAD_SRC`); exact for all
    three outputs (the gradients reaching mean and var included)."""

    def __init__(self, eps):
        self.eps = eps

    def execute(self, x, weight, bias):
        n, c = x.shape[0], x.shape[1]
        s = x.numel() // (n * c)
        self.x, self.weight, self.x_shape = x.reshape((n, c, s)), weight, x.shape
        src = f"#define EPS {float(self.eps)!r}\n" + _BN_SRC
        y, mean, var, self.rstd = jt.code(
            [(n, c, s), (c,), (c,), (c,)], [x.dtype] * 4, [self.x, weight, bias],
            cpu_header=HEADER, cpu_src=src)
        self.mean = mean
        return y.reshape(x.shape), mean, var

    def grad(self, gy, gmean, gvar):
        wanted = [m >= 0 for m in self.input_mask]
        if (gy is None and gmean is None and gvar is None) or not any(wanted):
            return (None,) * len(wanted)
        x, weight = self.x.detach(), self.weight.detach()
        mean, rstd = self.mean.detach(), self.rstd.detach()
        c = weight.shape[0]
        gy = jt.zeros(x.shape, x.dtype) if gy is None else gy.reshape(x.shape)
        gmean = jt.zeros((c,), x.dtype) if gmean is None else gmean
        gvar = jt.zeros((c,), x.dtype) if gvar is None else gvar
        src = f"#define NEED_DX {int(wanted[0])}\n" + _BN_GRAD_SRC
        dx, dweight, dbias = jt.code(
            [x.shape, (c,), (c,)], [x.dtype] * 3,
            [x, weight, mean, rstd, gy, gmean, gvar], cpu_header=HEADER, cpu_src=src)
        grads = (dx.reshape(self.x_shape), dweight, dbias)
        return tuple(t if need else None for t, need in zip(grads, wanted))


def can_use(x):
    return fused_for(x) and x.ndim >= 2 and x.numel() > 0


def batch_norm_train(x, weight, bias, eps):
    """BatchNorm of ``x`` (N, C, ...) with its batch statistics: ``(y, mean, var)``,
    mean and var the biased per-channel statistics over every axis but 1 and
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``."""
    if can_use(x):
        return _FusedBatchNorm(eps)(x, weight, bias)
    return batch_norm_train_plain(x, weight, bias, eps)
