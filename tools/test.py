"""Evaluate a config's model: an mmengine-style ``configs/`` file or a ``local_configs`` one.

    python tools/test.py configs/dformer/dformer_large_8xb8-500e_nyudepthv2-480x640.py \\
        --checkpoint checkpoints/trained/NYUv2_DFormer_Large.pth --tta --sliding
    python tools/test.py --config configs/dformer/dformer_large_8xb8-500e_nyudepthv2-480x640.py \\
        --mode val --cfg-options val_dataloader.batch_size=1 val_dataloader.dataset.file_length=1

A thin layer over ``utils/eval.py`` (the one evaluator): it prints the mIoU table, writes
the metrics as JSON (and a configs/ file with its options, as mmengine's runner dumps it)
into ``--work-dir``, class-index PNGs into ``--out`` and colour overlays into ``--show-dir``. Without ``--checkpoint`` the config's ``load_from`` is
evaluated; without either, a warning says the weights are untrained.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

import argparse  # noqa: E402

from utils.errors import ArgumentParser, ConfigError, run_cli  # noqa: E402


def build_parser():
    from utils.config import add_cfg_options_argument, add_config_arguments
    p = ArgumentParser(description="Evaluate DFormer/DFormerv2 (Jittor) from a configs/ "
                                   "file or a local_configs config.")
    add_config_arguments(p)
    p.add_argument("--checkpoint", default=None,
                   help="trained weights (official .pth or our .pkl); default: the config's "
                        "load_from")
    p.add_argument("--mode", choices=("val", "test"), default="val",
                   help="which loader settings to use: val_dataloader or test_dataloader "
                        "(both read the evaluation split)")
    add_cfg_options_argument(p)
    p.add_argument("--work-dir", default=None,
                   help="write the metrics as JSON (and a configs/ file with its options) into "
                        "this folder")
    p.add_argument("--tta", "--mst", "--multi_scale", "--multi-scale", dest="tta",
                   action="store_true",
                   help="test-time augmentation of the config (tta: the reference's 5 scales "
                        "0.5..1.5 + flip)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="horizontal-flip augmentation (default: on with --tta/--scales)")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="explicit test scales")
    p.add_argument("--sliding", action="store_true",
                   help="sliding-window inference (model.test_cfg crop_size, stride_rate)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write class-index PNGs (0..num_classes-1) into DIR")
    p.add_argument("--show-dir", default=None, metavar="DIR",
                   help="write colour overlays of the predictions into DIR")
    p.add_argument("--max-iters", type=int, default=None, metavar="N",
                   help="evaluate only the first N batches")
    p.add_argument("--strict-load", action=argparse.BooleanOptionalAction, default=True,
                   help="require every model tensor in the checkpoint")
    p.add_argument("--seed", type=int, default=None, help="seed Jittor's RNG (NMF bases)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def image_writer(out_dir, show_dir, cfg):
    """``callback(batch, pred)`` writing index PNGs and/or overlays named after the RGB file."""
    import cv2
    from utils.visualize import colorize, get_palette, overlay, save_index, save_rgb
    palette = get_palette(cfg)

    def write(batch, pred):
        for fn, classes in zip(batch["fn"], pred):
            stem = os.path.splitext(os.path.basename(fn))[0]
            rgb = cv2.imread(fn, cv2.IMREAD_COLOR)
            if rgb is not None:  # padded inputs (SUN RGB-D): crop back to the image
                classes = classes[:rgb.shape[0], :rgb.shape[1]]
            if out_dir:
                save_index(os.path.join(out_dir, stem + ".png"), classes)
            if show_dir and rgb is not None:
                color = colorize(classes, palette)
                save_rgb(os.path.join(show_dir, stem + ".png"),
                         overlay(cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB), color, 0.5))
    return write


def eval_argv(args, cfg):
    """The utils/eval.py arguments this command stands for."""
    argv = ["--config", args.config]
    if args.checkpoint:
        argv += ["--checkpoint", args.checkpoint]
    scales = args.scales or (list(cfg.eval_scale_array) if args.tta else None)
    if scales:
        argv += ["--scales", *[str(s) for s in scales]]
    flip = args.flip if args.flip is not None else (bool(cfg.eval_flip) if args.tta else None)
    if flip is not None:
        argv.append("--flip" if flip else "--no-flip")
    if args.sliding:
        argv.append("--sliding")
    if args.max_iters is not None:
        argv += ["--max-val-iters", str(args.max_iters)]
    argv.append("--strict" if args.strict_load else "--no-strict")
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    argv += ["--device", args.device]
    if args.no_progress:
        argv.append("--no-progress")
    if args.work_dir:
        argv += ["--json", os.path.join(args.work_dir, f"metrics_{args.mode}.json")]
    return argv


def main(argv=None):
    from utils.config import resolve_config_argument
    p = build_parser()
    args = resolve_config_argument(p, p.parse_args(argv))
    if args.max_iters is not None and args.max_iters < 1:
        p.error("--max-iters must be >= 1")
    from utils.config import dump_config, load_config
    cfg = load_config(args.config, args.cfg_options)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ConfigError(f"--checkpoint: file not found: {args.checkpoint}")
    if args.work_dir:
        dump_config(args.config, args.cfg_options, args.work_dir)
    if args.mode == "test":  # the evaluator reads the val_* settings
        cfg.val_batch_size, cfg.val_file_length = cfg.test_batch_size, cfg.test_file_length
    callback = image_writer(args.out, args.show_dir, cfg) if (args.out or args.show_dir) else None
    from utils import eval as engine_eval
    engine_eval.main(eval_argv(args, cfg), cfg=cfg, callback=callback)
    return 0


if __name__ == "__main__":
    run_cli(main)
