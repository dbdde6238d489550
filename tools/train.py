"""Train from any config: an mmengine-style ``configs/`` file or a ``local_configs`` one.

    python tools/train.py configs/dformer/dformer_large_8xb8-500e_nyudepthv2-480x640.py
    python tools/train.py --config local_configs.NYUDepthv2.DFormer_Base
    python tools/train.py --config configs/dformer/dformer_large_8xb8-500e_nyudepthv2-480x640.py \\
        --cfg-options train_cfg.max_iters=1 train_cfg.val_interval=1 \\
                      train_dataloader.batch_size=1 train_dataloader.dataset.file_length=1 \\
                      val_dataloader.batch_size=1 val_dataloader.dataset.file_length=1
    mpirun -np 2 python tools/train.py CONFIG --launcher mpi

A thin layer: the config goes through ``utils.config.load_config`` and the run through
``utils.train.run``, the same trainer as ``python utils/train.py`` (same process, same
code path, bit-identical results). Every flag of utils/train.py is accepted as well. The
work dir receives the configs/ file with its options (``Config.dump``, as mmengine's
runner), config.json (the internal config) and args.json.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

from utils.errors import ConfigError, run_cli  # noqa: E402


def build_parser():
    from utils.config import add_config_arguments
    from utils.train import build_parser as engine_parser
    p = engine_parser()
    p.description = ("Train DFormer/DFormerv2 (Jittor) from a configs/ file or a local_configs "
                     "config; every utils/train.py flag works too.")
    add_config_arguments(p)
    p.add_argument("--load-from", default=None, metavar="PATH",
                   help="start from these weights (official .pth or our .pkl; non-strict), "
                        "as the config's load_from")
    p.add_argument("--launcher", choices=("none", "mpi"), default="none",
                   help="mpi: one process per GPU started by mpirun -np N (--gpus follows)")
    return p


def parse_args(argv=None):
    from utils.config import resolve_config_argument
    p = build_parser()
    return resolve_config_argument(p, p.parse_args(argv))


def load(args):
    """The internal config of CONFIG with --cfg-options; --load-from joins the options as
    ``load_from``, so the config dumped into the work dir holds it (as in mmengine)."""
    from utils.config import load_config, parse_cfg_options
    if args.load_from:
        if not os.path.isfile(args.load_from):
            raise ConfigError(f"--load-from: file not found: {args.load_from}")
        args.cfg_options = {**parse_cfg_options(args.cfg_options), "load_from": args.load_from}
    return load_config(args.config, args.cfg_options)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from utils.train import run
    import jittor as jt
    cfg = load(args)
    if args.launcher == "mpi":
        if not jt.in_mpi:
            raise ConfigError("--launcher mpi needs an MPI launch: mpirun -np N python "
                              f"tools/train.py {args.config} --launcher mpi")
        args.gpus = jt.world_size
    return run(args, cfg, argv, script="tools/train.py")


if __name__ == "__main__":
    run_cli(main)
