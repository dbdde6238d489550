"""AdamW and SGDM (utils/engine/optim.py): the fused AdamW step against the plain one,
and both optimisers against PyTorch's.

The plain step (Jittor's AdamW.step arithmetic in the tensors' dtype) is what runs with
the fused kernels switched off, on CUDA and in float64; the fused OpenMP kernels must
give the same parameters and moments over several steps, for every parameter group,
lr and tensor size (blocking and chunking edges), and keep the optimiser's state layout
(exact save / load round trip). Against torch.optim (a bundled fixture): float32 and
float64, fused and plain, and a resume through the checkpoint files.
"""
import json
import os

import numpy as np
import pytest
from easydict import EasyDict

import jittor as jt

from models import ops
from utils.engine import optim
from utils.checkpoint import atomic_save, read_checkpoint
from utils.engine.optim import AdamW

# sizes around the kernel's 16384-element blocks and odd shapes; more tensors than one
# kernel takes (optim._ADAMW_CHUNK) in the decay group
_DECAY_SHAPES = [(3, 4), (16385,), (2, 3, 5, 7), (64, 257), (1,)] + [(5, 3)] * 70
_NO_DECAY_SHAPES = [(4,), (17,), (16384,), (33, 1)]
_LRS = [1e-2, 0.0, 3e-3, 5e-3, 2e-3]


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
        np.testing.assert_allclose(f, p, rtol=1e-6, atol=1e-12)
    # the stop-grad tensor kept its value
    np.testing.assert_array_equal(fused_p[2], _problem()[0][2])


def test_fused_step_compiles_one_kernel(monkeypatch):
    """Every chunk of every group, whatever its tensors' ranks and count, calls jt.code with
    the same signature (number, rank and type of inputs and outputs, source): Jittor
    compiles one kernel for them all (each took g++ 4-6 s at 257 inputs)."""
    signatures = []
    real_code = optim.jt.code

    def recording_code(shapes, dtypes, inputs, **kw):
        signatures.append((tuple(len(s) for s in shapes), tuple(dtypes),
                           tuple((len(x.shape), str(x.dtype)) for x in inputs),
                           kw["cpu_src"], kw["cpu_header"]))
        return real_code(shapes, dtypes, inputs, **kw)
    monkeypatch.setattr(optim.jt, "code", recording_code)
    (fused_p, _), _ = _run(True, steps=1)
    assert len(signatures) == 3 and len(set(signatures)) == 1   # 75 + 4 tensors: 2 + 1 chunks
    (plain_p, _), _ = _run(False, steps=1)
    for f, p in zip(fused_p, plain_p):
        np.testing.assert_allclose(f, p, rtol=1e-6, atol=1e-12)


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
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-12)
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


# ----------------------------------------------------------------------------- against torch
# tests/fixtures/optim_torch: torch.optim.AdamW and torch.optim.SGD(momentum) (torch 2.13,
# float32 and float64) over a decay and a no-decay group, 6 steps at changing lrs (one at
# 0), one tensor without gradients, given gradients; meta.json says how it was made.

_TORCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "optim_torch")
# Rounding-level differences of the two implementations (torch's lerp for the first
# moment, scalar roundings); measured over the 6 steps: float32 <= 2.0e-7, float64 <= 4.3e-16
# (a float32-rounded constant in the float64 step would be ~1e-9 off).
_TOL = {"float32": 1e-6, "float64": 1e-12}
_CASES = [("AdamW", "float32", True), ("AdamW", "float32", False), ("AdamW", "float64", True),
          ("SGDM", "float32", False), ("SGDM", "float64", False)]


