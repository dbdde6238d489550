"""Evaluation loop: sliding window, multi-scale + flip, batching, metrics, eval.py end to end.

Everything runs on the CPU with DFormer-Tiny (random weights, 32-wide decoder) on a tiny
synthetic split of 64x96 images; the sizes are shared by all tests so Jittor compiles
each kernel once.
"""
import json
import os

import numpy as np
import pytest

import jittor as jt
from local_configs import load_config
from utils.api import override_config
from utils.checkpoint import CheckpointError, atomic_save, build_model, model_state_numpy
from utils.engine import evaluator as ev

H, W = 64, 96
TINY_OPTIONS = ["num_train_imgs=2", "num_eval_imgs=3", f"image_height={H}", f"image_width={W}", f"synthetic_size=({H},{W})",
                f"eval_crop_size=[{H},{W}]", "decoder_embed_dim=32", "num_workers=0", "batch_size=2"]
PATH_KEYS = ("dataset_path", "rgb_root_folder", "gt_root_folder", "x_root_folder", "train_source",
             "eval_source")


# ----------------------------------------------------------------------------- shared set-up

def make_tiny_root(root):
    """Generate the tiny synthetic dataset under ``root``/datasets/SynthRGBD."""
    from utils.dataloader.synthetic import generate_dataset
    generate_dataset(os.path.join(root, "datasets", "SynthRGBD"), train=2, test=3, seed=0,
                     height=H, width=W, verbose=False)
    return root


def tiny_cfg(root):
    """SynthRGBD DFormer-Tiny config shrunk to the tiny dataset, with absolute paths."""
    cfg = override_config(load_config("local_configs.SynthRGBD.DFormer_Tiny"), TINY_OPTIONS)
    for key in PATH_KEYS:
        cfg[key] = os.path.join(root, cfg[key])
    return cfg


def with_crop(cfg, crop, stride_rate=2 / 3):
    """A copy of ``cfg`` with another sliding-window crop."""
    from easydict import EasyDict
    out = EasyDict(dict(cfg))
    out.eval_crop_size, out.eval_stride_rate = list(crop), stride_rate
    return out


