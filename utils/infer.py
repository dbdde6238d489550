"""Segment RGB-D images and write visualisations.

    python utils/infer.py --config CFG --checkpoint CKPT --rgb a.jpg --depth a.png [--label a_gt.png]
    python utils/infer.py --config CFG --checkpoint CKPT --rgb-dir RGB/ --depth-dir Depth/ [--label-dir L/]
    python utils/infer.py --config CFG --checkpoint CKPT --split test

Outputs, per image ``<stem>`` (the RGB file name without extension), under ``--out``:

    pred/<stem>.png     class indices 0..C-1 (training indices, not the on-disk label ids)
    color/<stem>.png    prediction in the dataset palette (NYU colour map for NYU/SUN)
    overlay/<stem>.png  prediction blended over the RGB image (--opacity)
    panel/<stem>.png    RGB | depth | prediction | ground truth (when known) | legend

Folders are matched by file stem; unusable pairs are skipped with a warning and listed
at the end. A single pair that cannot be used is an error naming the file.
"""
import os
import sys

if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

import argparse  # noqa: E402

import cv2  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported
from utils.api import (InputError, check_sizes, inference_model, init_model,  # noqa: E402
                       read_depth, read_label, read_rgb)
from utils.config import add_cfg_options_argument  # noqa: E402
from utils.engine.evaluator import tta_modes  # noqa: E402
from utils import visualize as vis  # noqa: E402
from utils.errors import ArgumentParser, CheckpointError, run_cli  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
OUTPUT_KINDS = ("pred", "color", "overlay", "panel")


def parse_args(argv=None):
    p = ArgumentParser(description="DFormer/DFormerv2 inference with visualisations.")
    p.add_argument("--config", required=True, help="config name, e.g. local_configs.NYUDepthv2.DFormer_Large")
    p.add_argument("--checkpoint", required=True, help="trained weights: official .pth or our .pkl")
    src = p.add_argument_group("inputs (choose one)")
    src.add_argument("--rgb", help="one RGB image")
    src.add_argument("--depth", help="its depth image, same size: 8-bit, or 16-bit/float "
                     "(normalised per image, see README)")
    src.add_argument("--label", help="optional ground-truth label PNG of --rgb (on-disk ids)")
    src.add_argument("--rgb-dir", help="folder of RGB images")
    src.add_argument("--depth-dir", help="folder of depth images, matched to --rgb-dir by file stem")
    src.add_argument("--label-dir", help="optional folder of label PNGs, matched by file stem")
    src.add_argument("--split", choices=("test", "train"),
                     help="the config's dataset split (ground truth shown in the panels)")
    p.add_argument("--out", default="output/infer", help="output folder (default: output/infer)")
    p.add_argument("--mst", action="store_true", help="multi-scale 0.5..1.5 + flip (the reference's --mst)")
    p.add_argument("--flip", action="store_true", help="horizontal-flip test-time augmentation")
    p.add_argument("--sliding", action="store_true", help="sliding-window inference")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--max-images", type=int, default=None, help="process at most this many images")
    p.add_argument("--seed", type=int, default=None, help="seed Jittor's RNG (NMF bases)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_cfg_options_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks of known errors")
    args = p.parse_args(argv)
    modes = [bool(args.rgb or args.depth), bool(args.rgb_dir or args.depth_dir), bool(args.split)]
    if sum(modes) != 1:
        p.error("give exactly one input: --rgb/--depth, --rgb-dir/--depth-dir or --split")
    if modes[0] and not (args.rgb and args.depth):
        p.error("--rgb and --depth go together")
    if modes[1] and not (args.rgb_dir and args.depth_dir):
        p.error("--rgb-dir and --depth-dir go together")
    if not 0.0 <= args.opacity <= 1.0:
        p.error("--opacity must be in [0, 1]")
    return args


# ----------------------------------------------------------------------------- input listing

class Job:
    """One image pair to segment; ``label`` may be None."""

    def __init__(self, stem, rgb, depth, label=None):
        self.stem, self.rgb, self.depth, self.label = stem, rgb, depth, label


def _by_stem(folder, what, notes):
    """{stem: path} of the images in ``folder``; duplicated stems are noted."""
    if not os.path.isdir(folder):
        raise InputError(f"{what} folder not found: {folder}")
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if stem in found:
            notes.append(f"{os.path.join(folder, name)}: another {what} file has stem '{stem}' "
                         f"({found[stem]}); using that one")
            continue
        found[stem] = os.path.join(folder, name)
    return found


def folder_jobs(rgb_dir, depth_dir, label_dir=None):
    """(jobs, skipped, notes): a job per RGB image with a depth partner, a message per
    RGB image without one, and other remarks (unmatched depth files, duplicate stems)."""
    notes, skipped = [], []
    rgbs = _by_stem(rgb_dir, "RGB", notes)
    depths = _by_stem(depth_dir, "depth", notes)
    labels = _by_stem(label_dir, "label", notes) if label_dir else {}
    if not rgbs:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in RGB folder {rgb_dir}")
    jobs = []
    for stem, path in rgbs.items():
        if stem not in depths:
            skipped.append(f"{path}: no depth image with stem '{stem}' in {depth_dir}")
            continue
        jobs.append(Job(stem, path, depths[stem], labels.get(stem)))
    for stem, path in depths.items():
        if stem not in rgbs:
            notes.append(f"{path}: no RGB image with stem '{stem}' in {rgb_dir}; ignored")
    return jobs, skipped, notes


