"""Shared test set-up: Jittor runtime, parity fixture root (pytest.ini puts the repository on sys.path)."""
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
    path = os.path.join(root or parity_root(), "manifest.json")
    if not os.path.isfile(path):
        pytest.skip(f"parity fixtures not found at {path} (set DFORMER_PARITY_ROOT)")
    with open(path) as f:
        return json.load(f)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end tests (run with -m slow)")


@pytest.fixture(scope="session", autouse=True)
def _cpu_device():
    runtime.init_device()
    yield
