"""LayerNorm over the last axis of a channels-last tensor: one read and one write on
the CPU, and its gradient (input, weight and bias) in one more kernel."""
import jittor as jt

from ._common import HEADER, fused_for, scalar

# LayerNorm of rows: in0 x (N, C), in1 weight (C,), in2 bias (C,) -> out0 (N, C),
# out1 (N, 2): each row's mean and 1 / sqrt(var + eps), kept for the gradient.
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
    out1_p[2 * n] = mean;
    out1_p[2 * n + 1] = rstd;
}
"""

# Gradient of _LAYERNORM_SRC. in0 x (N, C), in1 weight (C,), in2 the forward's
# (N, 2) row statistics, in3 the output gradient g (N, C)  ->  out0 dx (N, C),
# out1 dweight (C,), out2 dbias (C,). With xhat = (x - mean) * rstd and
# h = g * weight: dx = rstd * (h - mean(h) - xhat * mean(h * xhat)), dweight and
# dbias the column sums of g * xhat and g. Rows go in NCHUNK fixed blocks, each
# summing its dweight / dbias share into its own buffer; the buffers are added
# in block order at the end (the same result whatever the thread count), on one
# thread: a second parallel region costs more than those few adds.
# NEED_DX / NEED_DW leave out the input or the parameter gradients.
_LAYERNORM_GRAD_SRC = r"""
const long long N = in0_shape0;
const int C = in0_shape1;
const int NCHUNK = 64;
const int CV = C / 16 * 16;   // vectorised part of a row; the rest runs scalar
const float inv_c = 1.f / C;
std::vector<float> part_buf(NEED_DW ? (size_t)NCHUNK * 2 * C : 0, 0.f);
float* __restrict__ part = part_buf.data();
#pragma omp parallel for schedule(static)
for (int k = 0; k < NCHUNK; k++) {
    float* __restrict__ dw = part + (size_t)k * 2 * C * NEED_DW;
    float* __restrict__ db = dw + C;
    for (long long n = N * k / NCHUNK; n < N * (k + 1) / NCHUNK; n++) {
        const float* __restrict__ x = in0_p + n * C;
        const float* __restrict__ g = in3_p + n * C;
        const float* __restrict__ w = in1_p;
        const float mean = in2_p[2 * n], rstd = in2_p[2 * n + 1];
        dfv_vec va = {}, vb = {};
        for (int c = 0; c < CV; c += 16) {
            const dfv_vec xh = (dfv_load(x + c) - mean) * rstd;
            const dfv_vec gv = dfv_load(g + c);
            const dfv_vec h = gv * dfv_load(w + c);
            va += h;
            vb += h * xh;
            if (NEED_DW) {
                dfv_store(dw + c, dfv_load(dw + c) + gv * xh);
                dfv_store(db + c, dfv_load(db + c) + gv);
            }
        }
        float a = 0.f, b = 0.f;
        for (int e = 0; e < 16; e++) { a += va[e]; b += vb[e]; }
        for (int c = CV; c < C; c++) {
            const float xh = (x[c] - mean) * rstd;
            const float h = g[c] * w[c];
            a += h;
            b += h * xh;
            if (NEED_DW) {
                dw[c] += g[c] * xh;
                db[c] += g[c];
            }
        }
        if (!NEED_DX) continue;
        a *= inv_c;
        b *= inv_c;
        float* __restrict__ dx = out0_p + n * C;
        for (int c = 0; c < CV; c += 16) {
            const dfv_vec xh = (dfv_load(x + c) - mean) * rstd;
            const dfv_vec h = dfv_load(g + c) * dfv_load(w + c);
            dfv_store(dx + c, (h - a - xh * b) * rstd);
        }
        for (int c = CV; c < C; c++) {
            const float xh = (x[c] - mean) * rstd;
            dx[c] = (g[c] * w[c] - a - xh * b) * rstd;
        }
    }
}
if (NEED_DW) {
    for (int c = 0; c < C; c++) out1_p[c] = out2_p[c] = 0.f;
    for (int k = 0; k < NCHUNK; k++) {
        const float* __restrict__ dw = part + (size_t)k * 2 * C;
        for (int c = 0; c < C; c++) {
            out1_p[c] += dw[c];
            out2_p[c] += dw[C + c];
        }
    }
}
"""


def layer_norm_plain(x, weight, bias, eps):
    # sums times 1/C in x's dtype, not mean(): Jittor's gradient of mean() scales by 1/C
    # as a float32 constant (1e-8 off in float64 when C is not a power of 2)
    inv_c = scalar(1.0 / x.shape[-1], x)
    centred = x - x.sum(-1, keepdims=True) * inv_c
    var = (centred * centred).sum(-1, keepdims=True) * inv_c
    return centred / jt.sqrt(var + scalar(eps, var)) * weight + bias


class _FusedLayerNorm(jt.Function):
    """The fused kernel with its fused gradient (:data:`_LAYERNORM_GRAD_SRC`)."""

    def __init__(self, eps):
        self.eps = eps

    def execute(self, x, weight, bias):
        c = x.shape[-1]
        rows = x.numel() // c
        self.x, self.weight = x.reshape((rows, c)), weight
        src = f"#define EPS {self.eps!r}f\n" + _LAYERNORM_SRC
        y, self.stats = jt.code([(rows, c), (rows, 2)], [x.dtype, x.dtype],
                                [self.x, weight, bias], cpu_header=HEADER, cpu_src=src)
        return y.reshape(x.shape)

    def grad(self, g):
        wanted = [m >= 0 for m in self.input_mask]
        if g is None or not any(wanted):
            return (None,) * len(wanted)
        x, weight, stats = self.x.detach(), self.weight.detach(), self.stats.detach()
        need_dw = wanted[1] or wanted[2]
        src = f"#define NEED_DX {int(wanted[0])}\n#define NEED_DW {int(need_dw)}\n"
        dx, dweight, dbias = jt.code(
            [x.shape, weight.shape, weight.shape], [x.dtype] * 3,
            [x, weight, stats, g.reshape(x.shape)], cpu_header=HEADER,
            cpu_src=src + _LAYERNORM_GRAD_SRC)
        grads = (dx.reshape(g.shape), dweight, dbias)
        return tuple(t if need else None for t, need in zip(grads, wanted))


def can_use(x):
    return fused_for(x)


def layer_norm(x, weight, bias, eps):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance)."""
    if can_use(x):
        return _FusedLayerNorm(eps)(x, weight, bias)
    return layer_norm_plain(x, weight, bias, eps)
