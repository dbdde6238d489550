"""Fused CPU kernels (models/ops) against their plain-Jittor twins.

The plain path is what CUDA runs, so on a CPU machine these comparisons are its
only check. Every op is compared in the forward pass and in the gradients of all
its differentiable inputs, over odd sizes, batches above one and channel counts
that are not multiples of the kernels' vector width; the full models are compared
on their logits.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

import jittor as jt
from local_configs import load_config
from models import ops
from models.builder import EncoderDecoder
from models.encoders.dformerv2 import rotary_angle
from models.ops import (activation, denormals, depthwise, geometry_attention, interpolate,
                        normalization)


def _random(rng, shape, scale=1.0):
    return (rng.randn(*shape) * scale).astype(np.float32)


def _run(fn, arrays, enabled):
    """Output of ``fn`` on fresh tensors of ``arrays`` and the gradients of a random
    projection of it w.r.t. every input, with the fused kernels ``enabled`` or not."""
    with ops.fused_kernels(enabled):
        inputs = [jt.array(a) for a in arrays]
        out = fn(*inputs)
        cotangent = jt.array(_random(np.random.RandomState(7), out.shape))
        grads = jt.grad((out * cotangent).sum(), inputs)
        return [out.numpy()] + [g.numpy() for g in grads]


def _assert_paths_agree(fn, arrays, fused_applies, rtol=1e-4):
    """The fused path applies to ``arrays`` and agrees with the plain path to float rounding."""
    with ops.fused_kernels(True):
        assert fused_applies([jt.array(a) for a in arrays]), "the fused path would not run"
    fused, plain = _run(fn, arrays, True), _run(fn, arrays, False)
    for i, (f, p) in enumerate(zip(fused, plain)):
        what = "output" if i == 0 else f"gradient of input {i - 1}"
        np.testing.assert_allclose(f, p, rtol=rtol, atol=rtol * max(1.0, float(np.abs(p).max())),
                                   err_msg=what)


# --------------------------------------------------------------------------- switch

def test_switch_is_a_context_manager_and_restores_the_setting():
    initial = ops.fused_kernels_enabled()
    with ops.fused_kernels(True):
        with ops.fused_kernels(False):
            assert not ops.fused_kernels_enabled()
            assert not activation.can_use(jt.ones((2, 3)))
            with ops.fused_kernels(True):
                assert ops.fused_kernels_enabled()
            assert not ops.fused_kernels_enabled()
        assert ops.fused_kernels_enabled() and activation.can_use(jt.ones((2, 3)))
        ops.fused_kernels(False)                # a plain call switches at once
        assert not ops.fused_kernels_enabled()
    assert ops.fused_kernels_enabled() == initial


def test_environment_variable_sets_the_default():
    code = "from models import ops; print(ops.fused_kernels_enabled())"
    env = dict(os.environ, PYTHONPATH=REPO, **{ops.ENV_VAR: "0"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


def test_importing_models_touches_no_cache(tmp_path):
    """Set-up is explicit (utils.runtime.setup); importing the package changes nothing."""
    env = dict(os.environ, PYTHONPATH=REPO, HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", "import models, utils.runtime"], env=env,
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / ".cache").exists()


# --------------------------------------------------------------------------- ops

@pytest.mark.parametrize("shape, with_bias", [((2, 5, 7, 24), True), ((3, 17), False),
                                              ((1, 4099), False), ((2, 3, 33), True)])
def test_gelu(shape, with_bias):
    rng = np.random.RandomState(0)
    arrays = [_random(rng, shape, 2.0)] + ([_random(rng, shape[-1:])] if with_bias else [])
    _assert_paths_agree(activation.gelu, arrays, lambda t: activation.can_use(*t))


@pytest.mark.parametrize("shape, size, align_corners", [
    ((2, 3, 7, 9), (13, 5), False), ((1, 20, 11, 11), (4, 6), False),
    ((2, 5, 6, 10), (17, 23), True), ((3, 1, 9, 4), (9, 8), False)])
def test_resize(shape, size, align_corners):
    arrays = [_random(np.random.RandomState(1), shape)]
    _assert_paths_agree(lambda x: interpolate.resize(x, size, align_corners), arrays,
                        lambda t: interpolate.can_use(*t))


@pytest.mark.parametrize("shape, scale_factor, align_corners", [
    ((2, 3, 13, 17), 1.5, False), ((1, 4, 19, 25), 1.5, True), ((2, 3, 7, 9), (2, 0.5), False)])
def test_resize_scale_factor(shape, scale_factor, align_corners):
    arrays = [_random(np.random.RandomState(2), shape)]
    fn = lambda x: interpolate.resize(x, scale_factor=scale_factor, align_corners=align_corners)
    _assert_paths_agree(fn, arrays, lambda t: interpolate.can_use(*t))


def test_resize_scale_factor_maps_by_the_factor():
    """``F.interpolate(scale_factor=s)``: size ``int(n * s)``, source ``(dst + 0.5) / s - 0.5``."""
    x = jt.array(_random(np.random.RandomState(3), (1, 2, 13, 1)))
    out = interpolate.resize(x, scale_factor=1.5)
    assert tuple(out.shape) == (1, 2, 19, 1)  # 19.5 -> 19; the width 1 -> 1 is copied
    m = interpolate.interp_matrix(19, 13, scale=1.5)
    assert np.allclose(m[18, 11:], [1 / 6, 5 / 6])  # 18.5 / 1.5 - 0.5 = 11.83 (13 / 19: 12.16)
    np.testing.assert_allclose(out.numpy()[0, :, :, 0], x.numpy()[0, :, :, 0] @ m.T, rtol=1e-6)
    assert np.array_equal(interpolate.interp_matrix(14, 7, scale=2.0), interpolate.interp_matrix(14, 7))
    assert np.array_equal(interpolate.interp_matrix(19, 13, True, scale=1.5),
                          interpolate.interp_matrix(19, 13, True))
    with pytest.raises(ValueError):
        interpolate.resize(x, (4, 4), scale_factor=2)


@pytest.mark.parametrize("shape, k, residual", [
    ((2, 5, 7, 32), 3, True), ((1, 9, 6, 48), 5, False), ((2, 4, 9, 80), 3, False),
    ((2, 7, 5, 24), 3, True), ((1, 11, 10, 40), 7, False), ((3, 6, 7, 16), 7, True)])
def test_depthwise_conv(shape, k, residual):
    """Channel counts of 32/48/80 with taps up to 5x5 take the OpenMP kernel; 24, 40
    and 7x7 taps take oneDNN's channels-last convolution."""
    if not depthwise._kernel_applies(jt.zeros(shape), jt.zeros((shape[-1], 1, k, k))) \
            and depthwise._onednn() is None:
        pytest.skip("oneDNN is not available")
    rng = np.random.RandomState(2)
    c = shape[-1]
    arrays = [_random(rng, shape), _random(rng, (c, 1, k, k), 0.3), _random(rng, (c,))]
    _assert_paths_agree(lambda x, w, b: depthwise.depthwise_conv(x, w, b, residual), arrays,
                        lambda t: depthwise.can_use(t[0], t[1]))


