"""Forward latency of a DFormer / DFormerv2 config.

    python utils/latency.py --config local_configs.NYUDepthv2.DFormer_Tiny \\
        [--shape H W] [--batch B] [--warmup N] [--iters N] [--json] [--efficiency] [--train]

The model (random weights, eval mode, fixed NMF bases so runs are comparable) runs
under no_grad on random RGB and depth inputs; each forward is timed up to
``jt.sync_all(True)``. The first call (kernel compilation) is reported apart.
Runs on CUDA when Jittor finds one, else on the CPU (``--device`` chooses).

Unlike the reference's utils/latency.py (training mode, 100 warm-up and 300 timed
runs on a GPU, mean only), this measures eval mode and reports mean, median, min.

``--train`` times training iterations instead (seconds per iteration): forward
with a random label, backward and an AdamW step through the project's optimiser
(utils/engine/optim.py: the reference's parameter groups and update rule), on
random inputs of ``--batch`` images; the first iteration (compilation) is
reported apart. Typical use: ``--train --shape 240 320 --batch 2``.

``--efficiency`` also measures the device's fp32 matrix-product peak through Jittor
(best of a few 2048^3 products on the CPU, 4096^3 on CUDA) and reports the model's FLOP rate (full count of
utils/flops.py) as a percentage of it.
"""
import json
import math
import os
import statistics
import time

if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported
from utils.errors import ArgumentParser, run_cli  # noqa: E402

import numpy as np  # noqa: E402
import jittor as jt  # noqa: E402


def _sync(out=None):
    if out is not None:
        for v in (out if isinstance(out, (list, tuple)) else [out]):
            v.sync()
    jt.sync_all(True)


