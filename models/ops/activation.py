"""Exact (erf) GELU, optionally of ``x + bias``: one vectorised OpenMP pass on the CPU.

Adding the bias of the preceding Linear inside the kernel saves the separate
element-wise pass Jittor would otherwise run in front of an opaque operator.
"""
import jittor as jt

from ._common import HEADER, fused_for, scalar

# GELU pieces for x: *cdf = Phi(x) = (1 + erf(x / sqrt2)) / 2 and the return
# value pdf = phi(x) = exp(-x^2 / 2) / sqrt(2 pi). erf(z), z >= 0, is
# 1 - t (a1 + t (a2 + ... a5)) exp(-z^2) with t = 1 / (1 + p z)
# (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7); odd symmetry
# gives negative z.
GELU_HEADER = HEADER + r"""
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
    """GELU(x + bias), or for ``grad`` its gradient w.r.t. x."""
    inputs = [x] if grad is None else [x, grad]
    if bias is None:
        defines = "#define ROW 4096\n#define BIAS_TERM(c)\n"
    else:
        defines = (f"#define ROW in{len(inputs)}_shape0\n"
                   f"#define BIAS_TERM(c) + in{len(inputs)}_p[c]\n")
        inputs.append(bias)
    defines += f"#define FORWARD {int(grad is None)}\n"
    return jt.code(x.shape, x.dtype, inputs, cpu_header=GELU_HEADER, cpu_src=defines + _GELU_SRC)


class _FusedGELU(jt.Function):
    def execute(self, x, bias=None):
        self.x, self.bias = x, bias
        return _gelu_kernel(x, bias)

    def grad(self, g):
        dx = _gelu_kernel(self.x, self.bias, g)
        if self.bias is None:
            return dx
        return dx, dx.reshape((-1, self.bias.shape[0])).sum(0)


class _PlainGELU(jt.Function):
    """Exact GELU with its derivative ``cdf(x) + x pdf(x)`` written out: Jittor's own
    gradient of ``erf`` holds 2/sqrt(pi) as a float32 constant (1e-8 off in float64)."""

    def execute(self, x):
        self.x = x
        return x * _cdf(x)

    def grad(self, g):
        x = self.x
        pdf = jt.exp(x * x * -0.5) * scalar(0.3989422804014327, x)      # 1 / sqrt(2 pi)
        return g * (_cdf(x) + x * pdf)


def _cdf(x):
    return (jt.erf(x * scalar(0.7071067811865476, x)) + 1.0) * 0.5     # 1 / sqrt(2)


def gelu_plain(x, bias=None):
    if bias is not None:
        x = x + bias
    return _PlainGELU()(x)


def can_use(x, bias=None):
    return fused_for(x) if bias is None else fused_for(x, bias)


def gelu(x, bias=None):
    """Exact (erf) GELU of ``x``, plus ``bias`` (along the last axis) first when given."""
    if not can_use(x, bias):
        return gelu_plain(x, bias)
    return _FusedGELU()(x) if bias is None else _FusedGELU()(x, bias)
