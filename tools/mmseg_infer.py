"""Segment RGB-D images through the mmseg-style API and draw the result.

    python tools/mmseg_infer.py --config local_configs.NYUDepthv2.DFormer_Large \\
        --checkpoint checkpoints/trained/NYUv2_DFormer_Large.pth \\
        --img rgb.png --modal-x depth.png --out-file output/vis.png

writes the overlay ``output/vis.png`` and the class-index PNG ``output/vis_pred.png``
beside it (8-bit, one value per class). Folders: ``--img RGB_DIR --modal-x DEPTH_DIR
--out-dir OUT`` pairs the files by stem and writes ``OUT/vis/<stem>.png`` and
``OUT/pred/<stem>.png``. ``--tta`` runs the config's multi-scale + flip passes,
``--sliding`` sliding windows. Preprocessing is the evaluation pipeline's.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

from utils.errors import InputError, run_cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True,
                   help="config name or path (local_configs.NYUDepthv2.DFormer_Large, configs/dformer/....py)")
    p.add_argument("--checkpoint", default=None, help="trained weights (random weights when omitted)")
    p.add_argument("--img", required=True, help="RGB image, or a folder of them")
    p.add_argument("--modal-x", "--depth", dest="modal_x", required=True,
                   help="depth image (8-bit), or a folder of them (paired by stem)")
    p.add_argument("--out-file", default=None,
                   help="overlay to write for one image (default output/<stem>_vis.png)")
    p.add_argument("--out-dir", default=None, help="output folder for folder inputs")
    p.add_argument("--device", default="cuda:0", help="cpu, cuda or cuda:N (CPU fallback with a warning)")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the class colours (0..1)")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    p.add_argument("--sliding", action="store_true", help="sliding-window inference")
    p.add_argument("--title", default="result")
    p.add_argument("--no-labels", action="store_true", help="do not write class names on the drawing")
    p.add_argument("--show", action="store_true", help="also display the drawing (needs a display)")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                   help="override config fields")
    args = p.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        p.error("--opacity must be in [0, 1]")
    return args


def _pred_path(out_file):
    stem, _ = os.path.splitext(out_file)
    return stem + "_pred.png"


def main(argv=None):
    args = parse_args(argv)
    from mmseg.apis import inference_model, init_model, show_result_pyplot
    from utils.visualize import save_index

    folder = os.path.isdir(args.img)
    if folder != os.path.isdir(args.modal_x):
        raise InputError("--img and --modal-x must both be files or both be folders")
    if folder:
        from utils.infer import folder_jobs
        jobs, skipped, notes = folder_jobs(args.img, args.modal_x)
        for message in skipped + notes:
            print(f"warning: {message}", file=sys.stderr)
        out_dir = args.out_dir or "output"
        pairs = [(job.stem, job.rgb, job.depth, os.path.join(out_dir, "vis", job.stem + ".png"),
                  os.path.join(out_dir, "pred", job.stem + ".png")) for job in jobs]
    else:
        for path, what in ((args.img, "RGB"), (args.modal_x, "depth")):
            if not os.path.isfile(path):
                raise InputError(f"{what} file not found: {path}")
        stem = os.path.splitext(os.path.basename(args.img))[0]
        out_file = args.out_file or os.path.join(args.out_dir or "output", stem + "_vis.png")
        pairs = [(stem, args.img, args.modal_x, out_file, _pred_path(out_file))]

    model = init_model(args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options)
    for stem, rgb, depth, vis_path, pred_path in pairs:
        result = inference_model(model, {"img": rgb, "modal_x": depth}, tta=args.tta,
                                 sliding=args.sliding)
        show_result_pyplot(model, rgb, result, opacity=args.opacity, title=args.title,
                           show=args.show, with_labels=not args.no_labels, out_file=vis_path)
        save_index(pred_path, result.pred_sem_seg.data[0])
        h, w = result.pred_sem_seg.shape
        print(f"{stem}: {w}x{h} -> {vis_path}, {pred_path}", flush=True)
    print(f"done: {len(pairs)} image(s)", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
