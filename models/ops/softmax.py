"""Softmax over the last axis: one OpenMP kernel forward, one backward on the CPU.

On the CPU Jittor runs softmax as several single-threaded passes over the whole
tensor (max, exp, sum, divide), and its gradient likewise; here each row is done
while it sits in cache, the rows spread over the threads.
"""
import jittor as jt

from ._common import HEADER, fused_for

# Rows are processed in blocks of about BLOCK_ELEMS elements, so a tensor of
# many short rows (NMF's (N, 64) coefficients) makes few tasks and a tensor that
# fits in one block skips the parallel region altogether.
BLOCK_ELEMS = 16384
_BLOCKING = r"""
const long long N = in0_shape0;
const int L = in0_shape1;
const long long RB = std::max<long long>(1, BLOCK_ELEMS / L);   // rows per block
const long long NB = (N + RB - 1) / RB;
"""

# Softmax of rows: in0 x (N, L) -> out0 y (N, L). y = exp(x - max) / sum; the
# exponent is <= 0, so lyr_exp_neg applies (terms below e^-80 become 0). Row sums
# (here and in the gradient) accumulate in double: a float sum of 19200 terms
# is off by ~1e-5 relative, a double one costs next to nothing beside the exps.
_SOFTMAX_SRC = _BLOCKING + r"""
#pragma omp parallel for schedule(static) if (NB > 1)
for (long long blk = 0; blk < NB; blk++) {
    const long long end = std::min(N, (blk + 1) * RB);
    for (long long n = blk * RB; n < end; n++) {
        const float* __restrict__ x = in0_p + n * L;
        float* __restrict__ y = out0_p + n * L;
        float m = x[0];
        for (int c = 1; c < L; c++) m = std::max(m, x[c]);
        double sum = 0.;
        for (int c = 0; c < L; c++) {
            const float e = lyr_exp_neg(x[c] - m);
            y[c] = e;
            sum += e;
        }
        const float inv = (float)(1. / sum);
        for (int c = 0; c < L; c++) y[c] *= inv;
    }
}
"""

# Gradient of _SOFTMAX_SRC from its output: in0 y (N, L), in1 dy (N, L) ->
# out0 dx = y * (dy - sum(dy * y)) per row.
_SOFTMAX_GRAD_SRC = _BLOCKING + r"""
#pragma omp parallel for schedule(static) if (NB > 1)
for (long long blk = 0; blk < NB; blk++) {
    const long long end = std::min(N, (blk + 1) * RB);
    for (long long n = blk * RB; n < end; n++) {
        const float* __restrict__ y = in0_p + n * L;
        const float* __restrict__ g = in1_p + n * L;
        float* __restrict__ dx = out0_p + n * L;
        double acc = 0.;
        for (int c = 0; c < L; c++) acc += g[c] * y[c];
        const float dot = (float)acc;
        for (int c = 0; c < L; c++) dx[c] = y[c] * (g[c] - dot);
    }
}
"""


def _rows_kernel(src, inputs):
    return jt.code(inputs[0].shape, inputs[0].dtype, inputs, cpu_header=HEADER,
                   cpu_src=f"#define BLOCK_ELEMS {BLOCK_ELEMS}LL\n" + src)


class _FusedSoftmax(jt.Function):
    """Softmax over the last axis; the gradient needs only the saved output."""

    def execute(self, x):
        length = x.shape[-1]
        y = _rows_kernel(_SOFTMAX_SRC, [x.reshape((x.numel() // length, length))])
        self.y = y
        return y.reshape(x.shape)

    def grad(self, g):
        if g is None:
            return None
        y = self.y.detach()
        dx = _rows_kernel(_SOFTMAX_GRAD_SRC, [y, g.reshape(y.shape)])
        return dx.reshape(g.shape)


def softmax_plain(x, dim=-1):
    return jt.nn.softmax(x, dim)


def _is_last(x, dim):
    return isinstance(dim, int) and x.ndim >= 1 and dim in (-1, x.ndim - 1)


def can_use(x, dim=-1):
    return fused_for(x) and _is_last(x, dim) and x.numel() > 0


def softmax(x, dim=-1):
    """``exp(x) / sum(exp(x))`` along ``dim``; fused on the CPU when ``dim`` is the last axis."""
    if can_use(x, dim):
        return _FusedSoftmax()(x)
    return softmax_plain(x, dim)
