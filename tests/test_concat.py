"""models/ops/concat.py: concatenation, stacking and unstacking as copies in one kernel.

Only copies, so the fused path must give the plain operators' values and gradients
bit for bit (not merely to rounding), and so must a whole DFormer training step.
"""
import importlib

import numpy as np
import pytest

import jittor as jt
from local_configs import load_config
from models import ops
from models.builder import EncoderDecoder
from utils.latency import fix_nmf_bases

concat_mod = importlib.import_module("models.ops.concat")


def _arrays(shapes, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randn(*s).astype(np.float32) for s in shapes]


def _outputs_and_grads(fn, arrays, enabled, used=None):
    """Outputs of ``fn`` (a list) and the gradients of a random projection of the
    ``used`` outputs (default all) w.r.t. every input."""
    with ops.fused_kernels(enabled):
        inputs = [jt.array(a) for a in arrays]
        outs = fn(*inputs)
        outs = outs if isinstance(outs, list) else [outs]
        used = range(len(outs)) if used is None else used
        rng = np.random.RandomState(7)
        loss = sum((outs[i] * jt.array(rng.randn(*outs[i].shape).astype(np.float32))).sum()
                   for i in used)
        grads = jt.grad(loss, inputs)
        return [o.numpy() for o in outs], [g.numpy() for g in grads]


def _assert_bit_identical(fn, arrays, used=None):
    with ops.fused_kernels(True):
        assert concat_mod.can_use(*[jt.array(a) for a in arrays])
    fused = _outputs_and_grads(fn, arrays, True, used)
    plain = _outputs_and_grads(fn, arrays, False, used)
    for what, f_list, p_list in (("output", fused[0], plain[0]), ("gradient", fused[1], plain[1])):
        assert len(f_list) == len(p_list)
        for i, (f, p) in enumerate(zip(f_list, p_list)):
            assert f.shape == p.shape, (what, i)
            assert np.array_equal(f, p), f"{what} {i} differs"


@pytest.mark.parametrize("shapes, axis", [
    ([(2, 5, 7, 16), (2, 5, 7, 8), (2, 5, 7, 9)], -1),   # channels-last branches
    ([(3, 4, 6), (3, 2, 6)], 1),                            # a middle axis
    ([(1, 10), (4, 10), (2, 10)], 0),                       # axis 0: one row, cut in chunks
    ([(70, 3), (70, 1)], 1),                                # many rows, odd widths
])
def test_concat_equals_jittor_concat(shapes, axis):
    _assert_bit_identical(lambda *xs: ops.concat(list(xs), axis), _arrays(shapes))


@pytest.mark.parametrize("batch", [2, 8])
def test_stack_and_unstack_equal_jittor_stack_and_indexing(batch):
    arrays = _arrays([(batch, 9, 5)])
    _assert_bit_identical(lambda x: ops.unstack(x), arrays, used=range(0, batch, 2))
    _assert_bit_identical(lambda *xs: ops.stack(list(xs)), _arrays([(9, 5)] * batch))
    with ops.fused_kernels(True):
        x = jt.array(arrays[0])
        pieces = ops.unstack(x)
        assert [list(p.shape) for p in pieces] == [[9, 5]] * batch
        assert np.array_equal(ops.stack(pieces).numpy(), arrays[0])


def test_bad_shapes_are_errors():
    a, b = jt.ones((2, 3)), jt.ones((3, 3))
    with ops.fused_kernels(True):
        with pytest.raises(ValueError, match="cannot concatenate"):
            ops.concat([a, b], 1)
        with pytest.raises(ValueError, match="cannot stack"):
            ops.stack([a, b])
        with pytest.raises(ValueError, match="out of range"):
            ops.concat([a, a], 2)


def test_dformer_training_step_is_bit_identical_with_the_fused_copies():
    """A whole forward and backward of DFormer-Tiny, batch 2: the pooled attention's
    per-image products, the branch concatenation and the decoder's per-image 1x1
    convolutions and NMF run through these kernels; every gradient must be unchanged."""
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Tiny")
    cfg.drop_path_rate = 0.0
    jt.set_global_seed(0)
    model = EncoderDecoder(cfg)
    model.train()
    fix_nmf_bases(model, 2)
    rgb, depth = _arrays([(2, 3, 64, 96), (2, 3, 64, 96)], seed=1)
    label = np.random.RandomState(2).randint(0, cfg.num_classes, (2, 64, 96)).astype(np.int32)
    params = [v for v in model.parameters() if not v.is_stop_grad()]
    jt.sync(list(model.parameters()))   # initialise now: Jittor would draw the weights lazily,
                                        # inside the first run, from that run's seed

    def run(enabled):
        calls = []
        real = concat_mod._gather

        def counting(pieces):
            calls.append(len(pieces))
            return real(pieces)
        concat_mod._gather = counting
        try:
            with ops.fused_kernels(True):   # every other fused kernel as in training
                original = concat_mod.can_use
                concat_mod.can_use = original if enabled else (lambda *t: False)
                try:
                    jt.set_global_seed(3)   # the same dropout masks in both runs
                    loss = model(jt.array(rgb), jt.array(depth), jt.array(label))
                    grads = jt.grad(loss, params)
                    return float(loss.item()), [g.numpy() for g in grads], calls
                finally:
                    concat_mod.can_use = original
        finally:
            concat_mod._gather = real

    loss_f, grads_f, calls = run(True)
    loss_p, grads_p, _ = run(False)
    assert calls, "the fused copies did not run"
    assert loss_f == loss_p
    assert all(np.array_equal(f, p) for f, p in zip(grads_f, grads_p))
