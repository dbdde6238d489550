"""The fused softmax (models/ops/softmax.py), forward and gradient, against Jittor's
``jt.nn.softmax`` and a float64 NumPy reference: short and long rows, row counts
inside one block and over many (with a partial last block), rows far from zero,
rows with vanishing (-1e30) and equal entries; the switch and the fallback for
other axes and dtypes.
"""
import importlib

import numpy as np
import pytest

import jittor as jt

from models import ops

# models.ops.softmax is the function (re-exported by the package); this is the module.
softmax_mod = importlib.import_module("models.ops.softmax")

SHAPES = [(1, 5), (3, 7), (2, 196, 4800), (4800, 64)]


def _random(rng, shape, scale=1.0):
    return (rng.randn(*shape) * scale).astype(np.float32)


def _reference(x, dim=-1):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(dim, keepdims=True))
    return e / e.sum(dim, keepdims=True)


def _reference_grad(y, g, dim=-1):
    y, g = y.astype(np.float64), g.astype(np.float64)
    return y * (g - (g * y).sum(dim, keepdims=True))


def _assert_values(out, x, rtol, dim=-1):
    """out against the float64 softmax of x. float32 rounding of x - max alone gives
    exp(x - max) a relative error of |x - max| ulps, hence the factor; the absolute
    term covers entries below e^-80, which come out as 0."""
    ref = _reference(x, dim)
    assert out.shape == ref.shape
    spread = np.abs(x.astype(np.float64) - x.max(dim, keepdims=True))
    bound = rtol * ref * (1.0 + spread) + 1e-34
    worst = float((np.abs(out - ref) - bound).max())
    assert worst <= 0.0, f"exceeds the bound by {worst}"
    np.testing.assert_allclose(out.sum(dim), 1.0, rtol=0, atol=max(1e-6, 20 * rtol))


def _run(x, cotangent, enabled, dim=-1):
    """Output and the gradient of ``(out * cotangent).sum()`` w.r.t. x."""
    with ops.fused_kernels(enabled):
        xt = jt.array(x)
        out = ops.softmax(xt, dim)
        grad = jt.grad((out * jt.array(cotangent)).sum(), xt)
        return out.numpy(), grad.numpy()


@pytest.fixture
def calls(monkeypatch):
    """Counts the fused forward and gradient calls (so a test knows which path ran)."""
    counts = {"execute": 0, "grad": 0}
    fn = softmax_mod._FusedSoftmax
    original_execute, original_grad = fn.execute, fn.grad

    def execute(self, x):
        counts["execute"] += 1
        return original_execute(self, x)

    def grad(self, g):
        counts["grad"] += 1
        return original_grad(self, g)

    monkeypatch.setattr(fn, "execute", execute)
    monkeypatch.setattr(fn, "grad", grad)
    return counts


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0.0, 100.0, -100.0])
def test_values_match_reference(shape, offset, calls):
    rng = np.random.RandomState(sum(shape) + int(offset) + 100)
    x = _random(rng, shape, 3.0) + offset
    with ops.fused_kernels(True):
        assert softmax_mod.can_use(jt.array(x))
        fused = ops.softmax(jt.array(x)).numpy()
    assert calls["execute"] == 1
    with ops.fused_kernels(False):
        plain = ops.softmax(jt.array(x)).numpy()
    assert calls["execute"] == 1
    _assert_values(fused, x, 1e-6)
    # Jittor sums each row in one float accumulator: ~1e-5 on 4800-long rows.
    _assert_values(plain, x, 3e-5)
    np.testing.assert_allclose(fused, plain, rtol=5e-5, atol=1e-12)


