"""DFormerv2's geometry self-attention: softmax(q k^T + prior) v over the rows, the
columns or the whole map of a channels-last grid.

The prior is the additive bias ``w0 * (dist(i, j) * decay) + w1 * (|d_i - d_j| * decay)``
of the token pair; queries and keys get the q/k biases, the key scaling and a rotary
position encoding first. Fused: the forward and the gradient each run one OpenMP
task per (sequence, head), with no materialised (B, heads, L, L) bias or score
tensors (the gradient recomputes the scores a few query rows at a time).
"""
import numpy as np
import jittor as jt
from jittor import nn

from ._common import HEADER, VECTOR_WIDTH, fused_for, scalar
from .interpolate import resize

ROWS, COLS, FULL = 0, 1, 2

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

# Gradient of _ATTN_SRC, one (sequence, head) per task like the forward.
# in0..in8 as in _ATTN_SRC; in9: the forward output O, in10: its gradient dO
# (B, H, W, C)  ->  out0: gradient of the raw q|k projections (B, H, W, 2C),
# out1: gradient of the values (B, H, W, C), out2: (tasks, 2) sums over the
# task's token pairs of dS * distance and dS * |depth difference|, from which
# the caller forms the decay and mixing-weight gradients.
# Scores and probabilities are recomputed 4 query rows at a time (keys, values
# transposed and keys row-major packed per task as in the forward), with
# dS = P (dO v^T - rowsum(dO * O)); dV and dK accumulate in per-task buffers,
# dQ in registers. Gradients go back through the rotary transform (its
# transpose: y cos + swap(y sin)) and the key scale.
_ATTN_GRAD_SRC = r"""
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
    std::vector<float> kt_buf((size_t)D * LP), vt_buf((size_t)D * LP), kk_buf((size_t)LP * D);
    std::vector<float> dv_buf((size_t)LP * D), dk_buf((size_t)LP * D);
    std::vector<float> p_buf(4 * (size_t)LP), g_buf(4 * (size_t)LP);
    std::vector<float> dep_buf(LP), pa_buf(LP), pb_buf(LP);
    float* __restrict__ kt = kt_buf.data();
    float* __restrict__ vt = vt_buf.data();
    float* __restrict__ kk = kk_buf.data();
    float* __restrict__ dvb = dv_buf.data();
    float* __restrict__ dkb = dk_buf.data();
    float* __restrict__ pbuf = p_buf.data();
    float* __restrict__ gbuf = g_buf.data();
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
        const float* o = in9_p + tok0 * C + h * D;
        const float* dout = in10_p + tok0 * C + h * D;
        float* dq_out = out0_p + tok0 * S + h * D;
        float* dk_out = dq_out + C;
        float* dv_out = out1_p + tok0 * C + h * D;
        const float* bq = in5_p + h * D;
        const float* bk = in6_p + h * D;
        for (int t = 0; t < LP; t++) {
            if (t < L) {
                const float* kr = ksrc + t * tstep * S;
                const float* vr = v + t * tstep * C;
                const float* sn = in7_p + (p0 + t * pstep) * D;
                const float* cs = in8_p + (p0 + t * pstep) * D;
                for (int u = 0; u < D / 16; u++) {
                    const dfv_vec kv = (dfv_load(kr + 16 * u) + dfv_load(bk + 16 * u)) * SCALE;
                    const dfv_vec rot = kv * dfv_load(cs + 16 * u)
                                      + DFV_SWAP_PAIRS(kv) * dfv_load(sn + 16 * u);
                    dfv_store(kk + (size_t)t * D + 16 * u, rot);
                    for (int e = 0; e < 16; e++) {
                        kt[(size_t)(16 * u + e) * LP + t] = rot[e];
                        vt[(size_t)(16 * u + e) * LP + t] = vr[16 * u + e];
                    }
                }
                dep[t] = in2_p[tok0 + t * tstep];
            } else {
                for (int e = 0; e < D; e++) {
                    kt[(size_t)e * LP + t] = 0.f;
                    vt[(size_t)e * LP + t] = 0.f;
                    kk[(size_t)t * D + e] = 0.f;
                }
                dep[t] = 0.f;
            }
            for (int e = 0; e < D; e++) {
                dvb[(size_t)t * D + e] = 0.f;
                dkb[(size_t)t * D + e] = 0.f;
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
        double sum_pos = 0.0, sum_dep = 0.0;
        for (int i0 = 0; i0 < L; i0 += 4) {
            const int nr = std::min(4, L - i0);
            float qb[4][D], gb[4][D];   // rotated queries and output gradients of the rows
            float delta[4] = {0.f, 0.f, 0.f, 0.f};
            for (int r = 0; r < 4; r++) {
                const int i = i0 + std::min(r, nr - 1);   // rows past the end repeat the last one
                const float* qr = qsrc + i * tstep * S;
                const float* sn = in7_p + (p0 + i * pstep) * D;
                const float* cs = in8_p + (p0 + i * pstep) * D;
                dfv_vec dsum = {};
                for (int u = 0; u < D / 16; u++) {
                    const dfv_vec qv = dfv_load(qr + 16 * u) + dfv_load(bq + 16 * u);
                    dfv_store(qb[r] + 16 * u, qv * dfv_load(cs + 16 * u)
                                              + DFV_SWAP_PAIRS(qv) * dfv_load(sn + 16 * u));
                    const dfv_vec gv = dfv_load(dout + i * tstep * C + 16 * u);
                    dfv_store(gb[r] + 16 * u, gv);
                    dsum += gv * dfv_load(o + i * tstep * C + 16 * u);
                }
                for (int e = 0; e < 16; e++) delta[r] += dsum[e];
            }
            // scores into pbuf, dO v^T into gbuf
            for (int j0 = 0; j0 < LP; j0 += 16) {
                dfv_vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
                dfv_vec c0 = {}, c1 = {}, c2 = {}, c3 = {};
                for (int e = 0; e < D; e++) {
                    const dfv_vec kv = dfv_load(kt + (size_t)e * LP + j0);
                    const dfv_vec vv = dfv_load(vt + (size_t)e * LP + j0);
                    a0 += qb[0][e] * kv;
                    a1 += qb[1][e] * kv;
                    a2 += qb[2][e] * kv;
                    a3 += qb[3][e] * kv;
                    c0 += gb[0][e] * vv;
                    c1 += gb[1][e] * vv;
                    c2 += gb[2][e] * vv;
                    c3 += gb[3][e] * vv;
                }
                dfv_store(pbuf + j0, a0);
                dfv_store(pbuf + LP + j0, a1);
                dfv_store(pbuf + 2 * LP + j0, a2);
                dfv_store(pbuf + 3 * LP + j0, a3);
                dfv_store(gbuf + j0, c0);
                dfv_store(gbuf + LP + j0, c1);
                dfv_store(gbuf + 2 * LP + j0, c2);
                dfv_store(gbuf + 3 * LP + j0, c3);
            }
            // probabilities into pbuf, dS into gbuf; rows past the end get zeros
            for (int r = 0; r < 4; r++) {
                float* __restrict__ pr = pbuf + r * LP;
                float* __restrict__ gr = gbuf + r * LP;
                if (r >= nr) {
                    for (int j = 0; j < L; j++) pr[j] = gr[j] = 0.f;
                    continue;
                }
                const int i = i0 + r;
                const float di = dep[i], ai = pa[i], bi = pb[i];
                float m = -3.0e38f;
                for (int j = 0; j < L; j++) {
#if MODE == 2
                    const float pos = std::fabs(ai - pa[j]) + std::fabs(bi - pb[j]);
#else
                    const float pos = std::fabs(ai - pa[j]);
#endif
                    const float val = pr[j] + (w0 * (pos * dec) + w1 * (std::fabs(di - dep[j]) * dec));
                    pr[j] = val;
                    m = std::max(m, val);
                }
                float sum = 0.f;
                for (int j = 0; j < L; j++) {
                    const float ex = lyr_exp_neg(pr[j] - m);
                    pr[j] = ex;
                    sum += ex;
                }
                const float inv = 1.f / sum, dl = delta[r];
                float spos = 0.f, sdep = 0.f;
                for (int j = 0; j < L; j++) {
#if MODE == 2
                    const float pos = std::fabs(ai - pa[j]) + std::fabs(bi - pb[j]);
#else
                    const float pos = std::fabs(ai - pa[j]);
#endif
                    const float p = pr[j] * inv;
                    const float ds = p * (gr[j] - dl);
                    pr[j] = p;
                    gr[j] = ds;
                    spos += ds * pos;
                    sdep += ds * std::fabs(di - dep[j]);
                }
                sum_pos += spos;
                sum_dep += sdep;
            }
            // dV += P^T dO, dK += dS^T Q, dQ = dS K
            dfv_vec dq[4][D / 16] = {};
            for (int j = 0; j < L; j++) {
                const float pj0 = pbuf[j], pj1 = pbuf[LP + j], pj2 = pbuf[2 * LP + j], pj3 = pbuf[3 * LP + j];
                const float sj0 = gbuf[j], sj1 = gbuf[LP + j], sj2 = gbuf[2 * LP + j], sj3 = gbuf[3 * LP + j];
                for (int u = 0; u < D / 16; u++) {
                    float* dvr = dvb + (size_t)j * D + 16 * u;
                    float* dkr = dkb + (size_t)j * D + 16 * u;
                    dfv_store(dvr, dfv_load(dvr) + pj0 * dfv_load(gb[0] + 16 * u)
                                   + pj1 * dfv_load(gb[1] + 16 * u) + pj2 * dfv_load(gb[2] + 16 * u)
                                   + pj3 * dfv_load(gb[3] + 16 * u));
                    dfv_store(dkr, dfv_load(dkr) + sj0 * dfv_load(qb[0] + 16 * u)
                                   + sj1 * dfv_load(qb[1] + 16 * u) + sj2 * dfv_load(qb[2] + 16 * u)
                                   + sj3 * dfv_load(qb[3] + 16 * u));
                    const dfv_vec kv = dfv_load(kk + (size_t)j * D + 16 * u);
                    dq[0][u] += sj0 * kv;
                    dq[1][u] += sj1 * kv;
                    dq[2][u] += sj2 * kv;
                    dq[3][u] += sj3 * kv;
                }
            }
            for (int r = 0; r < nr; r++) {
                const int i = i0 + r;
                const float* sn = in7_p + (p0 + i * pstep) * D;
                const float* cs = in8_p + (p0 + i * pstep) * D;
                for (int u = 0; u < D / 16; u++) {
                    const dfv_vec y = dq[r][u];
                    dfv_store(dq_out + i * tstep * S + 16 * u,
                              y * dfv_load(cs + 16 * u) + DFV_SWAP_PAIRS(y * dfv_load(sn + 16 * u)));
                }
            }
        }
        for (int t = 0; t < L; t++) {
            const float* sn = in7_p + (p0 + t * pstep) * D;
            const float* cs = in8_p + (p0 + t * pstep) * D;
            for (int u = 0; u < D / 16; u++) {
                const dfv_vec y = dfv_load(dkb + (size_t)t * D + 16 * u);
                dfv_store(dk_out + t * tstep * S + 16 * u,
                          (y * dfv_load(cs + 16 * u) + DFV_SWAP_PAIRS(y * dfv_load(sn + 16 * u))) * SCALE);
                dfv_store(dv_out + t * tstep * C + 16 * u, dfv_load(dvb + (size_t)t * D + 16 * u));
            }
        }
        out2_p[2 * task] = (float)sum_pos;
        out2_p[2 * task + 1] = (float)sum_dep;
    }
}
"""


