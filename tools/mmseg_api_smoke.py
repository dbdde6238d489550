"""Smoke test of the mmseg-style API on random RGB-D PNGs (seconds on a CPU once Jittor's
kernels are compiled).

    python tools/mmseg_api_smoke.py [--keep DIR]

Writes a tiny SynthRGBD-layout dataset (random-weight DFormer-Tiny, odd image sizes
included), then checks, one PASS/FAIL line each:

* ``init_model`` (device 'cuda:0' falls back to the CPU; ``dataset_meta``, ``cfg``);
* ``inference_model`` output sizes, and equality of its prediction with
  ``utils.api.inference_model`` and with the evaluator run on the *dataset's own*
  evaluation item of the same files, also with the SUN RGB-D padding on (same
  preprocessing: BGR order, ImageNet normalisation, depth ``(d/255 - 0.48)/0.28``);
* a missing depth is an error;
* ``show_result_pyplot`` (``show=True`` by default, a warning without a display) and
  ``MMSegInferencer`` (single pair, list, folder pair, ``out_dir/vis`` and
  ``out_dir/pred``, ``return_datasamples`` semantics, unknown keywords rejected);
* ``tools/mmseg_infer.py`` as a command (overlay and class-index PNG written).

Exit status 0 when everything passes, 1 otherwise; the last line is ``N passed, N failed``.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

CONFIG = "local_configs.SynthRGBD.DFormer_Tiny"
OPTIONS = ["decoder_embed_dim=32"]
SIZES = ((48, 64), (45, 61))  # one odd size


class Context:
    def __init__(self, root):
        self.root = root
        self.data = os.path.join(root, "data")
        self.model = None
        self.pairs = []


def write_inputs(ctx):
    """Random RGB/depth PNGs plus the dataset layout (test.txt, Label) for the evaluator."""
    import cv2
    rng = np.random.default_rng(0)
    for sub in ("RGB", "Depth", "Label"):
        os.makedirs(os.path.join(ctx.data, sub), exist_ok=True)
    lines = []
    for i, (h, w) in enumerate(SIZES):
        stem = f"img_{i}"
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        depth = rng.integers(0, 256, (h, w), dtype=np.uint8)
        label = rng.integers(0, 9, (h, w), dtype=np.uint8)
        paths = [os.path.join(ctx.data, "RGB", stem + ".png"), os.path.join(ctx.data, "Depth", stem + ".png")]
        cv2.imwrite(paths[0], rgb)
        cv2.imwrite(paths[1], depth)
        cv2.imwrite(os.path.join(ctx.data, "Label", stem + ".png"), label)
        ctx.pairs.append(tuple(paths))
        lines.append(f"RGB/{stem}.png")
    for split in ("train.txt", "test.txt"):
        with open(os.path.join(ctx.data, split), "w") as f:
            f.write("\n".join(lines) + "\n")


def fixed_bases(model, seed=0):
    """Fixed NMF bases, so that repeated forwards agree exactly."""
    dim = int(model.decode_head.ham_channels)
    model.set_nmf_bases(np.random.default_rng(seed).random((1, dim, 64)).astype(np.float32))


def check_init(ctx):
    import warnings
    from mmseg.apis import init_model
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        ctx.model = init_model(CONFIG, None, device="cuda:0", cfg_options=OPTIONS)
    meta = ctx.model.dataset_meta
    assert len(meta["classes"]) == ctx.model.cfg.num_classes == len(meta["palette"])
    assert ctx.model.cfg.decoder_embed_dim == 32
    fixed_bases(ctx.model)


def check_inference(ctx):
    from mmseg.apis import inference_model
    from mmseg.structures import SegDataSample
    for (h, w), (rgb, depth) in zip(SIZES, ctx.pairs):
        for img in ({"img": rgb, "modal_x": depth}, (rgb, depth)):
            result = inference_model(ctx.model, img)
            assert isinstance(result, SegDataSample)
            assert result.pred_sem_seg.data.shape == (1, h, w), result.pred_sem_seg.data.shape
            assert result.seg_logits.data.shape == (ctx.model.cfg.num_classes, h, w)
            assert np.array_equal(result.seg_logits.data.argmax(0), result.pred_sem_seg.data[0])
    results = inference_model(ctx.model, [tuple(p) for p in ctx.pairs])
    assert isinstance(results, list) and len(results) == len(ctx.pairs)


def check_equal_engine(ctx, pad_sun=False):
    """mmseg.apis.inference_model == utils.api.inference_model == evaluator on the dataset item
    (``pad_sun``: with the SUN RGB-D padding on, the evaluator's output cropped back)."""
    import copy
    from easydict import EasyDict
    cfg = EasyDict(copy.deepcopy(dict(ctx.model.cfg)))
    for key, sub in (("dataset_path", ""), ("rgb_root_folder", "RGB"), ("x_root_folder", "Depth"),
                     ("gt_root_folder", "Label")):
        cfg[key] = os.path.join(ctx.data, sub)
    cfg.eval_source = os.path.join(ctx.data, "test.txt")
    cfg.train_source = os.path.join(ctx.data, "train.txt")
    cfg.rgb_format = ".png"
    cfg.synthetic = False  # our own random files, not the generator's
    cfg.num_eval_imgs = len(ctx.pairs)
    cfg.pad_SUNRGBD = pad_sun
    saved_pad = ctx.model.cfg.get("pad_SUNRGBD", False)
    ctx.model.cfg.pad_SUNRGBD = pad_sun
    try:
        _compare_paths(ctx, cfg, pad_sun)
    finally:
        ctx.model.cfg.pad_SUNRGBD = saved_pad


def _compare_paths(ctx, cfg, pad_sun):
    import jittor as jt
    from mmseg.apis import inference_model
    from utils import api
    from utils.dataloader import RGBXDataset
    from utils.engine.evaluator import predict_probs, probs_to_pred
    dataset = RGBXDataset(cfg, "val", augment=False)
    for position, (rgb, depth) in enumerate(ctx.pairs):
        ours = inference_model(ctx.model, {"img": rgb, "modal_x": depth})
        pred_api, probs_api = api.inference_model(ctx.model, rgb, depth, return_probs=True)
        item = dataset.get_sample(position)
        assert item["fn"].endswith(os.path.basename(rgb)), item["fn"]
        x_rgb, x_depth = api.preprocess(*[api.read_rgb(rgb)[0], api.read_depth(depth)[0]], ctx.model.cfg)
        assert np.array_equal(x_rgb[0], item["rgb"]) and np.array_equal(x_depth[0], item["depth"]), \
            "preprocessing differs from the dataset's evaluation item"
        with jt.no_grad():
            total, passes = predict_probs(ctx.model, item["rgb"][None], item["depth"][None], cfg)
        h, w = ours.pred_sem_seg.shape
        if pad_sun:
            assert item["rgb"].shape[1:] == (531, 730), item["rgb"].shape
        pred_eval = probs_to_pred(total)[0, :h, :w]
        assert np.array_equal(ours.pred_sem_seg.data[0], pred_api), "mmseg != utils.api prediction"
        assert np.array_equal(pred_api, pred_eval), "utils.api != evaluator prediction"
        probs = np.exp(ours.seg_logits.data)
        assert np.allclose(probs, probs_api, atol=1e-5), "seg_logits are not the engine's log-probabilities"


def check_missing_depth(ctx):
    from mmseg.apis import inference_model
    from utils.errors import InputError
    rgb = ctx.pairs[0][0]
    for bad in (rgb, {"img": rgb}, {"img": rgb, "modal_x": None}):
        try:
            inference_model(ctx.model, bad)
        except InputError:
            continue
        raise AssertionError(f"no error for an input without depth: {bad!r}")


def check_show(ctx):
    import warnings
    from mmseg.apis import inference_model, show_result_pyplot
    rgb, depth = ctx.pairs[1]
    result = inference_model(ctx.model, (rgb, depth))
    out = os.path.join(ctx.root, "show", "vis.png")
    drawn = show_result_pyplot(ctx.model, rgb, result, opacity=0.5, out_file=out, show=False)
    assert drawn.shape == SIZES[1] + (3,) and os.path.isfile(out)
    import matplotlib
    if matplotlib.get_backend().lower() == "agg":  # show=True is mmseg's default: no window here
        from mmseg import visualization
        visualization._NO_DISPLAY_WARNED.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = show_result_pyplot(ctx.model, rgb, result, opacity=0.5)
        assert np.array_equal(again, drawn)
        assert any("no display" in str(w.message) for w in caught), "show=True is not the default"


def check_inferencer(ctx):
    """mmseg 1.x's outputs: dict by default, bare SegDataSample(s) with return_datasamples
    (drawings still written, no class-map files), ``%08d_vis.jpg`` for arrays, unknown
    keywords rejected."""
    import cv2
    from mmseg.apis import MMSegInferencer
    from mmseg.structures import SegDataSample
    from utils.errors import ConfigError
    inferencer = MMSegInferencer(ctx.model)
    one = inferencer({"img": ctx.pairs[0][0], "modal_x": ctx.pairs[0][1]}, return_vis=True)
    assert one["predictions"].shape == SIZES[0] and one["visualization"].shape == SIZES[0] + (3,)
    assert inferencer(tuple(ctx.pairs[0]))["visualization"] == []
    many = inferencer([tuple(p) for p in ctx.pairs], return_datasamples=True)
    assert isinstance(many, list) and len(many) == 2, type(many)
    assert all(isinstance(s, SegDataSample) for s in many) and many[1].pred_sem_seg.shape == SIZES[1]
    single = inferencer(tuple(ctx.pairs[1]), return_datasamples=True)
    assert isinstance(single, SegDataSample)
    assert np.array_equal(single.pred_sem_seg.data, many[1].pred_sem_seg.data)
    out_dir = os.path.join(ctx.root, "inferencer")
    folder = inferencer({"img": os.path.join(ctx.data, "RGB"), "modal_x": os.path.join(ctx.data, "Depth")},
                        out_dir=out_dir)
    assert len(folder["predictions"]) == 2
    assert sorted(os.listdir(os.path.join(out_dir, "vis"))) == ["img_0.png", "img_1.png"]
    assert sorted(os.listdir(os.path.join(out_dir, "pred"))) == ["00000002_pred.png", "00000003_pred.png"]
    arrays_dir = os.path.join(ctx.root, "inferencer_samples")
    arrays = {"img": cv2.imread(ctx.pairs[0][0]), "modal_x": cv2.imread(ctx.pairs[0][1], 0)}
    sample = MMSegInferencer(ctx.model)(arrays, return_datasamples=True, out_dir=arrays_dir)
    assert isinstance(sample, SegDataSample)
    assert os.listdir(os.path.join(arrays_dir, "vis")) == ["00000000_vis.jpg"]
    assert not os.path.exists(os.path.join(arrays_dir, "pred")), "return_datasamples wrote class maps"
    try:
        MMSegInferencer(ctx.model, weights="other.pth")
        raise AssertionError("weights for an already built model were accepted")
    except ConfigError as exc:
        assert "weights" in str(exc), str(exc)
    for typo in ({"return_datasample": True}, {"opactiy": 0.5}):
        try:
            inferencer(tuple(ctx.pairs[0]), **typo)
        except ConfigError as exc:
            assert repr(next(iter(typo))) in str(exc), str(exc)
            assert isinstance(exc, TypeError), "an unknown keyword is also a TypeError"
            continue
        raise AssertionError(f"no error for the unknown keyword {typo}")


def check_cli(ctx):
    import cv2
    rgb, depth = ctx.pairs[1]
    out = os.path.join(ctx.root, "cli", "vis.png")
    cmd = [sys.executable, os.path.join(REPO, "tools", "mmseg_infer.py"), "--config", CONFIG,
           "--img", rgb, "--modal-x", depth, "--out-file", out, "--device", "cpu",
           "--cfg-options", *OPTIONS]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = cv2.imread(os.path.join(ctx.root, "cli", "vis_pred.png"), cv2.IMREAD_UNCHANGED)
    vis = cv2.imread(out)
    assert vis.shape == SIZES[1] + (3,) and pred.shape == SIZES[1] and pred.max() < 8
    bad = subprocess.run(cmd[:-4] + ["--modal-x", os.path.join(ctx.root, "nope.png"), "--device", "cpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:"), bad.stderr[-500:]


def main(argv=None):
    import argparse
    from tools.mmseg_heads_smoke import run_checks
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", default=None, help="write the files here and keep them")
    parser.add_argument("--no-cli", action="store_true", help="skip the tools/mmseg_infer.py subprocess")
    args = parser.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="mmseg_api_smoke_")
    os.makedirs(root, exist_ok=True)
    ctx = Context(root)
    try:
        write_inputs(ctx)
        checks = [("init_model (cuda:0 falls back to cpu)", lambda: check_init(ctx)),
                  ("inference_model sizes (odd size, dict/tuple/list inputs)", lambda: check_inference(ctx)),
                  ("inference_model == utils.api == evaluator on the dataset item", lambda: check_equal_engine(ctx)),
                  ("... also with the SUN RGB-D padding", lambda: check_equal_engine(ctx, pad_sun=True)),
                  ("missing depth is an InputError", lambda: check_missing_depth(ctx)),
                  ("show_result_pyplot", lambda: check_show(ctx)),
                  ("MMSegInferencer (pair, list, folder pair, out_dir, return_datasamples, typos)", lambda: check_inferencer(ctx))]
        if not args.no_cli:
            checks.append(("tools/mmseg_infer.py command", lambda: check_cli(ctx)))
        return run_checks(checks)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
