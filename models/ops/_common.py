"""What every fused op shares: the fused/plain switch and the C++ helper header.

Jittor's generated CPU kernels run on one thread, so on the CPU the hot spots
run as OpenMP ``jt.code`` kernels. Each op module pairs its kernel with a plain
Jittor formulation (what CUDA runs) that computes the same values to float
rounding; the switch below picks between them.
"""
import os

import numpy as np

import jittor as jt

ENV_VAR = "DFORMER_FUSED_KERNELS"

_OFF = ("0", "false", "no", "off")
_state = {"enabled": os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF}


class fused_kernels:
    """Turn the fused CPU kernels of every op on or off (off: plain Jittor operators).

    Takes effect at once; used as a context manager, the previous setting comes
    back on exit::

        with fused_kernels(False):
            logits = model(rgb, depth)

    The default comes from ``$DFORMER_FUSED_KERNELS`` (``0`` turns them off).
    """

    def __init__(self, enabled=True):
        self.previous = _state["enabled"]
        _state["enabled"] = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state["enabled"] = self.previous
        return False


def fused_kernels_enabled():
    return _state["enabled"]


def on_cuda():
    """True while Jittor executes on the GPU (the fused kernels are CPU code)."""
    return bool(jt.flags.use_cuda)


def fused_for(*tensors):
    """True when a fused kernel may run on ``tensors``: switched on, CPU, float32."""
    return (_state["enabled"] and not on_cuda()
            and all(str(t.dtype) == "float32" for t in tensors))


# C++ helpers shared by the kernels: a vectorisable exp for non-positive
# arguments and 16-float vector loads, stores and pair swaps.
HEADER = r"""
#include <cmath>
#include <cstring>
#include <cstdint>
#include <algorithm>
#include <vector>
// exp(x) for x <= 0 without a libm call, so loops using it vectorise:
// x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts, exact under -Ofast
// thanks to fma), e^r by its Taylor series to r^7 (truncation < 1e-8), 2^n
// through the exponent bits. Inputs below -80 give 0 (no denormals).
static inline float lyr_exp_neg(float x) {
    const bool tiny = x < -80.0f;
    x = std::max(x, -80.0f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = std::fma(n, -0.693359375f, x);
    r = std::fma(n, 2.12194440e-4f, r);
    float p = 1.0f / 5040.0f;
    p = std::fma(p, r, 1.0f / 720.0f);
    p = std::fma(p, r, 1.0f / 120.0f);
    p = std::fma(p, r, 1.0f / 24.0f);
    p = std::fma(p, r, 1.0f / 6.0f);
    p = std::fma(p, r, 0.5f);
    p = std::fma(p, r, 1.0f);
    p = std::fma(p, r, 1.0f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return tiny ? 0.0f : p * scale;
}
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

# Floats per dfv_vec: the vectorised kernels need channel counts that are multiples of it.
VECTOR_WIDTH = 16


def scalar(value, like):
    """``value`` (a number or an array) as a constant (stop-grad) of ``like``'s dtype.

    Jittor turns a Python float operand into a float32 constant (``x64 * 0.1`` is off by
    1.5e-9) and a float64 numpy array into a float32 Var, which float64 arithmetic must not
    see. A float64 number is made a 2-element array's first element: Jittor fuses a
    (1,)-shaped constant into the kernels that use it, and in a whole training step such
    float64 constants were measured to come out with another constant's value (an AdamW
    step scaling the weights by 1 - beta1 instead of 1 - lr * wd).
    """
    dtype = str(like.dtype)
    if dtype == "float64" and np.size(value) == 1 and np.ndim(value) <= 1:
        pair = np.full((2,), np.asarray(value).item(), dtype)
        return jt.array(pair, dtype=dtype)[:1].stop_grad()
    return jt.array(value, dtype=dtype).stop_grad()
