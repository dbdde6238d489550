"""The fused training-mode BatchNorm (models/ops/batch_norm.py), forward and gradient,
against the plain Jittor formulation and a float64 numpy reference: the model's
shapes, tiny and 1x1 spatial shapes, a constant channel (zero variance), inputs far
from zero mean, gradients reaching the statistics, and the BatchNorm2d module's
running statistics with fused kernels on and off.
"""
import numpy as np
import pytest

import jittor as jt

from models import ops
from models import layers
from models.layers import BatchNorm2d
from models.ops import batch_norm

EPS = 1e-5
SHAPES = [(2, 32, 120, 160), (2, 512, 30, 40), (1, 3, 5, 7), (4, 8, 1, 1), (3, 6)]


def _reference(x, w, b, g, eps=EPS):
    """float64 output, mean, var and the gradients of sum(y * g) w.r.t. x, w, b."""
    x, w, b, g = (a.astype(np.float64) for a in (x, w, b, g))
    axes = (0,) + tuple(range(2, x.ndim))
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * rstd.reshape(shape)
    y = xhat * w.reshape(shape) + b.reshape(shape)
    db = g.sum(axis=axes)
    dw = (g * xhat).sum(axis=axes)
    m = x.size // x.shape[1]
    dx = (w * rstd).reshape(shape) * (g - (db / m).reshape(shape) - xhat * (dw / m).reshape(shape))
    return y, mean, var, dx, dw, db


def _inputs(shape, offset=0.0, seed=0, constant=True):
    rng = np.random.RandomState(seed + sum(shape))
    c = shape[1]
    x = (rng.randn(*shape) * 2.0 + offset).astype(np.float32)
    if constant and c > 2:
        x[:, 2] = 0.75 + offset          # a constant channel: zero variance
    w = (rng.randn(c) * 0.5 + 1.0).astype(np.float32)
    b = rng.randn(c).astype(np.float32)
    g = rng.randn(*shape).astype(np.float32)
    return x, w, b, g


def _run(x, w, b, g, enabled, eps=EPS):
    """(y, mean, var, dx, dw, db) through batch_norm_train, fused kernels ``enabled`` or not."""
    with ops.fused_kernels(enabled):
        xs, ws, bs = jt.array(x), jt.array(w), jt.array(b)
        y, mean, var = ops.batch_norm_train(xs, ws, bs, eps)
        grads = jt.grad((y * jt.array(g)).sum(), [xs, ws, bs])
        return [t.numpy() for t in (y, mean, var)] + [t.numpy() for t in grads]


def _assert_close(got, want, what, rtol=1e-5):
    assert got.shape == want.shape, what
    bound = rtol * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= bound, f"{what}: max error {err} > {bound}"


NAMES = ("y", "mean", "var", "dx", "dweight", "dbias")


@pytest.fixture
def grad_calls(monkeypatch):
    calls = []
    original = batch_norm._FusedBatchNorm.grad

    def counted(self, *grads):
        calls.append([g is not None for g in grads])
        return original(self, *grads)

    monkeypatch.setattr(batch_norm._FusedBatchNorm, "grad", counted)
    return calls


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_fused_matches_reference(shape, offset, grad_calls):
    arrays = _inputs(shape, offset)
    with ops.fused_kernels(True):
        assert batch_norm.can_use(jt.array(arrays[0]))
    fused = _run(*arrays, True)
    assert grad_calls and grad_calls[0][0]          # the fused gradient ran
    ref = _reference(*arrays)
    for name, f, r in zip(NAMES, fused, ref):
        _assert_close(f, r, f"fused {name}")
    if shape[1] > 2:
        assert fused[2][2] == 0.0                    # constant channel: exactly zero variance
        assert np.allclose(fused[0][:, 2], arrays[2][2], atol=1e-5)   # y = bias there


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_fused_matches_plain(shape, offset, grad_calls):
    # No constant channel here: the plain path's float32 mean of a constant channel
    # is off by a few ulps, which 1 / sqrt(eps) magnifies (covered against float64 above).
    arrays = _inputs(shape, offset, seed=3, constant=False)
    fused = _run(*arrays, True)
    plain = _run(*arrays, False)
    assert len(grad_calls) == 1                      # only the fused run went through it
    ref = _reference(*arrays)
    for name, f, p, r in zip(NAMES, fused, plain, ref):
        _assert_close(p, r, f"plain {name}")
        _assert_close(f, p.astype(np.float64), f"fused vs plain {name}")


