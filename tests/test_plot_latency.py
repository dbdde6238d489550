"""tools/plot_latency.py turns a harness results file into the comparison figure."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_results(path):
    recs = [{"kind": "meta", "time": "2026-11-29T08:00:00", "threads": "2", "cpu_model": "Test CPU"}]
    for rnd, (t, o) in enumerate([(100.0, 60.0), (120.0, 50.0), (110.0, 55.0)], 1):
        recs.append({"side": "torch", "model": "Tiny", "mode": "infer", "shape": [480, 640],
                     "batch": 1, "round": rnd, "median_ms": t})
        recs.append({"side": "ours", "model": "Tiny", "mode": "infer", "shape": [480, 640],
                     "batch": 1, "round": rnd, "median_ms": o})
    recs.append({"side": "torch", "model": "v2_S", "mode": "train", "shape": [240, 320], "batch": 2,
                 "round": 1, "median_ms": 400.0})
    recs.append({"side": "ours", "model": "v2_S", "mode": "train", "shape": [240, 320], "batch": 2,
                 "round": 1, "median_ms": 300.0})
    recs.append({"side": "ours", "model": "v2_S", "mode": "train", "shape": [240, 320], "batch": 2,
                 "round": 2, "error": "timeout"})
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")


def test_figure_and_ratios_from_a_results_file(tmp_path):
    pytest.importorskip("matplotlib")
    results, out = tmp_path / "sbs.jsonl", tmp_path / "fig.png"
    _write_results(results)
    proc = subprocess.run([sys.executable, "tools/plot_latency.py", str(results), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[3]: line for line in proc.stdout.splitlines() if "ours/torch" in line}
    # medians over rounds: torch 110, ours 55 -> 0.50; the failed run is left out: 300/400
    assert lines["Tiny"].rstrip().endswith("ours/torch 0.50")
    assert lines["v2_S"].rstrip().endswith("ours/torch 0.75")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_a_file_without_runs_is_a_clear_error(tmp_path):
    results = tmp_path / "empty.jsonl"
    results.write_text(json.dumps({"kind": "meta"}) + "\n")
    proc = subprocess.run([sys.executable, "tools/plot_latency.py", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no successful runs" in proc.stderr
