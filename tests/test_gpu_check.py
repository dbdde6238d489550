"""tools/gpu_check.py on the CPU: every check runs for real (small sizes), and a failing
check makes the command fail. On a GPU the same script runs with --device cuda."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_check(tmp_path, *args, timeout=900):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gpu_check.py"),
                           "--out", str(out), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    report = json.loads((out / "gpu_check.json").read_text())
    return proc, report


def test_cpu_check_passes_with_real_numbers(tmp_path):
    proc, report = _gpu_check(tmp_path, "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check on cpu: PASS" in proc.stdout
    checks = report["checks"]
    assert report["ok"] and report["device"] == "cpu"

    env = checks["environment"]
    assert env["device"] == "cpu" and env["jittor"].startswith("1.3.") and env["smoke_sum"] == 12.0

    parity = checks["parity"]
    assert "tests/test_parity.py" in parity["files"]
    assert len(parity["runs"]) == 2      # fused kernels, and the plain path CUDA runs
    for run in parity["runs"].values():
        assert run["counts"].get("passed", 0) >= 2 and not run["counts"].get("failed")

    train = checks["train"]
    losses = train["losses"]
    assert train["iterations"] == len(losses) == 3
    assert all(0.0 < v < 20.0 for v in losses), losses      # finite, cross-entropy sized
    assert train["loss_last"] < train["loss_first"]
    assert train["peak_rss_mb"] > 100 and train["median_s_per_iter"] > 0
    assert os.path.isfile(train["checkpoint"])
    assert report["skipped"]["train_amp"]                    # --amp is CUDA-only

    ev = checks["eval_infer"]
    assert 0.0 <= ev["miou"] <= 100.0 and 0.0 < ev["pixel_acc"] <= 100.0
    assert ev["infer_images"] == 2

    rows = checks["speed"]["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [("DFormer_Tiny", "infer"),
                                                       ("DFormer_Tiny", "train")]
    assert all(r["jittor_ms"] > 0 for r in rows)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert checks["speed"]["torch"].startswith("skipped")


def test_a_failing_check_fails_the_command(tmp_path):
    proc, report = _gpu_check(tmp_path, "--device", "cpu", "--quick", "--checks", "train",
                              "--train-option=--no-such-option", timeout=300)
    assert proc.returncode == 1 and "FAIL" in proc.stdout
    assert not report["ok"] and not report["checks"]["train"]["ok"]
    assert "--no-such-option" in report["checks"]["train"]["error"]


def test_cuda_without_gpu_fails_with_the_reason(tmp_path):
    """On a machine without a usable GPU, --device cuda fails at the environment check and
    says why (the CUDA set-up status), instead of silently running on the CPU."""
    probe = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL('libcuda.so.1')"],
                           capture_output=True)
    if probe.returncode == 0:
        import pytest
        pytest.skip("a CUDA driver is present")
    proc, report = _gpu_check(tmp_path, "--device", "cuda", "--checks", "environment",
                              timeout=300)
    assert proc.returncode == 1
    env = report["checks"]["environment"]
    assert not env["ok"] and "CUDA was requested" in env["error"]


def test_a_failing_parity_run_is_reported_in_one_line(tmp_path):
    """The parity step's reason line is pytest's first FAILED line: the test and its
    assertion (a real pytest run of a failing test; no Jittor needed)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    from gpu_check import _first_failure
    (tmp_path / "test_bad.py").write_text(
        "def test_grads():\n    assert 1.0 <= 0.5, 'grads_step0: global distance 2.6 > 0.15'\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_bad.py")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env=dict(os.environ, COLUMNS="400"))
    assert proc.returncode == 1
    reason = _first_failure(proc.stdout, proc.returncode)
    assert reason.startswith("FAILED ") and "test_grads" in reason
    assert "grads_step0: global distance 2.6 > 0.15" in reason and "\n" not in reason
    assert _first_failure("collected 0 items\nsome error\n", 124) == \
        "killed at the time limit (--timeout)"