class StageGeometry:
    """The attention inputs that depend only on a stage's grid and depth map, built
    once per forward and shared by the blocks of the stage.

    ``depth`` is the depth map bilinearly resized to the stage grid, (B, h, w).
    ``sin``/``cos`` are the ``(h, w, key_dim)`` rotary tables over the
    flattened token index (in the angles' dtype, as the reference); ``sin`` carries the
    sign of the pair rotation, see :func:`rotate`. Distance terms for the
    plain attention are built on first use, see :meth:`distances`.
    """

    def __init__(self, h, w, depth, angle):
        self.h, self.w = h, w
        index = jt.arange(h * w).cast(angle.dtype).reshape((h * w, 1))
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
    k = ((qk[:, :, :, c:] + k_bias) * scalar(scaling, qk)).reshape((b, h, w, heads, d))
    return rotate(q, sin, cos).reshape((b, h, w, c)), rotate(k, sin, cos).reshape((b, h, w, c))


def geo_attention_plain(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode):
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


class _FusedGeoAttention(jt.Function):
    """The fused kernel with its fused gradient (:data:`_ATTN_GRAD_SRC`)."""

    def __init__(self, geo, mode, scaling):
        self.geo, self.mode, self.scaling = geo, mode, scaling

    def _kernel(self, shapes, dtypes, inputs, src):
        h, w = self.geo.h, self.geo.w
        qk, v, decay, weight, q_bias, k_bias = inputs[:6]
        defines = (f"#define MODE {self.mode}\n#define D {v.shape[-1] // decay.shape[0]}\n"
                   f"#define SCALE {np.float32(self.scaling):.9g}f\n")
        args = [qk, v, self.geo.depth, decay, weight.reshape((2,)), q_bias, k_bias,
                self.geo.sin.reshape((h * w, -1)), self.geo.cos.reshape((h * w, -1))]
        return jt.code(shapes, dtypes, args + list(inputs[6:]), cpu_header=HEADER,
                       cpu_src=defines + src)

    def execute(self, qk, v, decay, weight, q_bias, k_bias):
        self.saved = (qk, v, decay, weight, q_bias, k_bias)
        self.out = self._kernel(v.shape, v.dtype, self.saved, _ATTN_SRC)
        return self.out

    def grad(self, g):
        wanted = [m >= 0 for m in self.input_mask]
        if g is None or not any(wanted):
            return (None,) * len(wanted)
        qk, v, decay, weight, q_bias, k_bias = (t.detach() for t in self.saved)
        b, h, w, c = v.shape
        heads = decay.shape[0]
        tasks = {ROWS: b * h, COLS: b * w, FULL: b}[self.mode] * heads
        d_qk, d_v, sums = self._kernel(
            [qk.shape, v.shape, (tasks, 2)], [qk.dtype, v.dtype, v.dtype],
            (qk, v, decay, weight, q_bias, k_bias, self.out.detach(), g), _ATTN_GRAD_SRC)
        sums = sums.reshape((-1, heads, 2)).sum(0)          # (heads, 2): dS-weighted distances
        w0, w1 = weight[0, 0, 0, 0], weight[1, 0, 0, 0]
        d_decay = w0 * sums[:, 0] + w1 * sums[:, 1]
        d_weight = (sums * decay.reshape((heads, 1))).sum(0).reshape((2, 1, 1, 1))
        d_bias = d_qk.reshape((-1, 2 * c)).sum(0)
        grads = (d_qk, d_v, d_decay, d_weight, d_bias[:c], d_bias[c:])
        return tuple(t if need else None for t, need in zip(grads, wanted))


def can_use(qk, v, decay):
    return fused_for(qk, v) and (v.shape[-1] // decay.shape[0]) % VECTOR_WIDTH == 0


def geo_attention(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode):
    """Geometry-biased attention of ``mode`` (ROWS, COLS or FULL) on the grid of ``geo``.

    ``qk`` holds the raw (bias-free) q|k projections (B, H, W, 2C), ``v`` the
    values (B, H, W, C); ``decay`` (heads,) and ``weight`` (2, 1, 1, 1) are the
    block's prior parameters, ``scaling`` the key scale. Returns (B, H, W, C).
    """
    if can_use(qk, v, decay):
        return _FusedGeoAttention(geo, mode, scaling)(qk, v, decay, weight, q_bias, k_bias)
    return geo_attention_plain(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode)
