"""Depthwise ``k x k`` convolution (stride 1, 'same' padding) of a channels-last
tensor, plus bias, plus the input itself when ``residual`` (``x + dwconv(x)``),
optionally followed by GELU.

Fused paths never leave the (B, H, W, C) layout: taps up to 5x5 run in an
OpenMP kernel (faster than oneDNN there; the bias, the residual and, without
gradients, the GELU come free in the same pass); larger taps, or channel counts
the kernel cannot vectorise, run oneDNN's convolution with NHWC memory tags.
The weight and bias gradients of every tap size come from one OpenMP kernel
(oneDNN's depthwise weight gradient is ~20x slower at 7x7), except for channel
counts it cannot vectorise. The plain path transposes to NCHW for Jittor's own
convolution.
"""
import jittor as jt
from jittor import nn

from ._common import HEADER, VECTOR_WIDTH, fused_for
from .activation import GELU_HEADER, gelu as _gelu

_KERNEL_MAX_TAPS = 5

# in0: x (B, H, W, C), C a multiple of 16; in1: taps (K, K, C); in2: bias (C,)
# -> out0 (B, H, W, C). With RESIDUAL 1 the input is added to the result; with
# GELU_OUT defined the result goes through GELU before it is stored (one pass
# instead of two over the widest tensor of DFormer's MLP). Channels go in groups
# of 64 so the accumulators stay in registers across taps.
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
#ifdef GELU_OUT
            float* __restrict__ o = out0_p + pix * C + cb;     // still in L1
#pragma omp simd
            for (int l = 0; l < 16 * nv; l++) {
                float cdf;
                lyr_gelu_parts(o[l], &cdf);
                o[l] *= cdf;
            }
