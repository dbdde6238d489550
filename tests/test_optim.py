"""The fused AdamW step (utils/engine/optim.py) against Jittor's own step (the plain path).

Jittor's AdamW.step is what runs with the fused kernels switched off (and on CUDA);
the fused OpenMP kernels must give the same parameters and moments over several
steps, for every parameter group, lr and tensor size (blocking and chunking edges),
and keep the optimiser's state layout (exact save / load round trip).
"""
import numpy as np
import pytest

import jittor as jt

from models import ops
from utils.engine import optim
from utils.engine.optim import AdamW

# sizes around the kernel's 16384-element blocks and odd shapes; more tensors than one
# kernel takes (optim._ADAMW_CHUNK) in the decay group
_DECAY_SHAPES = [(3, 4), (16385,), (2, 3, 5, 7), (64, 257), (1,)] + [(5, 3)] * 70
_NO_DECAY_SHAPES = [(4,), (17,), (16384,), (33, 1)]
_LRS = [1e-2, 0.0, 3e-3, 5e-3, 2e-3]

# With AVX-512 the kernel spells out Jittor's arithmetic; elsewhere its plain loop, as
# g++ -Ofast compiles it, differs by a few float32 ulp per step: measured max relative
# 8.2e-6 (11 of 16385 elements, max abs 7.2e-7) over these 5 steps on an AVX2 AMD EPYC.
try:
    with open("/proc/cpuinfo") as _f:
        _RTOL = 1e-6 if "avx512f" in _f.read() else 2e-5
except OSError:
    _RTOL = 2e-5


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    p_decay = [rng.standard_normal(s).astype(np.float32) for s in _DECAY_SHAPES]
    p_nodecay = [rng.standard_normal(s).astype(np.float32) for s in _NO_DECAY_SHAPES]
    coefs = [[rng.standard_normal(s).astype(np.float32) * 10.0 ** rng.integers(-6, 2)
              for s in _DECAY_SHAPES + _NO_DECAY_SHAPES] for _ in _LRS]
    return p_decay, p_nodecay, coefs


def _build(p_decay, p_nodecay, frozen=True):
    decay = [jt.array(a) for a in p_decay]
    nodecay = [jt.array(a) for a in p_nodecay]
    if frozen:
        decay[2].stop_grad()      # a stop-grad tensor in a group is never updated
    opt = AdamW([{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
                lr=1e-2, eps=1e-8, betas=(0.9, 0.999), weight_decay=0.05)
    return decay + nodecay, opt


def _steps(params, opt, coefs, lrs):
    for step_coefs, lr in zip(coefs, lrs):
        opt.set_lr(lr)
        loss = sum((p * jt.array(c)).sum() for p, c in zip(params, step_coefs)
                   if not p.is_stop_grad())
        opt.step(loss)                    # the gradient of each tensor is exactly its coefficient
    jt.sync_all(True)


def _state(params, opt):
    moments = [v.numpy() for g in opt.param_groups for key in ("m", "values") for v in g[key]]
    return [p.numpy() for p in params], moments


def _run(enabled, steps=len(_LRS)):
    p_decay, p_nodecay, coefs = _problem()
    with ops.fused_kernels(enabled):
        params, opt = _build(p_decay, p_nodecay)
        assert optim.adamw_fused_applies(opt) == enabled
        _steps(params, opt, coefs[:steps], _LRS[:steps])
        return _state(params, opt), opt


def test_fused_step_matches_jittor_step():
    (fused_p, fused_m), _ = _run(True)
    (plain_p, plain_m), _ = _run(False)
    for f, p in zip(fused_p + fused_m, plain_p + plain_m):
        np.testing.assert_allclose(f, p, rtol=_RTOL, atol=1e-12)
    # the stop-grad tensor kept its value
    np.testing.assert_array_equal(fused_p[2], _problem()[0][2])


def test_fused_step_state_round_trip_is_exact():
    (full_p, full_m), _ = _run(True)
    p_decay, p_nodecay, coefs = _problem()
    with ops.fused_kernels(True):
        params, opt = _build(p_decay, p_nodecay)
        _steps(params, opt, coefs[:2], _LRS[:2])
        state = opt.state_dict()
        assert state["type"] == "AdamW" and state["n_step"] == 2
        for g in state["param_groups"]:
            assert set(g) == {"lr", "weight_decay", "names", "shapes", "m", "values"}
            assert all(isinstance(a, np.ndarray) for a in g["m"] + g["values"])
        saved = [p.numpy() for p in params]
        # a fresh optimiser on the saved weights continues bit for bit
        params2, opt2 = _build(saved[:len(_DECAY_SHAPES)], saved[len(_DECAY_SHAPES):])
        opt2.load_state_dict(state)
        _steps(params2, opt2, coefs[2:], _LRS[2:])
        resumed_p, resumed_m = _state(params2, opt2)
    for a, b in zip(full_p + full_m, resumed_p + resumed_m):
        np.testing.assert_array_equal(a, b)


def test_fused_and_plain_states_are_interchangeable():
    """A state saved by one path loads into the other (same layout)."""
    _, fused_opt = _run(True, steps=2)
    _, plain_opt = _run(False, steps=2)
    a, b = fused_opt.state_dict(), plain_opt.state_dict()
    assert a["n_step"] == b["n_step"] and len(a["param_groups"]) == len(b["param_groups"])
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        assert ga["shapes"] == gb["shapes"]
        for x, y in zip(ga["m"] + ga["values"], gb["m"] + gb["values"]):
            assert x.shape == y.shape and x.dtype == y.dtype
            np.testing.assert_allclose(x, y, rtol=_RTOL, atol=1e-12)
    with ops.fused_kernels(False):
        plain_opt.load_state_dict(a)


@pytest.mark.parametrize("enabled", [True, False])
def test_step_without_gradients_in_a_group_is_harmless(enabled):
    """Every tensor of a group stop-grad: the group is skipped, the other one updated."""
    with ops.fused_kernels(enabled):
        w = jt.array(np.ones((3,), np.float32))
        frozen = jt.array(np.ones((2,), np.float32)).stop_grad()
        opt = AdamW([{"params": [w]}, {"params": [frozen]}], lr=0.1)
        opt.step((w * 2.0).sum())
        assert np.all(w.numpy() < 1.0) and np.all(frozen.numpy() == 1.0)
