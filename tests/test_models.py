"""Model zoo structure: every config builds with the official state-dict layout; training
signals reach every trainable tensor; bad checkpoints and config names fail clearly."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_manifest, parity_root

import jittor as jt
from local_configs import list_configs, load_config
from models.builder import EncoderDecoder
from utils.checkpoint import CheckpointError, build_model

OFFICIAL = [name for name in list_configs() if name.split(".")[1] in ("NYUDepthv2", "SUNRGBD")]


def _shape(shape):
    shape = tuple(shape)
    return (1,) if shape == () else shape


def test_fourteen_official_configs():
    assert len(OFFICIAL) == 14


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_matches_manifest(name):
    entry = load_manifest()["configs"].get(name[len("local_configs."):].replace(".", "/"))
    if entry is None:
        pytest.skip(f"{name} not in the manifest")
    cfg = load_config(name)
    model = EncoderDecoder(cfg)
    ours = [(k, _shape(v.shape)) for k, v in model.state_dict().items()]
    ref = [(k, _shape(s)) for k, s, _ in entry["state_dict"]]
    assert [k for k, _ in ours] == [k for k, _ in ref], "state-dict keys or their order differ"
    assert ours == ref, "state-dict shapes differ"
    trainable = {k: v for k, v in model.state_dict().items() if not v.is_stop_grad()}
    counts = entry["param_counts"]
    assert sum(int(np.prod(v.shape)) for v in trainable.values()) == counts["total"]
    assert sum(int(np.prod(v.shape)) for k, v in trainable.items() if k.startswith("backbone.")) \
        == counts["backbone"]
    assert sum(int(np.prod(v.shape)) for k, v in trainable.items() if k.startswith("decode_head.")) \
        == counts["decode_head"]


BACKBONE_CONFIGS = ["local_configs.NYUDepthv2.DFormer_Tiny", "local_configs.NYUDepthv2.DFormer_Small",
                    "local_configs.NYUDepthv2.DFormer_Base", "local_configs.NYUDepthv2.DFormer_Large",
                    "local_configs.NYUDepthv2.DFormerv2_S", "local_configs.NYUDepthv2.DFormerv2_B",
                    "local_configs.NYUDepthv2.DFormerv2_L"]


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_forward_backward_reaches_every_trainable_tensor(name):
    cfg = load_config(name)
    cfg.drop_path_rate = 0.0  # a dropped branch legitimately gets no gradient in that step
    model = EncoderDecoder(cfg)
    model.train()
    rng = np.random.RandomState(0)
    rgb = jt.array(rng.randn(2, 3, 64, 64).astype(np.float32))
    depth = jt.array(np.repeat(rng.randn(2, 1, 64, 64).astype(np.float32), 3, axis=1))
    label = rng.randint(0, cfg.num_classes, size=(2, 64, 64))
    label[:, :8] = 255
    loss = model(rgb, depth, jt.array(label.astype(np.int32)))
    assert np.isfinite(loss.item())
    state = model.state_dict()
    trainable = [(k, v) for k, v in state.items() if not v.is_stop_grad()]
    grads = jt.grad(loss, [v for _, v in trainable])
    no_grad = [k for (k, _), g in zip(trainable, grads) if not np.any(g.numpy())]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"
    buffers = [k for k, v in state.items() if v.is_stop_grad()]
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked", "Geo.angle", "Geo.decay"))
               for k in buffers), buffers
    if "DFormerv2" in name:
        assert any(k.endswith("Geo.angle") for k in buffers)


def test_checkpoint_of_another_variant_is_rejected():
    trained = os.path.join(parity_root(), "NYUDepthv2", "DFormer_Tiny", "trained.pth")
    if not os.path.isfile(trained):
        pytest.skip("DFormer_Tiny fixture checkpoint not available")
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Small")
    with pytest.raises(CheckpointError) as info:
        build_model(cfg, checkpoint=trained)
    message = str(info.value)
    assert trained in message and "shape mismatch" in message and "another model variant" in message


def test_missing_checkpoint_file_is_named(tmp_path):
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Tiny")
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        build_model(cfg, checkpoint=missing)


def test_corrupt_checkpoint_file_is_named(tmp_path):
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Tiny")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        build_model(cfg, checkpoint=str(bad))


def test_missing_pretrained_backbone_is_an_error(tmp_path):
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Tiny")
    cfg.pretrained_model = str(tmp_path / "DFormer_Tiny.pth.tar")
    with pytest.raises(FileNotFoundError, match="DFormer_Tiny.pth.tar"):
        build_model(cfg)


def test_unknown_config_name():
    with pytest.raises(ValueError, match="NYUDepthv2.DFormer_Huge.*does not exist"):
        load_config("local_configs.NYUDepthv2.DFormer_Huge")


def test_configs_import_without_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = load_config("local_configs.NYUDepthv2.DFormer_Base")
    b = load_config("local_configs.SUNRGBD.DFormerv2_S")
    assert os.listdir(tmp_path) == []
    assert (a.num_classes, b.num_classes) == (40, 37)
    assert (a.backbone, b.backbone) == ("DFormer-Base", "DFormerv2_S")
    assert (a.niters_per_epoch, b.niters_per_epoch) == (100, 331)
    assert b.color_order == "RGB" and a.color_order == "BGR"


@pytest.mark.parametrize("name", OFFICIAL)
def test_config_values_match_reference(name):
    entry = load_manifest()["configs"].get(name[len("local_configs."):].replace(".", "/"))
    if entry is None:
        pytest.skip(f"{name} not in the manifest")
    cfg = load_config(name)
    for key, ref in entry["config"].items():
        if key == "config_file":
            continue
        ours = cfg[key]
        if isinstance(ref, float):
            assert ours == pytest.approx(ref), key
        elif isinstance(ref, list):
            assert list(ours) == pytest.approx(ref), key
        else:
            assert ours == ref, key


def test_official_pth_tar_name_loads(tmp_path):
    """Official ImageNet backbones are `.pth.tar` files, which Jittor's loader does not route."""
    src = os.path.join(parity_root(), "NYUDepthv2", "DFormer_Tiny", "pretrained_backbone.pth")
    if not os.path.isfile(src):
        pytest.skip("DFormer_Tiny fixture checkpoint not available")
    import shutil
    dst = tmp_path / "DFormer_Tiny.pth.tar"
    shutil.copyfile(src, dst)
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Tiny")
    cfg.pretrained_model = str(dst)
    model = build_model(cfg)
    assert model.pretrained_report.ok and len(model.pretrained_report.loaded) == 670


