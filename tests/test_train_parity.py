"""Training steps against the official PyTorch code (cases from ``gen_train_case.py``).

Every case runs through the project's training path (tests/train_parity.py: the model as
utils/train.py builds it, its optimiser and schedule, one ``Trainer.run_iteration`` per
step) and is compared with the official code's run of the same steps:

* **float64** (the proof of the math): losses, step-0 gradients, and every parameter and
  BatchNorm statistic after the last step within ``F64_REL`` of the official float64 run;
  the lr of every step exactly; the decay / no-decay / never-updated name sets equal.
* **float32** as users train, fused CPU kernels on and off: lr and groups exact, losses
  within ``LOSS32_REL`` at every step, and the step-0 gradient of the whole model as one
  vector within the flip-tolerant bound of ``G32_FLIP``. Per-tensor distances and the final
  state are printed, not asserted (a rounding-level flip moves single tensors far).

Bundled cases (tests/fixtures/train_parity, NYU DFormer-Tiny and DFormerv2-S at 64x64,
3 steps) hold fingerprints only: 4 fixed random projections per tensor
(``fingerprint``), compared as a vector. The full set, every ``*/*/train_case*`` under
``$DFORMER_TRAIN_PARITY_ROOT`` written with ``--save-float64``, is compared element-wise.

Stochastic cases (tests/fixtures/train_parity_stochastic, the same models, weights and
batches) run with the config's drop path (per-block rates checked against the official
ones) and the decode head's Dropout2d on, the official masks played back into ours
(tests/train_parity.py, ``MaskPlayback``), under the same bounds.
"""
import glob
import json
import os

import numpy as np
import pytest

from train_parity import bundled_verdict, case_weights, check_common, compare, run_case

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLE = os.path.join(HERE, "fixtures", "train_parity")
BUNDLED = sorted(os.path.relpath(p, BUNDLE)
                 for p in glob.glob(os.path.join(BUNDLE, "*", "*", "train_case*")))
FULL_ROOT = os.environ.get("DFORMER_TRAIN_PARITY_ROOT")
FULL = sorted(os.path.relpath(p, FULL_ROOT)
              for p in glob.glob(os.path.join(FULL_ROOT, "*", "*", "train_case*"))) \
    if FULL_ROOT else []
MODES = [("float64", True), ("float32", True), ("float32", False)]
MODE_IDS = ["float64", "float32-fused", "float32-plain"]
# CI time: the plain float32 run of the other cases (DFormerv2-S: 20 s) is left to the full set.
PLAIN_BUNDLED = "NYUDepthv2/DFormer_Tiny/train_case0"
BUNDLED_RUNS = [pytest.param(case, *mode, id=f"{case}-{name}")
                for case in BUNDLED for mode, name in zip(MODES, MODE_IDS)
                if name != "float32-plain" or case == PLAIN_BUNDLED]
STOCHASTIC_BUNDLE = os.path.join(HERE, "fixtures", "train_parity_stochastic")
STOCHASTIC = sorted(os.path.relpath(p, STOCHASTIC_BUNDLE)
                    for p in glob.glob(os.path.join(STOCHASTIC_BUNDLE, "*", "*", "train_case*")))
# CI time (about 15 s per float64 run): float64 proves the masks' arithmetic, which is the
# same code in float32; the float32 runs (measured in the README) are left to -m slow.
STOCHASTIC_RUNS = [pytest.param(case, *mode, id=f"{case}-{name}",
                                marks=[pytest.mark.slow] if name != "float64" else [])
                   for case in STOCHASTIC for mode, name in zip(MODES, MODE_IDS)]

def _run(folder, dtype, fused, tmp_path):
    return run_case(folder, dtype, fused, work_dir=str(tmp_path))


# ----------------------------------------------------------------------------- bundled

@pytest.mark.parametrize("case_id,dtype,fused", BUNDLED_RUNS)
def test_bundled_case(case_id, dtype, fused, tmp_path):
    failures = bundled_verdict(_run(os.path.join(BUNDLE, case_id), dtype, fused, tmp_path), dtype)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case_id,dtype,fused", STOCHASTIC_RUNS)