#endif
        }
    }
}
"""

# in0: x (B, H, W, C), in1: dy (B, H, W, C), C a multiple of 16; KT (a #define)
# the tap size -> out0: weight gradient (C, 1, KT, KT), out1: bias gradient (C,).
# Tasks are (chunk of image rows, 16 channels); each task sums its rows into its
# own slot of a scratch buffer, and the slots are added up in chunk order at the
# end: the chunking does not depend on the thread count, so neither do the values.
# Within a row, for each tap row i the KT taps of one 16-channel vector stay in
# registers while the output row slides past the input row.
_DWCONV_WGRAD_SRC = r"""
const int B = in0_shape0, H = in0_shape1, W = in0_shape2, C = in0_shape3;
constexpr int K = KT, P = KT / 2, KK = KT * KT;
constexpr int NG = KT <= 3 ? 4 : 2;              // 16-channel vectors per task
constexpr int SLOT = (KK + 1) * 16 * NG;
const int NV = C / 16, NGR = (NV + NG - 1) / NG, rows = B * H;
// chunks of at least ~64 pixels, at most 32 chunks; a function of the shape only
const int per = std::max((rows + 31) / 32, std::min(rows, (63 + W) / W));
const int nchunk = (rows + per - 1) / per;
float* part = new float[(size_t)nchunk * NGR * SLOT];
#pragma omp parallel for collapse(2) schedule(dynamic)
for (int t = 0; t < nchunk; t++)
for (int v = 0; v < NGR; v++) {
    const int nv = std::min(NG, NV - v * NG);
    dfv_vec tot[KK + 1][NG];
    for (int q = 0; q <= KK; q++)
        for (int u = 0; u < NG; u++) tot[q][u] = (dfv_vec){};
    const int g_hi = std::min(rows, (t + 1) * per);
    for (int g = t * per; g < g_hi; g++) {
        const int b = g / H, r = g - b * H;
        const float* dr = in1_p + (long long)g * W * C + v * NG * 16;
        for (int c0 = 0; c0 < W; c0++)
            for (int u = 0; u < nv; u++) tot[KK][u] += dfv_load(dr + (long long)c0 * C + u * 16);
        const int i_lo = std::max(0, P - r), i_hi = std::min(K, H + P - r);
        for (int i = i_lo; i < i_hi; i++) {
            const float* xr = in0_p + ((long long)b * H + r + i - P) * W * C + v * NG * 16;
            dfv_vec a[NG][K];
            for (int u = 0; u < NG; u++)
                for (int j = 0; j < K; j++) a[u][j] = (dfv_vec){};
            // Every index into a[][] is a compile-time constant (full unrolling), so the
            // accumulators stay in registers; edge columns mask the taps off the image.
            for (int c0 = 0; c0 < W; c0++) {
                const float* dc = dr + (long long)c0 * C;
                const float* xc = xr + (long long)(c0 - P) * C;
                if (nv == NG && c0 >= P && c0 + P < W) {
#pragma GCC unroll 8
                    for (int u = 0; u < NG; u++) {
                        const dfv_vec d = dfv_load(dc + u * 16);
#pragma GCC unroll 8
                        for (int j = 0; j < K; j++)
                            a[u][j] += dfv_load(xc + (long long)j * C + u * 16) * d;
                    }
                } else {
#pragma GCC unroll 8
                    for (int u = 0; u < NG; u++) {
                        if (u >= nv) break;
                        const dfv_vec d = dfv_load(dc + u * 16);
#pragma GCC unroll 8
                        for (int j = 0; j < K; j++)
                            if (c0 + j - P >= 0 && c0 + j - P < W)
                                a[u][j] += dfv_load(xc + (long long)j * C + u * 16) * d;
                    }
                }
            }
            for (int j = 0; j < K; j++)
                for (int u = 0; u < NG; u++) tot[i * K + j][u] += a[u][j];
        }
    }
    float* slot = part + ((size_t)t * NGR + v) * SLOT;
    for (int q = 0; q <= KK; q++)
        for (int u = 0; u < NG; u++) dfv_store(slot + (q * NG + u) * 16, tot[q][u]);
}
#pragma omp parallel for schedule(static)
for (int v = 0; v < NGR; v++) {
    const int nv = std::min(NG, NV - v * NG);
    for (int q = 0; q <= KK; q++)
    for (int u = 0; u < nv; u++) {
        const size_t off = (size_t)v * SLOT + (q * NG + u) * 16;
        dfv_vec s = dfv_load(part + off);
        for (int t = 1; t < nchunk; t++) s += dfv_load(part + (size_t)t * NGR * SLOT + off);
        for (int l = 0; l < 16; l++) {
            const int c = (v * NG + u) * 16 + l;
            if (q < KK) out0_p[(long long)c * KK + q] = s[l];
            else out1_p[c] = s[l];
        }
    }
}
delete[] part;
"""

_NHWC = ("acdb", "oihw", "acdb")   # oneDNN memory tags of input, weight and output


def _onednn():
    """Jittor's oneDNN custom ops, or None (no oneDNN, or running on CUDA)."""
    if jt.flags.use_cuda:
        return None
    from jittor import compile_extern
    return getattr(compile_extern, "mkl_ops", None)


def _taps(weight, flip=False):
    """(C, 1, K, K) depthwise weight -> (K, K, C) taps, optionally rotated by 180 degrees."""
    c, _, k, _ = weight.shape
    if flip:
        return weight.reindex([k, k, c], ["i2", "0", f"{k - 1}-i0", f"{k - 1}-i1"])
    return weight.reindex([k, k, c], ["i2", "0", "i0", "i1"])


def _kernel(x, taps, bias, residual, gelu=False):
    src = (f"#define RESIDUAL {int(residual)}\n" + ("#define GELU_OUT\n" if gelu else "")
           + _DWCONV_SRC)
    return jt.code(x.shape, x.dtype, [x, taps, bias], cpu_header=GELU_HEADER if gelu else HEADER,
                   cpu_src=src)


