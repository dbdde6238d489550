"""Smoke test of an mmengine-style config through tools/train.py, on synthetic data.

    python tools/mmengine_runner_smoke.py [--keep DIR]

Trains DFormer-Tiny from ``configs/dformer/dformer_tiny_8xb8-10e_synthrgbd-160x160.py``
shrunk by ``--cfg-options`` (64x64 images, 4 training samples, batch 2: 3 iterations per
epoch, warm-up 1 epoch, 2 epochs = 6 iterations) and checks that

1. validation runs every ``train_cfg.val_interval`` = 2 iterations (after 2, 4 and 6);
2. ``latest.pkl`` is written every ``default_hooks.checkpoint.interval`` = 2 iterations;
3. the learning rate of every step follows the translated LinearLR + PolyLR schedule
   (the reference's warm-up + poly with its one-step lag);
4. a run stopped after 4 iterations and resumed (``--resume``) ends with exactly the
   parameters and optimiser state of the uninterrupted run.

Each run is a separate process, as a user's would be. Exits 1 on any failed check.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

CONFIG = "configs/dformer/dformer_tiny_8xb8-10e_synthrgbd-160x160.py"


def options(data_root):
    return [
        f"*.dataset.data_root={data_root}",
        "*.dataset.synthetic.num_train=4", "*.dataset.synthetic.num_test=2",
        "*.dataset.synthetic.size=(64,64)", "*.dataset.metainfo.num_test_images=2",
        "train_dataloader.dataset.pipeline.crop_size=(64,64)", "model.test_cfg.crop_size=(64,64)",
        "train_dataloader.batch_size=2", "train_dataloader.dataset.file_length=4",
        "train_dataloader.num_workers=0",
        "param_scheduler.0.end=1", "param_scheduler.1.end=2",
        "train_cfg.val_interval=2",
        "default_hooks.checkpoint.by_epoch=False", "default_hooks.checkpoint.interval=2",
        "val_dataloader.batch_size=1", "val_dataloader.dataset.file_length=1",
    ]


def train(work_dir, data_root, extra_options=(), extra_args=()):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train.py"), CONFIG, "--no-progress",
           "--no-mst", "--work-dir", work_dir, *extra_args,
           "--cfg-options", *options(data_root), *extra_options]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                           f"\n{proc.stderr[-3000:]}")
    return proc


def log_text(work_dir):
    return "".join(open(p).read() for p in sorted(glob.glob(os.path.join(work_dir, "log_*.log"))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="work in DIR and keep it (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    base = args.keep or tempfile.mkdtemp(prefix="dformer-smoke-")
    os.makedirs(base, exist_ok=True)
    failures = []

    def check(ok, what):
        print(f"[smoke] {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    try:
        import numpy as np
        from utils.checkpoint import read_checkpoint
        from utils.config import load_config
        from utils.engine.optim import WarmUpPolyLR

        data = os.path.join(base, "SynthRGBD")
        full, parted = os.path.join(base, "full"), os.path.join(base, "resumed")
        cfg = load_config(CONFIG, options(data))
        check((cfg.niters_per_epoch, cfg.nepochs, cfg.warm_up_epoch, cfg.val_interval,
               cfg.checkpoint_interval) == (3, 2, 1, 2, 2),
              "config translated: 3 iterations/epoch, 2 epochs, warm-up 1, val and "
              "checkpoint every 2 iterations")

        train(full, data)
        text = log_text(full)
        val_lines = open(os.path.join(full, "val_history.jsonl")).read().splitlines()
        import json
        val_iters = [json.loads(line)["iteration"] for line in val_lines]
        check(val_iters == [2, 4, 6], f"validation after iterations 2, 4, 6 (got {val_iters})")
        saved = [int(m) for m in re.findall(r"Saved latest\.pkl \(iteration (\d+)", text)]
        check({2, 4} <= set(saved) and saved[-1] == 6,
              f"latest.pkl every 2 iterations and at the end (saved at {saved})")
        logged = [float(m) for m in re.findall(r"Iter \d+/\d+: lr=([0-9.e+-]+)", text)]
        schedule = WarmUpPolyLR.from_config(cfg)
        expected = [schedule.lr_for_step(t) for t in range(6)]
        close = len(logged) == 6 and all(abs(a - b) <= 1e-3 * max(b, 1e-12) + 1e-12
                                         for a, b in zip(logged, expected))
        check(close, "lr per step follows warm-up + poly: "
              + ", ".join(f"{v:.3e}" for v in logged))

        train(parted, data, extra_options=["train_cfg.max_iters=4"])
        stopped = read_checkpoint(os.path.join(parted, "latest.pkl"))
        check(stopped["iteration"] == 4,
              f"interrupted run stopped at 4 (got {stopped['iteration']})")
        train(parted, data, extra_args=["--resume"])
        a = read_checkpoint(os.path.join(full, "latest.pkl"))
        b = read_checkpoint(os.path.join(parted, "latest.pkl"))
        same = a["iteration"] == b["iteration"] == 6 and sorted(a["model"]) == sorted(b["model"]) \
            and all(np.array_equal(a["model"][k], b["model"][k]) for k in a["model"])
        for ga, gb in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
            for key in ("m", "values"):
                same = same and all(np.array_equal(x, y)
                                    for x, y in zip(ga.get(key, []), gb.get(key, [])))
        check(same, "resumed run ends bit-identical to the uninterrupted one")
    except Exception as exc:  # any crash is a failed smoke test
        failures.append(f"{type(exc).__name__}: {exc}")
        print(f"[smoke] FAIL {type(exc).__name__}: {exc}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"[smoke] {'PASSED' if not failures else f'FAILED ({len(failures)} check(s))'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
