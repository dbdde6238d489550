"""Draw the same-run latency comparison (official PyTorch vs ours) from a harness results file.

    python tools/plot_latency.py .bench/sbs_<time>.jsonl [--out figs/latency_comparison.png]

The input is the JSON-lines file written by ``../shared/perf/side_by_side.sh``: one record per
run (``side`` torch/ours, ``model``, ``mode``, ``shape``, ``batch``, ``median_ms``). Each bar is
the median over rounds of each run's median, as in the harness's own table; the label above
each pair is ours/PyTorch. One panel per measured set (inference 480x640 b1, training ...).
Only ratios from one file are drawn together, so every figure is a same-run comparison.
"""
import argparse
import json
import os
import statistics
import sys

SIDES = (("torch", "PyTorch (official)", "#8c8c8c"), ("ours", "DFormer-Jittor", "#d95f02"))
MODEL_ORDER = ("Tiny", "Small", "Base", "Large", "v2_S", "v2_B", "v2_L")


def read_runs(path):
    """Successful run records of a results file, and its meta records."""
    runs, meta = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise SystemExit(f"error: {path}:{number} is not a JSON line; pass a results "
                                 "file written by side_by_side.sh") from None
            if rec.get("kind") == "meta":
                meta.append(rec)
            elif rec.get("side") in ("torch", "ours") and "error" not in rec and "median_ms" in rec:
                runs.append(rec)
    return runs, meta


def panels(runs):
    """{(mode, h, w, batch): {model: {side: median ms over rounds}}}, in a stable order."""
    grouped = {}
    for rec in runs:
        shape = tuple(rec.get("shape") or (0, 0))
        key = (rec["mode"], shape[0], shape[1], rec.get("batch"))
        grouped.setdefault(key, {}).setdefault(rec["model"], {}).setdefault(rec["side"], []).append(
            rec["median_ms"])
    return {key: {model: {side: statistics.median(v) for side, v in sides.items()}
                  for model, sides in models.items()}
            for key, models in sorted(grouped.items(), key=lambda kv: (kv[0][0] != "infer", kv[0]))}


def model_rank(name):
    return MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER)


def draw(data, out, title=None):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: matplotlib is needed for the figure: pip install matplotlib") from None
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data) + 1, 4.2), squeeze=False)
    for ax, ((mode, h, w, batch), models) in zip(axes[0], data.items()):
        names = sorted(models, key=model_rank)
        width = 0.38
        for i, (side, label, colour) in enumerate(SIDES):
            values = [models[n].get(side, 0.0) for n in names]
            xs = [j + (i - 0.5) * width for j in range(len(names))]
            ax.bar(xs, values, width, label=label, color=colour)
        for j, n in enumerate(names):
            pair = models[n]
            if "torch" in pair and "ours" in pair:
                ax.annotate(f"{pair['ours'] / pair['torch']:.2f}x",
                            (j, max(pair.values())), ha="center", va="bottom",
                            xytext=(0, 3), textcoords="offset points", fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{'inference' if mode == 'infer' else 'training step'} {h}x{w}, batch {batch}",
                     fontsize=10)
        ax.set_ylabel("median ms per step (lower is better)", fontsize=8)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="JSON-lines results file of ../shared/perf/side_by_side.sh")
    p.add_argument("--out", default="figs/latency_comparison.png")
    p.add_argument("--title", default=None, help="figure title (default: date and CPU of the run)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.results):
        raise SystemExit(f"error: results file not found: {args.results}")
    runs, meta = read_runs(args.results)
    data = panels(runs)
    if not data:
        raise SystemExit(f"error: {args.results} holds no successful runs")
    title = args.title
    if title is None and meta:
        first = meta[0]
        title = (f"same-run comparison, {first.get('time', '')[:10]}, {first.get('threads', '?')} "
                 f"threads of {first.get('cpu_model', 'CPU')}")
    draw(data, args.out, title)
    for (mode, h, w, batch), models in data.items():
        for n in sorted(models, key=model_rank):
            pair = models[n]
            ratio = f"{pair['ours'] / pair['torch']:.2f}" if len(pair) == 2 else "-"
            print(f"{mode:5s} {h}x{w} b{batch} {n:6s} torch {pair.get('torch', float('nan')):9.1f} ms  "
                  f"ours {pair.get('ours', float('nan')):9.1f} ms  ours/torch {ratio}")
    print(f"figure written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
