"""Migration audit: every DFormer / DFormerv2 config built, strictly loaded, run and measured.

    python tools/migration_audit.py                       # all cases with a checkpoint, else all
    python tools/migration_audit.py --eval-samples 5
    python tools/migration_audit.py --cases dformer_l_nyu dformerv2_l_nyu --eval-samples 20
    python tools/migration_audit.py --list

Cases are ``<model>_<dataset>``: ``dformer_{t,s,b,l}`` and ``dformerv2_{s,b,l}`` on ``nyu``
and ``sun`` (the 14 published configs), plus the quick-start models ``dformer_t_synth``
and ``dformerv2_s_synth`` (SynthRGBD). For each case:

1. build the segmentor of the config;
2. strict load with a report (loaded / missing / unexpected / mismatched tensors) of
   its checkpoint: the official ``checkpoints/trained/*.pth`` (several usual names are
   tried) or the quick-start run's ``best.pkl``; without one, the weights are random and
   the strict-load report is that of a checkpoint saved from a random model of the
   same config (a round trip through the checkpoint format);
3. one forward on a random RGB-D input (``--shape``), output size and finiteness checked;
4. with ``--eval-samples N``: mIoU on the first N evaluation samples, when the
   dataset is present (SynthRGBD is generated on first use); otherwise a note;
5. parameters and FLOPs (``benchmark.py``'s full count at the evaluation size).

Without ``--cases`` the cases whose checkpoint exists are audited; when none exists,
all cases run with random weights (said in a note). Prints a table (``--json``: one
JSON line instead); exit status 1 when any case fails.
"""
import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported
from utils.errors import ConfigError, run_cli  # noqa: E402

_MODELS = {
    "dformer_t": ("DFormer_Tiny", ["DFormer_Tiny"]),
    "dformer_s": ("DFormer_Small", ["DFormer_Small"]),
    "dformer_b": ("DFormer_Base", ["DFormer_Base"]),
    "dformer_l": ("DFormer_Large", ["DFormer_Large"]),
    "dformerv2_s": ("DFormerv2_S", ["DFormerv2_S", "DFormerv2_Small"]),
    "dformerv2_b": ("DFormerv2_B", ["DFormerv2_B", "DFormerv2_Base"]),
    "dformerv2_l": ("DFormerv2_L", ["DFormerv2_L", "DFormerv2_Large"]),
}
_DATASETS = {"nyu": ("NYUDepthv2", ["NYUv2", "NYUDepthv2", "NYU"]),
             "sun": ("SUNRGBD", ["SUNRGBD", "SUN"])}


def build_cases():
    """{case: (config, [checkpoint candidates])}."""
    cases = {}
    for ds_key, (ds_dir, ds_names) in _DATASETS.items():
        for m_key, (config, m_names) in _MODELS.items():
            candidates = []
            for d in ds_names:
                for m in m_names:
                    candidates += [f"checkpoints/trained/{d}_{m}.pth", f"checkpoints/trained/{m}_{d}.pth"]
            cases[f"{m_key}_{ds_key}"] = (f"local_configs.{ds_dir}.{config}", candidates)
    for case, config in (("dformer_t_synth", "DFormer_Tiny"), ("dformerv2_s_synth", "DFormerv2_S")):
        cases[case] = (f"local_configs.SynthRGBD.{config}", None)  # quick-start run folder
    return cases


CASES = build_cases()


def find_checkpoint(case, cfg):
    """Path of the case's checkpoint, or None."""
    _, candidates = CASES[case]
    if candidates is None:  # quick start: <log_dir>/best.pkl, else the newest <log_dir>/*/best.pkl
        run_dir = os.path.join(REPO, "checkpoints", f"{cfg.dataset_name}_{cfg.backbone}")
        fixed = os.path.join(run_dir, "best.pkl")
        if os.path.isfile(fixed):
            return fixed
        runs = sorted(glob.glob(os.path.join(run_dir, "*", "best.pkl")), key=os.path.getmtime)
        return runs[-1] if runs else None
    for rel in candidates:
        path = os.path.join(REPO, rel)
        if os.path.isfile(path):
            return path
    return None


def _report_counts(report):
    return {"loaded": len(report.loaded), "missing": len(report.missing),
            "unexpected": len(report.unexpected), "mismatched": len(report.mismatched)}


def _dataset_ready(cfg):
    if cfg.get("synthetic"):
        from utils.dataloader.synthetic import ensure_synthetic_dataset
        ensure_synthetic_dataset(cfg, verbose=False)
        return True, ""
    if os.path.isfile(cfg.eval_source):
        return True, ""
    return False, f"no dataset at {cfg.dataset_path}"


