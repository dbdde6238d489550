"""End to end through the user-facing command lines: train -> eval -> infer on SynthRGBD.

Runs in a scratch working directory, so the dataset (generated on first use, ~15 s) and the
run folder land there, exactly as they would for a user starting from an empty checkout.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "local_configs.SynthRGBD.DFormer_Tiny"


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_train_eval_infer(tmp_path):
    run = tmp_path / "run"
    _run([os.path.join(REPO, "utils", "train.py"), "--config", CONFIG, "--work-dir", str(run),
          "--max-iters", "3", "--batch-size-override", "2", "--num-workers-override", "0",
          "--no-mst", "--max-val-iters", "2", "--no-progress"], cwd=tmp_path)
    assert (tmp_path / "datasets" / "SynthRGBD" / "train.txt").is_file()
    for name in ("latest.pkl", "best.pkl"):
        assert (run / name).is_file(), name

    metrics_file = tmp_path / "metrics.json"
    out = _run([os.path.join(REPO, "utils", "eval.py"), "--config", CONFIG,
                "--checkpoint", str(run / "best.pkl"), "--max-val-iters", "2", "--batch-size", "1",
                "--json", str(metrics_file), "--seed", "0", "--no-progress"], cwd=tmp_path)
    assert "mIoU" in out and "poster" in out  # the per-class table names the classes
    metrics = json.loads(metrics_file.read_text())["metrics"]
    assert 0.0 <= metrics["miou"] <= 100.0 and 0.0 < metrics["pixel_acc"] <= 100.0
    assert len(metrics["per_class"]) == 8

    out_dir = tmp_path / "infer"
    _run([os.path.join(REPO, "utils", "infer.py"), "--config", CONFIG,
          "--checkpoint", str(run / "best.pkl"), "--split", "test", "--max-images", "2",
          "--out", str(out_dir), "--seed", "0"], cwd=tmp_path)
    preds = sorted((out_dir / "pred").glob("*.png"))
    assert len(preds) == 2
    for kind in ("color", "overlay", "panel"):
        assert len(list((out_dir / kind).glob("*.png"))) == 2, kind
    pred = cv2.imread(str(preds[0]), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (240, 320) and pred.max() < 8
    color = cv2.imread(str(out_dir / "color" / preds[0].name), cv2.IMREAD_COLOR)
    assert color.shape == (240, 320, 3) and np.unique(color.reshape(-1, 3), axis=0).shape[0] \
        <= np.unique(pred).size
