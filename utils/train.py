"""Train a DFormer / DFormerv2 segmentor (the reference's utils/train.py, in Jittor).

Single process (CPU or one GPU)::

    python utils/train.py --config local_configs.NYUDepthv2.DFormer_Tiny --no-mst

Several GPUs (one MPI process per GPU; ``batch_size`` stays the *global* batch)::

    mpirun -np 2 python utils/train.py --config local_configs.NYUDepthv2.DFormerv2_S --gpus 2

Resume (same command plus ``--resume``; the run's work dir holds ``latest.pkl``)::

    python utils/train.py --config ... --work-dir checkpoints/run1 --resume
    python utils/train.py --config ... --resume checkpoints/run1/latest.pkl

See utils/engine/trainer.py for what a checkpoint holds and how resuming stays exact,
utils/engine/optim.py for the parameter groups and the lr schedule.
"""
import argparse
import json
import os
import shlex
import sys
import time

if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported
import jittor as jt  # noqa: E402

from utils.config import add_cfg_options_argument, dump_config, load_config  # noqa: E402
from utils.errors import ArgumentParser, CheckpointError, ConfigError, UserError, run_cli  # noqa: E402,E501


def str2bool_flag(parser, name, default, help_text):
    """``--name`` / ``--no-name``; a dashed name also accepts its underscore spelling."""
    spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
    parser.add_argument(*spellings, dest=name.replace("-", "_"), default=default,
                        action=argparse.BooleanOptionalAction, help=help_text)


def build_parser():
    p = ArgumentParser(description="Train DFormer/DFormerv2 (Jittor).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True,
                   help="config module, e.g. local_configs.NYUDepthv2.DFormer_Tiny")
    p.add_argument("--gpus", type=int, default=1,
                   help="number of processes/GPUs; >1 must be launched with mpirun -np N")
    p.add_argument("--epochs", type=int, default=None, help="override C.nepochs")
    p.add_argument("--max-iters", type=int, default=None,
                   help="stop once this many iterations (counted from the start of the "
                        "schedule, resumed ones included) are done")
    p.add_argument("--max-val-iters", type=int, default=None,
                   help="validate on at most this many batches")
    p.add_argument("--batch-size-override", type=int, default=None,
                   help="override C.batch_size (global); iterations per epoch are re-derived")
    p.add_argument("--num-workers-override", type=int, default=None,
                   help="override C.num_workers (data loader threads; 0: load in the main thread)")
    str2bool_flag(p, "mst", True, "validate with 5 scales + flip (the reference's default)")
    str2bool_flag(p, "amp", None, "mixed precision training on CUDA (default off, as the "
                  "official train.sh); an error on the CPU")
    str2bool_flag(p, "val-amp", None, "mixed precision validation on CUDA (default on, as the "
                  "official train.sh); an error on the CPU")
    str2bool_flag(p, "sliding", False, "sliding-window validation")
    str2bool_flag(p, "syncbn", True, "synchronise BatchNorm statistics across MPI processes")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: the verification path (model, loss, optimiser in float64 on "
                        "the plain operators; slow; README, Faithfulness)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="resume from PATH, or without a value from <work-dir>/latest.pkl")
    p.add_argument("--seed", type=int, default=None, help="seed (default C.seed)")
    p.add_argument("--work-dir", default=None,
                   help="output folder (default <C.log_dir>/<YYYYmmdd-HHMMSS>)")
    p.add_argument("--zero-depth", action="store_true",
                   help="RGB-only ablation: the depth input is replaced by zeros")
    p.add_argument("--val-every", type=int, default=None, metavar="N",
                   help="validate every N epochs and after the last (0: never); default: "
                        "the reference schedule (epoch 1, every 10, every epoch after "
                        "C.checkpoint_start_epoch, and the last)")
    p.add_argument("--ckpt-every", type=int, default=0, metavar="N",
                   help="also write latest.pkl every N iterations (0: at epoch ends only)")
    p.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip (no update) up to N batches whose loss is NaN/inf instead of "
                        "stopping at the first")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of known errors (or set DFORMER_DEBUG=1)")
    add_cfg_options_argument(p)
    return p


# ----------------------------------------------------------------------------- set-up