def nmf_bases(batch, seed=0):
    """Fixed NMF bases (batch, 512, 64) for the Ham decoder."""
    return np.random.default_rng(seed).random((batch, 512, 64), dtype=np.float32)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(root, cfg, model, checkpoint path): a random model saved as our .pkl."""
    root = make_tiny_root(str(tmp_path_factory.mktemp("tiny_eval")))
    cfg = tiny_cfg(root)
    model = build_model(cfg)
    model.eval()
    ckpt = os.path.join(root, "tiny.pkl")
    atomic_save({"model": model_state_numpy(model)}, ckpt)
    return root, cfg, model, ckpt


@pytest.fixture()
def model(tiny):
    m = tiny[2]
    m.eval()
    m.set_nmf_bases(nmf_bases(1))
    yield m
    m.set_nmf_bases(None)


def random_inputs(batch=1, seed=0, size=(H, W)):
    rng = np.random.default_rng(seed)
    shape = (batch, 3) + tuple(size)
    return rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- numpy references

def np_resize_align_corners(x, size):
    """Bilinear resize (align_corners=True) of an N C H W numpy array."""
    def weights(out, inp):
        m = np.zeros((out, inp))
        for d in range(out):
            src = d * (inp - 1) / (out - 1) if out > 1 else 0.0
            i0 = min(int(np.floor(src)), inp - 1)
            i1 = min(i0 + 1, inp - 1)
            m[d, i0] += 1 - (src - i0)
            m[d, i1] += src - i0
        return m
    mh, mw = weights(size[0], x.shape[2]), weights(size[1], x.shape[3])
    return np.einsum("oh,nchw,pw->ncop", mh, x.astype(np.float64), mw)


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def forward(model, rgb, depth):
    with jt.no_grad():
        return model(jt.array(np.ascontiguousarray(rgb, dtype=np.float32)),
                     jt.array(np.ascontiguousarray(depth, dtype=np.float32))).numpy().astype(np.float64)


# ----------------------------------------------------------------------------- pure helpers

def test_scaled_sizes_match_reference():
    nyu = [ev.scaled_size(480, 640, s) for s in ev.MST_SCALES]
    assert nyu == [(256, 320), (384, 480), (480, 640), (608, 800), (736, 960)]
    sun = [ev.scaled_size(531, 730, s) for s in ev.MST_SCALES]
    assert sun == [(288, 384), (416, 576), (544, 736), (672, 928), (800, 1120)]


def test_window_grid_matches_reference():
    nyu = ((480, 640), (320, 426))
    assert len(ev.window_grid(480, 640, *nyu)) == 1
    assert len(ev.window_grid(608, 800, *nyu)) == 4
    assert len(ev.window_grid(736, 960, *nyu)) == 4
    sun = ((480, 480), (320, 320))
    assert len(ev.window_grid(544, 736, *sun)) == 4
    assert len(ev.window_grid(672, 928, *sun)) == 6
    for y1, y2, x1, x2 in ev.window_grid(672, 928, *sun):
        assert (y2 - y1, x2 - x1) == (480, 480) and y2 <= 672 and x2 <= 928


def test_multi_scale_mode_rule():
    assert not ev.is_multi_scale((1.0,))
    assert ev.is_multi_scale((1.0, 1.0)) and ev.is_multi_scale((0.5,)) and ev.is_multi_scale(ev.MST_SCALES)


# ----------------------------------------------------------------------------- prediction

def test_sliding_with_crop_equal_to_image_is_single_scale(tiny, model):
    cfg = with_crop(tiny[1], (H, W))
    rgb, depth = random_inputs()
    with jt.no_grad():
        single, _ = ev.predict_probs(model, rgb, depth, cfg)
        sliding, _ = ev.predict_probs(model, rgb, depth, cfg, sliding=True)
    np.testing.assert_array_equal(single.numpy(), sliding.numpy())


def test_sliding_windows_average_logits(tiny, model):
    cfg = with_crop(tiny[1], (48, 64))  # stride 32x42: 2x2 windows
    rgb, depth = random_inputs(seed=1)
    total = np.zeros((1, cfg.num_classes, H, W))
    count = np.zeros((1, 1, H, W))
    for y1, y2, x1, x2 in [(0, 48, 0, 64), (0, 48, 32, 96), (16, 64, 0, 64), (16, 64, 32, 96)]:
        total[..., y1:y2, x1:x2] += forward(model, rgb[..., y1:y2, x1:x2], depth[..., y1:y2, x1:x2])
        count[..., y1:y2, x1:x2] += 1
    with jt.no_grad():
        ours = ev.sliding_logits(model, jt.array(rgb), jt.array(depth), cfg.eval_crop_size,
                                 cfg.eval_stride_rate).numpy()
    np.testing.assert_allclose(ours, total / count, rtol=1e-4, atol=1e-4)


def test_single_scale_sliding_small_input_is_resized_back(tiny, model):
    cfg = with_crop(tiny[1], (H, W))
    rgb, depth = random_inputs(seed=2, size=(48, 64))
    logits = forward(model, np_resize_align_corners(rgb, (H, W)), np_resize_align_corners(depth, (H, W)))
    expected = np_softmax(np_resize_align_corners(logits, (48, 64)))
    with jt.no_grad():
        ours, passes = ev.predict_probs(model, rgb, depth, cfg, sliding=True)
    assert passes == 1 and ours.shape == (1, cfg.num_classes, 48, 64)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_multi_scale_flip_sums_softmaxes(tiny, model):
    cfg = tiny[1]
    rgb, depth = random_inputs(seed=3)
    scales = (0.5, 1.0)
    expected = np.zeros((1, cfg.num_classes, H, W))
    for scale in scales:
        size = ev.scaled_size(H, W, scale)  # (32, 64) and (64, 96)
        r, d = np_resize_align_corners(rgb, size), np_resize_align_corners(depth, size)
        expected += np_softmax(np_resize_align_corners(forward(model, r, d), (H, W)))
        flipped = forward(model, r[..., ::-1], d[..., ::-1])[..., ::-1]
        expected += np_softmax(np_resize_align_corners(flipped, (H, W)))
    with jt.no_grad():
        ours, passes = ev.predict_probs(model, rgb, depth, cfg, scales=scales, flip=True)
    assert passes == 4
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(ours.numpy().sum(axis=1), 4.0, atol=1e-4)


def test_batch_of_two_matches_single_images(tiny, model):
    cfg = tiny[1]
    rgb, depth = random_inputs(batch=2, seed=4)
    model.set_nmf_bases(np.concatenate([nmf_bases(1), nmf_bases(1)]))
    with jt.no_grad():
        both = ev.predict(model, rgb, depth, cfg, scales=(0.5, 1.0), flip=True)
    model.set_nmf_bases(nmf_bases(1))
    with jt.no_grad():
        first = ev.predict(model, rgb[:1], depth[:1], cfg, scales=(0.5, 1.0), flip=True)
        second = ev.predict(model, rgb[1:], depth[1:], cfg, scales=(0.5, 1.0), flip=True)
    assert both.shape == (2, H, W)
    np.testing.assert_array_equal(both, np.concatenate([first, second]))


# ----------------------------------------------------------------------------- loop and metrics

def test_evaluate_counts_valid_pixels_and_restores_mode(tiny, model):
    cfg = tiny[1]
    rgb, depth = random_inputs(seed=5)
    with jt.no_grad():
        label = ev.predict(model, rgb, depth, cfg)
    label[:, :8] = 255  # ignored rows
    batches = [{"rgb": rgb, "depth": depth, "label": label}] * 2
    model.train()
    metrics = ev.evaluate(model, batches, cfg, progress=False)
    assert model.is_training()
    assert metrics["labelled_pixels"] == 2 * int((label != 255).sum())
    assert metrics["pixel_acc"] == pytest.approx(100.0)
    assert metrics["miou_present"] == pytest.approx(100.0)
    model.eval()
    once = ev.evaluate(model, batches, cfg, max_iters=1, progress=False)
    assert once["labelled_pixels"] == int((label != 255).sum())


def test_evaluate_rejects_wrong_batches(tiny, model):
    with pytest.raises(ValueError, match="'rgb', 'depth' and 'label'"):
        ev.evaluate(model, [{"data": 0}], tiny[1], progress=False)


def test_seed_makes_random_bases_reproducible(tiny):
    cfg, model = tiny[1], tiny[2]
    model.set_nmf_bases(None)
    rgb, depth = random_inputs(seed=6)
    batches = [{"rgb": rgb, "depth": depth, "label": np.zeros((1, H, W), np.int32)}]
    a = ev.evaluate(model, batches, cfg, progress=False, seed=3)
    b = ev.evaluate(model, batches, cfg, progress=False, seed=3)
    assert a == b


def test_api_matches_evaluator_on_dataset_sample(tiny, model):
    from utils.api import inference_model, init_model
    from utils.dataloader import build_val_loader
    root, cfg, _, ckpt = tiny
    api_model = init_model(cfg, ckpt, device="cpu")
    api_model.set_nmf_bases(nmf_bases(1))
    loader = build_val_loader(cfg, batch_size=1, num_workers=0)
    batch = next(iter(loader))
    with jt.no_grad():
        expected = ev.predict(api_model, batch["rgb"], batch["depth"], cfg, scales=(0.5, 1.0), flip=True)[0]
    rgb_path = batch["fn"][0]
    stem = os.path.splitext(os.path.basename(rgb_path))[0]
    depth_path = os.path.join(cfg.x_root_folder, stem + cfg.x_format)
    classes, probs = inference_model(api_model, rgb_path, depth_path, return_probs=True,
                                     scales=(0.5, 1.0), flip=True)
    assert classes.shape == (H, W) and probs.shape == (cfg.num_classes, H, W)
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    import cv2
    again = inference_model(api_model, cv2.imread(rgb_path, cv2.IMREAD_UNCHANGED),
                            cv2.imread(depth_path, cv2.IMREAD_GRAYSCALE), scales=(0.5, 1.0), flip=True)
    np.testing.assert_array_equal(again, expected)


def test_api_sun_padding_is_cropped_off(tiny, model, monkeypatch):
    import cv2
    import utils.api as api
    from utils.dataloader.transforms import EvalTransform
    cfg = with_crop(tiny[1], (H, W))
    cfg.pad_SUNRGBD = True
    monkeypatch.setattr(api, "SUN_PAD_SIZE", (H + 32, W + 32))  # small stand-in for 531x730
    rgb_path = os.path.join(cfg.rgb_root_folder, "test_0002.png")
    depth = cv2.imread(os.path.join(cfg.x_root_folder, "test_0002.png"), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.imread(rgb_path, cv2.IMREAD_UNCHANGED)
    x_rgb, x_depth, _ = EvalTransform(cfg.norm_mean, cfg.norm_std, pad_to=(H + 32, W + 32))(
        rgb, np.dstack([depth] * 3), np.zeros((H, W), np.uint8))
    with jt.no_grad():
        expected = ev.predict(model, x_rgb[None], x_depth[None], cfg)[0, :H, :W]
    classes = api.inference_model(model, rgb_path, depth, cfg=cfg)
    np.testing.assert_array_equal(classes, expected)


# ----------------------------------------------------------------------------- eval.py

def _eval_argv(ckpt, *extra):
    return ["--config", "local_configs.SynthRGBD.DFormer_Tiny", "--checkpoint", ckpt,
            "--cfg-options", *TINY_OPTIONS, "--no-progress", "--seed", "0", *extra]


def test_eval_cli_end_to_end(tiny, monkeypatch, tmp_path, capsys):
    from utils import eval as eval_cli
    root, cfg, _, ckpt = tiny
    monkeypatch.chdir(root)  # the config's dataset paths are relative to the working folder
    out_json, pred_dir = tmp_path / "m.json", tmp_path / "pred"
    metrics = eval_cli.main(_eval_argv(ckpt, "--max-val-iters", "1", "--json", str(out_json),
                                       "--save-pred", str(pred_dir)))
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "wall" in printed and "Pixel accuracy" in printed
    saved = json.loads(out_json.read_text())
    assert saved["metrics"]["miou"] == pytest.approx(metrics["miou"])
    assert saved["metrics"]["labelled_pixels"] > 0 and saved["run"]["max_val_iters"] == 1
    assert sorted(os.listdir(pred_dir)) == ["test_0000.png", "test_0001.png"]  # one batch of 2


def test_eval_cli_mst_flags(tiny):
    from utils import eval as eval_cli
    args = eval_cli.parse_args(_eval_argv(tiny[3], "--mst"))
    assert eval_cli.resolve_modes(args) == (ev.MST_SCALES, True)
    args = eval_cli.parse_args(_eval_argv(tiny[3], "--mst", "--no-flip"))
    assert eval_cli.resolve_modes(args) == (ev.MST_SCALES, False)
    args = eval_cli.parse_args(_eval_argv(tiny[3]))
    assert eval_cli.resolve_modes(args) == ((1.0,), False)
    args = eval_cli.parse_args(_eval_argv(tiny[3], "--scales", "0.75", "1.25"))
    assert eval_cli.resolve_modes(args) == ((0.75, 1.25), True)
    # --mst takes the config's scales and flip (configs/ files set them through `tta`)
    args = eval_cli.parse_args(_eval_argv(tiny[3], "--mst"))
    cfg = {"eval_scale_array": [0.75, 1.0], "eval_flip": False}
    assert eval_cli.resolve_modes(args, cfg) == ((0.75, 1.0), False)


def test_eval_cli_bad_checkpoint(tiny, monkeypatch, tmp_path):
    from utils import eval as eval_cli
    monkeypatch.chdir(tiny[0])
    missing = str(tmp_path / "nope.pkl")
    with pytest.raises(CheckpointError, match="nope.pkl"):
        eval_cli.main(_eval_argv(missing, "--max-val-iters", "1"))
