"""tools/train.py, tools/test.py and tools/reproduce_dformer_scores.sh: the mission
commands of issue 9 on a small generated NYU-layout dataset, the same-trainer guarantee
(bit-identical parameters with utils/train.py) and --cfg-options on every entry point.

The models run at 64x64 from scratch (``model.pretrained=None``), one or two iterations,
each command in its own process as a user would run it.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from utils.errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
NYU_L = "configs/dformer/dformer_large_8xb8-500e_nyudepthv2-480x640.py"
NYU_T = "configs/dformer/dformer_tiny_8xb8-500e_nyudepthv2-480x640.py"
MISSION_TRAIN = ["train_cfg.max_iters=1", "train_cfg.val_interval=1",
                 "train_dataloader.batch_size=1", "train_dataloader.dataset.file_length=1",
                 "val_dataloader.batch_size=1", "val_dataloader.dataset.file_length=1"]
MISSION_TEST = ["val_dataloader.batch_size=1", "val_dataloader.dataset.file_length=1"]


def small(root, workers=0):
    """The overrides this machine needs: the generated data, no ImageNet file, 64x64 crops
    (and ``workers`` loader processes; None keeps the config's)."""
    return [f"*.dataset.data_root={root}", "model.pretrained=None",
            "train_dataloader.dataset.pipeline.crop_size=(64,64)"] + \
        ([] if workers is None else [f"train_dataloader.num_workers={workers}"])


def run(args, timeout=1200):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    """NYUDepthv2 layout (RGB/*.jpg, Depth/*.png, Label/*.png, train.txt, test.txt):
    3 training and 2 test images of 64x64 from the synthetic generator."""
    import cv2
    from utils.dataloader.synthetic import generate_dataset
    root = tmp_path_factory.mktemp("tools") / "NYUDepthv2"
    generate_dataset(str(root), train=3, test=2, seed=0, height=64, width=64, verbose=False)
    for path in glob.glob(str(root / "RGB" / "*.png")):
        cv2.imwrite(path[:-4] + ".jpg", cv2.imread(path))
        os.remove(path)
    return root


@pytest.fixture(scope="module")
def trained(nyu, tmp_path_factory):
    """The mission's training command (DFormer-Large), with the data/pretrained overrides;
    the config's 16 loader processes are kept (a mid-epoch stop must still exit)."""
    work = tmp_path_factory.mktemp("mission_train")
    proc = run(["tools/train.py", "--config", NYU_L, "--no-progress", "--cfg-options",
                *MISSION_TRAIN, *small(nyu, workers=None), f"work_dir={work}"])
    return work, proc


def test_mission_train_command(trained):
    from utils.checkpoint import read_checkpoint
    from utils.config import load_config
    from utils.engine.trainer import plain
    work, proc = trained
    state = read_checkpoint(str(work / "latest.pkl"))
    assert state["iteration"] == 1 and state["config"]["backbone"] == "DFormer-Large"
    # the config file with its options, dumped as mmengine's runner does, reruns this run
    assert plain(dict(load_config(str(work / osp.basename(NYU_L))))) == state["config"]
    history = [json.loads(line) for line in open(work / "val_history.jsonl")]
    assert [h["iteration"] for h in history] == [1]  # one validation ...
    log = "".join(open(p).read() for p in glob.glob(str(work / "log_*.log")))
    assert "val dataset len: 1" in log  # ... on one sample
    assert log.count("Iter 1/2: lr=") == 1 and "Iter 2/2" not in log


def test_mission_test_command(trained, nyu, tmp_path):
    work, _ = trained
    proc = run(["tools/test.py", "--config", NYU_L, "--mode", "val", "--no-progress",
                "--work-dir", str(tmp_path), "--out", str(tmp_path / "idx"),
                "--cfg-options", *MISSION_TEST, *small(nyu), f"load_from={work}/latest.pkl"])
    assert "| Class" in proc.stdout and "mIoU" in proc.stdout
    assert f"checkpoint {work}/latest.pkl" in proc.stdout
    metrics = json.load(open(tmp_path / "metrics_val.json"))["metrics"]
    assert metrics["miou"] is not None
    assert len(os.listdir(tmp_path / "idx")) == 1  # file_length=1: the first sample only
    from utils.config import load_config
    dumped = load_config(str(tmp_path / osp.basename(NYU_L)))
    assert (dumped.load_from, dumped.val_file_length) == (f"{work}/latest.pkl", 1)


def test_class_config_through_tools_train(nyu, tmp_path):
    run(["tools/train.py", "--config", "local_configs.NYUDepthv2.DFormer_Base", "--no-progress",
         "--cfg-options", f"dataset_path={nyu}", "pretrained_model=None", "image_height=64",
         "image_width=64", "batch_size=1", "num_train_imgs=1", "max_iters=1", "val_interval=0",
         "num_workers=0", f"work_dir={tmp_path}"])
    from utils.checkpoint import read_checkpoint
    state = read_checkpoint(str(tmp_path / "latest.pkl"))
    assert state["iteration"] == 1 and state["config"]["backbone"] == "DFormer-Base"


def test_tools_train_equals_utils_train_bit_for_bit(nyu, tmp_path):
    """The same run from a configs/ file via tools/train.py and from the class config via
    utils/train.py: identical parameters and optimiser state."""
    from utils.checkpoint import read_checkpoint
    common = ["--no-progress", "--val-every", "0"]
    run(["tools/train.py", NYU_T, *common, "--work-dir", str(tmp_path / "a"), "--cfg-options",
         *small(nyu), "train_dataloader.batch_size=2", "train_dataloader.dataset.file_length=3",
         "train_cfg.max_iters=2"])
    run(["utils/train.py", "--config", "local_configs.NYUDepthv2.DFormer_Tiny", *common,
         "--work-dir", str(tmp_path / "b"), "--cfg-options", f"dataset_path={nyu}",
         "pretrained_model=None", "image_height=64", "image_width=64", "num_workers=0",
         "batch_size=2", "num_train_imgs=3", "max_iters=2"])
    a = read_checkpoint(str(tmp_path / "a" / "latest.pkl"))
    b = read_checkpoint(str(tmp_path / "b" / "latest.pkl"))
    assert a["iteration"] == b["iteration"] == 2
    assert a["config"] == b["config"]
    assert sorted(a["model"]) == sorted(b["model"])
    for key in a["model"]:
        assert np.array_equal(a["model"][key], b["model"][key]), key
    for ga, gb in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
        for x, y in zip(ga.get("values", []), gb.get("values", [])):
            assert np.array_equal(x, y)


def test_reproduce_script_without_checkpoints(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, DFORMER_ROOT=str(tmp_path / "root"), OUT_DIR=str(out),
               PYTHON_BIN=sys.executable)
    proc = subprocess.run(["bash", "tools/reproduce_dformer_scores.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = open(out / "scores.csv").read().splitlines()
    assert rows[0] == "config,checkpoint,published_miou,our_miou,delta,status"
    assert len(rows) == 15 and all(r.endswith(",missing checkpoint") for r in rows[1:])
    md = open(out / "scores.md").read()
    assert md.count("missing checkpoint") == 14 and "| 57.2 |" in md and "| 53.3 |" in md


def test_reproduce_script_missing_dataset_and_filter(tmp_path):
    root = tmp_path / "root"
    (root / "checkpoints" / "trained").mkdir(parents=True)
    (root / "checkpoints" / "trained" / "NYUv2_DFormer_Large.pth").write_bytes(b"x")
    env = dict(os.environ, DFORMER_ROOT=str(root), OUT_DIR=str(tmp_path / "out"),
               PYTHON_BIN=sys.executable, MODEL_FILTER="dformer_large_8xb8")
    proc = subprocess.run(["bash", "tools/reproduce_dformer_scores.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = open(tmp_path / "out" / "scores.csv").read().splitlines()
    assert len(rows) == 2 and rows[1].endswith(",missing dataset")


def test_every_entry_point_takes_cfg_options():
    from utils import eval as eval_cli
    from utils.train import build_parser
    opts = ["--cfg-options", "a=1", "b.c=[1,2]"]
    assert build_parser().parse_args(["--config", "x", *opts]).cfg_options == ["a=1", "b.c=[1,2]"]
    assert eval_cli.parse_args(["--config", "x", *opts]).cfg_options == ["a=1", "b.c=[1,2]"]
    for script in ("utils/infer.py", "utils/latency.py", "benchmark.py", "tools/train.py",
                   "tools/test.py"):
        assert "--cfg-options" in run([script, "--help"], timeout=300).stdout, script


def tool_module(name):
    """tools/<name>.py as a module of the tools package."""
    import importlib
    return importlib.import_module(f"tools.{name}")


def test_tools_parse_their_flags(tmp_path):
    train_tool, test_tool = tool_module("train"), tool_module("test")
    args = train_tool.parse_args([NYU_L, "--resume", "--work-dir", "w", "--amp",
                                  "--launcher", "mpi", "--load-from", "x.pkl"])
    assert (args.config, args.resume, args.work_dir, args.amp, args.launcher, args.load_from) \
        == (NYU_L, "latest", "w", True, "mpi", "x.pkl")
    assert train_tool.parse_args(["--config", NYU_L, "--epochs", "3"]).epochs == 3
    with pytest.raises(ConfigError, match="a config is required"):
        train_tool.parse_args([])
    from utils.config import dump_config, load_config
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"")
    args = train_tool.parse_args([NYU_L, "--load-from", str(weights), "--cfg-options",
                                  "randomness.seed=3"])
    cfg = train_tool.load(args)
    assert (cfg.load_from, cfg.seed) == (str(weights), 3)
    dumped = load_config(dump_config(args.config, args.cfg_options, str(tmp_path)))
    assert (dumped.load_from, dumped.seed) == (str(weights), 3)  # --load-from is in the dump
    cfg = load_config(NYU_L)
    args = test_tool.build_parser().parse_args([NYU_L, "--mst", "--sliding", "--max-iters", "2",
                                                "--no-strict-load", "--checkpoint", "c.pth"])
    args.config = NYU_L
    argv = test_tool.eval_argv(args, cfg)
    assert argv[argv.index("--scales") + 1:argv.index("--scales") + 6] == \
        ["0.5", "0.75", "1.0", "1.25", "1.5"]
    for flag in ("--flip", "--sliding", "--no-strict", "--max-val-iters"):
        assert flag in argv
    args = test_tool.build_parser().parse_args([NYU_L, "--multi_scale", "--no-flip"])
    args.config = NYU_L
    assert "--no-flip" in test_tool.eval_argv(args, cfg)