# |mean| / std of every channel: before the shifted statistics the plain path's
# E[x^2] - E[x]^2 gave errors of 8e-6 at 5, 5e-3 at 100 and 1e2 at 1000 on inputs like these.
RATIOS = [0.1, 1.0, 5.0, 30.0, 100.0, 300.0, 1000.0]


def _offset_inputs(ratio, seed=5, shape=(2, 64, 12, 16)):
    """Channels of random spread (0.5 .. 2) whose means sit ``ratio`` spreads from 0."""
    rng = np.random.RandomState(seed)
    c = shape[1]
    std = rng.uniform(0.5, 2.0, size=(1, c, 1, 1))
    sign = rng.choice([-1.0, 1.0], size=(1, c, 1, 1))
    x = (rng.randn(*shape) * std + sign * ratio * std).astype(np.float32)
    w = (rng.randn(c) * 0.5 + 1.0).astype(np.float32)
    b = rng.randn(c).astype(np.float32)
    g = rng.randn(*shape).astype(np.float32)
    return x, w, b, g


@pytest.mark.parametrize("enabled", [False, True], ids=["plain", "fused"])
def test_accurate_at_any_mean_to_std_ratio(enabled):
    """Output and gradients within 1e-5 of their scale at |mean| / std up to 1000, both
    paths (measured: <= 5.9e-7 plain, <= 1.2e-7 fused, flat in the ratio)."""
    for ratio in RATIOS:
        arrays = _offset_inputs(ratio)
        got = _run(*arrays, enabled)
        for name, a, r in zip(NAMES, got, _reference(*arrays)):
            if name in ("mean", "var"):          # value scales set by the offset itself
                _assert_close(a, r, f"{name} at ratio {ratio}", rtol=1e-6 * max(1.0, ratio))
            else:
                bound = 1e-5 * float(np.abs(r).max())
                err = float(np.abs(a - r).max())
                assert err <= bound, f"{name} at |mean|/std {ratio}: {err:.2e} > {bound:.2e}"


def test_plain_float64():
    """float64 in, float64 statistics, output and gradients (the verification path)."""
    x, w, b, g = (a.astype(np.float64) for a in _offset_inputs(1000.0, shape=(2, 8, 5, 6)))
    with ops.fused_kernels(True):                  # float64 takes the plain path anyway
        xs, ws, bs = (jt.array(a, dtype="float64") for a in (x, w, b))
        assert not batch_norm.can_use(xs)
        y, mean, var = ops.batch_norm_train(xs, ws, bs, EPS)
        grads = jt.grad((y * jt.array(g, dtype="float64")).sum(), [xs, ws, bs])
        got = [t.numpy() for t in (y, mean, var)] + [t.numpy() for t in grads]
    for name, a, r in zip(NAMES, got, _reference(x, w, b, g)):
        assert a.dtype == np.float64, name
        err = float(np.abs(a - r).max() / np.abs(r).max())
        assert err <= 1e-12, f"float64 {name}: {err:.2e}"


def _numpy_shards(sizes, seed=0, c=5, offset=300.0):
    rng = np.random.RandomState(seed)
    return [rng.randn(n, c) * rng.uniform(0.5, 2.0, c) + offset for n in sizes]


