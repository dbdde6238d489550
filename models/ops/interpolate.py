"""Bilinear resizing of NCHW tensors, identical to PyTorch's ``F.interpolate(mode="bilinear")``.

Fused: a two-tap OpenMP kernel. Plain: products with the 1-D interpolation
matrices (:func:`separable`), which never touch Jittor's generic gather kernels.
"""
import functools

import numpy as np
import jittor as jt

from ._common import HEADER, fused_for, scalar


@functools.lru_cache(maxsize=256)
def interp_matrix(out_size, in_size, align_corners=False, dtype=np.float32, scale=None):
    """(out_size, in_size) matrix (``dtype``) of 1-D linear interpolation weights.

    ``align_corners=False`` follows PyTorch's half-pixel rule:
    src = max(0, (dst + 0.5) * in / out - 0.5), no antialiasing; with ``scale`` (the
    ``scale_factor`` given to ``F.interpolate``) the ratio is ``1 / scale`` instead of
    ``in / out``, except for an unchanged size (PyTorch copies it).
    ``align_corners=True`` uses the sizes only, as PyTorch, whatever ``scale``.
    """
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for dst in range(out_size):
        if align_corners:
            src = dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        elif scale is None or out_size == in_size:
            src = max(0.0, (dst + 0.5) * in_size / out_size - 0.5)
        else:
            src = max(0.0, (dst + 0.5) * (1.0 / scale) - 0.5)
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = src - i0
        m[dst, i0] += 1.0 - w1
        m[dst, i1] += w1
    return m.astype(dtype)


@functools.lru_cache(maxsize=256)
def interp_taps(out_size, in_size, align_corners=False, scale=None):
    """The rows of :func:`interp_matrix` as (index, weight) pairs.

    Returns int32 (out_size, 2) indices and float32 (out_size, 2) weights (the
    matrix entries, so both forms give the same result); a row with a single
    non-zero gets a second tap of weight 0 at the same index.
    """
    mat = interp_matrix(out_size, in_size, align_corners, scale=scale)
    idx = np.zeros((out_size, 2), np.int32)
    wts = np.zeros((out_size, 2), np.float32)
    for r in range(out_size):
        cols = np.flatnonzero(mat[r])
        assert len(cols) <= 2
        if len(cols):
            idx[r] = cols[0], cols[-1]
            wts[r, :len(cols)] = mat[r, cols]
    return idx, wts


def separable(x, mat_h, mat_w):
    """Apply (Ho, H) along the rows and (Wo, W) along the columns of an N C H W tensor."""
    n, c, h, w = x.shape
    ho, wo = mat_h.shape[0], mat_w.shape[0]
    if (ho, wo) == (h, w) and np.array_equal(mat_h, np.eye(h)) and np.array_equal(mat_w, np.eye(w)):
        return x
    mh = scalar(mat_h, x)
    mw_t = scalar(np.ascontiguousarray(mat_w.T), x)
    y = jt.matmul(x.reshape((n * c * h, w)), mw_t)                  # (N C H, Wo)
    y = y.reshape((n * c, h, wo)).transpose((1, 0, 2)).reshape((h, n * c * wo))
    y = jt.matmul(mh, y)                                            # (Ho, N C Wo)
    return y.reshape((ho, n * c, wo)).transpose((1, 0, 2)).reshape((n, c, ho, wo))


# Bilinear resize of (M, H, W) planes with two taps per output row and column:
# in0 x, in1 / in2 row taps / weights (Ho, 2), in3 / in4 column taps / weights
# (Wo, 2) -> out0 (M, Ho, Wo). One task per output row of a plane: the two
# input rows are blended into a small buffer first (vectorised), then each
# output reads two entries of it.
_RESIZE_SRC = r"""
const int M = in0_shape0, H = in0_shape1, W = in0_shape2;
const int HO = out0_shape1, WO = out0_shape2;
#pragma omp parallel
{
    std::vector<float> blend(W);
    float* __restrict__ t = blend.data();
#pragma omp for collapse(2) schedule(static)
    for (int m = 0; m < M; m++)
    for (int i = 0; i < HO; i++) {
        const float* __restrict__ r0 = in0_p + ((long long)m * H + in1_p[2 * i]) * W;
        const float* __restrict__ r1 = in0_p + ((long long)m * H + in1_p[2 * i + 1]) * W;
        const float a0 = in2_p[2 * i], a1 = in2_p[2 * i + 1];
        for (int k = 0; k < W; k++) t[k] = a0 * r0[k] + a1 * r1[k];
        float* __restrict__ y = out0_p + ((long long)m * HO + i) * WO;
#pragma omp simd
        for (int j = 0; j < WO; j++)
            y[j] = in4_p[2 * j] * t[in3_p[2 * j]] + in4_p[2 * j + 1] * t[in3_p[2 * j + 1]];
    }
}
"""


class _FusedResize(jt.Function):
    """The resize is linear, y = Mh x Mw^T per plane, so the input gradient is
    the transposed operator Mh^T g Mw, applied as products."""

    def __init__(self, size, align_corners, scales=(None, None)):
        self.size, self.align_corners, self.scales = size, align_corners, scales

    def execute(self, x):
        n, c, h, w = x.shape
        ho, wo = self.size
        sh, sw = self.scales
        self.mat_h = interp_matrix(ho, h, self.align_corners, scale=sh)
        self.mat_w = interp_matrix(wo, w, self.align_corners, scale=sw)
        taps = [jt.array(a) for a in interp_taps(ho, h, self.align_corners, sh)
                + interp_taps(wo, w, self.align_corners, sw)]
        y = jt.code((n * c, ho, wo), x.dtype, [x.reshape((n * c, h, w))] + taps,
                    cpu_header=HEADER, cpu_src=_RESIZE_SRC)
        return y.reshape((n, c, ho, wo))

    def grad(self, g):
        return separable(g, np.ascontiguousarray(self.mat_h.T), np.ascontiguousarray(self.mat_w.T))


def resize_plain(x, size, align_corners=False, scales=(None, None)):
    h, w = x.shape[-2:]
    dtype = np.dtype(str(x.dtype))
    return separable(x, interp_matrix(size[0], h, align_corners, dtype, scales[0]),
                     interp_matrix(size[1], w, align_corners, dtype, scales[1]))


def can_use(x):
    return fused_for(x) and x.ndim == 4


def resize(x, size=None, align_corners=False, scale_factor=None):
    """Bilinear resize of an N C H W tensor to ``size`` (H, W); a no-op at the same size.

    ``scale_factor`` (a number or an (H, W) pair) instead of ``size`` is
    ``F.interpolate(x, scale_factor=s, mode="bilinear")``: the output is
    ``int(H * s)`` x ``int(W * s)`` and source coordinates follow ``1 / s``, which
    differs from resizing to that size when ``H * s`` is not whole.
    """
    scales = (None, None)
    if (size is None) == (scale_factor is None):
        raise ValueError("resize: give exactly one of size and scale_factor")
    if scale_factor is not None:
        pair = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
        scales = tuple(float(s) for s in pair)
        if min(scales) <= 0:
            raise ValueError(f"resize: scale_factor must be positive, got {scale_factor!r}")
        size = [int(n * s) for n, s in zip(x.shape[-2:], scales)]
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if can_use(x):
        return _FusedResize(size, align_corners, scales)(x)
    return resize_plain(x, size, align_corners, scales)
