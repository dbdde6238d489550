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
resolution (rotary tables, distance terms, resized depth) is computed once per
stage and shared by its blocks; each block only mixes them with its own
``Geo.weight`` and ``Geo.decay``.
"""
import numpy as np
import jittor as jt
from jittor import nn

from ..layers import (CPU_MATH_HEADER, BatchNorm2d, DropPath, GELU, LayerNorm, fused_cpu, resize,
                      use_fused_cpu_kernels)

__all__ = ["DFormerv2", "dformerv2_s", "dformerv2_b", "dformerv2_l",
           "rotary_angle", "geo_decay", "use_fused_cpu_kernels"]


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
# CPU kernels
#
# On the CPU the hot spots of this network outside the matrix products run as
# small C++ kernels (``jt.code``): depthwise convolutions on channels-last maps
# (no NCHW round trips), the many short masked attentions (no materialised
# (B, heads, L, L) bias/score tensors; biases, key scaling and rotary transform
# applied on the fly) and the channels-last LayerNorms (one read, one write).
# Their gradients are exact: the depthwise input gradient reuses the kernel
# with flipped taps; attention and LayerNorm gradients re-trace the same
# computation with Jittor operators. On CUDA (and after
# ``use_fused_cpu_kernels(False)``) the Jittor-operator formulation runs
# directly; both reproduce the reference.
# ----------------------------------------------------------------------------

# One switch (models.layers.use_fused_cpu_kernels) covers these kernels and the
# shared ones of models.layers (GELU); it is re-exported here.
_fused = fused_cpu


_HEADER = CPU_MATH_HEADER + r"""
#include <vector>
// 16-float vectors (GCC/Clang vector extensions; the compiler maps them to
// AVX-512, AVX2 or NEON registers). The second type allows unaligned access.
typedef float dfv_vec __attribute__((vector_size(64)));
typedef float dfv_uvec __attribute__((vector_size(64), aligned(4)));
static inline dfv_vec dfv_load(const float* p) { return *(const dfv_uvec*)p; }
static inline void dfv_store(float* p, dfv_vec v) { *(dfv_uvec*)p = v; }
// (x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...)
#if defined(__clang__)
#define DFV_SWAP_PAIRS(v) \
    __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14)
#else
typedef int dfv_ivec __attribute__((vector_size(64)));
#define DFV_SWAP_PAIRS(v) \
    __builtin_shuffle(v, (dfv_ivec){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14})
