"""utils/infer.py and utils/visualize.py: written files, sizes, palette colours, bad inputs."""
import os
import shutil

import cv2
import numpy as np
import pytest

from test_eval import H, TINY_OPTIONS, W, make_tiny_root

import jittor as jt
from local_configs import load_config
from utils import infer as infer_cli
from utils import visualize as vis
from utils.api import InputError, inference_model, init_model, override_config
from utils.checkpoint import atomic_save, build_model, model_state_numpy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(dataset root, checkpoint, folders) with relative-path configs resolved from root."""
    root = make_tiny_root(str(tmp_path_factory.mktemp("tiny_infer")))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = override_config(load_config("local_configs.SynthRGBD.DFormer_Tiny"), TINY_OPTIONS)
        ckpt = os.path.join(root, "tiny.pkl")
        atomic_save({"model": model_state_numpy(build_model(cfg))}, ckpt)
    finally:
        os.chdir(cwd)
    data = os.path.join(root, "datasets", "SynthRGBD")
    return {"root": root, "ckpt": ckpt, "rgb": os.path.join(data, "RGB"),
            "depth": os.path.join(data, "Depth"), "label": os.path.join(data, "Label")}


def argv(setup, out, *extra):
    return ["--config", "local_configs.SynthRGBD.DFormer_Tiny", "--checkpoint", setup["ckpt"],
            "--cfg-options", *TINY_OPTIONS, "--out", str(out), "--seed", "0", *extra]


def pair(setup, stem="test_0000"):
    return os.path.join(setup["rgb"], stem + ".png"), os.path.join(setup["depth"], stem + ".png")


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- outputs

def test_single_pair_writes_all_outputs(setup, tmp_path):
    rgb_path, depth_path = pair(setup)
    out = tmp_path / "out"
    assert infer_cli.main(argv(setup, out, "--rgb", rgb_path, "--depth", depth_path,
                               "--opacity", "0.3")) == 1
    pred = cv2.imread(str(out / "pred" / "test_0000.png"), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (H, W) and pred.dtype == np.uint8 and pred.max() < 8
    palette = vis.nyu_palette()  # SynthRGBD uses the NYU palette
    color = read_rgb(out / "color" / "test_0000.png")
    np.testing.assert_array_equal(color, palette[pred])
    image = read_rgb(rgb_path)
    overlay = read_rgb(out / "overlay" / "test_0000.png").astype(int)
    expected = np.round(0.7 * image + 0.3 * palette[pred].astype(float))
    assert np.abs(overlay - expected).max() <= 1
    panel = read_rgb(out / "panel" / "test_0000.png")
    assert panel.shape[0] == 2 * H + vis.TITLE_HEIGHT and panel.shape[1] > 3 * 2 * W  # 64 px: x2


def test_prediction_matches_api(setup, tmp_path):
    rgb_path, depth_path = pair(setup, "test_0001")
    out = tmp_path / "out"
    infer_cli.main(argv(setup, out, "--rgb", rgb_path, "--depth", depth_path, "--flip"))
    pred = cv2.imread(str(out / "pred" / "test_0001.png"), cv2.IMREAD_UNCHANGED)
    cwd = os.getcwd()
    os.chdir(setup["root"])
    try:
        cfg = override_config(load_config("local_configs.SynthRGBD.DFormer_Tiny"), TINY_OPTIONS)
        model = init_model(cfg, setup["ckpt"], device="cpu")
    finally:
        os.chdir(cwd)
    jt.set_global_seed(0)  # the same random NMF bases as the CLI's --seed 0
    np.testing.assert_array_equal(inference_model(model, rgb_path, depth_path, flip=True), pred)


def test_label_adds_ground_truth_to_panel(setup, tmp_path):
    rgb_path, depth_path = pair(setup)
    label_path = os.path.join(setup["label"], "test_0000.png")
    infer_cli.main(argv(setup, tmp_path / "a", "--rgb", rgb_path, "--depth", depth_path))
    infer_cli.main(argv(setup, tmp_path / "b", "--rgb", rgb_path, "--depth", depth_path,
                        "--label", label_path))
    without = read_rgb(tmp_path / "a" / "panel" / "test_0000.png")
    with_gt = read_rgb(tmp_path / "b" / "panel" / "test_0000.png")
    assert with_gt.shape[1] >= without.shape[1] + 2 * W


def test_split_mode_uses_dataset(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(setup["root"])
    out = tmp_path / "split"
    assert infer_cli.main(argv(setup, out, "--split", "test", "--max-images", "2")) == 2
    assert sorted(os.listdir(out / "panel")) == ["test_0000.png", "test_0001.png"]


# ----------------------------------------------------------------------------- bad inputs

def test_depth_size_mismatch_names_file(setup, tmp_path):
    rgb_path, _ = pair(setup)
    small = str(tmp_path / "small_depth.png")
    cv2.imwrite(small, np.zeros((H // 2, W // 2), np.uint8))
    with pytest.raises(InputError, match="small_depth.png"):
        infer_cli.main(argv(setup, tmp_path / "o", "--rgb", rgb_path, "--depth", small))


def test_unreadable_rgb_names_file(setup, tmp_path):
    _, depth_path = pair(setup)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.png"):
        infer_cli.main(argv(setup, tmp_path / "o", "--rgb", str(broken), "--depth", depth_path))


def test_missing_depth_names_file(setup, tmp_path):
    rgb_path, _ = pair(setup)
    with pytest.raises(InputError, match="no_such_depth.png"):
        infer_cli.main(argv(setup, tmp_path / "o", "--rgb", rgb_path,
                            "--depth", str(tmp_path / "no_such_depth.png")))


def test_folder_mode_skips_bad_pairs_with_summary(setup, tmp_path, capsys):
    rgb_dir, depth_dir = tmp_path / "rgb", tmp_path / "depth"
    rgb_dir.mkdir(), depth_dir.mkdir()
    for stem in ("test_0000", "test_0001", "test_0002"):
        shutil.copy(os.path.join(setup["rgb"], stem + ".png"), rgb_dir / f"{stem}.png")
    shutil.copy(os.path.join(setup["depth"], "test_0000.png"), depth_dir / "test_0000.png")
    cv2.imwrite(str(depth_dir / "test_0001.png"), np.zeros((H, W // 2), np.uint8))  # wrong size
    out = tmp_path / "out"
    done = infer_cli.main(argv(setup, out, "--rgb-dir", str(rgb_dir), "--depth-dir", str(depth_dir)))
    err = capsys.readouterr().err
    assert done == 1 and os.listdir(out / "color") == ["test_0000.png"]
    assert "2 input(s) skipped" in err
    assert "test_0001.png" in err and "test_0002.png" in err


def test_api_errors_name_files(setup, tmp_path):
    rgb_path, depth_path = pair(setup)
    small = str(tmp_path / "d.png")
    cv2.imwrite(small, np.zeros((4, 4), np.uint8))

    class Dummy:
        cfg = None
    with pytest.raises(InputError, match="d.png"):
        inference_model(Dummy(), rgb_path, small, cfg=load_config("local_configs.SynthRGBD.DFormer_Tiny"))
    with pytest.raises(InputError, match="missing.png"):
        inference_model(Dummy(), str(tmp_path / "missing.png"), depth_path,
                        cfg=load_config("local_configs.SynthRGBD.DFormer_Tiny"))


# ----------------------------------------------------------------------------- visualize

def test_palettes():
    nyu = vis.nyu_palette()
    assert nyu.shape == (256, 3) and tuple(nyu[1]) == (128, 0, 0) and tuple(nyu[255]) == vis.IGNORE_COLOR
    distinct = vis.distinct_palette(40)
    assert len({tuple(c) for c in distinct[:40]}) == 40
    from easydict import EasyDict
    assert np.array_equal(vis.get_palette(EasyDict(dataset_name="SUNRGBD", num_classes=37)), nyu)
    other = vis.get_palette(EasyDict(dataset_name="Mine", num_classes=5))
    assert np.array_equal(other, vis.distinct_palette(5))
    explicit = vis.get_palette(EasyDict(palette=[[1, 2, 3], [4, 5, 6]], num_classes=2))
    assert tuple(explicit[1]) == (4, 5, 6)


def test_legend_and_panel_shapes():
    palette = vis.nyu_palette()
    pred = np.zeros((20, 30), np.int64)
    pred[:, 15:] = 3
    rgb = np.full((20, 30, 3), 100, np.uint8)
    depth = np.tile(np.arange(30, dtype=np.uint8), (20, 1))
    panel = vis.make_panel(rgb, depth, pred, palette, ["a", "b", "c", "d"], min_height=0)
    assert panel.shape[0] == 20 + vis.TITLE_HEIGHT
    enlarged = vis.make_panel(rgb, depth, pred, palette, ["a", "b", "c", "d"], min_height=50)
    assert enlarged.shape[0] == 3 * 20 + vis.TITLE_HEIGHT
    legend = vis.legend([0, 3], ["a", "b", "c", "d"], palette)
    assert legend.shape[0] >= 2 * 20 and legend.dtype == np.uint8
