#!/usr/bin/env python3
"""Train the official DFormer code and ours side by side on SynthRGBD, same recipe, same start.

    .venv/bin/python tools/compare_official_training.py --ref /path/to/official/DFormer
    .venv/bin/python tools/compare_official_training.py --ref ... --config DFormerv2_S --epochs 3
    .venv/bin/python tools/compare_official_training.py --from-json work_dirs/.../DFormer_Tiny_all.json

For each seed, two runs in fresh processes (Jittor and torch never share one):

* **ours**: ``utils/train.py``'s trainer (``build_trainer``) with the SynthRGBD quick-start
  config, validating every epoch (single scale, as ``train.sh``); its initial weights are
  written out before the first step;
* **official**: the official code of VCIP-RGBD/DFormer (``--ref``, commit 814799bb; never
  copied into this project) in the torch interpreter ``--torch-python``, with the stand-ins of
  ``--shared``/perf for mmcv/mmengine/timm: its ``EncoderDecoder`` (SyncBatchNorm as its
  train.py, NMF bases from its CPU branch), ``RGBXDataset`` + ``TrainPre`` through its
  ``get_train_loader`` / ``get_val_loader``, the masked cross-entropy of its model, its
  ``group_weight`` groups, ``torch.optim.AdamW(betas=(0.9, 0.999))``, its ``WarmUpPolyLR`` set
  after each step, and its ``val_mm.evaluate`` + ``Metrics``; seeded as its ``set_seed``. It
  starts from ours' initial weights (the state dict keys are the official names). Its config is
  the official ``NYUDepthv2/<model>`` one with the recipe's values (dataset, crop, scales, lr,
  batch, epochs, warm-up, drop path, ...) copied from ours; the values it changed are recorded.

Both sides: float32, no AMP, the CPU, ``--threads`` threads, flush-to-zero on (our trainer's
CPU default; ``torch.set_flush_denormal(True)`` on the official side, which also keeps its
train.py's ``torch.set_float32_matmul_precision("high")``: plain float32 on CPUs without TF32
units, recorded), validation on the SynthRGBD test split (its only held-out split) after every
epoch, where the official train.py validates after epochs 1, 10 and those past
``checkpoint_start_epoch``.

``--groups official``: the official parameter groups on both sides (``train_all_params =
False``): DFormer's layer scales, channels-last LayerNorms and DFormerv2's ``Geo.weight`` /
``gamma_*`` are in no group and never change. ``--groups all`` (the quick-start recipe,
``train_all_params = True``): on the official side those leftover tensors are appended to
``group_weight``'s groups, ``ndim >= 2`` to the decay group and the rest to the no-decay group,
which is what our ``train_all_params`` does; nothing else changes.

Writes ``<work-dir>/<config>_<groups>.json`` (every run: loss and lr per iteration, mIoU per
epoch, times; the official values the recipe changed; sha256 of the official files used),
the figure ``--fig`` (loss per iteration smoothed over a fifth of an epoch, and test mIoU per
epoch; each seed a thin line, the mean bold), and prints a markdown table with the pass rule:
our mean final mIoU within max(1.0 point, 2 x the official std) of the official mean, and after
the first epoch no epoch's mean loss different at a family-wise 5% (Welch's t-test per epoch,
Bonferroni). The seed-band test (each side's mean epoch loss inside the other's min..max over
seeds) is reported beside it, not judged: with 3 seeds a side two identical implementations
pass it in only about half of the epochs (``band_chance``).
``--epochs``, ``--iters-per-epoch`` and ``--val-images`` shorten a run (a smoke test; the
output says so). Each finished run is kept in the work dir; ``--resume`` reuses the runs whose
settings match instead of training them again.

Bad input ends with one ``error:`` line and exit status 1 before anything is written to the
figure's folder (outputs go to temporary files, renamed at the end): a ``--ref`` that is not
the official code, official files that differ from commit 814799bb (``--allow-other-commit``
runs anyway, with a warning naming them), a ``--torch-python`` without torch (or the other
modules the official code imports).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_COMMIT = "814799bb1f39eb380f72fdea1cd591f2cc27b6aa"
DEFAULT_TORCH_PYTHON = os.path.join(os.environ.get("TMPDIR", "/tmp"), "dformer-torch-venv",
                                    "bin", "python")
# --config: (our config module, the official config it is compared with)
CONFIGS = {"DFormer_Tiny": ("local_configs.SynthRGBD.DFormer_Tiny", "DFormer_Tiny"),
           "DFormerv2_S": ("local_configs.SynthRGBD.DFormerv2_S", "DFormerv2_S")}
# What the official side needs besides torch (its dataloader and val_mm import them).
TORCH_SIDE_MODULES = ("torch", "numpy", "cv2", "easydict", "matplotlib", "yaml", "tabulate",
                      "tqdm")
# Recipe values copied from our config into the official one (paths made absolute).
RECIPE_KEYS = ("dataset_name", "rgb_root_folder", "rgb_format", "gt_root_folder", "gt_format",
               "gt_transform", "x_root_folder", "x_format", "x_is_single_channel",
               "train_source", "eval_source", "num_train_imgs", "num_eval_imgs", "num_classes",
               "class_names", "background", "norm_mean", "norm_std", "image_height",
               "image_width", "train_scale_array", "backbone", "decoder", "decoder_embed_dim",
               "drop_path_rate", "aux_rate", "bn_eps", "bn_momentum", "optimizer", "lr",
               "lr_power", "momentum", "weight_decay", "batch_size", "nepochs",
               "niters_per_epoch", "warm_up_epoch", "num_workers", "pretrained_model")
PATH_KEYS = ("rgb_root_folder", "gt_root_folder", "x_root_folder", "train_source",
             "eval_source")

# sha256 of every official file the official side imports, measured on a checkout of
# VCIP-RGBD/DFormer at OFFICIAL_COMMIT (the worker checks it imported no other file).
OFFICIAL_FILES = {
    "local_configs/NYUDepthv2/DFormer_Tiny.py":
        "100426052ecdee56f3817a23c3c9b25d58fcadc5036faab5c6d388c15e07ffb1",
    "local_configs/NYUDepthv2/DFormerv2_S.py":
        "7a5c0004dc605f5c4e9aa48e648516772fed923aa306648d4f475b9f15280fbc",
    "local_configs/_base_/__init__.py":
        "1f043c2742521b73ae101735129e7a5b466ece303dbe975f4fc2cb2d5d96e5e4",
    "local_configs/_base_/datasets/NYUDepthv2.py":
        "f113284eefc8cddec116ef5dfbe003b366480ad124b563a69fe2069d5f8e8370",
    "models/__init__.py":
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "models/builder.py":
        "74e8ae4ca68fe016609de5997dff71b65a0fa832ed3faf678e96b8c073cc4b8d",
    "models/decoders/decode_head.py":
        "ec719396ccf6c0aa2d217efcc764e938ccd59ce65398d125efef8de30f46d9d6",
    "models/decoders/fcnhead.py":
        "9edbafb3850a2722c8fe1586f24e1e2d1858e1f85e67f753f52f5d8aa0601aa8",
    "models/decoders/ham_head.py":
        "b922abcf7579c28a6d77bee8faeb2ba8eda6b68ec07e528a04057648c0941127",
    "models/encoders/DFormer.py":
        "a288e26fba6400b9ec7cf13ef92bd7b1766d32a7d79afc600ec686ef19f27f75",
    "models/encoders/DFormerv2.py":
        "1dd6ba9948c23e91d36f350e3d66219d65ba9a7d5ca14f838149cd2b399be606",
    "models/losses/__init__.py":
        "f465249e2572eb4c976d996a772aeaacbc46c0705398b0cbe4c858751a02a040",
    "models/losses/accuracy.py":
        "fe22740cd8b2f15ec7f1dfa85dde4b320e66a4ee808ae629a83f9495cd00132a",
    "utils/__init__.py":
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "utils/dataloader/RGBXDataset.py":
        "b3805b3e4a3fe39e8ae5b08f9e05ea365b7471c001c2779f4b86c9059923f376",
    "utils/dataloader/dataloader.py":
        "37a8afeb6f1e19a0dd4d461aa3eea176eea49c24d631820f448339822ef66f91",
    "utils/engine/__init__.py":
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "utils/engine/logger.py":
        "e132a93d961d872059700887b64985517e9da43de4d0e749fd843bdca588a423",
    "utils/init_func.py":
        "3e44a5235bf97a228c60250da65b8f3827e57cb4c58fbeb0d66ce3c018d812a2",
    "utils/load_utils.py":
        "85ad525dd5cd4911ef6fad63394a3e4a2a5e36a1148ed6040bdee97aac785c17",
    "utils/lr_policy.py":
        "87fc04caf82a7d660ad95af44997231d3f160ee2bc7e090985b2ab20207835b6",
    "utils/metrics_new.py":
        "7bb619f6f89746ebf66ee16008ae9832e5b58f03930c032c97187b957c47e2ba",
    "utils/pyt_utils.py":
        "1c1f23f9100dc7b3a5a188cd6a8f5b717b90c795fcea2418ca54c6b54bc1ca69",
    "utils/transforms.py":
        "231487b0777141d2206f1e9fe6c16c846929d44f96ce6df7f40c453fd28984aa",
    "utils/val_mm.py":
        "e1b30e3ff65b4949224d3f42ddaaa1441bb27d595430808aa354700103861695",
}


class ToolError(Exception):
    """A problem the user can fix; reported as one line, exit status 1."""


# ============================================================================= checks

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_ref(ref, allow_other_commit=False):
    """Error unless ``ref`` holds the official code at OFFICIAL_COMMIT (the files used);
    with ``allow_other_commit`` a mismatch is returned as a warning instead."""
    if not os.path.isdir(ref):
        raise ToolError(f"--ref {ref}: no such folder (the official DFormer code: a checkout of "
                        f"VCIP-RGBD/DFormer at {OFFICIAL_COMMIT[:8]} with models/ utils/ "
                        "local_configs/)")
    lacking = [d + "/" for d in ("models", "utils", "local_configs")
               if not os.path.isdir(os.path.join(ref, d))]
    if lacking:
        raise ToolError(f"--ref {ref}: not the official DFormer code (no {', '.join(lacking)}); "
                        f"point it at a checkout of VCIP-RGBD/DFormer at {OFFICIAL_COMMIT[:8]}")
    missing, changed = [], []
    for rel, digest in OFFICIAL_FILES.items():
        path = os.path.join(ref, rel)
        if not os.path.isfile(path):
            missing.append(rel)
        elif sha256_file(path) != digest:
            changed.append(rel)
    if not (missing or changed):
        return None
    parts = ([f"{len(changed)} file(s) differ ({', '.join(changed[:3])}"
              + (" ..." if len(changed) > 3 else "") + ")"] if changed else []) + \
            ([f"{len(missing)} missing ({', '.join(missing[:3])}"
              + (" ..." if len(missing) > 3 else "") + ")"] if missing else [])
    what = (f"--ref {ref} is not the official code at commit {OFFICIAL_COMMIT[:8]}: "
            + " and ".join(parts))
    if not allow_other_commit:
        raise ToolError(what + "; check out that commit, or pass --allow-other-commit to "
                        "compare against this code anyway")
    return what


def check_shared(shared):
    harness = os.path.join(shared, "perf", "ref_harness.py")
    stubs = os.path.join(shared, "perf", "stubs")
    if not (os.path.isfile(harness) and os.path.isdir(stubs)):
        raise ToolError(f"--shared {shared}: no perf/ref_harness.py and perf/stubs/ (the "
                        "stand-ins for mmcv/mmengine/timm the official code is run with)")


def check_torch_python(python):
    """Error unless ``python`` runs and imports what the official side needs."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ToolError(f"--torch-python {python}: no such interpreter (a Python with torch, "
                        "opencv, easydict, matplotlib, pyyaml, tabulate, tqdm for the official "
                        "code; see ../shared/perf/setup.sh)")
    probe = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    try:
        proc = subprocess.run([python, "-c", probe, *TORCH_SIDE_MODULES], capture_output=True,
                              text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"--torch-python {python}: could not run it ({exc})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ToolError(f"--torch-python {python}: {reason} (the official side needs "
                        f"{', '.join(TORCH_SIDE_MODULES)}; pip install them there or point "
                        "--torch-python at an interpreter that has them)")


# ============================================================================= settings

def recipe(config_key, overrides):
    """Our config (an EasyDict) for ``config_key`` with the run's overrides applied."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from utils.config import load_config
    cfg = load_config(CONFIGS[config_key][0])
    cfg.update(overrides)
    return cfg


def run_overrides(args):
    """Config values this run changes (the parameter groups and any shortening)."""
    over = {"train_all_params": args.groups == "all"}
    if args.epochs is not None:
        over["nepochs"] = args.epochs
    if args.iters_per_epoch is not None:
        over["niters_per_epoch"] = args.iters_per_epoch
    if args.val_images is not None:
        over["val_file_length"] = args.val_images
    return over


def official_recipe(cfg):
    """The values the official side takes from our config (JSON-able, absolute paths)."""
    values = {}
    for key in RECIPE_KEYS:
        value = cfg.get(key)
        if key in PATH_KEYS:
            value = os.path.join(REPO, value)
        values[key] = list(value) if isinstance(value, tuple) else value
    return values


# ============================================================================= the two sides

def ours_worker(spec):
    """One training run of ours (project interpreter); returns the result dict."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    os.chdir(REPO)
    from utils import runtime
    runtime.setup()
    import numpy as np
    from utils import train as train_script
    from utils.checkpoint import model_state_numpy
    from utils.engine.optim import group_parameters

    cfg = recipe(spec["config"], spec["overrides"])
    shutil.rmtree(spec["work_dir"], ignore_errors=True)   # a fresh run: no stale history
    argv = ["--config", CONFIGS[spec["config"]][0], "--work-dir", spec["work_dir"], "--no-mst",
            "--val-every", "1", "--no-progress", "--seed", str(spec["seed"])]
    start = time.time()
    trainer, _ = train_script.build_trainer(train_script.build_parser().parse_args(argv), cfg)
    write_npz(spec["init"], model_state_numpy(trainer.model))
    groups = group_parameters(trainer.model, train_all=bool(cfg.train_all_params)).counts()
    losses, lrs, eval_s = [], [], []
    step, validate = trainer.run_iteration, trainer.validate

    def run_iteration(batch):
        loss = step(batch)
        losses.append(loss)
        lrs.append(trainer.optimizer.current_lr())
        return loss

    def timed_validate(*a, **k):
        t0 = time.time()
        out = validate(*a, **k)
        eval_s.append(time.time() - t0)
        return out

    trainer.run_iteration, trainer.validate = run_iteration, timed_validate
    trainer.train()
    with open(os.path.join(spec["work_dir"], "val_history.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    return {"side": "ours", "seed": spec["seed"], "loss": losses, "lr": lrs,
            "miou": [h["miou"] for h in history], "macc": [h.get("macc") for h in history],
            "iter_s": list(trainer.iter_seconds), "train_s": float(np.sum(trainer.iter_seconds)),
            "eval_s": float(np.sum(eval_s)), "wall_s": time.time() - start, "groups": groups}


def official_worker(spec):
    """One training run of the official code (torch interpreter); returns the result dict.

    The loop is the official utils/train.py's single-process, non-AMP path.
    """
    tools_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") not in (tools_dir, REPO)]
    os.environ["DFORMER_TORCH_REF"] = spec["ref"]
    sys.path.insert(0, os.path.join(spec["shared"], "perf"))
    import random

    import numpy as np
    import torch
    import ref_harness as harness

    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(True)
    torch.set_float32_matmul_precision("high")     # as train.py sets it at import
    cfg = harness.load_config(CONFIGS[spec["config"]][1], "NYUDepthv2")
    changed = {}
    for key, value in spec["recipe"].items():   # the official objects kept where equal
        own = cfg.get(key)
        if (own.tolist() if hasattr(own, "tolist") else own) != value:
            changed[key] = [own.tolist() if hasattr(own, "tolist") else own, value]
            cfg[key] = value
    cfg.pad = False                     # train.py: --pad_SUNRGBD is off for other datasets
    from utils.dataloader.dataloader import get_train_loader, get_val_loader
    from utils.dataloader.RGBXDataset import RGBXDataset
    from utils.lr_policy import WarmUpPolyLR
    from utils.val_mm import evaluate

    engine = argparse.Namespace(distributed=False, local_rank=0, world_size=1)
    seed = spec["seed"]                 # train.py's set_seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    start = time.time()
    train_loader, _ = get_train_loader(engine, RGBXDataset, cfg)
    val_loader, _ = get_val_loader(engine, RGBXDataset, cfg, val_batch_size=int(cfg.batch_size))
    if spec["val_images"]:
        subset = torch.utils.data.Subset(val_loader.dataset, range(spec["val_images"]))
        val_loader = torch.utils.data.DataLoader(subset, batch_size=val_loader.batch_size,
                                                 shuffle=False, num_workers=cfg.num_workers)
    model, norm_layer = harness.build_model(cfg, syncbn=True)
    load_initial_weights(model, spec["init"], torch)
    groups = harness.optimizer_groups(model, norm_layer, cfg.lr)
    in_groups = {id(p) for g in groups for p in g["params"]}
    leftover = [p for p in model.parameters() if id(p) not in in_groups]
    if spec["groups"] == "all":         # the stated change: train every tensor
        groups[0]["params"] += [p for p in leftover if p.ndim >= 2]
        groups[1]["params"] += [p for p in leftover if p.ndim < 2]
    counts = {"decay": len(groups[0]["params"]), "no_decay": len(groups[1]["params"]),
              "excluded": 0 if spec["groups"] == "all" else len(leftover)}
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999),
                                  weight_decay=cfg.weight_decay)
    niters, nepochs = int(cfg.niters_per_epoch), int(cfg.nepochs)
    policy = WarmUpPolyLR(cfg.lr, cfg.lr_power, nepochs * niters, niters * cfg.warm_up_epoch)
    losses, lrs, mious, maccs, iter_s, eval_s = [], [], [], [], [], 0.0
    for epoch in range(1, nepochs + 1):
        model.train()
        batches = iter(train_loader)
        for idx in range(niters):
            t0 = time.time()
            batch = next(batches)
            lrs.append(optimizer.param_groups[0]["lr"])
            loss = model(batch["data"], batch["modal_x"], batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            lr = policy.get_lr((epoch - 1) * niters + idx)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses.append(float(loss.item()))
            iter_s.append(time.time() - t0)
        t0 = time.time()
        with torch.no_grad():
            model.eval()
            metric = evaluate(model, val_loader, cfg, torch.device("cpu"), engine)
        mious.append(metric.compute_iou()[1])
        maccs.append(metric.compute_pixel_acc()[1])
        eval_s += time.time() - t0
        print(f"[official seed {seed}] epoch {epoch}/{nepochs}: mean loss "
              f"{np.mean(losses[-niters:]):.4f}, mIoU {mious[-1]}", file=sys.stderr, flush=True)
    ref = os.path.abspath(spec["ref"])
    used = sorted(os.path.relpath(m.__file__, ref) for m in list(sys.modules.values())
                  if getattr(m, "__file__", None)
                  and os.path.abspath(m.__file__).startswith(ref + os.sep))
    return {"side": "official", "seed": seed, "loss": losses, "lr": lrs, "miou": mious,
            "macc": maccs, "iter_s": iter_s, "train_s": float(sum(iter_s)), "eval_s": eval_s,
            "wall_s": time.time() - start,
            "groups": counts, "official_config_changed": changed, "official_files": used,
            "torch": torch.__version__,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def load_initial_weights(model, path, torch):
    """Ours' initial state dict (npz) into the official model, every key, exactly."""
    import numpy as np
    with np.load(path) as init:
        values = {k: init[k] for k in init.files}
    own = model.state_dict()
    missing = [k for k in own if k not in values]
    unexpected = [k for k in values if k not in own]
    wrong = [k for k in own if k in values and values[k].size != own[k].numel()]
    if missing or unexpected or wrong:
        raise RuntimeError(f"initial weights {path} do not fit the official model: missing "
                           f"{missing[:5]}, unexpected {unexpected[:5]}, size {wrong[:5]}")
    model.load_state_dict({k: torch.from_numpy(values[k].copy()).reshape(v.shape).to(v.dtype)
                           for k, v in own.items()}, strict=True)


def write_npz(path, arrays):
    import numpy as np
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# ============================================================================= the comparison

def atomic_write(path, write):
    """``write(tmp_path)``, then rename over ``path`` (nothing half-written is left)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)      # mkstemp's file is private; the result is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    atomic_write(path, write)


def run_side(side, spec, args, log_path):
    """Run one side's worker in a fresh interpreter; returns its result dict."""
    python = args.torch_python if side == "official" else sys.executable
    spec_path = os.path.join(args.work_dir, f"{side}_seed{spec['seed']}.spec.json")
    out_path = os.path.join(args.work_dir, f"{side}_seed{spec['seed']}.json")
    if args.resume and os.path.isfile(out_path):
        with open(out_path) as f:
            done = json.load(f)
        if done.get("spec") == spec:
            print(f"[{side} seed {spec['seed']}] reusing {out_path}", flush=True)
            return done
    write_json(spec_path, spec)
    if os.path.exists(out_path):
        os.remove(out_path)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    cmd = [python, os.path.abspath(__file__), "--worker", side, "--spec", spec_path,
           "--out", out_path]
    print(f"[{side} seed {spec['seed']}] training (log: {log_path})", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        status = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if status != 0 or not os.path.isfile(out_path):
        with open(log_path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        raise ToolError(f"the {side} run (seed {spec['seed']}) failed with exit status {status}: "
                        f"{lines[-1] if lines else 'no output'} (log: {log_path})")
    with open(out_path) as f:
        result = json.load(f)
    print(f"[{side} seed {spec['seed']}] done in {time.time() - start:.0f} s: final mIoU "
          f"{result['miou'][-1]}", flush=True)
    return result


def end_with_parent():
    """Linux: this worker gets SIGTERM when the comparison that started it dies (killed, not
    only Ctrl-C, which reaches the whole process group); ours then stops after its iteration."""
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:                                # the parent was gone already
        sys.exit("error: the comparison that started this worker has ended")


def worker_main(args):
    end_with_parent()
    with open(args.spec) as f:
        spec = json.load(f)
    result = (official_worker if args.worker == "official" else ours_worker)(spec)
    result["spec"] = spec
    write_json(args.out, result)


def mean_std(values):
    import numpy as np
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def epoch_losses(run, niters):
    import numpy as np
    loss = np.asarray(run["loss"], dtype=float)
    return loss[: len(loss) // niters * niters].reshape(-1, niters).mean(axis=1)


def verdict(data):
    """The pass rule on a comparison's runs; returns a dict of numbers and booleans."""
    import numpy as np
    niters = data["settings"]["niters_per_epoch"]
    final = {s: [r["miou"][-1] for r in data["runs"][s]] for s in ("official", "ours")}
    (m_off, s_off), (m_our, s_our) = mean_std(final["official"]), mean_std(final["ours"])
    tol = max(1.0, 2 * s_off)
    out = {"final_miou": final, "official_mean": m_off, "official_std": s_off,
           "ours_mean": m_our, "ours_std": s_our, "miou_tolerance": tol,
           "miou_difference": m_our - m_off, "miou_pass": abs(m_our - m_off) <= tol}
    curves = {s: np.stack([epoch_losses(r, niters) for r in data["runs"][s]])
              for s in ("official", "ours")}
    epochs = min(c.shape[1] for c in curves.values())
    judged = range(1, epochs)           # after the first epoch
    inside = []
    for e in judged:
        ok = True
        for side, other in (("ours", "official"), ("official", "ours")):
            mean = curves[side][:, e].mean()
            lo, hi = curves[other][:, e].min(), curves[other][:, e].max()
            ok &= bool(lo <= mean <= hi)
        inside.append(ok)
    seeds = min(len(c) for c in curves.values())
    p = [welch_p(curves["ours"][:, e], curves["official"][:, e]) for e in judged] \
        if seeds >= 2 else []
    out.update(loss_epochs_checked=len(inside), loss_epochs_inside=int(sum(inside)),
               loss_band_pass=bool(all(inside)) if inside else None,
               band_chance=band_chance(len(curves["ours"]), len(curves["official"])),
               loss_p=p, loss_alpha=0.05 / len(p) if p else None,
               epoch_loss={s: c[:, :epochs].tolist() for s, c in curves.items()})
    out["loss_pass"] = bool(min(p) > out["loss_alpha"]) if p else None
    out["pass"] = bool(out["miou_pass"] and out["loss_pass"] is not False)
    return out


def welch_p(a, b):
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean."""
    import numpy as np
    from scipy import stats
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def band_chance(n_ours, n_official, draws=100000):
    """How often two identical implementations pass the seed-band test in one epoch: each
    side's mean inside the other's min..max, seeds drawn from one normal distribution."""
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((draws, n_ours)), rng.standard_normal((draws, n_official))
    ok = ((b.min(1) <= a.mean(1)) & (a.mean(1) <= b.max(1)) &
          (a.min(1) <= b.mean(1)) & (b.mean(1) <= a.max(1)))
    return float(ok.mean())


def table(data, result):
    """The markdown summary: final test mIoU per seed, mean ± std, wall time, the rule."""
    import numpy as np
    settings = data["settings"]
    seeds = [r["seed"] for r in data["runs"]["official"]]
    head = "| side | " + " | ".join(f"seed {s}" for s in seeds) + \
        " | mean ± std | time (train + eval, all seeds) | s / iteration (median) |"
    lines = [head, "|" + "---|" * (len(seeds) + 4)]
    for side in ("official", "ours"):
        runs = data["runs"][side]
        mean, std = result[f"{side}_mean"], result[f"{side}_std"]
        wall = sum(r["train_s"] + r["eval_s"] for r in runs)
        # the first two iterations of a run compile Jittor's kernels: left out
        per_iter = float(np.median([t for r in runs for t in (r["iter_s"][2:] or r["iter_s"])]))
        lines.append(f"| {side} | " + " | ".join(f"{r['miou'][-1]:.2f}" for r in runs)
                     + f" | {mean:.2f} ± {std:.2f} | {wall / 60:.1f} min | {per_iter:.2f} |")
    if result["loss_pass"] is None:
        loss = "not judged (one epoch, or one seed a side)"
    else:
        worst = int(np.argmin(result["loss_p"]))
        loss = (f"smallest p = {result['loss_p'][worst]:.2f} (epoch {worst + 2}) against "
                f"0.05 / {len(result['loss_p'])} = {result['loss_alpha']:.4f}: "
                f"{'pass' if result['loss_pass'] else 'FAIL'}")
    lines += ["", f"Pass rule: |ours - official| = {abs(result['miou_difference']):.2f} <= "
              f"max(1.0, 2 x {result['official_std']:.2f}) = {result['miou_tolerance']:.2f}: "
              f"{'pass' if result['miou_pass'] else 'FAIL'}; mean epoch loss after epoch 1, "
              f"Welch's t-test per epoch (Bonferroni over the epochs): {loss}.",
              f"Overall: {'PASS' if result['pass'] else 'FAIL'}."]
    if result["loss_epochs_checked"]:
        lines.append(
            f"Seed bands (reported, not judged): in {result['loss_epochs_inside']} of "
            f"{result['loss_epochs_checked']} epochs each side's mean loss lies inside the "
            f"other's min..max; two identical implementations with these seed counts do that "
            f"in {100 * result['band_chance']:.0f}% of epochs (simulated).")
    note = shortened_note(settings)
    if note:
        lines.append(note + ".")
    return "\n".join(lines)


def shortened_note(settings):
    """What a shortened run is: a shorter schedule on both sides (``--epochs``: its poly decay
    ends at the last epoch; still a comparison), or a smoke test of the tool (fewer iterations
    per epoch or test images)."""
    if settings["full_recipe"]:
        return ""
    if settings.get("smoke", True):
        return f"SHORTENED RUN ({settings['shortened']}): a smoke test of the tool, not the comparison"
    return (f"Shorter schedule on both sides ({settings['shortened']} of "
            f"{settings['recipe_nepochs']}; warm-up and poly decay over these epochs)")


def plot(data, path):
    """Loss per iteration (smoothed) and test mIoU per epoch, both sides; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)
    import numpy as np
    settings = data["settings"]
    niters = settings["niters_per_epoch"]
    window = max(1, niters // 5)
    colours = {"official": "tab:blue", "ours": "tab:orange"}
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(12, 4.5))
    for side, colour in colours.items():
        runs = data["runs"][side]
        smooth = []
        for r in runs:
            loss = np.asarray(r["loss"], dtype=float)
            k = min(window, len(loss))
            smooth.append(np.convolve(loss, np.ones(k) / k, mode="valid"))
        n = min(len(s) for s in smooth)
        x = np.arange(n) + min(window, n)
        for s in smooth:
            ax_loss.plot(x, s[:n], color=colour, lw=0.6, alpha=0.5)
        ax_loss.plot(x, np.mean([s[:n] for s in smooth], axis=0), color=colour, lw=2,
                     label=side)
        epochs = min(len(r["miou"]) for r in runs)
        e = np.arange(1, epochs + 1)
        for r in runs:
            ax_miou.plot(e, r["miou"][:epochs], color=colour, lw=0.6, alpha=0.5, marker=".")
        ax_miou.plot(e, np.mean([r["miou"][:epochs] for r in runs], axis=0), color=colour, lw=2,
                     marker="o", label=side)
    ax_loss.set(xlabel="iteration", ylabel=f"training loss (mean over {window} iterations)",
                title="training loss", yscale="log")
    ax_miou.set(xlabel="epoch", ylabel="test mIoU (%)", title="SynthRGBD test mIoU")
    ax_miou.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = len(data["runs"]["official"])
    title = (f"{settings['config']} on SynthRGBD, {seeds} seed(s) per side (thin: seeds, bold: "
             f"mean), parameter groups: {settings['groups']}")
    if not settings["full_recipe"]:
        title += "\n" + shortened_note(settings)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def report(data, fig_path, json_path=None):
    result = verdict(data)
    data["verdict"] = result
    if json_path:
        write_json(json_path, data)
    plot(data, fig_path)
    print(table(data, result))
    print(f"\nfigure: {fig_path}" + (f"; curves: {json_path}" if json_path else ""))
    return 0


def compare(args):
    warning = check_ref(args.ref, args.allow_other_commit)
    if warning:
        print(f"warning: {warning}; comparing anyway (--allow-other-commit)", file=sys.stderr)
    check_shared(args.shared)
    check_torch_python(args.torch_python)
    overrides = run_overrides(args)
    cfg = recipe(args.config, overrides)
    if args.val_images is not None and args.val_images > cfg.num_eval_imgs:
        raise ToolError(f"--val-images {args.val_images}: the test split has "
                        f"{cfg.num_eval_imgs} images")
    if args.val_images is not None and args.val_images < 2 * int(cfg.batch_size):
        # its val_mm.evaluate logs every int(len(loader) * 0.5) batches: 0 with one batch
        raise ToolError(f"--val-images {args.val_images}: the official evaluation needs at "
                        f"least two batches ({2 * int(cfg.batch_size)} images at batch size "
                        f"{int(cfg.batch_size)})")
    from utils.dataloader.synthetic import ensure_synthetic_dataset
    os.chdir(REPO)
    ensure_synthetic_dataset(cfg)
    args.work_dir = os.path.abspath(args.work_dir or os.path.join(
        REPO, "work_dirs", "compare_official_training", f"{args.config}_{args.groups}"))
    os.makedirs(args.work_dir, exist_ok=True)
    shortened = ", ".join(f"{k} {v}" for k, v in (
        ("epochs", args.epochs), ("iterations per epoch", args.iters_per_epoch),
        ("test images", args.val_images)) if v is not None)
    settings = {"config": args.config, "our_config": CONFIGS[args.config][0],
                "official_config": f"NYUDepthv2/{CONFIGS[args.config][1]}",
                "official_commit": OFFICIAL_COMMIT, "groups": args.groups,
                "threads": args.threads, "nepochs": int(cfg.nepochs),
                "niters_per_epoch": int(cfg.niters_per_epoch), "batch_size": int(cfg.batch_size),
                "lr": float(cfg.lr), "full_recipe": not shortened, "shortened": shortened,
                "smoke": args.iters_per_epoch is not None or args.val_images is not None,
                "recipe_nepochs": int(recipe(args.config, {}).nepochs),
                "other_commit_warning": warning}
    runs = {"official": [], "ours": []}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        init = os.path.join(args.work_dir, f"init_seed{seed}.npz")
        base = {"config": args.config, "seed": seed, "init": init, "groups": args.groups,
                "threads": args.threads}
        ours = dict(base, overrides=overrides,
                    work_dir=os.path.join(args.work_dir, f"ours_seed{seed}"))
        runs["ours"].append(run_side("ours", ours, args,
                                     os.path.join(args.work_dir, f"ours_seed{seed}.log")))
        official = dict(base, ref=os.path.abspath(args.ref), shared=os.path.abspath(args.shared),
                        recipe=official_recipe(cfg), val_images=args.val_images,
                        init_digest=sha256_file(init))
        result = run_side("official", official, args,
                          os.path.join(args.work_dir, f"official_seed{seed}.log"))
        unchecked = sorted(set(result["official_files"]) - set(OFFICIAL_FILES))
        if unchecked:
            raise ToolError(f"the official side imported {len(unchecked)} file(s) the commit "
                            f"check does not cover ({', '.join(unchecked[:3])}): add their "
                            "sha256 at 814799bb to OFFICIAL_FILES")
        runs["official"].append(result)
    data = {"settings": settings, "runs": runs}
    json_path = args.json or os.path.join(args.work_dir, f"{args.config}_{args.groups}.json")
    return report(data, args.fig, json_path)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ref", help="the official DFormer code (models/ utils/ local_configs/ of "
                   f"VCIP-RGBD/DFormer at {OFFICIAL_COMMIT[:8]})")
    p.add_argument("--torch-python", default=os.environ.get("TORCH_PY", DEFAULT_TORCH_PYTHON),
                   help="interpreter with torch for the official side ($TORCH_PY)")
    p.add_argument("--shared", default=os.path.join(os.path.dirname(REPO), "shared"),
                   help="folder with perf/ref_harness.py and perf/stubs/")
    p.add_argument("--config", choices=sorted(CONFIGS), default="DFormer_Tiny",
                   help="SynthRGBD config of both sides")
    p.add_argument("--groups", choices=("official", "all"), default="all",
                   help="parameter groups: the official ones, or every tensor trained on both "
                        "sides (the quick-start recipe's train_all_params)")
    p.add_argument("--seeds", type=int, default=3, help="runs per side")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first..first+seeds-1")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads of each run (both sides)")
    p.add_argument("--epochs", type=int, default=None, help="shorten: epochs (default: the "
                   "config's)")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="shorten: iterations per epoch (default: the config's)")
    p.add_argument("--val-images", type=int, default=None,
                   help="shorten: evaluate on the first N test images (default: all)")
    p.add_argument("--work-dir", default=None, help="runs, logs and the JSON (default "
                   "work_dirs/compare_official_training/<config>_<groups>)")
    p.add_argument("--json", default=None, help="where the curves go (default: in --work-dir)")
    p.add_argument("--fig", default=None,
                   help="figure (default figs/training_vs_official.png for DFormer_Tiny with "
                        "--groups all, else figs/training_vs_official_<config>_<groups>.png)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished runs in --work-dir whose settings match")
    p.add_argument("--allow-other-commit", action="store_true",
                   help="compare against official files that differ from commit "
                        f"{OFFICIAL_COMMIT[:8]} (with a warning)")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="no training: the figure and table from a saved comparison")
    p.add_argument("--worker", choices=("ours", "official"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.fig is None:
        name = "training_vs_official" + ("" if (args.config, args.groups) == (
            "DFormer_Tiny", "all") else f"_{args.config}_{args.groups}")
        args.fig = os.path.join(REPO, "figs", name + ".png")
    try:
        for name in ("seeds", "threads", "epochs", "iters_per_epoch", "val_images"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ToolError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        if args.from_json:
            if not os.path.isfile(args.from_json):
                raise ToolError(f"--from-json {args.from_json}: no such file")
            with open(args.from_json) as f:
                data = json.load(f)
            return report(data, args.fig)
        if not args.ref:
            raise ToolError("--ref is required: the folder of the official DFormer code "
                            f"(VCIP-RGBD/DFormer at {OFFICIAL_COMMIT[:8]})")
        return compare(args)
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