def test_stochastic_case(case_id, dtype, fused, tmp_path):
    folder = os.path.join(STOCHASTIC_BUNDLE, case_id)
    with open(os.path.join(folder, "case.json")) as f:
        dropped = json.load(f)["masks_dropped"]
    # the case drops something in the encoder and in the decoder, or it would prove little
    assert dropped.pop("decode_head.dropout") > 0 and sum(dropped.values()) > 0
    failures = bundled_verdict(_run(folder, dtype, fused, tmp_path), dtype)
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- full set

@pytest.mark.skipif(not FULL, reason="no full set: set DFORMER_TRAIN_PARITY_ROOT to the "
                    "output of gen_train_case.py --save-float64")
@pytest.mark.parametrize("dtype,fused", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("case_id", FULL)
def test_full_case(case_id, dtype, fused, tmp_path):
    folder = os.path.join(FULL_ROOT, case_id)
    if not os.path.isfile(os.path.join(folder, "grads_step0_f64.npz")):
        pytest.skip(f"{case_id}: written without --save-float64")
    ours = _run(folder, dtype, fused, tmp_path)
    case = ours["case"]
    failures, loss_err = check_common(ours, case, dtype)
    print(f"{case_id} {dtype} fused={fused}: worst relative loss error {loss_err:.2e}")
    with np.load(os.path.join(folder, "grads_step0_f64.npz")) as g64, \
            np.load(os.path.join(folder, "grads_step0.npz")) as g32:
        g64, g32 = {k: g64[k] for k in g64.files}, {k: g32[k] for k in g32.files}
    flat = {k: v.astype(np.float64).ravel() for k, v in ours["grads0"].items()}
    ref64 = {k: v.ravel() for k, v in g64.items()}
    ref32 = {k: float(np.linalg.norm(g32[k].astype(np.float64) - g64[k])) for k in g64}
    failures += compare("grads_step0", flat, ref64, ref32, dtype)
    with np.load(os.path.join(folder, "state_final_f64.npz")) as s64:
        s64 = {k: s64[k] for k in s64.files if s64[k].dtype.kind == "f"}
    final = {k: ours["final"][k].astype(np.float64).ravel() for k in s64}
    if dtype == "float64":
        failures += compare("state_final", final, {k: v.ravel() for k, v in s64.items()}, None,
                            dtype)
    assert not failures, "\n".join(failures)
    if dtype == "float64":
        return
    # float32: Adam's first update is lr * sign(g); where |g64| <= 10 |g32 - g64| that sign
    # is rounding in either framework, and a flipped decision changes many such signs:
    # reported on the other entries, not asserted.
    init = case_weights(case)
    worst = (0.0, None)
    for k, g in g64.items():
        keep = (np.abs(g) > 10 * np.abs(g32[k].astype(np.float64) - g)).ravel()
        if not keep.any():
            continue
        ours_u = (final[k] - init[k].astype(np.float64).ravel())[keep]
        ref_u = (s64[k].ravel() - init[k].astype(np.float64).ravel())[keep]
        rel = float(np.linalg.norm(ours_u - ref_u) / max(np.linalg.norm(ref_u), 1e-30))
        worst = max(worst, (rel, k), key=lambda pair: pair[0])
    print(f"state_final ({dtype}, updates where the step-0 sign is determined): worst "
          f"relative distance {worst[0]:.2e} ({worst[1]})")


# ----------------------------------------------------------------------------- float64 units

def test_float64_plain_gradients_exact():
    """The plain LayerNorm (C = 96, not a power of 2) and GELU gradients in float64 against
    their closed forms: Jittor's own gradients of ``mean()`` and ``erf`` hold float32
    constants (1e-8 off), which the bundled cases (power-of-2 widths) would not show."""
    import math

    import jittor as jt
    from models.ops.activation import gelu_plain
    from models.ops.normalization import layer_norm_plain

    rng = np.random.RandomState(5)
    x, r = rng.randn(2, 5, 96) * 3 + 1, rng.randn(2, 5, 96)
    w, b = rng.rand(96) + 0.5, rng.randn(96)
    xv = jt.array(x, dtype="float64")
    out = layer_norm_plain(xv, jt.array(w, dtype="float64"), jt.array(b, dtype="float64"), 1e-6)
    got = jt.grad((out * jt.array(r, dtype="float64")).sum(), xv).numpy()
    sigma = np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    xhat, dy = (x - x.mean(-1, keepdims=True)) / sigma, r * w
    want = (dy - dy.mean(-1, keepdims=True) - xhat * (dy * xhat).mean(-1, keepdims=True)) / sigma
    assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()

    out = gelu_plain(xv)
    got = jt.grad((out * jt.array(r, dtype="float64")).sum(), xv).numpy()
    erf = np.vectorize(math.erf)
    want = r * (0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
    assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max()
    assert np.abs(out.numpy() - x * 0.5 * (1 + erf(x / math.sqrt(2)))).max() <= 1e-14 * np.abs(x).max()


def test_drop_path_rates_match_official_encoders():
    """Every official config: our config's ``drop_path_rate`` and the rate of every block of
    our encoder equal the official ones exactly (fixture: gen_drop_path_rates.py)."""
    from local_configs import load_config
    from models.encoders import build_backbone
    from models.layers import DropPath

    with open(os.path.join(STOCHASTIC_BUNDLE, "drop_path_rates.json")) as f:
        official = json.load(f)["configs"]
    assert len(official) == 14
    for config, ref in official.items():
        cfg = load_config("local_configs." + config.replace("/", "."))
        assert cfg.drop_path_rate == ref["drop_path_rate"], config
        backbone = build_backbone(cfg.backbone, drop_path_rate=cfg.drop_path_rate)
        ours = {n.rsplit(".", 1)[0]: m.p for n, m in backbone.named_modules()
                if isinstance(m, DropPath)}
        assert ours == ref["rates"], (config, {k: (ours.get(k), v) for k, v in ref["rates"].items()
                                               if ours.get(k) != v})


def test_dropout_and_drop_path_semantics():
    """PyTorch's rules, beyond the masks the stochastic cases play back: timm's drop path
    (one draw per sample), ``nn.Dropout2d`` (one per sample and channel) and ``nn.Dropout``
    (one per element) keep with probability 1 - p and scale the kept values by 1 / (1 - p)
    in the input's dtype (float64 exactly as ``x * (1 / keep)``); identity, drawing nothing,
    at eval and for p = 0."""
    import jittor as jt
    from models.layers import Dropout, Dropout2d, DropPath

    x = np.random.RandomState(0).rand(400, 50, 2, 3) + 1.0
    xv = jt.array(x, dtype="float64")
    for module, p, mask_axes in ((DropPath(0.3), 0.3, (1, 2, 3)), (Dropout2d(0.3), 0.3, (2, 3)),
                                 (Dropout(0.3), 0.3, ())):
        module.train()
        out = module(xv).numpy()
        assert out.dtype == np.float64
        kept = out != 0
        assert np.array_equal(out[kept], (x * (1.0 / (1.0 - p)))[kept])
        if mask_axes:       # whole samples / channels
            assert (kept.all(mask_axes) | (~kept).all(mask_axes)).all()
        rate = kept.mean()
        draws = x.size // int(np.prod([x.shape[a] for a in mask_axes]))
        assert abs(rate - (1 - p)) < 5 * np.sqrt(p * (1 - p) / draws), (module, rate)
        module.eval()
        assert module(xv) is xv
    for module in (DropPath(0.0), Dropout2d(0.0), Dropout(0.0)):
        module.train()
        jt.set_global_seed(0)
        want = jt.rand((1,)).numpy()
        jt.set_global_seed(0)
        assert module(xv) is xv
        assert np.array_equal(jt.rand((1,)).numpy(), want)     # nothing drawn


def test_float64_model_loads_and_restores_in_float64(tmp_path):
    """Weights loaded into a float64 model (the checkpoint loader, the trainer's exact
    restore) keep float64 and its precision: Jittor makes float32 Vars of float64 arrays
    unless told the dtype."""
    from models.builder import EncoderDecoder
    from train_parity import case_config, read_case
    from utils.checkpoint import load_state_dict
    from utils.engine.trainer import restore_model_state

    case, _ = read_case(os.path.join(BUNDLE, BUNDLED[0]))
    model = EncoderDecoder(case_config(case)).to_dtype("float64")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.dtype == np.float64 and v.size > 1)
    state[key] = state[key] + 1e-12      # below float32's resolution
    for load in (lambda: load_state_dict(model, state),
                 lambda: restore_model_state(model, state)):
        load()
        sd = model.state_dict()
        assert all(str(v.dtype) == "float64" for k, v in sd.items() if state[k].dtype == np.float64)
        np.testing.assert_array_equal(sd[key].numpy(), state[key])
