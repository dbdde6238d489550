"""LayerNorm over the last axis of a channels-last tensor: one read and one write on the CPU."""
import jittor as jt

from ._common import HEADER, RetracedFunction, fused_for

# LayerNorm of rows: in0 x (N, C), in1 weight (C,), in2 bias (C,) -> out0 (N, C).
# Two-pass mean / variance per row (the row stays in cache).
_LAYERNORM_SRC = r"""
const long long N = in0_shape0;
const int C = in0_shape1;
#pragma omp parallel for schedule(static)
for (long long n = 0; n < N; n++) {
    const float* __restrict__ x = in0_p + n * C;
    float* __restrict__ y = out0_p + n * C;
    float sum = 0.f;
    for (int c = 0; c < C; c++) sum += x[c];
    const float mean = sum / C;
    float sq = 0.f;
    for (int c = 0; c < C; c++) { const float d = x[c] - mean; sq += d * d; }
    const float rstd = 1.f / std::sqrt(sq / C + EPS);
    for (int c = 0; c < C; c++) y[c] = (x[c] - mean) * rstd * in1_p[c] + in2_p[c];
}
"""


def layer_norm_plain(x, weight, bias, eps):
    centred = x - x.mean(-1, keepdims=True)
    var = (centred * centred).mean(-1, keepdims=True)
    return centred / jt.sqrt(var + eps) * weight + bias


class _FusedLayerNorm(RetracedFunction):
    def __init__(self, eps):
        self.eps = eps

    def execute(self, x, weight, bias):
        self.saved = (x, weight, bias)
        c = x.shape[-1]
        src = f"#define EPS {self.eps!r}f\n" + _LAYERNORM_SRC
        y = jt.code((x.numel() // c, c), x.dtype, [x.reshape((-1, c)), weight, bias],
                    cpu_header=HEADER, cpu_src=src)
        return y.reshape(x.shape)

    def plain(self, x, weight, bias):
        return layer_norm_plain(x, weight, bias, self.eps)


def can_use(x):
    return fused_for(x)


def layer_norm(x, weight, bias, eps):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance)."""
    if can_use(x):
        return _FusedLayerNorm(eps)(x, weight, bias)
    return layer_norm_plain(x, weight, bias, eps)