def split_jobs(cfg, split):
    """Jobs for a split of the config's dataset, with ground-truth labels."""
    from utils.dataloader import RGBXDataset
    dataset = RGBXDataset(cfg, "train" if split == "train" else "val", augment=False)
    jobs = []
    for name in dataset.names:
        paths = dataset.files.paths(name)
        label = paths["label"] if os.path.isfile(paths["label"]) else None
        jobs.append(Job(name.replace("/", "_"), paths["rgb"], paths["depth"], label))
    return jobs


# ----------------------------------------------------------------------------- one image

class Writer:
    """Writes the four outputs of one image."""

    def __init__(self, out_dir, cfg, opacity):
        self.out_dir, self.opacity = out_dir, opacity
        self.palette = vis.get_palette(cfg)
        self.class_names = list(cfg.get("class_names") or [f"class {i}" for i in range(cfg.num_classes)])

    def path(self, kind, stem):
        return os.path.join(self.out_dir, kind, stem + ".png")

    def write(self, stem, rgb_bgr, depth, pred, label=None):
        rgb = cv2.cvtColor(rgb_bgr, cv2.COLOR_BGR2RGB)
        color = vis.colorize(pred, self.palette)
        vis.save_index(self.path("pred", stem), pred)
        vis.save_rgb(self.path("color", stem), color)
        vis.save_rgb(self.path("overlay", stem), vis.overlay(rgb, color, self.opacity))
        panel = vis.make_panel(rgb, depth, pred, self.palette, self.class_names, label)
        vis.save_rgb(self.path("panel", stem), panel)


def run_job(model, job, writer, cfg, modes):
    """Read, check, segment and write one job (raises InputError on bad input)."""
    rgb, _ = read_rgb(job.rgb)
    depth, _ = read_depth(job.depth)
    label = read_label(job.label, cfg) if job.label else None
    check_sizes(rgb, depth, job.rgb, job.depth, label, job.label)
    pred = inference_model(model, rgb, depth, **modes)
    writer.write(job.stem, rgb, depth, pred, label)
    return pred


def _warn(message):
    tqdm.write(f"[infer] warning: {message}", file=sys.stderr)


def collect_jobs(args, cfg):
    """(jobs, skipped, notes) for the chosen input mode (see :func:`folder_jobs`)."""
    if args.rgb:
        stem = os.path.splitext(os.path.basename(args.rgb))[0]
        return [Job(stem, args.rgb, args.depth, args.label)], [], []
    if args.rgb_dir:
        return folder_jobs(args.rgb_dir, args.depth_dir, args.label_dir)
    return split_jobs(cfg, args.split), [], []


def check_single_inputs(args):
    """Fail fast, before the model is loaded, when a file of a single pair is missing or
    cannot be read."""
    for what, path in (("RGB", args.rgb), ("depth", args.depth), ("label", args.label)):
        if path and not os.path.isfile(path):
            raise InputError(f"{what} file not found: {path}")
    check_sizes(read_rgb(args.rgb)[0], read_depth(args.depth)[0], args.rgb, args.depth)


def setup(args):
    """(model, cfg, jobs, skipped, notes); bad config/checkpoint/folders raise UserErrors."""
    from utils.config import load_config
    if args.rgb:
        check_single_inputs(args)
    cfg = load_config(args.config, args.cfg_options)
    if not os.path.isfile(args.checkpoint):
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    if not args.split:  # inputs first: a wrong folder fails before the model loads
        jobs, skipped, notes = collect_jobs(args, cfg)
    model = init_model(cfg, args.checkpoint, device=None if args.device == "auto" else args.device)
    if args.split:
        jobs, skipped, notes = collect_jobs(args, model.cfg)
    return model, model.cfg, jobs, skipped, notes


def process(jobs, model, writer, cfg, modes, stop_on_error):
    """Run every job; returns (done, skipped messages). Bad inputs are skipped with a
    warning, or end the run when ``stop_on_error``."""
    done, skipped = 0, []
    for job in tqdm(jobs, desc="infer", unit="img", dynamic_ncols=True):
        try:
            run_job(model, job, writer, cfg, modes)
            done += 1
        except InputError as exc:
            if stop_on_error:
                raise
            _warn(f"{exc}; skipped")
            skipped.append(str(exc))
    return done, skipped


def report(done, skipped, out_dir):
    print(f"[infer] {done} image(s) written to {os.path.abspath(out_dir)}/"
          f"{{{','.join(OUTPUT_KINDS)}}}")
    if skipped:
        print(f"[infer] {len(skipped)} input(s) skipped:", file=sys.stderr)
        for message in skipped:
            print(f"  - {message}", file=sys.stderr)
    if done == 0:
        raise InputError("no image could be processed (see the messages above).")


def main(argv=None):
    args = parse_args(argv)
    model, cfg, jobs, skipped, notes = setup(args)
    for message in notes + [m + "; skipped" for m in skipped]:
        _warn(message)
    if args.max_images is not None:
        jobs = jobs[:args.max_images]
    if args.seed is not None:
        import jittor as jt
        jt.set_global_seed(args.seed)
    scales, flip = tta_modes(cfg) if args.mst else ((1.0,), False)
    modes = {"scales": scales, "flip": args.flip or flip, "sliding": args.sliding}
    writer = Writer(args.out, cfg, args.opacity)
    done, failed = process(jobs, model, writer, cfg, modes, stop_on_error=bool(args.rgb))
    report(done, skipped + failed, args.out)
    return done


if __name__ == "__main__":
    run_cli(lambda argv: main(argv) and 0)  # main returns the image count, not a status