def test_combine_moments_matches_concatenated_statistics():
    """Chan's combination of unequal shards = numpy's statistics of their concatenation,
    in numpy (float64) and in Jittor with a shard axis standing for the processes."""
    shards = _numpy_shards([7, 1, 20, 3])
    everything = np.concatenate(shards)
    counts = np.array([[len(s)] for s in shards], dtype=np.float64)
    means = np.stack([s.mean(axis=0) for s in shards])
    m2s = np.stack([((s - s.mean(axis=0)) ** 2).sum(axis=0) for s in shards])

    def over_shards(v):
        return v.sum(axis=0, keepdims=True)

    total, mean, var = batch_norm.combine_moments(counts, means, m2s, over_shards)
    assert total.item() == len(everything)
    np.testing.assert_allclose(mean[0], everything.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(var[0], everything.var(axis=0), rtol=1e-12)

    def over_shards_jt(v):
        return v.sum(dim=0, keepdims=True)

    total, mean, var = batch_norm.combine_moments(
        *(jt.array(a, dtype="float64") for a in (counts, means, m2s)), over_shards_jt)
    assert total.numpy().item() == len(everything)
    np.testing.assert_allclose(mean.numpy()[0], everything.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(var.numpy()[0], everything.var(axis=0), rtol=1e-12)


def test_synced_one_process_equals_plain():
    """SyncBN's code with one process (identity reduce and broadcast) gives the plain
    path's output, statistics, count and gradients."""
    x, w, b, g = _offset_inputs(100.0, seed=8, shape=(2, 6, 4, 5))
    out = []
    for synced in (True, False):
        xs, ws, bs = jt.array(x), jt.array(w), jt.array(b)
        if synced:
            y, mean, var, count = batch_norm.batch_norm_train_synced(
                xs, ws, bs, EPS, reduce_sum=lambda v: v, broadcast=lambda v: v)
            assert count.numpy().tolist() == [2 * 4 * 5]
        else:
            y, mean, var = batch_norm.batch_norm_train_plain(xs, ws, bs, EPS)
        grads = jt.grad((y * jt.array(g)).sum(), [xs, ws, bs])
        out.append([t.numpy() for t in (y, mean, var)] + [t.numpy() for t in grads])
    ref = _reference(x, w, b, g)
    for name, s, p, r in zip(NAMES, out[0], out[1], ref):
        np.testing.assert_allclose(s, p, rtol=1e-6, atol=1e-6 * float(np.abs(r).max()),
                                   err_msg=name)


def test_switch_off_picks_plain(grad_calls, monkeypatch):
    arrays = _inputs((2, 4, 3, 5))
    called = []
    monkeypatch.setattr(batch_norm._FusedBatchNorm, "execute",
                        lambda self, *a: called.append(1) or pytest.fail("fused ran"))
    with ops.fused_kernels(False):
        assert not batch_norm.can_use(jt.array(arrays[0]))
    _run(*arrays, False)
    assert called == [] and grad_calls == []
    with ops.fused_kernels(True):
        assert not batch_norm.can_use(jt.array(arrays[0]).float64())


@pytest.mark.parametrize("eps", [1e-5, 1e-1])
def test_eps(eps):
    arrays = _inputs((2, 5, 4, 6), seed=7)
    fused = _run(*arrays, True, eps)
    for name, f, r in zip(NAMES, fused, _reference(*arrays, eps)):
        _assert_close(f, r, f"fused {name} eps={eps}")


def test_statistics_gradients():
    """Gradients reaching mean and var (unused by the module) are exact too."""
    shape = (3, 4, 5, 6)
    x, w, b, g = _inputs(shape, 1.0, seed=11, constant=False)
    rng = np.random.RandomState(2)
    gm, gv = rng.randn(4).astype(np.float32), rng.randn(4).astype(np.float32)
    out = []
    for enabled in (True, False):
        with ops.fused_kernels(enabled):
            xs, ws, bs = jt.array(x), jt.array(w), jt.array(b)
            y, mean, var = ops.batch_norm_train(xs, ws, bs, EPS)
            loss = (y * jt.array(g)).sum() + (mean * jt.array(gm)).sum() + (var * jt.array(gv)).sum()
            out.append([t.numpy() for t in jt.grad(loss, [xs, ws, bs])])
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3)).reshape(1, -1, 1, 1)
    m = x.size // shape[1]
    extra = gm.reshape(1, -1, 1, 1) / m + gv.reshape(1, -1, 1, 1) * 2 * (x64 - mean) / m
    ref = _reference(x, w, b, g)
    for i, name in enumerate(("dx", "dweight", "dbias")):
        want = ref[3 + i] + (extra if i == 0 else 0)
        _assert_close(out[0][i], want, f"fused {name}")
        _assert_close(out[1][i], want, f"plain {name}", 1e-4)


def test_only_weight_gradients():
    """x stop_grad: dweight and dbias only (the kernel skips dx)."""
    x, w, b, g = _inputs((2, 6, 7, 9), seed=4)
    with ops.fused_kernels(True):
        ws, bs = jt.array(w), jt.array(b)
        y, _, _ = ops.batch_norm_train(jt.array(x).stop_grad(), ws, bs, EPS)
        dw, db = [t.numpy() for t in jt.grad((y * jt.array(g)).sum(), [ws, bs])]
    ref = _reference(x, w, b, g)
    _assert_close(dw, ref[4], "dweight")
    _assert_close(db, ref[5], "dbias")


