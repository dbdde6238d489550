"""The fused gradient of DFormerv2's geometry attention against the plain formulation.

The fused CPU path computes its gradient with its own kernel; the plain Jittor
formulation (what CUDA runs) is differentiated by Jittor. Both must give the same
gradients for every differentiable input, in every mode, and the same parameter
gradients for a whole DFormerv2-S training step.
"""
import numpy as np
import pytest

import jittor as jt
from jittor import nn
from local_configs import load_config
from models import ops
from models.builder import EncoderDecoder
from models.encoders.dformerv2 import rotary_angle
from models.ops import geometry_attention

INPUTS = ("qk", "v", "decay", "weight", "q_bias", "k_bias")


def _random(rng, shape, scale=1.0):
    return (rng.randn(*shape) * scale).astype(np.float32)


def _case(batch, h, w, channels, heads, seed=4):
    """Random inputs of geo_attention (as numpy arrays), a depth map, the rotary angles
    and a cotangent for the output."""
    rng = np.random.RandomState(seed)
    arrays = [_random(rng, (batch, h, w, 2 * channels)), _random(rng, (batch, h, w, channels)),
              -np.abs(_random(rng, (heads,))) - 0.1, _random(rng, (2, 1, 1, 1)),
              _random(rng, (channels,)), _random(rng, (channels,))]
    depth = _random(rng, (batch, 1, 2 * h + 1, 2 * w - 1))
    angle = rotary_angle(channels // heads)
    return arrays, depth, angle, _random(rng, (batch, h, w, channels))


def _gradients(case, mode, enabled, stop=()):
    """Output and gradients of ``sum(out * cotangent)`` w.r.t. the inputs not in ``stop``
    (those are stop_grad), with the fused kernels ``enabled`` or not."""
    arrays, depth, angle, cotangent = case
    heads, channels = arrays[2].shape[0], arrays[1].shape[-1]
    h, w = arrays[1].shape[1:3]
    with ops.fused_kernels(enabled):
        inputs = [jt.array(a) for a in arrays]
        for name, t in zip(INPUTS, inputs):
            if name in stop:
                t.stop_grad()
        geo = ops.StageGeometry(h, w, jt.array(depth), jt.array(angle))
        out = ops.geo_attention(*inputs[:2], geo, *inputs[2:], (channels // heads) ** -0.5, mode)
        targets = [t for name, t in zip(INPUTS, inputs) if name not in stop]
        grads = jt.grad((out * jt.array(cotangent)).sum(), targets)
        names = [name for name in INPUTS if name not in stop]
        return out.numpy(), {name: g.numpy() for name, g in zip(names, grads)}


def _assert_close(fused, plain, what, rtol=1e-4):
    err = float(np.abs(fused - plain).max())
    scale = float(np.abs(plain).max())
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3g}, max abs value {scale:.3g}"


@pytest.fixture
def fused_grad_calls(monkeypatch):
    """Counts the calls of the fused gradient, so a test can check that it ran."""
    calls = []
    original = geometry_attention._FusedGeoAttention.grad

    def counted(self, g):
        calls.append(self.mode)
        return original(self, g)

    monkeypatch.setattr(geometry_attention._FusedGeoAttention, "grad", counted)
    return calls


@pytest.mark.parametrize("mode", [ops.ROWS, ops.COLS, ops.FULL])
@pytest.mark.parametrize("batch, h, w, channels, heads",
                         [(2, 5, 7, 32, 2), (2, 3, 9, 64, 2), (1, 6, 3, 48, 1)])
def test_fused_gradients_match_plain(mode, batch, h, w, channels, heads, fused_grad_calls):
    case = _case(batch, h, w, channels, heads)
    with ops.fused_kernels(True):
        t = [jt.array(a) for a in case[0][:3]]
        assert geometry_attention.can_use(*t), "the fused path would not run"
    out_f, fused = _gradients(case, mode, True)
    assert fused_grad_calls == [mode]
    out_p, plain = _gradients(case, mode, False)
    assert fused_grad_calls == [mode]
    _assert_close(out_f, out_p, "output")
    for name in INPUTS:
        assert fused[name].shape == plain[name].shape, name
        _assert_close(fused[name], plain[name], f"gradient of {name}")


@pytest.mark.parametrize("stop", [("v", "weight"), ("qk", "decay", "q_bias", "k_bias")])
def test_only_the_wanted_gradients(stop, fused_grad_calls):
    """Inputs under stop_grad get no gradient; the others still match the plain path."""
    case = _case(2, 4, 6, 32, 2, seed=8)
    _, fused = _gradients(case, ops.FULL, True, stop)
    _, plain = _gradients(case, ops.FULL, False, stop)
    assert fused_grad_calls == [ops.FULL]
    assert sorted(fused) == sorted(plain) == sorted(set(INPUTS) - set(stop))
    for name in fused:
        _assert_close(fused[name], plain[name], f"gradient of {name}")


def _training_gradients(enabled, size=(64, 96), batch=2):
    """Parameter gradients of one DFormerv2-S training loss (dropouts off, fixed NMF bases)."""
    cfg = load_config("local_configs.NYUDepthv2.DFormerv2_S")
    cfg.drop_path_rate = 0.0
    jt.set_global_seed(0)
    with ops.fused_kernels(enabled):
        model = EncoderDecoder(cfg)
        for key, value in model.state_dict().items():
            if "layer_scale" in key or "gamma_" in key:   # small at init, would hide the blocks
                value.assign(jt.ones(value.shape, "float32"))
        for module in model.modules():
            if isinstance(module, (nn.Dropout, nn.Dropout2d)):
                module.p = 0.0
        model.train()
        rng = np.random.RandomState(5)
        rgb, depth = _random(rng, (batch, 3) + size), rng.rand(batch, 3, *size).astype(np.float32)
        label = rng.randint(0, cfg.num_classes, (batch,) + size).astype(np.int32)
        nmf = model.decode_head.hamburger.ham
        model.set_nmf_bases(rng.rand(batch * nmf.S, cfg.decoder_embed_dim // nmf.S, nmf.R))
        loss = model(jt.array(rgb), jt.array(depth), jt.array(label))
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        grads = jt.grad(loss, [p for _, p in params])
        return float(loss.item()), {name: g.numpy() for (name, _), g in zip(params, grads)}


def test_training_step_gradients_agree(fused_grad_calls):
    loss_f, fused = _training_gradients(True)
    assert sorted(set(fused_grad_calls)) == [ops.ROWS, ops.COLS, ops.FULL]
    loss_p, plain = _training_gradients(False)
    assert abs(loss_f - loss_p) <= 1e-5 * max(1.0, abs(loss_p))
    assert sorted(fused) == sorted(plain)
    # Biases right before a normalisation have a zero gradient, up to rounding noise:
    # those are compared against the largest gradient, the others against their own.
    largest = max(float(np.abs(g).max()) for g in plain.values())
    compared = []
    for name, g in plain.items():
        if float(np.abs(g).max()) >= 1e-6 * largest:
            _assert_close(fused[name], g, f"gradient of {name}", rtol=1e-3)
            compared.append(name)
        else:
            err = float(np.abs(fused[name] - g).max())
            assert err <= 1e-5 * largest, f"gradient of {name}: max abs diff {err:.3g}"
    for part in ("Geo.weight", "q_proj.weight", "k_proj.bias", "v_proj.weight"):
        assert any(part in name for name in compared), part