@pytest.mark.parametrize("shape, eps", [((2, 5, 7, 24), 1e-6), ((3, 19), 1e-5),
                                        ((1, 3, 4, 130), 1e-6)])
def test_layer_norm(shape, eps):
    rng = np.random.RandomState(3)
    c = shape[-1]
    arrays = [_random(rng, shape, 3.0) + 1.0, _random(rng, (c,)) + 1.0, _random(rng, (c,))]
    _assert_paths_agree(lambda x, w, b: normalization.layer_norm(x, w, b, eps), arrays,
                        lambda t: normalization.can_use(t[0]))


@pytest.mark.parametrize("mode", [ops.ROWS, ops.COLS, ops.FULL])
@pytest.mark.parametrize("batch, h, w, channels, heads", [(2, 5, 7, 32, 2), (1, 6, 3, 48, 1)])
def test_geo_attention(mode, batch, h, w, channels, heads):
    rng = np.random.RandomState(4)
    head_dim = channels // heads
    angle = jt.array(rotary_angle(head_dim))
    depth = _random(rng, (batch, 1, 2 * h + 1, 2 * w - 1))
    scaling = head_dim ** -0.5
    arrays = [_random(rng, (batch, h, w, 2 * channels)), _random(rng, (batch, h, w, channels)),
              -np.abs(_random(rng, (heads,))) - 0.1, _random(rng, (2, 1, 1, 1)),
              _random(rng, (channels,)), _random(rng, (channels,))]

    def attend(qk, v, decay, weight, q_bias, k_bias):
        geo = ops.StageGeometry(h, w, jt.array(depth), angle)
        return ops.geo_attention(qk, v, geo, decay, weight, q_bias, k_bias, scaling, mode)

    _assert_paths_agree(attend, arrays, lambda t: geometry_attention.can_use(t[0], t[1], t[2]))


def test_flush_to_zero_follows_the_switch():
    with ops.fused_kernels(False):
        assert not denormals.can_use()
        assert ops.flush_to_zero() is False
    with ops.fused_kernels(True):
        assert denormals.can_use()


# --------------------------------------------------------------------------- models

def _logits(model, rgb, depth, enabled):
    with ops.fused_kernels(enabled), jt.no_grad():
        return model(jt.array(rgb), jt.array(depth)).numpy()


@pytest.mark.parametrize("name", ["local_configs.NYUDepthv2.DFormer_Tiny",
                                  "local_configs.NYUDepthv2.DFormerv2_S"])
def test_model_logits_agree(name):
    cfg = load_config(name)
    model = EncoderDecoder(cfg)
    for key, value in model.state_dict().items():
        if "layer_scale" in key:        # 1e-6 at init would hide the blocks' contribution
            value.assign(jt.ones(value.shape, "float32"))
    model.eval()
    rng = np.random.RandomState(5)
    batch = 2
    rgb, depth = _random(rng, (batch, 3, 72, 104)), _random(rng, (batch, 3, 72, 104))
    nmf = model.decode_head.hamburger.ham
    model.set_nmf_bases(rng.rand(batch * nmf.S, cfg.decoder_embed_dim // nmf.S, nmf.R))
    fused, plain = _logits(model, rgb, depth, True), _logits(model, rgb, depth, False)
    tol = 1e-4 * max(1.0, float(np.abs(plain).max()))
    assert float(np.abs(fused - plain).max()) <= tol
