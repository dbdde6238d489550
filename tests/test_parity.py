"""Numerical parity with the PyTorch reference, from the fixtures in the parity folder.

Two sources:

* the bundled subset (tests/fixtures/parity, see tests/parity_fixtures.py): one case each of
  DFormer-Tiny and DFormerv2-S, weights regenerated in numpy from their seed; always run;
* the full set. Discovery contract: every ``<Dataset>/<Config>/`` folder under the fixture
  root (default ``../shared/parity``, or ``$DFORMER_PARITY_ROOT``) that holds ``case*/``
  folders is tested with the config ``local_configs.<Dataset>.<Config>``. Weights come from
  ``trained.pth`` through the user-facing loader when present, else from ``gen_weights.py``
  (beside the manifest) with the seed in ``weights.json``.
"""
import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import load_manifest, parity_root
from parity_fixtures import (BUNDLED_CASES, array_sha256, bundled_case, bundled_manifest,
                             content_digest, synthetic_weights)

import jittor as jt
from local_configs import load_config
from models.builder import EncoderDecoder
from utils.checkpoint import build_model, load_state_dict, read_checkpoint, segmentor_state_dict
from utils.dataloader.transforms import EvalTransform

TENSORS = ("feat_0", "feat_1", "feat_2", "feat_3", "logits")


def _discover():
    root = parity_root()
    cases = []
    for cfg_dir in sorted(glob.glob(os.path.join(root, "*", "*"))):
        for case_dir in sorted(glob.glob(os.path.join(cfg_dir, "case*"))):
            if os.path.isdir(case_dir):
                cases.append(os.path.relpath(case_dir, root))
    return cases


CASES = _discover()
_MODELS = {}


def _gen_weights_module(root):
    spec = importlib.util.spec_from_file_location("parity_gen_weights", os.path.join(root, "gen_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_for(config_id):
    """Build (once) the eval-mode model of ``<Dataset>/<Config>`` with the fixture weights."""
    if config_id in _MODELS:
        return _MODELS[config_id]
    root = parity_root()
    cfg = load_config("local_configs." + config_id.replace("/", "."))
    trained = os.path.join(root, config_id, "trained.pth")
    if os.path.isfile(trained):
        model = build_model(cfg, checkpoint=trained)
    else:
        with open(os.path.join(root, config_id, "weights.json")) as f:
            seed = json.load(f)["weight_seed"]
        entry = load_manifest(root)["configs"][config_id]
        gen = _gen_weights_module(root)
        state = gen.generate_state_dict(entry, seed)
        model = EncoderDecoder(cfg)
        load_state_dict(model, state, strict=True, source=f"generated weights ({config_id})")
    model.eval()
    _MODELS[config_id] = model
    return model


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case):
    root = parity_root()
    config_id, case_name = os.path.dirname(case), os.path.basename(case)
    folder = os.path.join(root, case)
    model = _model_for(config_id)
    model.set_nmf_bases(np.load(os.path.join(folder, "nmf_bases.npy")))
    rgb = jt.array(np.load(os.path.join(folder, "rgb.npy")))
    depth = jt.array(np.load(os.path.join(folder, "depth.npy")))
    with jt.no_grad():
        feats = model.backbone(rgb, depth)
        logits = model(rgb, depth)
    ours = {f"feat_{i}": f.numpy() for i, f in enumerate(feats)}
    ours["logits"] = logits.numpy()
    errors = {}
    for name in TENSORS:
        ref = np.load(os.path.join(folder, f"{name}.npy"))
        assert ours[name].shape == ref.shape, f"{case} {name}: shape {ours[name].shape} vs {ref.shape}"
        err = float(np.abs(ours[name] - ref).max())
        tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
        errors[name] = (err, tol)
    print(case_name, {k: f"{e:.2e} (tol {t:.1e})" for k, (e, t) in errors.items()})
    bad = {k: v for k, v in errors.items() if v[0] > v[1]}
    assert not bad, f"{case}: max abs error above tolerance: {bad}"


def _configs_with_file(name):
    root = parity_root()
    return sorted(os.path.relpath(os.path.dirname(p), root)
                  for p in glob.glob(os.path.join(root, "*", "*", name)))


@pytest.mark.parametrize("config_id", _configs_with_file("pretrained_backbone.pth"))
def test_pretrained_backbone_loads_every_key(config_id):
    """The ImageNet-pretrained format loads into the backbone alone with all keys matched."""
    root = parity_root()
    cfg = load_config("local_configs." + config_id.replace("/", "."))
    cfg.pretrained_model = os.path.join(root, config_id, "pretrained_backbone.pth")
    model = build_model(cfg)  # loads the pretrained file through the config, as users do
    report = model.pretrained_report
    assert report.ok and not report.harmless
    assert len(report.loaded) == len(model.backbone.state_dict())
    # the fixture backbone equals the backbone part of the trained checkpoint of the same seed
    trained = os.path.join(root, config_id, "trained.pth")
    if os.path.isfile(trained):
        sd = segmentor_state_dict(read_checkpoint(trained))
        for key, value in model.backbone.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                np.testing.assert_array_equal(value.numpy(), sd["backbone." + key], err_msg=key)


# ----------------------------------------------------------------------------- bundled subset

def _bilinear(x, size):
    """PyTorch's bilinear resize (align_corners=False, no antialias) of (N,C,h,w), float64."""
    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), i0), 1.0 - (src - i0))
        np.add.at(m, (np.arange(n_out), np.minimum(i0 + 1, n_in - 1)), src - i0)
        return m
    mh, mw = taps(x.shape[2], size[0]), taps(x.shape[3], size[1])
    return np.einsum("hi,ncij,wj->nchw", mh, x.astype(np.float64), mw)


def _max_error(ours, ref):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max()), 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("config_id", sorted(BUNDLED_CASES))
def test_bundled_case_matches_reference(config_id):
    """Preprocessing bit for bit, features, decode head and logits within float rounding."""
    arrays, info = bundled_case(config_id)
    state = synthetic_weights(bundled_manifest()["configs"][config_id], info["weight_seed"])
    assert content_digest(state) == info["weights_content_digest"]
    cfg = load_config("local_configs." + config_id.replace("/", "."))
    model = EncoderDecoder(cfg)
    load_state_dict(model, state, strict=True, source=f"synthetic weights ({config_id})")
    model.eval()
    d = arrays["depth_file_uint8"]
    rgb, depth, _ = EvalTransform(cfg.norm_mean, cfg.norm_std)(arrays["rgb_file_uint8"],
                                                               np.dstack([d, d, d]), d)
    assert array_sha256(rgb[None]) == info["rgb_sha256"]
    assert array_sha256(depth[None]) == info["depth_sha256"]
    model.set_nmf_bases(arrays["nmf_bases"])
    rgb, depth = jt.array(rgb[None]), jt.array(depth[None])
    with jt.no_grad():
        feats = model.backbone(rgb, depth)
        head = model.decode_head(feats).numpy()
        logits = model(rgb, depth).numpy()
    ref_head = arrays["decode_head_out"]
    errors = {f"feat_{i}": _max_error(f.numpy(), arrays[f"feat_{i}"]) for i, f in enumerate(feats)}
    errors["decode_head_out"] = _max_error(head, ref_head)
    errors["logits"] = _max_error(logits, _bilinear(ref_head, logits.shape[2:]))
    bad = {k: v for k, v in errors.items() if v[0] > v[1]}
    assert not bad, f"{config_id}: max abs error above tolerance: {bad}"
