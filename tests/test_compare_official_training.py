"""tools/compare_official_training.py without torch or the official code: its refusals (a wrong
--ref, official files at another commit, no torch) end in one line and exit status 1 with
nothing written to the figure's folder, and its verdict, table and figure from saved curves.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tools import compare_official_training as tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "compare_official_training.py")


@pytest.fixture
def fake_ref(tmp_path, monkeypatch):
    """A folder shaped like the official code, whose files are what the check expects:
    the tool's table of hashes is replaced by these files' (none is official code)."""
    ref = tmp_path / "ref"
    table = {}
    for rel in tool.OFFICIAL_FILES:
        path = ref / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# stand-in for {rel}\n")
        table[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(tool, "OFFICIAL_FILES", table)
    return ref


@pytest.fixture
def no_torch_python(tmp_path):
    """An interpreter that cannot import torch (as a Python without it reports)."""
    path = tmp_path / "python-without-torch"
    path.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\n"
                    "exit 1\n")
    path.chmod(0o755)
    return str(path)


def run_main(capsys, *argv):
    status = tool.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, [line for line in err.splitlines() if line.strip()]


def assert_nothing_written(figs):
    assert not figs.exists() or not any(figs.iterdir())


def test_wrong_ref_is_one_line_and_exit_1(tmp_path):
    figs = tmp_path / "figs"
    for ref, says in ((tmp_path / "nowhere", "no such folder"),
                      (tmp_path, "not the official DFormer code (no models/, utils/, "
                                 "local_configs/)")):
        proc = subprocess.run([sys.executable, SCRIPT, "--ref", str(ref), "--fig",
                               str(figs / "cmp.png")], capture_output=True, text=True,
                              timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, proc.stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: --ref {ref}:"), lines
        assert says in lines[0]
    assert_nothing_written(figs)


def test_other_commit_is_refused_naming_the_file(fake_ref, no_torch_python, tmp_path, capsys):
    changed = "utils/lr_policy.py"
    (fake_ref / changed).write_text("# another version\n")
    os.remove(fake_ref / "models" / "builder.py")
    figs = tmp_path / "figs"
    status, _, err = run_main(capsys, "--ref", str(fake_ref), "--torch-python", no_torch_python,
                              "--fig", str(figs / "cmp.png"))
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: --ref {fake_ref} is not the official code at commit "
                             f"{tool.OFFICIAL_COMMIT[:8]}")
    assert f"1 file(s) differ ({changed})" in err[0]
    assert "1 missing (models/builder.py)" in err[0]
    assert "--allow-other-commit" in err[0]
    assert_nothing_written(figs)


def test_allow_other_commit_warns_and_goes_on(fake_ref, no_torch_python, tmp_path, capsys):
    (fake_ref / "utils" / "val_mm.py").write_text("# another version\n")
    figs = tmp_path / "figs"
    status, _, err = run_main(capsys, "--ref", str(fake_ref), "--torch-python", no_torch_python,
                              "--allow-other-commit", "--fig", str(figs / "cmp.png"))
    assert status == 1
    assert err[0].startswith("warning: ") and "utils/val_mm.py" in err[0]
    # the next check is reached: the interpreter without torch
    assert len(err) == 2 and err[1].startswith(f"error: --torch-python {no_torch_python}: "
                                               "ModuleNotFoundError: No module named 'torch'")
    assert_nothing_written(figs)


def test_missing_torch_is_one_line(fake_ref, no_torch_python, tmp_path, capsys):
    figs = tmp_path / "figs"
    for python, says in ((no_torch_python, "No module named 'torch'"),
                         (str(tmp_path / "no-python"), "no such interpreter")):
        status, _, err = run_main(capsys, "--ref", str(fake_ref), "--torch-python", python,
                                  "--fig", str(figs / "cmp.png"))
        assert status == 1 and len(err) == 1, err
        assert err[0].startswith(f"error: --torch-python {python}: ") and says in err[0]
    assert_nothing_written(figs)


def test_too_few_test_images_for_the_official_evaluation(fake_ref, tmp_path, capsys):
    """Its val_mm.evaluate divides by half the number of batches: one batch is refused."""
    python = tmp_path / "python-with-everything"
    python.write_text("#!/bin/sh\nexit 0\n")   # answers the module probe as a full venv would
    python.chmod(0o755)
    figs = tmp_path / "figs"
    status, _, err = run_main(capsys, "--ref", str(fake_ref), "--torch-python", str(python),
                              "--val-images", "8", "--fig", str(figs / "cmp.png"))
    assert status == 1 and len(err) == 1, err
    assert err[0] == ("error: --val-images 8: the official evaluation needs at least two "
                      "batches (16 images at batch size 8)")
    assert_nothing_written(figs)


def test_a_worker_ends_when_its_comparison_is_killed(tmp_path):
    """A worker whose parent is killed (SIGKILL, nothing forwarded) gets SIGTERM and ends; it
    waits here on a FIFO spec, before any training, standing in for a run in progress."""
    spec = tmp_path / "spec.json"
    os.mkfifo(spec)
    parent = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" "{SCRIPT}" --worker ours --spec "{spec}" '
                     f'--out "{tmp_path / "out.json"}" & echo $!; wait'],
        stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(2)                                   # the worker is past its start-up
    os.kill(worker, 0)                              # alive, blocked on the FIFO
    parent.kill()
    parent.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its parent by 30 s")


@pytest.mark.skipif(not os.environ.get("DFORMER_TORCH_REF"),
                    reason="the official code is not here (set DFORMER_TORCH_REF)")
def test_hashes_match_the_official_checkout():
    """Where the official code at 814799bb is at hand, the table of hashes accepts it."""
    assert tool.check_ref(os.environ["DFORMER_TORCH_REF"]) is None


# ----------------------------------------------------------------------------- the verdict

def comparison(official_miou, ours_miou, official_loss, ours_loss, niters=4):
    """Saved-comparison data: per seed a final mIoU and a per-epoch loss level."""
    def runs(mious, levels):
        return [{"seed": i, "miou": [m - 5.0, m], "loss": list(np.repeat(lv, niters)),
                 "iter_s": [1.0] * (niters * len(lv)), "train_s": 2.0 * niters, "eval_s": 1.0}
                for i, (m, lv) in enumerate(zip(mious, levels))]
    settings = {"config": "DFormer_Tiny", "groups": "all", "niters_per_epoch": niters,
                "full_recipe": True, "shortened": ""}
    return {"settings": settings,
            "runs": {"official": runs(official_miou, official_loss),
                     "ours": runs(ours_miou, ours_loss)}}


LOSS_OFF = [[1.0, 0.60], [1.1, 0.70], [0.9, 0.65]]     # per seed: epoch 1, epoch 2


def test_verdict_follows_the_pass_rule():
    # official 70, 72, 74: mean 72, std 2 -> tolerance max(1, 4) = 4
    ok = tool.verdict(comparison([70, 72, 74], [75.4, 75.9, 76.4], LOSS_OFF,
                                 [[1.2, 0.66], [1.3, 0.64], [0.8, 0.65]]))
    assert ok["official_mean"] == pytest.approx(72) and ok["official_std"] == pytest.approx(2)
    assert ok["miou_tolerance"] == pytest.approx(4) and ok["miou_difference"] == pytest.approx(3.9)
    assert ok["miou_pass"] and ok["loss_pass"] and ok["pass"]
    assert ok["loss_epochs_checked"] == 1          # epoch 1 is not judged
    # 4.5 points apart: outside 2 x the official std
    far = tool.verdict(comparison([70, 72, 74], [76, 76.5, 77], LOSS_OFF, LOSS_OFF))
    assert not far["miou_pass"] and not far["pass"]
    # a tight official spread: the 1-point floor applies
    tight = tool.verdict(comparison([72, 72.1, 71.9], [72.8, 72.9, 73.0], LOSS_OFF, LOSS_OFF))
    assert tight["miou_tolerance"] == 1.0 and tight["miou_pass"]
    assert not tool.verdict(comparison([72, 72.1, 71.9], [73.0, 73.1, 73.2], LOSS_OFF,
                                       LOSS_OFF))["miou_pass"]
    # our mean loss after epoch 1 (0.72) above the official band (0.60..0.70), but well
    # within its seed spread (Welch p 0.13): the band test fails, the judged t-test passes
    high = tool.verdict(comparison([70, 72, 74], [72, 72, 72], LOSS_OFF,
                                   [[1.0, 0.71], [1.0, 0.72], [1.0, 0.73]]))
    assert high["loss_band_pass"] is False and high["loss_epochs_inside"] == 0
    assert high["loss_p"][0] == pytest.approx(0.1314, abs=1e-3)
    assert high["loss_pass"] and high["pass"]
    # 0.81 against 0.60..0.70: a real difference, p 0.027 < 0.05 / 1
    far_loss = tool.verdict(comparison([70, 72, 74], [72, 72, 72], LOSS_OFF,
                                       [[1.0, 0.80], [1.0, 0.81], [1.0, 0.82]]))
    assert far_loss["loss_p"][0] < far_loss["loss_alpha"] == 0.05
    assert far_loss["miou_pass"] and far_loss["loss_pass"] is False and not far_loss["pass"]
    # the band test's pass rate for identical implementations, 3 seeds a side (simulated)
    assert 0.45 < high["band_chance"] < 0.55
    # epoch 1 alone is never judged, whatever it holds
    first = tool.verdict(comparison([70, 72, 74], [72, 72, 72], LOSS_OFF,
                                    [[3.0, 0.64], [3.0, 0.66], [3.0, 0.65]]))
    assert first["loss_pass"] and first["pass"]
    # one seed a side: no spread, the loss is not judged
    single = tool.verdict(comparison([72], [72.5], LOSS_OFF[:1], LOSS_OFF[:1]))
    assert single["loss_pass"] is None and single["pass"]


def test_figure_and_table_from_saved_curves(tmp_path, capsys):
    data = comparison([70, 72, 74], [71, 72, 73], LOSS_OFF, LOSS_OFF)
    data["settings"].update(full_recipe=False, shortened="epochs 2")
    saved = tmp_path / "cmp.json"
    saved.write_text(json.dumps(data))
    figs = tmp_path / "figs"
    status, out, _ = run_main(capsys, "--from-json", str(saved), "--fig", str(figs / "cmp.png"))
    assert status == 0
    assert sorted(os.listdir(figs)) == ["cmp.png"]   # no temporary file left
    assert (figs / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| official | 70.00 | 72.00 | 74.00 | 72.00 ± 2.00 |" in out
    assert "| ours | 71.00 | 72.00 | 73.00 | 72.00 ± 1.00 |" in out
    assert "Overall: PASS." in out
    assert "SHORTENED RUN (epochs 2): a smoke test of the tool, not the comparison." in out
    # --epochs alone: a shorter schedule on both sides, still a comparison
    data["settings"].update(smoke=False, recipe_nepochs=10)
    saved.write_text(json.dumps(data))
    status, out, _ = run_main(capsys, "--from-json", str(saved), "--fig", str(figs / "cmp.png"))
    assert status == 0 and "smoke" not in out
    assert ("Shorter schedule on both sides (epochs 2 of 10; warm-up and poly decay over these "
            "epochs).") in out
