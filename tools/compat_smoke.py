"""Compatibility smoke: every project module imports, every backbone runs.

    python tools/compat_smoke.py [--size 64]

* imports every Python module of the project (``models``, ``utils``, ``mmseg``,
  ``local_configs``, ``tools`` and the top-level scripts), one check per package;
* checks that every ``local_configs`` config loads through the unified reader;
* runs each of the 7 backbones (random weights, eval mode) on a ``size x size``
  RGB-D input and checks the 4 stage outputs: channels ``backbone.out_channels``,
  spatial size ``ceil(size / stride)`` for strides 4, 8, 16, 32, finite values.

Exit status 0 when everything passes, 1 otherwise; the last line is ``N passed, N failed``.
"""
import importlib
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

PACKAGES = ("models", "utils", "mmseg", "local_configs", "tools")
SCRIPTS = ("benchmark",)
STRIDES = (4, 8, 16, 32)


def project_modules(package):
    """Dotted names of every module under ``package`` (files and sub-packages)."""
    names = []
    base = os.path.join(REPO, package)
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        rel = os.path.relpath(folder, REPO).replace(os.sep, ".")
        for fname in sorted(files):
            if not fname.endswith(".py"):
                continue
            stem = fname[:-3]
            names.append(rel if stem == "__init__" else f"{rel}.{stem}")
    return names


def check_imports(package):
    failures = []
    modules = list(SCRIPTS) if package == "scripts" else project_modules(package)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failures, "; ".join(failures)
    return f"{len(modules)} modules"


def check_configs():
    from local_configs import list_configs
    from utils.config import load_config
    names = list_configs()
    for name in names:
        cfg = load_config(name)
        assert cfg.num_classes > 0 and cfg.backbone, name
    return f"{len(names)} configs"


def check_backbone(name, size):
    import jittor as jt
    from models.encoders import build_backbone
    jt.set_global_seed(0)
    backbone = build_backbone(name, drop_path_rate=0.0, sync_bn=False)
    backbone.eval()
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((1, 3, size, size)).astype(np.float32))
    d = jt.array(rng.standard_normal((1, 3, size, size)).astype(np.float32))
    with jt.no_grad():
        feats = backbone(x, d)
    assert len(feats) == 4, f"{name}: {len(feats)} stages"
    for feat, stride, channels in zip(feats, STRIDES, backbone.out_channels):
        side = math.ceil(size / stride)
        want = (1, channels, side, side)
        assert tuple(feat.shape) == want, f"{name}: stage /{stride} is {tuple(feat.shape)}, expected {want}"
        assert np.isfinite(feat.numpy()).all(), f"{name}: non-finite stage /{stride}"


def main(argv=None):
    import argparse
    from tools.mmseg_heads_smoke import run_checks
    from models.encoders import BACKBONES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input side of the backbone runs")
    parser.add_argument("--backbones", nargs="*", default=None, help="subset of backbones")
    args = parser.parse_args(argv)
    runtime.init_device(False)
    checks = [(f"import {p}/**", lambda p=p: check_imports(p)) for p in PACKAGES]
    checks.append(("import top-level scripts", lambda: check_imports("scripts")))
    checks.append(("every local_configs config loads", check_configs))
    for name in args.backbones or list(BACKBONES):
        checks.append((f"backbone {name} at {args.size}x{args.size}: stage shapes",
                       lambda n=name: check_backbone(n, args.size)))
    return run_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
