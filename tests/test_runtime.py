"""utils/runtime.py: what happens around ``import jittor``."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in for Jittor's import when it has just rebuilt its utility library: it exits
# with status 0 in the middle of the import (as jittor/compiler.py does) as many times as
# EXITS says, counted in a file, and imports normally afterwards.
_FAKE_JITTOR = """
import os, sys
counter = os.environ["FAKE_COUNTER"]
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
if n < int(os.environ["EXITS"]):
    sys.exit(0)
"""
_SCRIPT = ("from utils import runtime; runtime.setup()\n"
           "import jittor\n"
           "print('after the import')\n")


def _run(tmp_path, exits):
    fake = tmp_path / "fake" / "jittor"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(_FAKE_JITTOR)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{REPO}",
           "FAKE_COUNTER": str(tmp_path / "imports"), "EXITS": str(exits),
           "DFORMER_FAST_COMPILE": "0"}
    env.pop("DFORMER_JITTOR_RESTARTED", None)
    return subprocess.run([sys.executable, "-c", _SCRIPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_restart_asked_for_by_jittor_runs_the_command_again(tmp_path):
    """Jittor's "please rerun your command" exit (status 0, silent under log_silent) used to
    end the run with nothing done: the command now runs again and gets past the import."""
    proc = _run(tmp_path, exits=1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "after the import\n", proc.stdout + proc.stderr
    assert "running the command again" in proc.stderr
    assert (tmp_path / "imports").read_text() == "2"


@pytest.mark.parametrize("exits", [2, 5])
def test_a_second_restart_request_is_an_error(tmp_path, exits):
    proc = _run(tmp_path, exits=exits)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Jittor asked again")
    assert (tmp_path / "imports").read_text() == "2"
