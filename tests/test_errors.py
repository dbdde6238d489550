"""Known problems end every entry point with one ``error:`` line, a non-zero status and no
traceback; ``--debug`` / ``DFORMER_DEBUG=1`` show the traceback; under MPI one rank prints.

Each case runs the real command in a subprocess, as a user would.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from test_eval import H, TINY_OPTIONS, W, make_tiny_root

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "local_configs.SynthRGBD.DFormer_Tiny"


def run(cmd, cwd=REPO, env=None, timeout=600):
    full_env = {k: v for k, v in os.environ.items() if k != "DFORMER_DEBUG"}
    full_env.update(PYTHONPATH=REPO, **(env or {}))
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(proc, *fragments):
    """Exit status 2, exactly one line starting with ``error:`` containing ``fragments``,
    and no traceback; returns that line."""
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, out[-3000:]
    assert len(lines) == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == lines[0], out[-3000:]  # nothing after it
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def py(script, *args):
    return [sys.executable, os.path.join(REPO, script), *args]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny dataset plus broken and ill-fitting checkpoints and images."""
    base = tmp_path_factory.mktemp("errors")
    root = make_tiny_root(str(base))
    import cv2
    from utils.checkpoint import atomic_save
    corrupt = base / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x04 this is not a pickle")
    foreign = str(base / "foreign.pkl")
    atomic_save({"model": {"backbone.nonsense.weight": np.zeros((3, 3), np.float32)}}, foreign)
    bad_image = base / "bad.png"
    bad_image.write_bytes(b"not an image")
    depth = str(base / "depth.png")
    cv2.imwrite(depth, np.zeros((H, W), np.uint8))
    options = ["--cfg-options", *TINY_OPTIONS]
    return dict(base=base, root=root, corrupt=str(corrupt), foreign=foreign,
                bad_image=str(bad_image), depth=depth, options=options)


# ----------------------------------------------------------------------------- configs and options

@pytest.mark.parametrize("script", ["utils/train.py", "utils/eval.py", "utils/infer.py",
                                    "benchmark.py", "utils/latency.py"])
def test_unknown_config(script):
    extra = {"utils/eval.py": ["--checkpoint", "x.pkl"],
             "utils/infer.py": ["--checkpoint", "x.pkl", "--split", "test"]}.get(script, [])
    proc = run(py(script, "--config", "local_configs.NoSuch.Model", *extra))
    assert_one_error_line(proc, "local_configs.NoSuch.Model", "does not exist",
                          "Available configs")


def test_unknown_option_and_bad_values(files):
    assert_one_error_line(run(py("utils/train.py", "--config", TINY, "--bogus")),
                          "unrecognized arguments: --bogus", "--help")
    assert_one_error_line(run(py("utils/train.py", "--config", TINY, "--epochs", "0")),
                          "nepochs must be >= 1")
    if not os.environ.get("DFORMER_TEST_DEVICE", "cpu").startswith("cuda"):
        assert_one_error_line(run(py("utils/train.py", "--config", TINY, "--amp", "--work-dir",
                                     str(files["base"] / "amp"))),
                              "--amp", "CUDA only")
    proc = run(py("utils/eval.py", "--config", TINY, "--checkpoint", files["foreign"],
                  "--cfg-options", "no_such_key=1"))
    assert_one_error_line(proc, "no_such_key")


# ----------------------------------------------------------------------------- checkpoints

def test_training_checkpoint_problems(files, tmp_path):
    missing = str(tmp_path / "gone" / "latest.pkl")
    assert_one_error_line(run(py("utils/train.py", "--config", TINY, "--resume", missing)),
                          "no checkpoint to resume at", missing)
    assert_one_error_line(run(py("utils/train.py", "--config", TINY, "--resume",
                                 files["corrupt"], "--work-dir", str(tmp_path / "w"))),
                          "corrupt.pkl")
    assert_one_error_line(run(py("utils/train.py", "--config", TINY, "--resume",
                                 files["foreign"], "--work-dir", str(tmp_path / "w"))),
                          "foreign.pkl", "not a training checkpoint")


@pytest.mark.parametrize("which, fragments", [
    ("missing", ("nope.pkl", "not found")),
    ("corrupt", ("corrupt.pkl",)),
    ("foreign", ("does not fit the model",)),
])
def test_eval_checkpoint_problems(files, which, fragments):
    path = os.path.join(str(files["base"]), "nope.pkl") if which == "missing" else files[which]
    proc = run(py("utils/eval.py", "--config", TINY, "--checkpoint", path, *files["options"]),
               cwd=files["root"])
    assert_one_error_line(proc, *fragments)


# ----------------------------------------------------------------------------- data and images

def test_eval_data_error_names_the_file(files, tmp_path):
    root = str(tmp_path)
    make_tiny_root(root)
    label = os.path.join(root, "datasets", "SynthRGBD", "Label", "test_0001.png")
    with open(label, "wb") as f:
        f.write(b"broken")
    from test_eval import tiny_cfg
    from utils.checkpoint import atomic_save, build_model, model_state_numpy
    ckpt = os.path.join(root, "tiny.pkl")
    atomic_save({"model": model_state_numpy(build_model(tiny_cfg(root)))}, ckpt)
    proc = run(py("utils/eval.py", "--config", TINY, "--checkpoint", ckpt, "--batch-size", "1",
                  "--no-progress", *files["options"]), cwd=root)
    assert_one_error_line(proc, "unreadable or corrupt image", "Label/test_0001.png")
    os.remove(label)
    proc = run(py("utils/eval.py", "--config", TINY, "--checkpoint", ckpt, *files["options"]),
               cwd=root)
    assert_one_error_line(proc, "missing", "Label/test_0001.png")


def test_infer_bad_inputs(files):
    base = [*py("utils/infer.py", "--config", TINY, "--checkpoint", files["foreign"])]
    assert_one_error_line(run(base + ["--rgb", files["bad_image"], "--depth", files["depth"]]),
                          "bad.png")
    missing = os.path.join(str(files["base"]), "no_depth.png")
    assert_one_error_line(run(base + ["--rgb", files["depth"], "--depth", missing]),
                          "depth file not found", "no_depth.png")
    assert_one_error_line(run(base + ["--rgb-dir", "/no/such/dir", "--depth-dir", "/x"]),
                          "RGB folder not found")


# ----------------------------------------------------------------------------- shell scripts

def test_shell_scripts(tmp_path):
    env = {"PYTHON": sys.executable}
    assert_one_error_line(run(["bash", "eval.sh"], env=dict(env, CONFIG="local_configs.Nope")),
                          "local_configs.Nope")
    assert_one_error_line(run(["bash", "infer.sh"], env=dict(env, CHECKPOINT="/no/ckpt.pkl")),
                          "checkpoint not found: /no/ckpt.pkl")
    assert_one_error_line(run(["bash", "train.sh", "--bogus"], env=env),
                          "unrecognized arguments: --bogus")


# ----------------------------------------------------------------------------- debug and MPI

def test_debug_shows_the_traceback_and_one_rank_prints():
    cmd = py("benchmark.py", "--config", "local_configs.NoSuch.Model")
    for proc in (run(cmd + ["--debug"]), run(cmd, env={"DFORMER_DEBUG": "1"})):
        assert proc.returncode != 0 and "Traceback" in proc.stderr
        assert "ConfigError" in proc.stderr
    other_rank = run(cmd, env={"OMPI_COMM_WORLD_RANK": "1"})
    assert other_rank.returncode == 2 and "error:" not in other_rank.stderr