def prepare_config(args, cfg=None):
    """Load the config (or take ``cfg``) and apply the command-line overrides."""
    cfg = load_config(args.config, args.cfg_options) if cfg is None else cfg
    if args.epochs is not None:
        cfg.nepochs = int(args.epochs)
    if args.batch_size_override is not None:
        cfg.batch_size = int(args.batch_size_override)
        cfg.niters_per_epoch = cfg.num_train_imgs // cfg.batch_size + 1
    if args.num_workers_override is not None:
        cfg.num_workers = int(args.num_workers_override)
    if args.seed is not None:
        cfg.seed = int(args.seed)
    for key in ("nepochs", "batch_size", "niters_per_epoch"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key} must be >= 1 (got {cfg[key]})")
    return cfg


def check_world(args):
    """Error out when --gpus and the MPI launch disagree."""
    n = jt.world_size if jt.in_mpi else 1
    if args.gpus > 1 and not jt.in_mpi:
        raise ConfigError(f"--gpus {args.gpus} needs one process per GPU: launch with "
                          f"`mpirun -np {args.gpus} python utils/train.py --config {args.config} "
                          f"--gpus {args.gpus} ...` (or train.sh with GPUS={args.gpus})")
    if jt.in_mpi and args.gpus not in (1, n):
        raise ConfigError(f"--gpus {args.gpus} but mpirun started {n} processes")
    return n


def resolve_work_dir(args, cfg):
    """--work-dir, else the resumed checkpoint's folder, else <log_dir>/<timestamp>.

    Under MPI every rank must agree: the timestamp is taken on rank 0 and broadcast.
    """
    if args.work_dir or cfg.get("work_dir"):
        return os.path.abspath(args.work_dir or cfg.work_dir)
    if args.resume and args.resume != "latest":
        return os.path.dirname(os.path.abspath(args.resume))
    if args.resume == "latest":
        raise ConfigError("--resume without a path needs --work-dir (the run folder "
                          "holding latest.pkl)")
    stamp = int(time.strftime("%Y%m%d%H%M%S"))
    if jt.in_mpi:
        stamp = int(jt.array([stamp], dtype="int64").mpi_broadcast(0).item())
    text = str(stamp)
    return os.path.abspath(os.path.join(cfg.log_dir, f"{text[:8]}-{text[8:]}"))


def resume_path(args, work_dir):
    if not args.resume:
        return None
    path = os.path.join(work_dir, "latest.pkl") if args.resume == "latest" else args.resume
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint to resume at {path}: check --work-dir/--resume, "
                              "or start without --resume")
    return path


def resolve_amp(args, device, logger):
    """(amp, val_amp) to use. AMP is CUDA-only: asking for it on the CPU is an error
    (--val-amp defaults to on for CUDA only)."""
    if device != "cuda":
        asked = [f"--{name}" for name, value in (("amp", args.amp), ("val-amp", args.val_amp))
                 if value]
        if asked:
            raise ConfigError(f"{' and '.join(asked)}: mixed precision runs on CUDA only; "
                              "drop the option, or train where Jittor finds a GPU")
    amp = bool(args.amp) if args.amp is not None else False
    val_amp = bool(args.val_amp) if args.val_amp is not None else device == "cuda"
    if args.dtype != "float32":
        if amp or args.val_amp:
            raise ConfigError(f"--dtype {args.dtype} and mixed precision (--amp/--val-amp) "
                              "exclude each other")
        val_amp = False
    if amp:
        logger.warning("--amp: Jittor's automatic mixed precision has no gradient scaler; "
                       "watch the loss for fp16 underflow (use --no-amp if it stalls).")
    return amp, val_amp


def build_model(cfg, args, resuming, logger):
    """The segmentor (+ ZeroDepth wrapper): ImageNet weights unless resuming, then the
    config's ``load_from`` weights (non-strict, as mmengine) unless resuming."""
    from utils import checkpoint
    from utils.engine.trainer import ZeroDepth
    try:
        model = checkpoint.build_model(cfg, sync_bn=args.syncbn, with_pretrained=not resuming)
    except FileNotFoundError as exc:  # the pretrained backbone file
        raise CheckpointError(str(exc)) from None
    report = getattr(model, "pretrained_report", None)
    if report is not None:
        logger.info(f"Pretrained backbone {cfg.pretrained_model}: {report.summary()}")
    elif not resuming:
        logger.warning("No pretrained backbone (C.pretrained_model is empty): training from "
                       "scratch.")
    if cfg.get("load_from") and not resuming:
        report = checkpoint.load_trained_weights(model, cfg.load_from, strict=False)
        logger.info(f"load_from {cfg.load_from}: {report.summary()}")
    model.to_dtype(args.dtype)   # before the optimiser: its moments follow the parameters
    forward = ZeroDepth(model) if args.zero_depth else model
    return model, forward


