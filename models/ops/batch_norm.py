"""BatchNorm in training mode over (N, C, ...) tensors: batch statistics and the
normalised output in one OpenMP kernel on the CPU, the gradient in one more.

Jittor runs the plain formulation (two reductions over all but the channel axis,
then a scale and shift, and as many passes again for the gradient) as
single-threaded generated kernels; here each channel is one task: its values are
read once for the statistics and once for the output, and twice for the gradient.

Both paths, and SyncBN, take every value relative to its channel's first one and
never form E[x^2] - E[x]^2, so they stay accurate at any |mean| / std (in float32:
~1e-6 of the output's scale from |mean| / std = 0.1 to 1000, tests/test_batch_norm.py).
"""
import jittor as jt

from ._common import HEADER, fused_for, scalar

# Both kernels see x as (N, C, S) and sum M = N * S values per channel.
_SHAPE = r"""
const int N = in0_shape0;
const int C = in0_shape1;
const long long S = in0_shape2;
const double M = (double)N * (double)S;
"""

# Statistics and output. in0 x (N, C, S), in1 weight (C,), in2 bias (C,) ->
# out0 y (N, C, S), out1 mean (C,), out2 biased variance (C,), out3 rstd (C,) =
# 1 / sqrt(var + eps) and out4 dm (C,), kept for the gradient. Every value is
# taken relative to its channel's first one, k: the sums accumulate x - k in double
# (so a constant channel gets a variance of exactly 0 and offsets do not cancel
# away the variance), dm = mean - k, and y = (x - k) * (w * rstd) + (b - dm * w * rstd):
# no rounded mean is subtracted from x, so y keeps its accuracy at any |mean| / std.
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
    const double scale = in1_p[c] * rstd;
    const float scalef = (float)scale;
    const float shift = (float)(in2_p[c] - dm * scale);
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        float* __restrict__ y = out0_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) y[i] = (x[i] - k) * scalef + shift;
    }
    out1_p[c] = (float)(k + dm);
    out2_p[c] = (float)var;
    out3_p[c] = (float)rstd;
    out4_p[c] = (float)dm;
}
"""

# Gradient of _BN_SRC. in0 x (N, C, S), in1 weight (C,), in2 dm (C,), in3 rstd
# (C,), in4 gy (N, C, S), in5 gmean (C,), in6 gvar (C,): the gradients of the
# three outputs (zeros for the statistics when they take none) -> out0 dx,
# out1 dweight (C,), out2 dbias (C,). With d = x - mean = (x - k) - dm (k the
# channel's first value, as in the forward), xhat = d * rstd, M the values per
# channel: dbias = sum(gy), dweight = sum(gy * xhat),
# dx = w * rstd * (gy - dbias / M - xhat * dweight / M) + gmean / M + gvar * 2 d / M,
# run as dx = k1 * gy + kd * (x - k) + k0. NEED_DX leaves dx out.
_BN_GRAD_SRC = _SHAPE + r"""
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const float k = in0_p[(long long)c * S];
    const double dm = in2_p[c];
    const double rstd = in3_p[c];
    double a = 0., bk = 0.;
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        const float* __restrict__ g = in4_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) {
            const double gv = g[i];
            a += gv;
            bk += gv * (double)(x[i] - k);
        }
    }
    const double b = bk - dm * a;
    out1_p[c] = (float)(b * rstd);
    out2_p[c] = (float)a;
    if (!NEED_DX) continue;
    const double k1 = (double)in1_p[c] * rstd;
    const double kd = 2. * (double)in6_p[c] / M - k1 * rstd * rstd * b / M;
    const float k1f = (float)k1;
    const float kdf = (float)kd;
    const float k0 = (float)((double)in5_p[c] / M - k1 * a / M - kd * dm);
    for (int n = 0; n < N; n++) {
        const float* __restrict__ x = in0_p + ((long long)n * C + c) * S;
        const float* __restrict__ g = in4_p + ((long long)n * C + c) * S;
        float* __restrict__ dx = out0_p + ((long long)n * C + c) * S;
        for (long long i = 0; i < S; i++) dx[i] = k1f * g[i] + kdf * (x[i] - k) + k0;
    }
}
"""


def _dims(x):
    return [0] + list(range(2, x.ndim))


def _channel_shift(x):
    """Each channel's first value (a constant, no gradient): the sums of the plain
    path run over ``x - shift``, deviations of the order of the spread, so neither
    the mean nor the variance loses digits to cancellation at any ``|mean| / std``
    (a constant channel gets exactly zero variance)."""
    return x.reshape((x.shape[0], x.shape[1], -1))[0, :, 0].stop_grad()


def _shifted(x, shift, dims):
    """``x - shift`` as its own tensor: fused into the next subtraction, -Ofast would
    turn ``(x - shift) - m`` into ``x - (shift + m)`` and round the mean again."""
    return (x - shift.broadcast(x, dims)).stop_fuse()


def _normalize_centred(centred, var, weight, bias, eps, dims):
    scale = weight / jt.sqrt(var + scalar(eps, var))
    return centred * scale.broadcast(centred, dims) + bias.broadcast(centred, dims)


def _mean(v, dims, count):
    """Per-channel mean as sums over one axis at a time (the last first): Jittor sums
    in the tensor's dtype, front to back, and one float32 sum over 4e4 values is ~1e-5
    off; the axis-by-axis sums are ~1e-7 off. Divided by ``count`` (a constant of
    ``v``'s dtype): Jittor's gradient of ``mean`` scales by a float32 1 / count."""
    for axis in sorted(dims, reverse=True):
        v = v.sum(dim=axis)
    return v / count


def _moments(d, dims):
    """Mean, centred values and biased variance of ``d`` per channel (two passes)."""
    count = scalar(d.numel() // d.shape[1], d)
    mean = _mean(d, dims, count)
    centred = d - mean.broadcast(d, dims)
    return mean, centred, _mean(centred * centred, dims, count)


def batch_norm_train_plain(x, weight, bias, eps):
    """The plain formulation (what CUDA and the switch turned off run): two passes
    over the shifted values (:func:`_channel_shift`), in ``x``'s dtype."""
    dims = _dims(x)
    shift = _channel_shift(x)
    dmean, centred, var = _moments(_shifted(x, shift, dims), dims)
    return _normalize_centred(centred, var, weight, bias, eps, dims), shift + dmean, var


def combine_moments(count, mean, m2, reduce_sum):
    """Chan's parallel combination of per-shard statistics.

    Each shard holds ``count`` values with mean ``mean`` and sum of squared
    deviations ``m2`` (per channel); ``reduce_sum`` sums a value over the shards
    (``mpi_all_reduce("add")`` under MPI). Returns the total count, the mean and
    the biased variance of all shards together, without forming E[x^2] - E[x]^2:
    ``M2 = sum(m2_r + n_r (mean_r - mean)^2)``. Works on Jittor Vars and numpy
    arrays alike (a shard axis plus a summing ``reduce_sum`` simulates the shards).
    """
    total = reduce_sum(count)
    overall = reduce_sum(count * mean) / total
    spread = mean - overall
    return total, overall, reduce_sum(m2 + count * spread * spread) / total


def _mpi_sum(v):
    return v.mpi_all_reduce("add")


def _mpi_first(v):
    return v.mpi_broadcast(0)


def batch_norm_train_synced(x, weight, bias, eps, reduce_sum=_mpi_sum, broadcast=_mpi_first):
    """SyncBN: :func:`batch_norm_train_plain` with the statistics of every process's
    batch (``reduce_sum`` / ``broadcast`` default to MPI, the batch sizes may differ).

    All processes shift by the first process's :func:`_channel_shift`, so their means
    are small numbers and :func:`combine_moments` stays exact. Returns ``(y, mean,
    var, count)``, ``count`` the values per channel over all processes (a Var).
    """
    dims = _dims(x)
    shift = broadcast(_channel_shift(x)).stop_grad()
    d = _shifted(x, shift, dims)
    n = x.numel() // x.shape[1]
    local_mean, _, local_var = _moments(d, dims)
    count = jt.full((1,), n, x.dtype)
    count, dmean, var = combine_moments(count, local_mean, local_var * n, reduce_sum)
    centred = d - dmean.broadcast(x, dims)
    return _normalize_centred(centred, var, weight, bias, eps, dims), shift + dmean, var, count


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
        y, mean, var, self.rstd, self.dm = jt.code(
            [(n, c, s), (c,), (c,), (c,), (c,)], [x.dtype] * 5, [self.x, weight, bias],
            cpu_header=HEADER, cpu_src=src)
        return y.reshape(x.shape), mean, var

    def grad(self, gy, gmean, gvar):
        wanted = [m >= 0 for m in self.input_mask]
        if (gy is None and gmean is None and gvar is None) or not any(wanted):
            return (None,) * len(wanted)
        x, weight = self.x.detach(), self.weight.detach()
        dm, rstd = self.dm.detach(), self.rstd.detach()
        c = weight.shape[0]
        gy = jt.zeros(x.shape, x.dtype) if gy is None else gy.reshape(x.shape)
        gmean = jt.zeros((c,), x.dtype) if gmean is None else gmean
        gvar = jt.zeros((c,), x.dtype) if gvar is None else gvar
        src = f"#define NEED_DX {int(wanted[0])}\n" + _BN_GRAD_SRC
        dx, dweight, dbias = jt.code(
            [x.shape, (c,), (c,)], [x.dtype] * 3,
            [x, weight, dm, rstd, gy, gmean, gvar], cpu_header=HEADER, cpu_src=src)
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
