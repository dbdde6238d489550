"""Evaluate a trained segmentor on a config's evaluation split.

    python utils/eval.py --config local_configs.NYUDepthv2.DFormer_Large \\
        --checkpoint checkpoints/trained/NYUv2_DFormer_Large.pth --mst --sliding

Modes: single scale by default; ``--mst`` = the reference's 5 scales (0.5..1.5) + flip;
``--scales`` sets the scales explicitly; ``--flip`` / ``--no-flip`` override the flip
(default: on with --mst or --scales, off otherwise); ``--sliding`` adds sliding windows.
Under ``mpirun -np N`` every rank evaluates its shard; rank 0 prints and writes files.
"""
import os

if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported
import jittor as jt  # noqa: E402

from utils.config import add_cfg_options_argument, load_config  # noqa: E402
from utils.errors import ArgumentParser, ConfigError, run_cli  # noqa: E402
from utils.metrics import format_metrics_table  # noqa: E402
from utils.engine.evaluator import evaluate, is_main_process, tta_modes  # noqa: E402


def parse_args(argv=None):
    p = ArgumentParser(description="Evaluate a DFormer/DFormerv2 checkpoint (mIoU etc.).")
    p.add_argument("--config", required=True,
                   help="config name, e.g. local_configs.NYUDepthv2.DFormer_Large")
    p.add_argument("--checkpoint", default=None,
                   help="trained weights: official .pth or our .pkl (default: the config's "
                        "load_from; without either, untrained weights are evaluated)")
    p.add_argument("--mst", action=argparse.BooleanOptionalAction, default=False,
                   help="multi-scale 0.5,0.75,1,1.25,1.5 + flip, as the reference (default: off)")
    p.add_argument("--scales", type=float, nargs="+", default=None,
                   help="explicit test scales (multi-scale mode unless exactly 1.0)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="horizontal-flip test-time augmentation (default: on with --mst/--scales)")
    p.add_argument("--sliding", action=argparse.BooleanOptionalAction, default=False,
                   help="sliding-window inference with the config's eval_crop_size/eval_stride_rate")
    p.add_argument("--pad-sunrgbd", dest="pad_sunrgbd", action=argparse.BooleanOptionalAction,
                   default=None, help="pad SUN RGB-D inputs to 531x730 (default: the config's value)")
    p.add_argument("--max-val-iters", type=int, default=None, help="evaluate only this many batches")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global evaluation batch size (default: the reference's rule)")
    p.add_argument("--num-workers", type=int, default=None, help="data workers (default: config)")
    p.add_argument("--save-pred", metavar="DIR", default=None,
                   help="write colour predictions (dataset palette) into DIR")
    p.add_argument("--json", metavar="PATH", default=None, help="write the metrics as JSON")
    p.add_argument("--seed", type=int, default=None,
                   help="seed Jittor's RNG (fixes the decoder's random NMF bases)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_cfg_options_argument(p)
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="require every model tensor in the checkpoint (default: on)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks of known errors")
    args = p.parse_args(argv)
    if args.max_val_iters is not None and args.max_val_iters < 1:
        p.error("--max-val-iters must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def resolve_modes(args, cfg=None):
    """(scales, flip) from --mst (the config's tta_modes) / --scales / --flip."""
    mst_scales, mst_flip = tta_modes(cfg or {})
    if args.scales is not None:
        scales = tuple(args.scales)
    elif args.mst:
        scales = mst_scales
    else:
        scales = (1.0,)
    flip = args.flip if args.flip is not None else \
        ((args.mst and mst_flip) or args.scales is not None)
    if any(s <= 0 for s in scales):
        raise ConfigError("--scales must be positive")
    return scales, bool(flip)


def build_loader(cfg, args):
    from utils.dataloader import build_val_loader, default_val_batch_size
    batch = args.batch_size or cfg.get("val_batch_size") or default_val_batch_size(cfg)
    if jt.in_mpi and batch < jt.world_size:
        batch = jt.world_size  # Jittor needs at least one sample per rank and batch
    return build_val_loader(cfg, batch_size=batch, num_workers=args.num_workers)


def prediction_saver(out_dir, cfg):
    """Callback writing ``<out_dir>/<rgb file stem>.png`` colour predictions."""
    from utils.visualize import colorize, get_palette, save_rgb
    palette = get_palette(cfg)

    def save(batch, pred):
        for fn, classes in zip(batch["fn"], pred):
            stem = os.path.splitext(os.path.basename(fn))[0]
            save_rgb(os.path.join(out_dir, stem + ".png"), colorize(classes, palette))
    return save


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path, metrics, info):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"metrics": _jsonable(metrics), "run": info}, f, indent=2)


def main(argv=None, cfg=None, callback=None):
    """Command-line entry point; ``cfg`` replaces loading ``--config`` (tools/test.py),
    ``callback(batch, pred)`` is called for every batch besides --save-pred's."""
    args = parse_args(argv)
    device = runtime.init_device(None if args.device == "auto" else args.device == "cuda")
    cfg = load_config(args.config, args.cfg_options) if cfg is None else cfg
    args.checkpoint = args.checkpoint or cfg.get("load_from")
    if args.checkpoint is None:
        import warnings
        warnings.warn("no --checkpoint and no load_from in the config: evaluating UNTRAINED "
                      "weights (the numbers mean nothing)", RuntimeWarning, stacklevel=2)
        if cfg.get("pretrained_model") and not os.path.isfile(cfg.pretrained_model):
            cfg.pretrained_model = None
    if args.pad_sunrgbd is not None:
        cfg.pad_SUNRGBD = args.pad_sunrgbd
    scales, flip = resolve_modes(args, cfg)

    from utils.checkpoint import build_model
    model = build_model(cfg, checkpoint=args.checkpoint, strict=args.strict)
    loader = build_loader(cfg, args)
    if is_main_process():
        print(f"[eval] {runtime.describe()}")
        report = getattr(model, "load_report", None)
        print(f"[eval] config {args.config}, checkpoint {args.checkpoint} "
              f"({report.summary() if report else 'untrained weights'})")
        print(f"[eval] scales {list(scales)}, flip {flip}, sliding {args.sliding}, "
              f"pad_SUNRGBD {bool(cfg.get('pad_SUNRGBD'))}, batch {loader.batch_size}"
              + (f", world size {jt.world_size}" if jt.in_mpi else ""))
    callbacks = [c for c in (prediction_saver(args.save_pred, cfg) if args.save_pred else None,
                             callback) if c is not None]
    callback = (lambda batch, pred: [c(batch, pred) for c in callbacks]) if callbacks else None
    start = time.time()
    metrics = evaluate(model, loader, cfg, scales=scales, flip=flip, sliding=args.sliding,
                       max_iters=args.max_val_iters, progress=args.progress, seed=args.seed,
                       callback=callback)
    elapsed = time.time() - start
    if is_main_process():
        print(format_metrics_table(metrics))
        print(f"[eval] done in {elapsed:.1f}s on {device}")
        if args.json:
            info = {"config": args.config, "checkpoint": args.checkpoint, "scales": list(scales),
                    "flip": flip, "sliding": args.sliding, "max_val_iters": args.max_val_iters,
                    "seed": args.seed, "seconds": round(elapsed, 2)}
            write_json(args.json, metrics, info)
            print(f"[eval] metrics written to {args.json}")
    return metrics


if __name__ == "__main__":
    run_cli(lambda argv: main(argv) and 0)  # main returns the metrics, not a status