def audit_case(case, args, tmp_dir):
    """One case's results as a dict (``ok`` False and ``error`` set on failure)."""
    import jittor as jt
    from benchmark import eval_shape
    from utils.checkpoint import atomic_save, build_model, model_state_numpy
    from utils.config import load_config
    from utils.flops import count_flops, count_params
    config, _ = CASES[case]
    row = {"case": case, "config": config, "ok": False, "notes": []}
    stage = "config"
    try:
        cfg = load_config(config, args.cfg_options)
        cfg.pretrained_model = None
        ckpt = args.checkpoint.get(case) or find_checkpoint(case, cfg)
        row["checkpoint"] = os.path.relpath(ckpt, REPO) if ckpt else None
        stage = "build"
        jt.set_global_seed(0)
        if ckpt is None:
            source = build_model(cfg, sync_bn=False)
            ckpt = os.path.join(tmp_dir, f"{case}_random.pkl")
            atomic_save({"model": model_state_numpy(source)}, ckpt)
            del source
            row["notes"].append("random weights (no checkpoint): report of a saved random model")
        stage = "strict load"
        model = build_model(cfg, checkpoint=ckpt, strict=True, sync_bn=False)
        row["load"] = _report_counts(model.load_report)
        model.eval()
        stage = "forward"
        h, w = args.shape
        rng = np.random.default_rng(0)
        rgb = jt.array(rng.standard_normal((1, 3, h, w)).astype(np.float32))
        depth = jt.array(rng.standard_normal((1, 3, h, w)).astype(np.float32))
        start = time.time()
        with jt.no_grad():
            out = model(rgb, depth).numpy()
        row["forward_s"] = round(time.time() - start, 2)
        if out.shape != (1, cfg.num_classes, h, w) or not np.isfinite(out).all():
            raise RuntimeError(f"forward output {out.shape} (expected {(1, cfg.num_classes, h, w)}) "
                               f"or non-finite values")
        stage = "params/FLOPs"
        row["params_m"] = round(count_params(model)["total"] / 1e6, 2)
        shape = eval_shape(cfg)
        row["gflops"] = round(count_flops(model, shape).flops / 1e9, 2)
        row["flops_shape"] = list(shape)
        if args.eval_samples:
            stage = "evaluation"
            ready, why = _dataset_ready(cfg)
            if ready:
                from utils.dataloader import build_val_loader
                from utils.engine.evaluator import evaluate
                loader = build_val_loader(cfg, batch_size=1, num_workers=0)
                metrics = evaluate(model, loader, cfg, max_iters=args.eval_samples, progress=False, seed=0)
                row["miou"] = round(float(metrics["miou"]), 2)
                row["eval_samples"] = min(args.eval_samples, int(cfg.num_eval_imgs))
            else:
                row["notes"].append(f"mIoU skipped: {why}")
        row["ok"] = True
    except Exception as exc:  # noqa: BLE001  (the audit reports every failure)
        row["error"] = f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        jt.gc()
    return row


def format_table(rows):
    from tabulate import tabulate
    table = []
    for r in rows:
        load = r.get("load")
        load_text = (f"{load['loaded']}/{load['missing']}/{load['unexpected']}/{load['mismatched']}"
                     if load else "-")
        table.append([r["case"], r.get("checkpoint") or "random", load_text,
                      r.get("forward_s", "-"), r.get("miou", "-"), r.get("params_m", "-"),
                      r.get("gflops", "-"), "ok" if r["ok"] else "FAIL"])
    text = tabulate(table, headers=["case", "weights", "loaded/missing/unexp./mismatch",
                                    "forward s", "mIoU %", "params M", "GFLOPs", "status"])
    grouped = {}
    for r in rows:
        for n in r["notes"]:
            grouped.setdefault(n, []).append(r["case"])
    notes = [f"{', '.join(cases) if len(cases) < len(rows) or len(rows) == 1 else 'all cases'}: {n}"
             for n, cases in grouped.items()]
    notes += [f"{r['case']}: FAILED at {r['error']}" for r in rows if not r["ok"]]
    return text + ("\n" + "\n".join(notes) if notes else "")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=None, help="case names (--list shows them)")
    p.add_argument("--eval-samples", type=int, default=0, metavar="N",
                   help="mIoU on the first N evaluation samples (where the dataset exists)")
    p.add_argument("--shape", type=int, nargs=2, default=(64, 96), metavar=("H", "W"),
                   help="input size of the forward check (default 64 96)")
    p.add_argument("--checkpoint", nargs="+", default=[], metavar="CASE=PATH",
                   help="checkpoint of a case, overriding the usual names")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                   help="override config fields of every case")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.checkpoint:
        case, sep, path = item.partition("=")
        if not sep or case not in CASES:
            raise ConfigError(f"--checkpoint {item!r}: expected CASE=PATH with a known case")
        overrides[case] = os.path.abspath(path)
    args.checkpoint = overrides
    if args.eval_samples < 0:
        p.error("--eval-samples must be >= 0")
    return args


def select_cases(args):
    """(cases, note): the requested ones, else those with a checkpoint, else all."""
    if args.cases:
        unknown = [c for c in args.cases if c not in CASES]
        if unknown:
            raise ConfigError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
        return list(args.cases), None
    from utils.config import load_config
    found = [c for c in CASES
             if c in args.checkpoint or find_checkpoint(c, load_config(CASES[c][0]))]
    if found:
        return found, None
    return list(CASES), "no checkpoint found for any case: auditing all cases with random weights"


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for case, (config, _) in CASES.items():
            print(f"{case:20s} {config}")
        return 0
    runtime.init_device()
    cases, note = select_cases(args)
    if note and not args.json:
        print(f"note: {note}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="migration_audit_") as tmp_dir:
        for case in cases:
            row = audit_case(case, args, tmp_dir)
            rows.append(row)
            if not args.json:
                status = "ok" if row["ok"] else f"FAIL ({row['error']})"
                print(f"[{len(rows)}/{len(cases)}] {case}: {status}", flush=True)
    if args.json:
        print(json.dumps({"note": note, "cases": rows}))
    else:
        print(format_table(rows))
        failed = sum(not r["ok"] for r in rows)
        print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if any(not r["ok"] for r in rows) else 0


if __name__ == "__main__":
    run_cli(main)