def fix_nmf_bases(model, batch, seed=0):
    """Fix the NMF bases (U[0,1) draw, for ``batch`` images) so runs are comparable."""
    nmf = next((m for _, m in model.named_modules() if hasattr(m, "fixed_bases")), None)
    channels = getattr(model.decode_head, "ham_channels", None)
    if nmf is None or channels is None:
        return
    shape = (batch * nmf.S, channels // nmf.S, nmf.R)
    model.set_nmf_bases(np.random.RandomState(seed).rand(*shape).astype(np.float32))


def matmul_peak_gflops(n=None, runs=5):
    """Best fp32 rate (GFLOP/s) of an n x n x n matrix product through Jittor
    (n = 2048 on the CPU, 4096 on CUDA)."""
    n = n or (4096 if jt.flags.use_cuda else 2048)
    rng = np.random.RandomState(0)
    a = jt.array(rng.rand(n, n).astype(np.float32))
    b = jt.array(rng.rand(n, n).astype(np.float32))
    _sync([a, b])
    _sync(jt.matmul(a, b))              # compile
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        _sync(jt.matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


def _use_cuda(device):
    return None if device in (None, "auto") else device == "cuda"


def measure(config, shape=(480, 640), batch=1, warmup=3, iters=10, efficiency=False,
            cfg_options=None, device="auto"):
    """Latency figures of ``config`` as a dict (times in ms, first call in s)."""
    from utils.config import load_config
    from models.builder import EncoderDecoder

    device = runtime.init_device(_use_cuda(device))
    cfg = load_config(config, cfg_options)
    model = EncoderDecoder(cfg)
    model.eval()
    fix_nmf_bases(model, batch)
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.RandomState(0)
    rgb = jt.array(rng.rand(batch, 3, h, w).astype(np.float32))
    depth = jt.array(rng.rand(batch, 3, h, w).astype(np.float32))
    _sync([rgb, depth] + list(model.parameters()))

    res = {"config": config, "device": device, "shape": [h, w], "batch": batch,
           "warmup": warmup, "iters": iters, "threads": _threads(),
           "jittor_version": jt.__version__, "runtime": runtime.describe()}
    with jt.no_grad():
        start = time.perf_counter()
        _sync(model(rgb, depth))
        res["first_call_s"] = time.perf_counter() - start
        for _ in range(warmup):
            _sync(model(rgb, depth))
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            _sync(model(rgb, depth))
            times.append((time.perf_counter() - start) * 1e3)
    res.update(mean_ms=statistics.fmean(times), median_ms=statistics.median(times),
               min_ms=min(times), std_ms=statistics.pstdev(times))
    res["fps"] = batch * 1e3 / res["median_ms"]
    if efficiency:
        from utils.flops import count_flops
        res["model_gflops"] = count_flops(model, (h, w), batch).flops / 1e9
        res["achieved_gflops_per_s"] = res["model_gflops"] / (res["median_ms"] / 1e3)
        res["peak_gflops"] = matmul_peak_gflops()
        res["efficiency_pct"] = 100.0 * res["achieved_gflops_per_s"] / res["peak_gflops"]
    return res


def measure_train(config, shape=(240, 320), batch=2, warmup=1, iters=5, cfg_options=None,
                  device="auto"):
    """Seconds per training iteration of ``config`` (forward + backward + AdamW step).

    The optimiser is the project's (utils/engine/optim.py: reference parameter
    groups, AdamW at the config's lr and weight decay; the lr is fixed, the
    schedule costs nothing); on the CPU flush-to-zero is on (``runtime.init_device``),
    as in training and inference. Inputs and the label (uniform over the classes)
    are random, drawn once.
    """
    from utils.config import load_config
    from models.builder import EncoderDecoder
    from utils.engine.optim import build_optimizer, group_parameters

    device = runtime.init_device(_use_cuda(device))
    cfg = load_config(config, cfg_options)
    model = EncoderDecoder(cfg)
    model.train()
    groups = group_parameters(model, train_all=bool(cfg.get("train_all_params", False)))
    optimizer = build_optimizer(cfg, groups)
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.RandomState(0)
    rgb = jt.array(rng.rand(batch, 3, h, w).astype(np.float32))
    depth = jt.array(rng.rand(batch, 3, h, w).astype(np.float32))
    label = jt.array(rng.randint(0, cfg.num_classes, (batch, h, w)).astype(np.int32))
    _sync([rgb, depth, label] + list(model.parameters()))

    def step():
        start = time.perf_counter()
        loss = model(rgb, depth, label)
        optimizer.backward(loss)
        optimizer.step()
        loss.item()
        jt.sync_all(True)
        return time.perf_counter() - start

    res = {"config": config, "device": device, "shape": [h, w], "batch": batch, "mode": "train",
           "warmup": warmup, "iters": iters, "threads": _threads(),
           "jittor_version": jt.__version__, "runtime": runtime.describe()}
    res["first_iter_s"] = step()
    for _ in range(warmup):
        step()
    times = [step() for _ in range(iters)]
    res.update(median_s_per_iter=statistics.median(times), mean_s_per_iter=statistics.fmean(times),
               min_s_per_iter=min(times), std_s_per_iter=statistics.pstdev(times))
    return res


def _threads():
    """CPU threads Jittor's OpenMP kernels may use."""
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() else os.cpu_count()


def format_report(res):
    from tabulate import tabulate
    h, w = res["shape"]
    if res.get("mode") == "train":
        rows = [["median", f"{res['median_s_per_iter']:.3f} s/iter"],
                ["mean", f"{res['mean_s_per_iter']:.3f} s/iter"],
                ["min", f"{res['min_s_per_iter']:.3f} s/iter"],
                ["std", f"{res['std_s_per_iter']:.3f} s"],
                ["first iteration (compile)", f"{res['first_iter_s']:.2f} s"]]
        head = (f"{res['config']}: batch {res['batch']}, {h}x{w}, training step (forward + "
                f"backward + AdamW), {res['warmup']} warm-up + {res['iters']} timed\n"
                f"{res['runtime']}")
        return head + "\n" + tabulate(rows, headers=["", "value"])
    rows = [["median", f"{res['median_ms']:.2f} ms"], ["mean", f"{res['mean_ms']:.2f} ms"],
            ["min", f"{res['min_ms']:.2f} ms"], ["std", f"{res['std_ms']:.2f} ms"],
            ["images/s (median)", f"{res['fps']:.2f}"],
            ["first call (compile)", f"{res['first_call_s']:.2f} s"]]
    if "efficiency_pct" in res:
        rows += [["model FLOPs (full)", f"{res['model_gflops']:.2f} G"],
                 ["achieved", f"{res['achieved_gflops_per_s']:.1f} GFLOP/s"],
                 ["fp32 matmul peak", f"{res['peak_gflops']:.1f} GFLOP/s"],
                 ["efficiency", f"{res['efficiency_pct']:.1f} % of peak"]]
    head = (f"{res['config']}: batch {res['batch']}, {h}x{w}, eval, no_grad, "
            f"{res['warmup']} warm-up + {res['iters']} timed runs\n{res['runtime']}")
    return head + "\n" + tabulate(rows, headers=["", "value"])


def main(argv=None):
    from utils.config import add_cfg_options_argument
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="e.g. local_configs.NYUDepthv2.DFormer_Tiny")
    parser.add_argument("--shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size (default 480 640; 240 320 with --train)")
    parser.add_argument("--batch", type=int, default=None, help="default 1 (2 with --train)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--efficiency", action="store_true",
                        help="also measure the fp32 matmul peak and report the model's share of it")
    parser.add_argument("--train", action="store_true",
                        help="time training iterations (forward + backward + AdamW) instead")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of known errors")
    add_cfg_options_argument(parser)
    args = parser.parse_args(argv)
    shape = args.shape or ((240, 320) if args.train else (480, 640))
    batch = args.batch or (2 if args.train else 1)
    if args.iters < 1 or batch < 1 or args.warmup < 0:
        parser.error("--iters and --batch must be >= 1, --warmup >= 0")
    if args.train and args.efficiency:
        parser.error("--efficiency applies to the forward benchmark, not --train")
    if args.train:
        res = measure_train(args.config, shape, batch, args.warmup, args.iters,
                            cfg_options=args.cfg_options, device=args.device)
    else:
        res = measure(args.config, shape, batch, args.warmup, args.iters, args.efficiency,
                      cfg_options=args.cfg_options, device=args.device)
    print(json.dumps(res) if args.json else format_report(res))


if __name__ == "__main__":
    run_cli(main)
