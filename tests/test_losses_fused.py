"""The fused cross-entropy kernels (models/losses/cross_entropy.py) against the plain
Jittor formulation: loss and logit gradients for every reduction, ignored pixels,
out-of-range labels, sizes that are not multiples of the kernel's pixel block."""
import importlib

import numpy as np
import pytest

import jittor as jt

from models import ops
from models.losses import cross_entropy

ce_module = importlib.import_module("models.losses.cross_entropy")   # the module, not the function


def _case(shape, seed, ignore=255, scale=3.0):
    b, k, h, w = shape
    rng = np.random.RandomState(seed)
    logits = (rng.randn(*shape) * scale).astype(np.float32)
    label = rng.randint(0, k, (b, h, w)).astype(np.int32)
    label[rng.rand(b, h, w) < 0.25] = ignore
    label.flat[0] = k + 2                  # out of range: a target of shifted logit 0
    cot = rng.rand(b, h, w).astype(np.float32)
    return logits, label, cot


def _run(enabled, logits, label, cot, reduction, ignore):
    with ops.fused_kernels(enabled):
        x = jt.array(logits)
        loss = cross_entropy(x, jt.array(label), ignore_index=ignore, reduction=reduction)
        target = (loss * jt.array(cot)).sum() if reduction == "none" else loss
        return loss.numpy(), jt.grad(target, x).numpy()


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 40, 13, 70), (3, 3, 1, 1), (2, 19, 8, 16)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_matches_plain(shape, reduction):
    logits, label, cot = _case(shape, sum(shape))
    with ops.fused_kernels(True):
        assert ce_module.can_use(jt.array(logits))
    fused = _run(True, logits, label, cot, reduction, 255)
    plain = _run(False, logits, label, cot, reduction, 255)
    for name, f, p in zip(["loss", "gradient"], fused, plain):
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(p).max())),
                                   err_msg=name)


def test_ignore_index_inside_the_class_range_and_all_ignored():
    logits, label, cot = _case((2, 6, 5, 11), 3, ignore=2)
    for reduction in ("mean", "none"):
        fused = _run(True, logits, label, cot, reduction, 2)
        plain = _run(False, logits, label, cot, reduction, 2)
        for f, p in zip(fused, plain):
            np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6)
    label[:] = 255
    loss, grad = _run(True, logits, label, cot, "mean", 255)
    assert float(loss) == 0.0 and not grad.any()


def test_large_logits_stay_finite():
    logits, label, cot = _case((1, 7, 9, 33), 4, scale=300.0)
    fused = _run(True, logits, label, cot, "mean", 255)
    plain = _run(False, logits, label, cot, "mean", 255)
    assert np.isfinite(fused[0]).all() and np.isfinite(fused[1]).all()
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-5)
    np.testing.assert_allclose(fused[1], plain[1], rtol=1e-5, atol=1e-7)