def validation_plan(args, cfg):
    """(val_every, val_interval) for TrainOptions: --val-every wins, then the config's
    ``val_interval`` (k iterations; 0 never), else the reference's epoch schedule."""
    if args.val_every is not None or cfg.get("val_interval") is None:
        return args.val_every, None
    k = int(cfg.val_interval)
    return (0, None) if k == 0 else (None, k)


def build_loaders(cfg, args, seed):
    """Training loader (seeded, per-epoch reproducible) and validation loader (or None)."""
    from utils.dataloader import build_train_loader, build_val_loader, default_val_batch_size
    train_loader = build_train_loader(cfg, seed=seed)
    val_loader = None
    if validation_plan(args, cfg)[0] != 0:
        n = jt.world_size if jt.in_mpi else 1
        # The reference's train.py: NYU-like datasets validate with C.batch_size, SUN RGB-D
        # (padded or not) with one image per GPU.
        batch = n if cfg.dataset_name == "SUNRGBD" else max(default_val_batch_size(cfg), n)
        batch = max(int(cfg.get("val_batch_size") or batch), n)
        val_loader = build_val_loader(cfg, batch_size=batch)
    return train_loader, val_loader


def write_run_info(work_dir, cfg, args, logger):
    """config.json (the internal config) and args.json in the work dir, and a configs/
    file with its --cfg-options as mmengine's runner dumps it (``Config.dump`` under the
    file's name); the config goes to the log as well."""
    from utils.engine.trainer import plain
    with open(os.path.join(work_dir, "config.json"), "w") as f:
        json.dump(plain(dict(cfg)), f, indent=2, default=str)
    with open(os.path.join(work_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2, default=str)
    dumped = dump_config(args.config, args.cfg_options, work_dir)
    if dumped:
        logger.info(f"config file with its options: {dumped}")
    logger.info("config:\n" + json.dumps(plain(dict(cfg)), indent=2, default=str))
    logger.info("args: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))


def setup_run(args, cfg=None):
    """Device, MPI check, config, work dir and logger; returns a namespace of them."""
    from utils.engine.logger import get_logger
    from utils.engine.trainer import is_main_process
    device = runtime.init_device()      # on the CPU also flush-to-zero
    n = check_world(args)
    cfg = prepare_config(args, cfg)
    work_dir = resolve_work_dir(args, cfg)
    resume = resume_path(args, work_dir)
    rank = jt.rank if jt.in_mpi else 0
    logger, log_file = get_logger(work_dir if is_main_process() else None, rank)
    logger.info(f"{runtime.describe()}; processes: {n}; work dir: {work_dir}")
    if runtime.FTZ_STATUS == "off":
        logger.warning("Could not enable flush-to-zero on the main thread: a resumed run may "
                       "differ from an uninterrupted one in values below 1e-38.")
    return argparse.Namespace(device=device, world=n, rank=rank, cfg=cfg, work_dir=work_dir,
                              resume=resume, logger=logger, log_file=log_file)


def read_resume_state(run, args):
    """Read the checkpoint to resume (if any); the run keeps the checkpoint's seed
    unless --seed is given."""
    state = None
    if run.resume:
        from utils.checkpoint import read_checkpoint
        state = read_checkpoint(run.resume)
        if args.seed is None and isinstance(state, dict):
            run.cfg.seed = int(state.get("seed", run.cfg.seed))
    return state


def build_optimisation(cfg, model, logger, world):
    """Reference parameter groups, optimiser and lr schedule (utils/engine/optim.py)."""
    from utils.engine.optim import WarmUpPolyLR, build_optimizer, group_parameters
    groups = group_parameters(model, train_all=bool(cfg.get("train_all_params", False)))
    logger.info(groups.summary())
    optimizer = build_optimizer(cfg, groups)
    schedule = WarmUpPolyLR.from_config(cfg)
    logger.info(f"{cfg.optimizer}: lr {cfg.lr}, weight decay {cfg.weight_decay}; "
                f"{cfg.nepochs} epochs x {cfg.niters_per_epoch} iterations, warm-up "
                f"{schedule.warmup_iters}; global batch {cfg.batch_size}"
                + (f" ({cfg.batch_size // world} per process)" if world > 1 else ""))
    return optimizer, schedule


def build_trainer(args, cfg=None):
    """Everything a run needs, wired together (``cfg`` replaces loading ``--config``).

    Returns ``(trainer, (resume_path, checkpoint_state))``, both None when not resuming.
    """
    from utils.engine.logger import tensorboard_writer
    from utils.engine.trainer import Trainer, TrainOptions, derived_seed
    run = setup_run(args, cfg)
    cfg, logger = run.cfg, run.logger
    amp, val_amp = resolve_amp(args, run.device, logger)
    state = read_resume_state(run, args)
    if run.rank == 0:
        write_run_info(run.work_dir, cfg, args, logger)
    # Same initial weights on every rank and in every run with this seed.
    jt.set_global_seed(derived_seed(cfg.seed, 0x1D17), different_seed_for_mpi=False)
    model, forward = build_model(cfg, args, run.resume is not None, logger)
    # Jittor draws random initial values when they are first computed, not when the
    # ops are created: materialise them now, under the init seed, on every rank.
    jt.sync_all()
    optimizer, schedule = build_optimisation(cfg, model, logger, run.world)
    train_loader, val_loader = build_loaders(cfg, args, cfg.seed)
    if val_loader is not None:
        logger.info(f"val dataset len: {len(val_loader.names)}")
    val_every, val_interval = validation_plan(args, cfg)
    opts = TrainOptions(max_iters=args.max_iters if args.max_iters is not None
                        else cfg.get("max_iters"), max_val_iters=args.max_val_iters,
                        val_every=val_every, mst=args.mst, sliding=args.sliding, amp=amp,
                        val_amp=val_amp, seed=cfg.seed,
                        ckpt_every=args.ckpt_every or cfg.get("checkpoint_interval") or 0,
                        progress=not args.no_progress, val_interval=val_interval,
                        skip_nonfinite=args.skip_nonfinite)
    trainer = Trainer(cfg, model, optimizer, schedule, train_loader, val_loader, run.work_dir,
                      opts, logger, tensorboard_writer(run.work_dir, run.rank, logger),
                      forward_model=forward)
    trainer.log_file = run.log_file
    return trainer, (run.resume, state)


def resume_command(argv, work_dir, script="utils/train.py"):
    """The command line that resumes this run: ``argv`` with ``--work-dir W --resume``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            if not arg.startswith("-"):
                continue
        if arg in ("--resume", "--work-dir"):
            skip = True
            continue
        if arg.startswith(("--resume=", "--work-dir=")):
            continue
        kept.append(arg)
    return shlex.join(["python", script, *kept, "--work-dir", work_dir, "--resume"])


def main(argv=None, cfg=None):
    """Command-line entry point; ``cfg`` (a config object) replaces loading ``--config``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(build_parser().parse_args(argv), cfg, argv)


def run(args, cfg=None, argv=(), script="utils/train.py"):
    """Train with parsed arguments (tools/train.py calls this too); returns the exit status.

    ``argv`` and ``script`` make the resume command shown when the run fails.

    Under MPI the job's status is rank 0's: after a failure or a stop that every rank saw
    (utils.engine.distributed) the other ranks return 0, because ``mpirun`` ends the whole
    job as soon as one rank exits non-zero, which would cut rank 0's save and report short.
    """
    from utils.engine.distributed import is_main_process, raised_on_all_ranks
    trainer, (resume, state) = build_trainer(args, cfg)
    trainer.resume_command = resume_command([a for a in argv if a != "--debug"],
                                            trainer.work_dir, script)
    try:
        if resume:
            trainer.resume(resume, state)
        summary = trainer.train()
    except Exception as exc:
        # a UserError has been logged by the trainer, with what was saved and how to resume
        if not isinstance(exc, UserError):
            trainer.logger.exception("Training failed")
        if not is_main_process() and raised_on_all_ranks(exc):
            return 0
        raise
    finally:
        trainer.tb.close()
    if summary["reason"] not in ("finished", "max_iters"):
        return 130 if is_main_process() else 0
    return 0


if __name__ == "__main__":
    run_cli(main)