@pytest.fixture(scope="module")
def torch_case():
    with open(os.path.join(_TORCH_DIR, "meta.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(_TORCH_DIR, "optim_torch.npz")) as data:
        arrays = dict(data)
    return meta, arrays


def _torch_optimizer(meta, kind, dtype, values):
    """Our tensors and optimiser as the trainer builds them (ParamGroups -> build_optimizer)."""
    tensors = [jt.array(v, dtype=dtype) for v in values]
    tensors[meta["no_grad_tensor"]].stop_grad()
    n_decay = len(meta["decay_shapes"])
    groups = optim.ParamGroups([(f"decay.{i}", t) for i, t in enumerate(tensors[:n_decay])],
                               [(f"no_decay.{i}", t) for i, t in enumerate(tensors[n_decay:])], [])
    cfg = EasyDict(optimizer=kind, lr=meta["lrs"][0], weight_decay=meta["weight_decay"],
                   momentum=meta["momentum"])
    return tensors, optim.build_optimizer(cfg, groups)


def _torch_run(meta, arrays, kind, dtype, fused, resume_at=None, work_dir=None):
    """Parameters after every step; with ``resume_at``, the optimiser and the weights go
    through the checkpoint files (atomic_save / read_checkpoint) before that step and a
    fresh optimiser continues."""
    n = len(meta["decay_shapes"]) + len(meta["no_decay_shapes"])
    history = []
    with ops.fused_kernels(fused):
        tensors, opt = _torch_optimizer(meta, kind, dtype, [arrays[f"init/{i}"] for i in range(n)])
        assert optim.adamw_fused_applies(opt) == (kind == "AdamW" and fused and dtype == "float32")
        for step, lr in enumerate(meta["lrs"]):
            if step == resume_at:
                path = os.path.join(work_dir, "resume.pkl")
                atomic_save({"params": [t.numpy() for t in tensors],
                             "optimizer": opt.state_dict()}, path)
                state = read_checkpoint(path)
                tensors, opt = _torch_optimizer(meta, kind, dtype, state["params"])
                opt.load_state_dict(state["optimizer"])
            opt.set_lr(lr)
            loss = sum((t * jt.array(arrays[f"grad/{step}/{i}"], dtype=dtype)).sum()
                       for i, t in enumerate(tensors) if not t.is_stop_grad())
            opt.step(loss)                    # each tensor's gradient is exactly its coefficient
            history.append([t.numpy() for t in tensors])
        moments = [[v.numpy() for v in g[key]] for key in opt.STATE_KEYS for g in opt.param_groups]
    return history, moments


def _rel_error(got, want, scale=None):
    """Largest error relative to each value (or to ``scale``)."""
    scale = np.maximum(np.abs(want), 1e-30) if scale is None else scale
    return float(np.max(np.abs(got.astype(np.float64) - want) / scale))


@pytest.mark.parametrize("kind, dtype, fused", _CASES)
def test_matches_torch(torch_case, kind, dtype, fused):
    meta, arrays = torch_case
    history, moments = _torch_run(meta, arrays, kind, dtype, fused)
    key = kind.lower()
    worst = 0.0
    for step, tensors in enumerate(history):
        for i, t in enumerate(tensors):
            assert t.dtype == np.dtype(dtype)
            worst = max(worst, _rel_error(t, arrays[f"{key}/{dtype}/param/{step}/{i}"]))
    # the tensor without gradients is never touched (torch skips it: no decay either)
    np.testing.assert_array_equal(history[-1][meta["no_grad_tensor"]],
                                  arrays[f"init/{meta['no_grad_tensor']}"].astype(dtype))
    # moments after the last step (torch: exp_avg, exp_avg_sq / momentum_buffer), relative
    # to each tensor's largest: a first moment can be a near-cancellation of gradients of
    # opposite signs (element-wise, float32 differs by up to 1.9e-6 there)
    per_key = len(moments) // (2 if kind == "AdamW" else 1)
    for k in range(2 if kind == "AdamW" else 1):
        ours = [m for group in moments[k * per_key:(k + 1) * per_key] for m in group]
        for i, m in enumerate(ours):
            name = f"{key}/{dtype}/state/{k}/{i}"
            if name in arrays:
                worst = max(worst, _rel_error(m, arrays[name], np.abs(arrays[name]).max()))
    print(f"{kind} {dtype} fused={fused}: max relative error vs torch {worst:.2e}")
    assert worst <= _TOL[dtype], f"{kind} {dtype}: {worst:.2e} > {_TOL[dtype]}"


@pytest.mark.parametrize("kind, dtype, fused", _CASES)
def test_resume_through_checkpoint_is_bit_identical(torch_case, kind, dtype, fused, tmp_path):
    """state_dict -> checkpoint file -> load_state_dict between steps 3 and 4 continues
    exactly as the uninterrupted optimiser, moments keeping their dtype."""
    meta, arrays = torch_case
    full, full_m = _torch_run(meta, arrays, kind, dtype, fused)
    resumed, resumed_m = _torch_run(meta, arrays, kind, dtype, fused, resume_at=3,
                                    work_dir=str(tmp_path))
    for a, b in zip(full[-1] + [m for g in full_m for m in g],
                    resumed[-1] + [m for g in resumed_m for m in g]):
        assert b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)