#endif
"""

# Depthwise KxK 'same' convolution of a channels-last map.
# in0: x (B, H, W, C), C a multiple of 16; in1: taps (K, K, C); in2: bias (C,)
# -> out0 (B, H, W, C). With RESIDUAL 1 the input is added to the result
# (the ``x + dwconv(x)`` pattern of the blocks, one pass instead of two).
# Channels go in groups of 64 so the accumulators stay in registers across taps.
_DWCONV_SRC = r"""
const int B = in0_shape0, H = in0_shape1, W = in0_shape2, C = in0_shape3;
const int K = in1_shape0, P = K / 2;
#pragma omp parallel for collapse(2) schedule(static)
for (int b = 0; b < B; b++)
for (int r = 0; r < H; r++) {
    const int i_lo = std::max(0, P - r), i_hi = std::min(K, H + P - r);
    for (int c0 = 0; c0 < W; c0++) {
        const int j_lo = std::max(0, P - c0), j_hi = std::min(K, W + P - c0);
        const long long pix = ((long long)b * H + r) * W + c0;
        for (int cb = 0; cb < C; cb += 64) {
            const int nv = std::min(4, (C - cb) / 16);
            dfv_vec acc[4];
            for (int u = 0; u < 4; u++) {
                if (u >= nv) break;
                acc[u] = dfv_load(in2_p + cb + 16 * u);
#if RESIDUAL
                acc[u] += dfv_load(in0_p + pix * C + cb + 16 * u);
#endif
            }
            for (int i = i_lo; i < i_hi; i++) {
                const float* xrow = in0_p + (pix + (long long)(i - P) * W) * C + cb;
                for (int j = j_lo; j < j_hi; j++) {
                    const float* xi = xrow + (long long)(j - P) * C;
                    const float* ti = in1_p + (i * K + j) * C + cb;
                    if (nv == 4) {
                        acc[0] += dfv_load(xi) * dfv_load(ti);
                        acc[1] += dfv_load(xi + 16) * dfv_load(ti + 16);
                        acc[2] += dfv_load(xi + 32) * dfv_load(ti + 32);
                        acc[3] += dfv_load(xi + 48) * dfv_load(ti + 48);
                    } else {
                        for (int u = 0; u < nv; u++)
                            acc[u] += dfv_load(xi + 16 * u) * dfv_load(ti + 16 * u);
                    }
                }
            }
            for (int u = 0; u < nv; u++) dfv_store(out0_p + pix * C + cb + 16 * u, acc[u]);
        }
    }
}
"""

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

# Masked softmax attention of short sequences, one (sequence, head) per task.
# in0: raw q|k projections (B, H, W, 2C), no bias; in1: values (B, H, W, C);
# in2: depth (B, H, W); in3: decay (heads,); in4: mixing weights (2,);
# in5, in6: q and k biases (C,); in7, in8: rotary sin (sign folded in) and cos
# tables (H*W, D)  ->  out0 (B, H, W, C). Heads of size D (a multiple of 16)
# are packed in C. The kernel adds the biases, scales k by SCALE and applies
# the rotary transform while loading q and k.
# MODE 0: sequences are rows (tokens along W), 1: columns (tokens along H),
# 2: the whole map (Manhattan distance between tokens). Keys and values of a
# sequence are packed (keys transposed, zero-padded to a multiple of 16);
# queries go in blocks of 4 rows so the score and value products run from
# registers.
_ATTN_SRC = r"""
const int B = in1_shape0, H = in1_shape1, W = in1_shape2, C = in1_shape3, S = in0_shape3;
const int NH = C / D;
const float w0 = in4_p[0], w1 = in4_p[1];
#if MODE == 0
const int NSEQ = B * H, L = W;
#elif MODE == 1
const int NSEQ = B * W, L = H;
#else
const int NSEQ = B, L = H * W;
#endif
const int LP = (L + 15) / 16 * 16;
#pragma omp parallel
{
    std::vector<float> kt_buf((size_t)D * LP), vv_buf((size_t)LP * D), s_buf(4 * (size_t)LP);
    std::vector<float> dep_buf(LP), pa_buf(LP), pb_buf(LP);
    float* __restrict__ kt = kt_buf.data();
    float* __restrict__ vv = vv_buf.data();
    float* __restrict__ sb = s_buf.data();
    float* __restrict__ dep = dep_buf.data();
    float* __restrict__ pa = pa_buf.data();
    float* __restrict__ pb = pb_buf.data();
    #pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < NSEQ * NH; task++) {
        const int seq = task / NH, h = task % NH;
        long long tok0, tstep, p0, pstep;   // first token (flat b*H*W index), token step, grid index
#if MODE == 0
        { const int b = seq / H, r = seq % H;
          tok0 = ((long long)b * H + r) * W; tstep = 1; p0 = (long long)r * W; pstep = 1; }
#elif MODE == 1
        { const int b = seq / W, c = seq % W;
          tok0 = (long long)b * H * W + c; tstep = W; p0 = c; pstep = W; }
#else
        { tok0 = (long long)seq * H * W; tstep = 1; p0 = 0; pstep = 1; }
#endif
        const float* qsrc = in0_p + tok0 * S + h * D;
        const float* ksrc = qsrc + C;
        const float* v = in1_p + tok0 * C + h * D;
        float* o = out0_p + tok0 * C + h * D;
        const float* bq = in5_p + h * D;
        const float* bk = in6_p + h * D;
        for (int t = 0; t < LP; t++) {
            if (t < L) {
                const float* kr = ksrc + t * tstep * S;
                const float* sn = in7_p + (p0 + t * pstep) * D;
                const float* cs = in8_p + (p0 + t * pstep) * D;
                for (int u = 0; u < D / 16; u++) {
                    const dfv_vec kv = (dfv_load(kr + 16 * u) + dfv_load(bk + 16 * u)) * SCALE;
                    const dfv_vec rot = kv * dfv_load(cs + 16 * u)
                                      + DFV_SWAP_PAIRS(kv) * dfv_load(sn + 16 * u);
                    for (int e = 0; e < 16; e++) kt[(size_t)(16 * u + e) * LP + t] = rot[e];
                    dfv_store(vv + (size_t)t * D + 16 * u, dfv_load(v + t * tstep * C + 16 * u));
                }
                dep[t] = in2_p[tok0 + t * tstep];
            } else {
                for (int e = 0; e < D; e++) {
                    kt[(size_t)e * LP + t] = 0.f;
                    vv[(size_t)t * D + e] = 0.f;
                }
                dep[t] = 0.f;
            }
#if MODE == 2
            pa[t] = (float)(t / W);
            pb[t] = (float)(t % W);
#else
            pa[t] = (float)t;
            pb[t] = 0.f;
#endif
        }
        const float dec = in3_p[h];
        for (int i0 = 0; i0 < L; i0 += 4) {
            const int nr = std::min(4, L - i0);
            float qb[4][D];
            for (int r = 0; r < 4; r++) {
                const int i = i0 + std::min(r, nr - 1);   // rows past the end repeat the last one
                const float* qr = qsrc + i * tstep * S;
                const float* sn = in7_p + (p0 + i * pstep) * D;
                const float* cs = in8_p + (p0 + i * pstep) * D;
                for (int u = 0; u < D / 16; u++) {
                    const dfv_vec qv = dfv_load(qr + 16 * u) + dfv_load(bq + 16 * u);
                    dfv_store(qb[r] + 16 * u, qv * dfv_load(cs + 16 * u)
                                              + DFV_SWAP_PAIRS(qv) * dfv_load(sn + 16 * u));
                }
            }
            for (int j0 = 0; j0 < LP; j0 += 16) {
                dfv_vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
                for (int e = 0; e < D; e++) {
                    const dfv_vec kv = dfv_load(kt + (size_t)e * LP + j0);
                    a0 += qb[0][e] * kv;
                    a1 += qb[1][e] * kv;
                    a2 += qb[2][e] * kv;
                    a3 += qb[3][e] * kv;
                }
                dfv_store(sb + j0, a0);
                dfv_store(sb + LP + j0, a1);
                dfv_store(sb + 2 * LP + j0, a2);
                dfv_store(sb + 3 * LP + j0, a3);
            }
            float inv[4] = {0.f, 0.f, 0.f, 0.f};
            for (int r = 0; r < nr; r++) {
                float* __restrict__ sr = sb + r * LP;
                const int i = i0 + r;
                const float di = dep[i], ai = pa[i], bi = pb[i];
                float m = -3.0e38f;
                for (int j = 0; j < L; j++) {
#if MODE == 2
                    const float pos = std::fabs(ai - pa[j]) + std::fabs(bi - pb[j]);
#else
                    const float pos = std::fabs(ai - pa[j]);
#endif
                    const float val = sr[j] + (w0 * (pos * dec) + w1 * (std::fabs(di - dep[j]) * dec));
                    sr[j] = val;
                    m = std::max(m, val);
                }
                float sum = 0.f;
                for (int j = 0; j < L; j++) {
                    const float ex = lyr_exp_neg(sr[j] - m);
                    sr[j] = ex;
                    sum += ex;
                }
                inv[r] = 1.f / sum;
            }
            dfv_vec ob[4][D / 16] = {};
            for (int j = 0; j < L; j++) {
                const float p0 = sb[j], p1 = sb[LP + j], p2 = sb[2 * LP + j], p3 = sb[3 * LP + j];
                for (int u = 0; u < D / 16; u++) {
                    const dfv_vec vr = dfv_load(vv + (size_t)j * D + 16 * u);
                    ob[0][u] += p0 * vr;
                    ob[1][u] += p1 * vr;
                    ob[2][u] += p2 * vr;
                    ob[3][u] += p3 * vr;
                }
            }
            for (int r = 0; r < nr; r++)
                for (int u = 0; u < D / 16; u++)
                    dfv_store(o + (i0 + r) * tstep * C + 16 * u, ob[r][u] * inv[r]);
        }
    }
}
"""

ROWS, COLS, FULL = 0, 1, 2


def _dwconv_kernel(x, taps, bias, residual=False):
    src = f"#define RESIDUAL {int(residual)}\n" + _DWCONV_SRC
    return jt.code(x.shape, x.dtype, [x, taps, bias], cpu_header=_HEADER, cpu_src=src)


def _taps(weight, flip=False):
    """(C, 1, K, K) depthwise weight -> (K, K, C) taps, optionally rotated by 180 degrees."""
    c, _, k, _ = weight.shape
    if flip:
        return weight.reindex([k, k, c], ["i2", "0", f"{k - 1}-i0", f"{k - 1}-i1"])
    return weight.reindex([k, k, c], ["i2", "0", "i0", "i1"])


class _DWConvCPU(jt.Function):
    """Depthwise convolution (plus the input when ``residual``) through the C++ kernel."""

    def __init__(self, residual):
        self.residual = residual

    def execute(self, x, weight, bias):
        self.saved = (x, weight)
        return _dwconv_kernel(x, _taps(weight), bias, self.residual)

    def grad(self, g):
        x, weight = self.saved
        b, h, w, c = x.shape
        k = weight.shape[-1]
        p = k // 2
        # input gradient: the same convolution with the taps rotated by 180 degrees
        gx = _dwconv_kernel(g, _taps(weight, flip=True), jt.zeros((c,), dtype=g.dtype), self.residual)
        patches = x.reindex([b, h, w, c, k, k], ["i0", f"i1+i4-{p}", f"i2+i5-{p}", "i3"])
        gw = (patches * g.reindex([b, h, w, c, k, k], ["i0", "i1", "i2", "i3"])).sum([0, 1, 2])
        return gx, gw.reshape((c, 1, k, k)), g.sum([0, 1, 2])


def _to_sequences(t, mode, heads):
    """(B, H, W, C) -> (batch..., L, head_dim) for the given attention mode."""
    b, h, w, c = t.shape
    t = t.reshape((b, h, w, heads, c // heads))
    if mode == ROWS:
        return t.permute(0, 1, 3, 2, 4)                                   # (b, h, n, w, d)
    if mode == COLS:
        return t.permute(0, 2, 3, 1, 4)                                   # (b, w, n, h, d)
    return t.reshape((b, h * w, heads, c // heads)).permute(0, 2, 1, 3)   # (b, n, hw, d)


def _from_sequences(t, mode, shape):
    if mode == ROWS:
        return t.permute(0, 1, 3, 2, 4).reshape(shape)
    if mode == COLS:
        return t.permute(0, 3, 1, 2, 4).reshape(shape)
    return t.permute(0, 2, 1, 3).reshape(shape)


def _rotated_qk(qk, q_bias, k_bias, scaling, geo, heads):
    """q and scaled k (biases added) from the raw projections, rotary-transformed, (B, H, W, C) each."""
    b, h, w, c2 = qk.shape
    c = c2 // 2
    d = c // heads
    sin, cos = geo.sin.reshape((h, w, 1, d)), geo.cos.reshape((h, w, 1, d))
    q = (qk[:, :, :, :c] + q_bias).reshape((b, h, w, heads, d))
    k = ((qk[:, :, :, c:] + k_bias) * scaling).reshape((b, h, w, heads, d))
    return rotate(q, sin, cos).reshape((b, h, w, c)), rotate(k, sin, cos).reshape((b, h, w, c))


def _geo_attention_composite(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode):
    """softmax(q k^T + bias) v over rows, columns or the whole map, with Jittor operators."""
    n = decay.shape[0]
    q, k = _rotated_qk(qk, q_bias, k_bias, scaling, geo, n)
    pos, dep = geo.distances(mode)
    w0, w1 = weight[0, 0, 0, 0], weight[1, 0, 0, 0]
    dec = decay.reshape((1, n, 1, 1) if mode == FULL else (1, 1, n, 1, 1))
    bias = w0 * (pos * dec) + w1 * (dep * dec)
    qs, ks, vs = (_to_sequences(t, mode, n) for t in (q, k, v))
    scores = jt.matmul(qs, ks.transpose(tuple(range(qs.ndim - 2)) + (qs.ndim - 1, qs.ndim - 2)))
    out = jt.matmul(nn.softmax(scores + bias, dim=-1), vs)
    return _from_sequences(out, mode, v.shape)


class _Retraced(jt.Function):
    """A kernel whose gradient comes from re-tracing ``reference`` with Jittor operators.

    Subclasses set ``self.saved`` (the inputs) in ``execute`` and implement
    ``reference(*inputs)``, the same computation as differentiable operators.
    """

    def grad(self, g):
        wanted = [m >= 0 for m in self.input_mask]
        leaves = []
        for t, need in zip(self.saved, wanted):
            t = t.detach()
            if need:
                t.start_grad()
            leaves.append(t)
        with jt.enable_grad():
            out = self.reference(*leaves)
            targets = [t for t, need in zip(leaves, wanted) if need]
            grads = iter(jt.grad((out * g).sum(), targets))
        return tuple(next(grads) if need else None for need in wanted)


class _GeoAttentionCPU(_Retraced):
    def __init__(self, geo, mode, scaling):
        self.geo, self.mode, self.scaling = geo, mode, scaling

    def execute(self, qk, v, decay, weight, q_bias, k_bias):
        self.saved = (qk, v, decay, weight, q_bias, k_bias)
        h, w = self.geo.h, self.geo.w
        defines = (f"#define MODE {self.mode}\n#define D {v.shape[-1] // decay.shape[0]}\n"
                   f"#define SCALE {np.float32(self.scaling):.9g}f\n")
        inputs = [qk, v, self.geo.depth, decay, weight.reshape((2,)), q_bias, k_bias,
                  self.geo.sin.reshape((h * w, -1)), self.geo.cos.reshape((h * w, -1))]
        return jt.code(v.shape, v.dtype, inputs, cpu_header=_HEADER, cpu_src=defines + _ATTN_SRC)

    def reference(self, qk, v, decay, weight, q_bias, k_bias):
        return _geo_attention_composite(qk, v, self.geo, decay, weight, q_bias, k_bias,
                                        self.scaling, self.mode)


class _LayerNormCPU(_Retraced):
    def __init__(self, norm):
        self.norm = norm

    def execute(self, x, weight, bias):
        self.saved = (x, weight, bias)
        c = x.shape[-1]
        src = f"#define EPS {self.norm.eps!r}f\n" + _LAYERNORM_SRC
        y = jt.code((x.numel() // c, c), x.dtype, [x.reshape((-1, c)), weight, bias],
                    cpu_header=_HEADER, cpu_src=src)
        return y.reshape(x.shape)

    def reference(self, x, weight, bias):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) * (x - mean)).mean(-1, keepdims=True)
        return (x - mean) / jt.sqrt(var + self.norm.eps) * weight + bias


class KernelLayerNorm(LayerNorm):
    """``LayerNorm`` over the last axis that runs the C++ kernel on the CPU.

    Still an ``nn.LayerNorm`` module that is called, so parameter groups, state
    dicts and FLOP counting treat it like the reference's ``nn.LayerNorm``
    whichever code path runs.
    """

    def execute(self, x):
        if _fused(x):
            return _LayerNormCPU(self)(x, self.weight, self.bias)
        return super().execute(x)


def geo_attention(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode):
    """Geometry-biased attention of ``mode`` (ROWS, COLS or FULL).

    ``qk`` holds the raw (bias-free) q|k projections (B, H, W, 2C); ``v`` the
    values to attend (B, H, W, C). Returns (B, H, W, C).
    """
    if _fused(qk, v) and (v.shape[-1] // decay.shape[0]) % 16 == 0:
        return _GeoAttentionCPU(geo, mode, scaling)(qk, v, decay, weight, q_bias, k_bias)
    return _geo_attention_composite(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode)


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
        conv = self.dwconv
        if _fused(x) and x.shape[-1] % 16 == 0:
            return _DWConvCPU(residual)(x, conv.weight, conv.bias)
        y = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + y if residual else y


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


class StageGeometry:
    """Per-stage, per-forward quantities shared by all blocks of a stage.

    ``depth`` is the depth map bilinearly resized to the stage grid, (B, h, w).
    ``sin``/``cos`` are the ``(h, w, key_dim)`` rotary tables over the
    flattened token index (float32 like the reference); ``sin`` carries the
    sign of the pair rotation, see :func:`rotate`. Distance terms for the
    Jittor-operator attention are built on first use, see :meth:`distances`.
    """

    def __init__(self, h, w, depth, angle):
        self.h, self.w = h, w
        index = jt.arange(h * w).float32().reshape((h * w, 1))
        phase = index * angle.reshape((1, -1))
        sign = jt.array(np.tile(np.array([-1.0, 1.0], np.float32), angle.shape[0] // 2))
        self.sin = (jt.sin(phase) * sign).reshape((h, w, -1))
        self.cos = jt.cos(phase).reshape((h, w, -1))
        self.depth = resize(depth, (h, w))[:, 0]                          # (B, h, w)
        self._cache = {}

    def distances(self, mode):
        """``(position distance, depth difference)`` shaped to broadcast over the scores of ``mode``.

        ROWS: (1, 1, 1, w, w) and (B, h, 1, w, w); COLS: (1, 1, 1, h, h) and
        (B, w, 1, h, h); FULL: Manhattan (1, 1, hw, hw) and (B, 1, hw, hw).
        """
        if mode not in self._cache:
            d, h, w = self.depth, self.h, self.w
            b = d.shape[0]
            if mode == ROWS:
                pos = _abs_diff(np.arange(w)).reshape((1, 1, 1, w, w))
                dep = (d.reshape((b, h, 1, w, 1)) - d.reshape((b, h, 1, 1, w))).abs()
            elif mode == COLS:
                pos = _abs_diff(np.arange(h)).reshape((1, 1, 1, h, h))
                dt = d.transpose((0, 2, 1))
                dep = (dt.reshape((b, w, 1, h, 1)) - dt.reshape((b, w, 1, 1, h))).abs()
            else:
                rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
                pos = _abs_diff(rows.reshape(-1)) + _abs_diff(cols.reshape(-1))
                pos = pos.reshape((1, 1, h * w, h * w))
                flat = d.reshape((b, h * w))
                dep = (flat.reshape((b, 1, h * w, 1)) - flat.reshape((b, 1, 1, h * w))).abs()
            self._cache[mode] = (jt.array(pos).stop_grad(), dep)
        return self._cache[mode]


def _abs_diff(idx):
    idx = np.asarray(idx, dtype=np.float32)
    return np.abs(idx[:, None] - idx[None, :])


def rotate(x, sin, cos):
    """Rotary transform ``x * cos + rot(x) * sin`` on the last axis.

    ``rot`` maps each pair ``(x0, x1)`` to ``(-x1, x0)``; here it is a swap of
    neighbours with the sign folded into ``sin`` (exact: only signs move).
    """
    idx = [f"i{k}" for k in range(x.ndim)]
    last = idx[-1]
    idx[-1] = f"{last}+1-2*({last}%2)"
    return x * cos + x.reindex(x.shape, idx) * sin


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
        self.layer_norm1 = KernelLayerNorm(embed_dim, eps=1e-6)
        self.layer_norm2 = KernelLayerNorm(embed_dim, eps=1e-6)
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
        rates = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths)).astype(np.float32)]
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
        self.extra_norms = nn.ModuleList([KernelLayerNorm(c) for c in embed_dims[1:]])
        self.init_weights()

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
