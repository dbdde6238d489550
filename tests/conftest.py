"""Shared test set-up: Jittor runtime, parity fixture root (pytest.ini puts the repository on sys.path).

Tests run on the CPU; ``DFORMER_TEST_DEVICE=cuda`` runs them with ``jt.flags.use_cuda = 1``
(and TF32/tensor cores off), as ``tools/gpu_check.py`` does for the parity tests.

The full parity set is found at $DFORMER_PARITY_ROOT, else ../shared/parity; a compact
subset always travels with the code (tests/parity_fixtures.py).
"""
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported


def parity_root():
    """Fixture folder: $DFORMER_PARITY_ROOT, else ../shared/parity beside the repository."""
    return os.environ.get("DFORMER_PARITY_ROOT") or os.path.join(os.path.dirname(REPO), "shared", "parity")


def load_manifest(root=None):
    """The full set's manifest; without a full set, the copy bundled in tests/fixtures."""
    path = os.path.join(root or parity_root(), "manifest.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    if root is None:
        from parity_fixtures import bundled_manifest
        return bundled_manifest()
    pytest.skip(f"parity fixtures not found at {path} (set DFORMER_PARITY_ROOT)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end tests (run with -m slow)")


TEST_DEVICE = os.environ.get("DFORMER_TEST_DEVICE", "cpu")
if TEST_DEVICE not in ("cpu", "cuda"):
    raise pytest.UsageError(f"DFORMER_TEST_DEVICE={TEST_DEVICE!r}: use cpu or cuda")


@pytest.fixture(scope="session", autouse=True)
def _device():
    """CPU unless DFORMER_TEST_DEVICE=cuda (then a missing GPU is an error, not a skip)."""
    runtime.init_device(TEST_DEVICE == "cuda")
    if TEST_DEVICE == "cuda":
        import jittor as jt
        jt.flags.use_tensorcore = 0
    yield
