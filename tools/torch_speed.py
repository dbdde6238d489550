"""Time the official PyTorch DFormer / DFormerv2 on the CPU or a GPU (for tools/gpu_check.py).

    python tools/torch_speed.py --harness ../shared/perf --ref .ref --model DFormer_Tiny \\
        --mode infer|train --device cpu|cuda [--shape H W] [--batch B] [--warmup N] [--iters N]

The official code (``--ref``, never part of this repository) is built through the
benchmark harness of ``../shared/perf`` (its ``ref_harness.py`` and third-party stand-ins),
read by path at run time. Measured as ``utils/latency.py`` measures Jittor: infer is eval
mode under no_grad, train is forward with a random label, backward and an AdamW step
(plain BatchNorm: one process); the first call is reported apart, each timed call ends
with ``torch.cuda.synchronize()`` on a GPU; fp32 with TF32 off. Prints one JSON line.
"""
import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harness", required=True, help="folder holding ref_harness.py")
    ap.add_argument("--ref", required=True, help="the official DFormer code")
    ap.add_argument("--model", required=True, help="config name, e.g. DFormer_Tiny")
    ap.add_argument("--mode", choices=("infer", "train"), default="infer")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--shape", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    os.environ["DFORMER_TORCH_REF"] = os.path.abspath(args.ref)
    sys.path.insert(0, os.path.abspath(args.harness))
    import numpy as np
    import torch
    import ref_harness

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    cfg = ref_harness.load_config(args.model)
    model, _ = ref_harness.build_model(cfg, syncbn=False)
    from models.decoders import ham_head   # the official module, on the harness's path

    def bases_on_device(self, B, S, D, R, cuda=False):
        return torch.nn.functional.normalize(torch.rand((B * S, D, R), device=device), dim=1)
    ham_head.NMF2D._build_bases = bases_on_device
    model.to(device)
    h, w = args.shape
    rng = np.random.RandomState(0)
    rgb = torch.from_numpy(rng.rand(args.batch, 3, h, w).astype(np.float32)).to(device)
    depth = torch.from_numpy(rng.rand(args.batch, 3, h, w).astype(np.float32)).to(device)
    label = torch.from_numpy(rng.randint(0, cfg.num_classes, (args.batch, h, w))).long().to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.mode == "infer":
        model.eval()

        def call():
            with torch.no_grad():
                model(rgb, depth)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def call():
            opt.zero_grad(set_to_none=True)
            loss = model(rgb, depth, label)
            loss.backward()
            opt.step()
            loss.item()

    def timed():
        sync()
        start = time.perf_counter()
        call()
        sync()
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first = timed()
    for _ in range(args.warmup):
        timed()
    times = [timed() * 1e3 for _ in range(args.iters)]
    res = {"framework": "torch", "torch_version": torch.__version__, "model": args.model,
           "mode": args.mode, "device": args.device, "shape": [h, w], "batch": args.batch,
           "first_ms": first * 1e3, "median_ms": statistics.median(times),
           "min_ms": min(times)}
    if device.type == "cuda":
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        res["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
