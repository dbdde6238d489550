"""Parameters and FLOPs of a DFormer / DFormerv2 config.

    python benchmark.py --config local_configs.NYUDepthv2.DFormer_Base [--shape H W] [--json]

Two FLOP counts are printed (see utils/flops.py for the exact rules):

* paper: thop 0.1.1 as the reference's benchmark runs it (multiply-adds, module
  layers only, 480x640 input for every config). The FLOPs columns of the DFormer and
  DFormerv2 papers use this convention.
* full: every convolution, Linear and matrix product (attention, NMF), 2 FLOPs per
  multiply-add, at the config's evaluation size (NYUDepthv2 480x640, SUNRGBD 480x480).

``--shape H W`` sets the input size of both counts. Nothing is executed: the
forward pass is traced on Jittor's lazy graph, so this runs in seconds on any CPU.
"""
import argparse
import json

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported
from utils.errors import ArgumentParser, run_cli  # noqa: E402

PAPER_SHAPE = (480, 640)   # the reference's utils/benchmark.py input, for every config


def eval_shape(cfg):
    """The config's evaluation input size (image_height, image_width)."""
    return int(cfg.get("image_height", 480)), int(cfg.get("image_width", 640))


def benchmark(config, shape=None, cfg_options=None):
    """Counts for ``config`` (dotted name or path) as a plain dict."""
    from utils.config import load_config
    from models.builder import EncoderDecoder
    from utils.flops import count_flops, count_params

    cfg = load_config(config, cfg_options)
    model = EncoderDecoder(cfg)
    params = count_params(model)
    full_shape = tuple(shape) if shape else eval_shape(cfg)
    paper_shape = tuple(shape) if shape else PAPER_SHAPE
    full = count_flops(model, full_shape)
    paper = full if paper_shape == full_shape else count_flops(model, paper_shape)
    return {
        "config": config,
        "backbone": cfg.backbone,
        "decoder": cfg.decoder,
        "params": params["total"],
        "params_backbone": params.get("backbone", 0),
        "params_decode_head": params.get("decode_head", 0),
        "params_aux_head": params.get("aux_head", 0),
        "params_paper": paper.paper_params,
        "shape": list(full_shape),
        "gflops": full.flops / 1e9,
        "gflops_by_op": {op: v / 1e9 for op, v in full.by_op.items()},
        "gflops_backbone": full.by_module.get("backbone", {}).get("flops", 0) / 1e9,
        "gflops_decode_head": full.by_module.get("decode_head", {}).get("flops", 0) / 1e9,
        "shape_paper": list(paper_shape),
        "gflops_paper": paper.paper_ops / 1e9,
        "flops": full.flops,
        "ops_paper": paper.paper_ops,
    }


def format_table(res):
    from tabulate import tabulate
    from utils.flops import FULL_CONVENTION, PAPER_CONVENTION
    full_hw = "x".join(map(str, res["shape"]))
    paper_hw = "x".join(map(str, res["shape_paper"]))
    ops = " / ".join(f"{res['gflops_by_op'][k]:.2f}" for k in ("convolution", "linear", "matmul"))
    parts = f"{res['gflops_backbone']:.2f} / {res['gflops_decode_head']:.2f}"
    rows = [
        ["params", f"{res['params'] / 1e6:.2f} M", "trainable tensors"],
        ["params: backbone", f"{res['params_backbone'] / 1e6:.2f} M", ""],
        ["params: decode head", f"{res['params_decode_head'] / 1e6:.2f} M", ""],
        ["params (thop)", f"{res['params_paper'] / 1e6:.2f} M", "what thop reports (known layer types only)"],
        ["GFLOPs (paper)", f"{res['gflops_paper']:.2f} G", f"thop MACs, {paper_hw}  <- papers' tables"],
        ["GFLOPs (full)", f"{res['gflops']:.2f} G", f"2 x MACs, all products, {full_hw}"],
        ["full: conv / linear / matmul", ops, ""],
        ["full: backbone / decode head", parts, ""],
    ]
    head = f"{res['config']}  ({res['backbone']} + {res['decoder']} head)"
    notes = f"paper: {PAPER_CONVENTION}.\nfull:  {FULL_CONVENTION}."
    return head + "\n" + tabulate(rows, headers=["", "value", "convention"]) + "\n" + notes


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="e.g. local_configs.NYUDepthv2.DFormer_Base (or a path to it)")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"),
                        help="input size for both counts (default: evaluation size / 480x640)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of known errors")
    from utils.config import add_cfg_options_argument
    add_cfg_options_argument(parser)
    args = parser.parse_args(argv)
    res = benchmark(args.config, args.shape, args.cfg_options)
    if args.json:
        print(json.dumps(res))
    else:
        print(format_table(res))


if __name__ == "__main__":
    run_cli(main)
