"""Pixel-wise cross-entropy with an ignore label, as the reference segmentor computes it.

On the CPU (float32 logits, fused kernels on) the per-pixel loss and its gradient
run as two OpenMP kernels (Jittor's own kernels are single-threaded, and the
plain formulation makes several passes over the (B, K, H, W) logits); the plain
Jittor formulation (what CUDA runs) gives the same values to float rounding.
"""
import jittor as jt
from jittor import nn

from models.ops._common import HEADER, fused_for

__all__ = ["cross_entropy", "CrossEntropyLoss"]

# Per block of NL pixels of one image: the class maximum, then the sum of exp(x - max)
# and the target logit in one more pass over the classes. A label outside [0, K)
# other than the ignore label acts as a target of shifted logit 0, as in the plain path.
_CE_HEADER = HEADER + r"""
static constexpr int CE_NL = 64;
// x: logits of one image from the block's first pixel (class stride N); lb: labels.
// NC > 0: a full block of NC pixels (compile-time trip counts, so the loops vectorise).
template <int NC>
static inline void ce_forward_block(const float* x, long long N, int K, const int* lb, int n_rt,
                                    int ignore, float* loss, float* lse) {
    const int n = NC > 0 ? NC : n_rt;
    float m[CE_NL], s[CE_NL], tz[CE_NL];
    for (int l = 0; l < n; l++) m[l] = x[l];
    for (int k = 1; k < K; k++)
        for (int l = 0; l < n; l++) m[l] = std::max(m[l], x[k * N + l]);
    for (int l = 0; l < n; l++) { s[l] = 0.0f; tz[l] = 0.0f; }
    for (int k = 0; k < K; k++)
        for (int l = 0; l < n; l++) {
            const float z = x[k * N + l] - m[l];
            s[l] += lyr_exp_neg(z);
            tz[l] = lb[l] == k ? z : tz[l];
        }
    for (int l = 0; l < n; l++) {
        const float ls = std::log(s[l]);
        loss[l] = lb[l] != ignore ? ls - tz[l] : 0.0f;
        lse[l] = m[l] + ls;
    }
}
// d logits = g (softmax - onehot) at valid pixels, 0 at ignored ones.
template <int NC>
static inline void ce_backward_block(const float* x, long long N, int K, const int* lb, int n_rt,
                                     int ignore, const float* lse, const float* g, float* dx) {
    const int n = NC > 0 ? NC : n_rt;
    float gl[CE_NL];
    for (int l = 0; l < n; l++) gl[l] = lb[l] != ignore ? g[l] : 0.0f;
    for (int k = 0; k < K; k++)
        for (int l = 0; l < n; l++) {
            const float p = lyr_exp_neg(std::min(x[k * N + l] - lse[l], 0.0f));
            dx[k * N + l] = gl[l] * (lb[l] == k ? p - 1.0f : p);
        }
}
"""

_CE_LOOP = r"""
const int B = in0_shape0, K = in0_shape1;
const long long N = (long long)in0_shape2 * in0_shape3;
const long long nblk = (N + CE_NL - 1) / CE_NL;
#pragma omp parallel for collapse(2) schedule(static)
for (int b = 0; b < B; b++)
for (long long blk = 0; blk < nblk; blk++) {
    const long long p0 = blk * CE_NL, pix = (long long)b * N + p0;
    const float* x = in0_p + (long long)b * K * N + p0;
    const int* lb = in1_p + pix;
    if (N - p0 >= CE_NL) BODY(CE_NL, 0) else BODY(0, (int)(N - p0))
}
"""

_CE_FORWARD_SRC = ("#define BODY(NC, n) { ce_forward_block<NC>(x, N, K, lb, n, IGNORE, out0_p + pix, "
                   "out1_p + pix); }\n" + _CE_LOOP)
_CE_BACKWARD_SRC = ("#define BODY(NC, n) { ce_backward_block<NC>(x, N, K, lb, n, IGNORE, in2_p + pix, "
                    "in3_p + pix, out0_p + (long long)b * K * N + p0); }\n" + _CE_LOOP)


class _FusedPixelCrossEntropy(jt.Function):
    """(B, H, W) loss map of float32 logits against int32 labels (0 at ignored pixels)."""

    def __init__(self, ignore_index):
        self.ignore = int(ignore_index)

    def execute(self, logits, label):
        b, _, h, w = logits.shape
        src = f"#define IGNORE {self.ignore}\n" + _CE_FORWARD_SRC
        loss, lse = jt.code([(b, h, w), (b, h, w)], ["float32", "float32"], [logits, label],
                            cpu_header=_CE_HEADER, cpu_src=src)
        self.saved = (logits, label, lse)
        return loss

    def grad(self, g):
        logits, label, lse = self.saved
        src = f"#define IGNORE {self.ignore}\n" + _CE_BACKWARD_SRC
        dx = jt.code(logits.shape, logits.dtype, [logits, label, lse, g.float32()],
                     cpu_header=_CE_HEADER, cpu_src=src)
        return dx, None


def _pixel_loss_plain(x, label, valid, ignore_index):
    num_classes = x.shape[1]
    shift = x.max(dim=1, keepdims=True).detach()
    z = x - shift
    lse = z.exp().sum(dim=1).log()
    classes = jt.arange(num_classes, dtype="int32").reshape((1, num_classes, 1, 1))
    onehot = (classes == label.unsqueeze(1)).cast(x.dtype)
    target = (z * onehot).sum(dim=1)
    return (lse - target) * valid


def can_use(logits):
    """True when the fused kernels compute the loss of ``logits`` (CPU, float32)."""
    return fused_for(logits)


def cross_entropy(logits, label, ignore_index=255, reduction="mean"):
    """Cross-entropy of (B, K, H, W) logits against (B, H, W) integer labels.

    Computed as logsumexp(logits) - logits[label] with a max-shifted
    log-sum-exp, in float32 (float64 logits stay float64). Pixels labelled
    ``ignore_index`` contribute 0.

    Args:
        logits (jt.Var): (B, K, H, W) class scores.
        label (jt.Var): (B, H, W) integer labels in [0, K) or ``ignore_index``.
            Other out-of-range values are not checked (they act as a target
            with logit 0, the reference would raise).
        ignore_index (int): label excluded from the loss (255).
        reduction (str): "mean": mean over the valid pixels of the whole batch
            (the reference's masked mean, equal to PyTorch's "mean" with
            ignore_index); "sum"; "none": the (B, H, W) loss map, 0 at ignored pixels.

    A batch without any valid pixel gives loss 0 (with zero gradients) under
    "mean", where the reference gives NaN: one unlabeled crop then does not
    poison the weights. Callers that must know can count ``label != ignore_index``.
    """
    if logits.ndim != 4 or label.ndim != 3:
        raise ValueError(f"expected (B,K,H,W) logits and (B,H,W) labels, got "
                         f"{tuple(logits.shape)} and {tuple(label.shape)}")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    x = logits if str(logits.dtype) == "float64" else logits.float32()
    label = label.int32()
    valid = (label != ignore_index).cast(x.dtype)
    if can_use(x):
        loss = _FusedPixelCrossEntropy(ignore_index)(x, label)
    else:
        loss = _pixel_loss_plain(x, label, valid, ignore_index)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / jt.maximum(valid.sum(), 1.0)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy` (ignore label 255, batch masked mean)."""

    def __init__(self, ignore_index=255, reduction="mean"):
        self.ignore_index = ignore_index
        self.reduction = reduction

    def execute(self, logits, label):
        return cross_entropy(logits, label, self.ignore_index, self.reduction)