def _module_steps(enabled, x_batches, g):
    with ops.fused_kernels(enabled):
        bn = BatchNorm2d(x_batches[0].shape[1], momentum=0.3)
        bn.weight.assign(jt.array(np.linspace(0.5, 1.5, bn.num_features).astype(np.float32)))
        bn.bias.assign(jt.array(np.linspace(-1, 1, bn.num_features).astype(np.float32)))
        bn.train()
        outs = []
        for xb in x_batches:
            xs = jt.array(xb)
            y = bn(xs)
            dx, dw = jt.grad((y * jt.array(g)).sum(), [xs, bn.weight])
            outs.append((y.numpy(), dx.numpy(), dw.numpy()))
        state = (bn.running_mean.numpy(), bn.running_var.numpy(), bn.num_batches_tracked.numpy())
        bn.eval()
        evaluated = bn(jt.array(x_batches[0])).numpy()
        return outs, state, evaluated


def test_module_fused_matches_plain():
    rng = np.random.RandomState(9)
    shape = (2, 16, 12, 10)
    batches = [(rng.randn(*shape) * (i + 1) + i).astype(np.float32) for i in range(3)]
    g = rng.randn(*shape).astype(np.float32)
    fused = _module_steps(True, batches, g)
    plain = _module_steps(False, batches, g)
    for (yf, dxf, dwf), (yp, dxp, dwp) in zip(fused[0], plain[0]):
        _assert_close(yf, yp.astype(np.float64), "module y")
        _assert_close(dxf, dxp.astype(np.float64), "module dx")
        _assert_close(dwf, dwp.astype(np.float64), "module dweight", 1e-4)
    (mf, vf, nf), (mp, vp, np_) = fused[1], plain[1]
    assert nf.tolist() == np_.tolist() == [3]
    _assert_close(mf, mp.astype(np.float64), "running_mean")
    _assert_close(vf, vp.astype(np.float64), "running_var")
    # running statistics against float64: momentum 0.3, unbiased variance
    rm, rv = np.zeros(16), np.ones(16)
    count = shape[0] * shape[2] * shape[3]
    for xb in batches:
        x64 = xb.astype(np.float64)
        rm = 0.7 * rm + 0.3 * x64.mean(axis=(0, 2, 3))
        rv = 0.7 * rv + 0.3 * x64.var(axis=(0, 2, 3)) * count / (count - 1)
    _assert_close(mf, rm, "running_mean vs float64")
    _assert_close(vf, rv, "running_var vs float64")
    _assert_close(fused[2], plain[2].astype(np.float64), "eval output after training")


def test_module_sync_path_one_process(monkeypatch):
    """BatchNorm2d's SyncBN branch (jt.in_mpi; Jittor's MPI operators are identities in a
    single process) trains like the local one: outputs, gradients, running statistics."""
    rng = np.random.RandomState(12)
    shape = (2, 8, 6, 5)
    batches = [(rng.randn(*shape) * (i + 1) + 50 * i).astype(np.float32) for i in range(2)]
    g = rng.randn(*shape).astype(np.float32)
    local = _module_steps(False, batches, g)
    monkeypatch.setattr(jt, "in_mpi", True)
    calls = []
    original = layers.batch_norm_train_synced
    monkeypatch.setattr(layers, "batch_norm_train_synced",
                        lambda *a: calls.append(1) or original(*a))
    synced = _module_steps(False, batches, g)
    assert len(calls) == len(batches)               # every training call, not the eval one
    for (ys, dxs, dws), (yl, dxl, dwl) in zip(synced[0], local[0]):
        _assert_close(ys, yl.astype(np.float64), "synced y")
        _assert_close(dxs, dxl.astype(np.float64), "synced dx")
        _assert_close(dws, dwl.astype(np.float64), "synced dweight", 1e-4)
    for s, l, name in zip(synced[1], local[1], ("running_mean", "running_var", "count")):
        _assert_close(s, l.astype(np.float64), f"synced {name}")
