"""The fused LayerNorm (models/ops/normalization.py), forward and gradient, against
the plain Jittor formulation: odd row counts, row counts below and far above the
gradient kernel's block count, channel counts that are and are not multiples of 16,
inputs far from zero mean, and parameters that take no gradient.
"""
import numpy as np
import pytest

import jittor as jt

from models import ops
from models.ops import normalization


def _random(rng, shape, scale=1.0):
    return (rng.randn(*shape) * scale).astype(np.float32)


def _run(arrays, eps, enabled, cotangent, wanted=(True, True, True)):
    """Output and the gradients of ``(out * cotangent).sum()`` w.r.t. the ``wanted``
    inputs (the others stop_grad), fused kernels ``enabled`` or not."""
    with ops.fused_kernels(enabled):
        inputs = [jt.array(a) for a in arrays]
        for t, want in zip(inputs, wanted):
            if not want:
                t.stop_grad()
        out = normalization.layer_norm(*inputs, eps)
        targets = [t for t, want in zip(inputs, wanted) if want]
        grads = jt.grad((out * jt.array(cotangent)).sum(), targets)
        return [out.numpy()] + [g.numpy() for g in grads]


def _assert_close(fused, plain):
    assert len(fused) == len(plain)
    for i, (f, p) in enumerate(zip(fused, plain)):
        what = "output" if i == 0 else f"gradient {i - 1}"
        assert f.shape == p.shape, what
        bound = 1e-4 * max(1.0, float(np.abs(p).max()))
        assert float(np.abs(f - p).max()) <= bound, what


@pytest.fixture
def grad_calls(monkeypatch):
    """Counts the calls of the fused gradient (so a test knows it ran)."""
    calls = []
    original = normalization._FusedLayerNorm.grad

    def counted(self, g):
        calls.append([m >= 0 for m in self.input_mask])
        return original(self, g)

    monkeypatch.setattr(normalization._FusedLayerNorm, "grad", counted)
    return calls


@pytest.mark.parametrize("shape", [(3, 5, 7, 16), (1, 9, 48), (2, 3, 11, 64), (5, 96),
                                   (1, 31, 33, 48), (7, 19), (2, 3, 130), (3, 1)])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_fused_matches_plain(shape, offset, grad_calls):
    rng = np.random.RandomState(sum(shape))
    c = shape[-1]
    arrays = [_random(rng, shape, 3.0) + offset, _random(rng, (c,)) + 1.0, _random(rng, (c,))]
    cotangent = _random(rng, shape)
    with ops.fused_kernels(True):
        assert normalization.can_use(jt.array(arrays[0]))
    fused = _run(arrays, 1e-6, True, cotangent)
    assert grad_calls == [[True, True, True]]
    _assert_close(fused, _run(arrays, 1e-6, False, cotangent))


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_eps_and_constant_rows(eps):
    """eps enters as in the plain formulation; constant rows (zero variance) stay finite."""
    rng = np.random.RandomState(1)
    x = _random(rng, (4, 6, 32), 0.05)
    x[1, 2] = 7.0
    arrays = [x, _random(rng, (32,)) + 1.0, _random(rng, (32,))]
    cotangent = _random(rng, x.shape)
    fused = _run(arrays, eps, True, cotangent)
    assert all(np.isfinite(a).all() for a in fused)
    _assert_close(fused, _run(arrays, eps, False, cotangent))


@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, True),
                                    (False, True, False), (True, False, True)])
def test_only_wanted_gradients(wanted, grad_calls):
    rng = np.random.RandomState(5)
    shape = (2, 7, 9, 48)
    arrays = [_random(rng, shape, 2.0) + 100.0, _random(rng, (48,)) + 1.0, _random(rng, (48,))]
    cotangent = _random(rng, shape)
    fused = _run(arrays, 1e-6, True, cotangent, wanted)
    assert grad_calls == [list(wanted)]
    _assert_close(fused, _run(arrays, 1e-6, False, cotangent, wanted))