def test_wrapped_and_prefixed_checkpoints_load(tmp_path):
    """`state_dict` entries with DDP `module.` prefixes, and known extra keys, are handled."""
    from utils.checkpoint import atomic_save, model_state_numpy
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Tiny")
    source = EncoderDecoder(cfg)
    state = {"module." + k: v for k, v in model_state_numpy(source).items()}
    state["module.backbone.norm0.weight"] = np.ones(32, np.float32)  # as in released v1 files
    path = str(tmp_path / "ddp.pkl")
    atomic_save({"state_dict": state, "epoch": 3}, path)
    model = build_model(cfg, checkpoint=path)
    assert model.load_report.harmless == ["backbone.norm0.weight"]
    key = "decode_head.conv_seg.weight"
    np.testing.assert_array_equal(model.state_dict()[key].numpy(), state["module." + key])
    del state["module." + key]
    atomic_save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="missing: decode_head.conv_seg.weight"):
        build_model(cfg, checkpoint=path)


def _imports(path):
    """(absolute module name, line) of every import in ``path``, functions included;
    relative imports resolved against the module's package."""
    import ast
    package = os.path.relpath(path, REPO).split(os.sep)[:-1]
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module, node.lineno
            else:
                base = package[:len(package) - node.level + 1] if node.level <= len(package) else []
                yield ".".join(base + ([node.module] if node.module else [])), node.lineno


def test_models_import_nothing_from_utils():
    """models/ stands on its own: no import of utils/ anywhere in it (lazy ones included),
    and every models module imports while utils/ cannot be imported."""
    found = []
    for folder, _, names in os.walk(os.path.join(REPO, "models")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for module, line in _imports(path):
                    if module == "" or module.split(".")[0] in ("utils", "tools", "mmseg"):
                        found.append(f"{os.path.relpath(path, REPO)}:{line} imports {module!r}")
    assert not found, "models/ imports from above it: " + "; ".join(found)
    code = """
import importlib, pkgutil, sys
from utils import runtime
runtime.setup()
for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
    del sys.modules[name]
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "utils" or name.startswith("utils."):
            raise ImportError("models/ must not import " + name)
sys.meta_path.insert(0, Block())
import models
names = [m.name for m in pkgutil.walk_packages(models.__path__, "models.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 20


def test_errors_are_shared_and_light():
    """``utils.errors`` re-exports the model package's errors (one class each) without
    loading Jittor or numpy; an unknown keyword is a ConfigError and a TypeError."""
    code = ("import sys, utils.errors as e, models.errors as m; "
            "assert e.ConfigError is m.ConfigError and e.UserError is m.UserError; "
            "assert issubclass(e.KeywordError, e.ConfigError) and issubclass(e.KeywordError, TypeError); "
            "print(sorted(k for k in ('jittor', 'numpy') if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
