"""The depthwise convolution's fused weight / bias gradient kernel (models/ops/depthwise.py)
against the plain Jittor formulation: taps 3 and 7, odd sizes, images narrower or
shorter than the taps, channel counts that are and are not multiples of 16, residual on/off.
"""
import numpy as np
import pytest

import jittor as jt

from models import ops
from models.ops import depthwise


def _random(rng, shape, scale=1.0):
    return (rng.randn(*shape) * scale).astype(np.float32)


def _run(arrays, residual, enabled, cotangent):
    with ops.fused_kernels(enabled):
        x, w, b = [jt.array(a) for a in arrays]
        out = depthwise.depthwise_conv(x, w, b, residual)
        grads = jt.grad((out * jt.array(cotangent)).sum(), [x, w, b])
        return [out.numpy()] + [g.numpy() for g in grads]


@pytest.mark.parametrize("shape, k, residual", [
    ((2, 5, 7, 32), 3, True), ((1, 9, 6, 48), 3, False), ((3, 13, 11, 80), 3, False),
    ((2, 2, 3, 16), 3, True), ((1, 1, 1, 64), 3, False),
    ((2, 7, 5, 32), 7, True), ((1, 11, 10, 48), 7, False), ((2, 3, 2, 16), 7, False),
    ((1, 17, 19, 112), 7, True), ((2, 40, 3, 16), 7, False),
    ((2, 7, 5, 24), 3, True), ((1, 11, 10, 40), 7, False)])
def test_fused_gradients_match_plain(shape, k, residual):
    if depthwise._onednn() is None and not depthwise._kernel_applies(
            jt.zeros(shape), jt.zeros((shape[-1], 1, k, k))):
        pytest.skip("oneDNN is not available")
    rng = np.random.RandomState(sum(shape) + k)
    c = shape[-1]
    arrays = [_random(rng, shape), _random(rng, (c, 1, k, k), 0.3), _random(rng, (c,))]
    cotangent = _random(rng, shape)
    with ops.fused_kernels(True):
        assert depthwise.can_use(jt.array(arrays[0]), jt.array(arrays[1]))
    fused = _run(arrays, residual, True, cotangent)
    plain = _run(arrays, residual, False, cotangent)
    for name, f, p in zip(["output", "d x", "d weight", "d bias"], fused, plain):
        scale = max(1.0, float(np.abs(p).max()))
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("shape, k", [((2, 9, 13, 48), 3), ((1, 6, 70, 32), 7), ((3, 4, 5, 16), 7)])
def test_weight_grad_kernel_matches_direct_sum(shape, k):
    """The kernel alone against a float64 numpy sum over the padded patches."""
    rng = np.random.RandomState(5)
    x, dy = _random(rng, shape), _random(rng, shape)
    gw, gb = depthwise._weight_bias_grad_kernel(jt.array(x), jt.array(dy), k)
    b, h, w, c = shape
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    want = np.zeros((c, k, k))
    for i in range(k):
        for j in range(k):
            want[:, i, j] = (xp[:, i:i + h, j:j + w, :] * dy).sum((0, 1, 2))
    np.testing.assert_allclose(gw.numpy().reshape(c, k, k), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb.numpy(), dy.astype(np.float64).sum((0, 1, 2)), rtol=1e-4,
                               atol=1e-4)


def test_weight_grad_kernel_is_deterministic():
    """Same values whatever the thread timing (fixed chunking, ordered reduction)."""
    rng = np.random.RandomState(6)
    x, dy = jt.array(_random(rng, (2, 30, 17, 64))), jt.array(_random(rng, (2, 30, 17, 64)))
    first = [t.numpy() for t in depthwise._weight_bias_grad_kernel(x, dy, 7)]
    for _ in range(3):
        again = [t.numpy() for t in depthwise._weight_bias_grad_kernel(x, dy, 7)]
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


def _gelu64(v):
    from scipy.special import erf
    v = v.astype(np.float64)
    return v * 0.5 * (1.0 + erf(v / np.sqrt(2.0)))


@pytest.mark.parametrize("shape, k, residual", [((2, 9, 13, 48), 3, True), ((1, 5, 6, 64), 3, False),
                                                ((1, 7, 5, 24), 3, True), ((1, 8, 9, 32), 7, True)])
def test_gelu_epilogue_matches_gelu_of_the_convolution(shape, k, residual):
    """Without gradients the GELU runs inside the convolution's pass (taps up to 5x5,
    C a multiple of 16); every other case is GELU applied after it; all agree."""
    rng = np.random.RandomState(sum(shape) + 3 * k)
    c = shape[-1]
    arrays = [_random(rng, shape), _random(rng, (c, 1, k, k), 0.3), _random(rng, (c,))]
    x, w, b = [jt.array(a) for a in arrays]
    with ops.fused_kernels(False), jt.no_grad():
        conv = depthwise.depthwise_conv(x, w, b, residual).numpy()
    want = _gelu64(conv)
    results, grads = {}, {}
    for enabled in (True, False):
        with ops.fused_kernels(enabled):
            with jt.no_grad():
                results[enabled, "no_grad"] = depthwise.depthwise_conv(x, w, b, residual, gelu=True).numpy()
            out = depthwise.depthwise_conv(x, w, b, residual, gelu=True)
            results[enabled, "grad"] = out.numpy()
            grads[enabled] = [g.numpy() for g in jt.grad((out * out).sum(), [x, w, b])]
    for key, got in results.items():
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=str(key))
    for name, f, p in zip(["d x", "d weight", "d bias"], grads[True], grads[False]):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(p).max())),
                                   err_msg=name)
    fused = results[True, "no_grad"]
    assert not np.array_equal(fused, conv)      # the activation was applied