def test_vanishing_and_equal_entries():
    """Entries at -1e30 get exactly 0, equal entries 1 / count, a row of only -1e30
    is uniform, a maximum 200 above the rest (first or last in its row) takes all."""
    L = 40
    x = np.zeros((8, L), np.float32)
    x[0, 1::2] = -1e30                      # 20 zeros, 20 equal: 1/20 each
    x[1] = 5.0                              # all equal: 1/40
    x[2] = -1e30                            # all equal (very negative): 1/40
    x[3] = 100.0
    x[3, 7] = 101.0                         # one larger by 1
    x[4] = -1e30
    x[4, 3] = -100.0                        # one finite entry takes everything
    x[5] = np.linspace(-3, 3, L, dtype=np.float32) - 1e4
    x[6, -1] = 200.0                        # the maximum first and last in its row:
    x[7, 0] = 200.0                         # the others are e^-200, i.e. 0
    with ops.fused_kernels(True):
        fused = ops.softmax(jt.array(x)).numpy()
    with ops.fused_kernels(False):
        plain = ops.softmax(jt.array(x)).numpy()
    for out in (fused, plain):
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[0, 1::2], 0.0)
        np.testing.assert_allclose(out[0, 0::2], 1 / 20, rtol=1e-6)
        np.testing.assert_allclose(out[1], 1 / L, rtol=1e-6)
        np.testing.assert_allclose(out[2], 1 / L, rtol=1e-6)
        e = np.e
        np.testing.assert_allclose(out[3, 7], e / (e + L - 1), rtol=1e-6)
        np.testing.assert_allclose(np.delete(out[3], 7), 1 / (e + L - 1), rtol=1e-6)
        np.testing.assert_allclose(out[4, 3], 1.0, rtol=1e-7)
        np.testing.assert_array_equal(np.delete(out[4], 3), 0.0)
        np.testing.assert_allclose(out[6], np.eye(L)[-1], rtol=1e-7, atol=0)
        np.testing.assert_allclose(out[7], np.eye(L)[0], rtol=1e-7, atol=0)
    # Row 5: x - 1e4 rounds in float32 (spacing 2^-10), so the reference is that of
    # the float32 input as stored.
    _assert_values(fused, x, 1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_plain(shape, calls):
    rng = np.random.RandomState(3 * sum(shape))
    x = _random(rng, shape, 3.0)
    cotangent = _random(rng, shape)
    fused_y, fused_dx = _run(x, cotangent, True)
    assert calls == {"execute": 1, "grad": 1}
    plain_y, plain_dx = _run(x, cotangent, False)
    assert calls == {"execute": 1, "grad": 1}
    np.testing.assert_allclose(fused_y, plain_y, rtol=5e-5, atol=1e-12)
    ref = _reference_grad(_reference(x), cotangent)
    scale = float(np.abs(ref).max())
    assert float(np.abs(fused_dx - ref).max()) <= 1e-5 * scale
    # The plain gradient carries Jittor's float row sums (~1e-5 on 4800-long rows).
    assert float(np.abs(fused_dx - plain_dx).max()) <= 3e-5 * scale
    # The rows of dx sum to 0 (softmax ignores a constant added to a row).
    row_sums = np.abs(fused_dx.sum(-1, dtype=np.float64))
    assert (row_sums <= 1e-6 * np.abs(cotangent).max(-1)).all()


def test_gradient_with_offsets_and_vanishing_entries():
    rng = np.random.RandomState(11)
    x = _random(rng, (5, 33), 2.0)
    x[0] += 100.0
    x[1] -= 100.0
    x[2, ::3] = -1e30
    x[3] = 1.5
    cotangent = _random(rng, x.shape)
    _, fused_dx = _run(x, cotangent, True)
    _, plain_dx = _run(x, cotangent, False)
    assert np.isfinite(fused_dx).all()
    np.testing.assert_array_equal(fused_dx[2, ::3], 0.0)
    ref = _reference_grad(_reference(x), cotangent)
    for dx in (fused_dx, plain_dx):
        assert float(np.abs(dx - ref).max()) <= 1e-5 * float(np.abs(ref).max())


def test_switch_selects_plain_path(calls):
    rng = np.random.RandomState(7)
    x = _random(rng, (4, 9, 50), 2.0)
    cotangent = _random(rng, x.shape)
    with ops.fused_kernels(False):
        assert not softmax_mod.can_use(jt.array(x))
        expected = jt.nn.softmax(jt.array(x), -1).numpy()
    out, _ = _run(x, cotangent, False)
    assert calls == {"execute": 0, "grad": 0}
    np.testing.assert_array_equal(out, expected)
    _run(x, cotangent, True)
    assert calls == {"execute": 1, "grad": 1}


@pytest.mark.parametrize("shape,dim", [((6, 5), 0), ((3, 8, 5), 1), ((3, 8, 5), -2),
                                       ((4, 3, 7), 0)])
def test_other_axes_fall_back(shape, dim, calls):
    rng = np.random.RandomState(len(shape) + dim)
    x = _random(rng, shape, 3.0)
    cotangent = _random(rng, shape)
    with ops.fused_kernels(True):
        assert not softmax_mod.can_use(jt.array(x), dim)
        expected = jt.nn.softmax(jt.array(x), dim).numpy()
    out, dx = _run(x, cotangent, True, dim)
    assert calls == {"execute": 0, "grad": 0}
    np.testing.assert_array_equal(out, expected)
    _assert_values(out, x, 1e-5, dim)
    ref = _reference_grad(_reference(x, dim), cotangent, dim)
    assert float(np.abs(dx - ref).max()) <= 1e-5 * float(np.abs(ref).max())


@pytest.mark.parametrize("shape,dim", [((6, 5), 1), ((3, 8, 5), 2), ((3, 8, 5), -1)])
def test_last_axis_by_any_index_is_fused(shape, dim, calls):
    rng = np.random.RandomState(sum(shape))
    x = _random(rng, shape, 3.0)
    cotangent = _random(rng, shape)
    out, dx = _run(x, cotangent, True, dim)
    assert calls == {"execute": 1, "grad": 1}
    _assert_values(out, x, 1e-6)
    ref = _reference_grad(_reference(x), cotangent)
    assert float(np.abs(dx - ref).max()) <= 1e-5 * float(np.abs(ref).max())


def test_float64_falls_back(calls):
    rng = np.random.RandomState(2)
    # jt.array stores float64 input as float32, so the values are float32 ones.
    x = _random(rng, (3, 10), 3.0).astype(np.float64)
    with ops.fused_kernels(True):
        xt = jt.array(x).float64()
        assert str(xt.dtype) == "float64"
        assert not softmax_mod.can_use(xt)
        out = ops.softmax(xt).numpy()
    assert calls["execute"] == 0
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _reference(x), rtol=1e-12)