def _kernel_applies(x, weight):
    return weight.shape[-1] <= _KERNEL_MAX_TAPS and x.shape[-1] % VECTOR_WIDTH == 0


def _weight_grad(x, dy, k):
    """Gradient of the (C, 1, k, k) weight: oneDNN, else a sum over reindexed patches."""
    b, h, w, c = x.shape
    p = k // 2
    onednn = _onednn()
    if onednn is not None:
        return onednn.mkl_conv_backward_w(x, dy, k, k, 1, 1, p, p, 1, 1, c, *_NHWC)
    patches = x.reindex([b, h, w, c, k, k], ["i0", f"i1+i4-{p}", f"i2+i5-{p}", "i3"])
    gw = (patches * dy.reindex([b, h, w, c, k, k], ["i0", "i1", "i2", "i3"])).sum([0, 1, 2])
    return gw.reshape((c, 1, k, k))


def _weight_bias_grad_kernel(x, dy, k):
    """(C, 1, k, k) weight and (C,) bias gradients in one OpenMP pass (C a multiple of 16)."""
    c = x.shape[-1]
    src = f"#define KT {int(k)}\n" + _DWCONV_WGRAD_SRC
    gw, gb = jt.code([(c, 1, k, k), (c,)], [x.dtype, x.dtype], [x, dy], cpu_header=HEADER,
                     cpu_src=src)
    return gw, gb


class _FusedDepthwiseConv(jt.Function):
    """Both fused paths; the input gradient is the same convolution with the taps
    rotated by 180 degrees (plus the output gradient itself when ``residual``)."""

    def __init__(self, residual, use_kernel):
        self.residual, self.use_kernel = residual, use_kernel

    def execute(self, x, weight, bias):
        self.x, self.weight = x, weight
        if self.use_kernel:
            return _kernel(x, _taps(weight), bias, self.residual)
        p, c = weight.shape[-1] // 2, weight.shape[0]
        y = _onednn().mkl_conv(x, weight, 1, 1, p, p, 1, 1, c, *_NHWC) + bias
        return x + y if self.residual else y

    def grad(self, dy):
        x, weight = self.x, self.weight
        c, k = weight.shape[0], weight.shape[-1]
        p = k // 2
        if self.use_kernel:
            dx = _kernel(dy, _taps(weight, flip=True), jt.zeros((c,), dtype=dy.dtype), self.residual)
        else:
            dx = _onednn().mkl_conv_backward_x(weight, dy, x.shape[1], x.shape[2], 1, 1, p, p,
                                               1, 1, c, *_NHWC)
            if self.residual:
                dx = dx + dy
        if x.shape[-1] % VECTOR_WIDTH == 0:
            gw, gb = _weight_bias_grad_kernel(x, dy, k)
        else:
            gw, gb = _weight_grad(x, dy, k), dy.sum([0, 1, 2])
        return dx, gw, gb


def depthwise_conv_plain(x, weight, bias, residual=False):
    y = nn.conv2d(x.permute(0, 3, 1, 2), weight, bias, 1, weight.shape[-1] // 2, 1, weight.shape[0])
    y = y.permute(0, 2, 3, 1)
    return x + y if residual else y


def can_use(x, weight):
    return fused_for(x) and (_kernel_applies(x, weight) or _onednn() is not None)


def depthwise_conv(x, weight, bias, residual=False, gelu=False):
    """``dwconv(x) + bias`` of x (B, H, W, C) with weight (C, 1, k, k);
    ``x + dwconv(x) + bias`` when ``residual``; GELU of that when ``gelu``."""
    if not can_use(x, weight):
        y = depthwise_conv_plain(x, weight, bias, residual)
    elif gelu and jt.flags.no_grad and _kernel_applies(x, weight):
        return _kernel(x, _taps(weight), bias, residual, gelu=True)
    else:
        y = _FusedDepthwiseConv(residual, _kernel_applies(x, weight))(x, weight, bias)
    return _gelu(y) if gelu else y
