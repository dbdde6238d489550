"""The one config reader (utils/config.py): --cfg-options rules, mmengine's Config under
our translation table (mmengine's features through tools/train.py, Config.dump), and the
configs/dformer files against local_configs.

Fast: no model is built; Jittor is only imported by the tests through tools/train.py (whose
parser is utils/train.py's).
"""
import os
import os.path as osp
import re
import shutil

import pytest
from mmengine.config import Config

from local_configs import list_configs
from local_configs import load_config as load_class_config
from utils.config import (CLASS_ALIASES, RUN_DEFAULTS, ConfigError, apply_cfg_options,
                          dump_config, load_config, override_config, parse_cfg_options,
                          parse_option_value, read_config_file)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, "configs", "dformer")
NYU_L = "configs/dformer/dformer_large_8xb8-500e_nyudepthv2-480x640.py"

# configs/dformer file -> local_configs name, for the 14 official experiments
OFFICIAL = {
    "dformer_tiny_8xb8-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormer_Tiny",
    "dformer_small_8xb8-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormer_Small",
    "dformer_base_8xb8-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormer_Base",
    "dformer_large_8xb8-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormer_Large",
    "dformerv2_s_8xb16-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormerv2_S",
    "dformerv2_b_8xb8-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormerv2_B",
    "dformerv2_l_8xb12-500e_nyudepthv2-480x640.py": "NYUDepthv2.DFormerv2_L",
    "dformer_tiny_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormer_Tiny",
    "dformer_small_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormer_Small",
    "dformer_base_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormer_Base",
    "dformer_large_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormer_Large",
    "dformerv2_s_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormerv2_S",
    "dformerv2_b_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormerv2_B",
    "dformerv2_l_8xb16-300e_sunrgbd-480x480.py": "SUNRGBD.DFormerv2_L",
}
QUICK_START = "dformer_tiny_8xb8-10e_synthrgbd-160x160.py"


def same(a, b):
    """Equal values of equal types (lists and tuples kept apart, 1 != 1.0 != True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# ============================================================================ option values

@pytest.mark.parametrize("text, value", [
    ("1", 1), ("-3", -3), ("1.5", 1.5), ("1e-4", 1e-4), ("True", True), ("false", False),
    ("None", None), ("abc", "abc"), ("none", "none"), ("/data/NYU", "/data/NYU"),
    ("1,2,3", [1, 2, 3]), ("a,b", ["a", "b"]), ("[1,2]", [1, 2]), ("[]", []),
    ("(1,2)", (1, 2)), ('"[1, 2]"', [1, 2]), ("'(64, 64)'", (64, 64)),
    ("[(1,2,3),[a,b],c]", [(1, 2, 3), ["a", "b"], "c"]), ("(1,)", (1,)), ("1,", [1]),
    ("a, b", ["a", "b"]),
])
def test_option_values_follow_mmengine(text, value):
    assert same(parse_option_value(text), value)


def test_option_list_parsing_and_errors():
    assert parse_cfg_options(["a.b=1", "c=x=y", "d=1,"]) == {"a.b": 1, "c": "x=y", "d": [1]}
    assert parse_cfg_options({"a": [1]}) == {"a": [1]}
    assert parse_cfg_options(None) == {}
    for bad in (["novalue"], ["=1"], ["a..b=1"]):
        with pytest.raises(ConfigError):
            parse_cfg_options(bad)
    with pytest.raises(ConfigError, match="unbalanced"):
        parse_option_value("[1,2")


@pytest.mark.parametrize("text", ["runs/my run", '"a b"', "[a b,c]", "(1, x y)"])
def test_a_space_inside_an_option_item_is_an_error(text):
    """mmengine's parser drops every space ("runs/my run" -> "runs/myrun"): where that
    changes an item, it is an error, not a silently different value."""
    with pytest.raises(ConfigError, match="space inside the value"):
        parse_option_value(text)
    with pytest.raises(ConfigError, match="space inside"):
        parse_cfg_options([f"work_dir={text}"])


def test_options_merge_into_nested_dicts_and_lists():
    tree = {"a": {"b": 1, "c": [dict(x=1), dict(x=2)], "n": None}, "t": (1, 2)}
    cfg = apply_cfg_options(tree, ["a.b=2", "a.c.1.x=5", "a.new.deep=3", "t=(3,4)", "a.n.k=1"])
    assert isinstance(cfg, Config)  # mmengine's, merged by its merge_from_dict
    assert cfg.to_dict() == {"a": {"b": 2, "c": [dict(x=1), dict(x=5)], "n": {"k": 1},
                                   "new": {"deep": 3}}, "t": (3, 4)}
    for option, message in [("a.c.2.x=1", "out of range"), ("a.c.x=1", "index it with a number"),
                            ("a.b.z=1", "not a dict"), ("t.0=1", "tuple"),
                            ("a.c.0=1", "set the whole list a.c")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_cfg_options(cfg, [option])


def test_wildcard_sets_every_loader():
    tree = {"train_dataloader": {"dataset": {"data_root": "a"}},
            "val_dataloader": {"dataset": {"data_root": "a"}}, "other": 1}
    cfg = apply_cfg_options(tree, ["*.dataset.data_root=/x"])
    assert cfg.train_dataloader.dataset.data_root == "/x"
    assert cfg.val_dataloader.dataset.data_root == "/x"
    with pytest.raises(ConfigError, match="matches no key"):
        apply_cfg_options(tree, ["*.nothing.here=1"])


# ============================================================================ the file loader

def test_merge_key_by_key_delete_and_lists(tmp_path):
    (tmp_path / "base.py").write_text("m = dict(a=1, b=dict(c=2, d=3))\nl = [1, 2]\n")
    (tmp_path / "c1.py").write_text("_base_ = 'base.py'\nm = dict(b=dict(c=9))\nl = [3]\n")
    assert read_config_file(str(tmp_path / "c1.py")) == {"m": {"a": 1, "b": {"c": 9, "d": 3}},
                                                         "l": [3]}
    (tmp_path / "c2.py").write_text("_base_ = 'base.py'\nm = dict(b=dict(_delete_=True, e=1))\n")
    assert read_config_file(str(tmp_path / "c2.py")) == {"m": {"a": 1, "b": {"e": 1}},
                                                         "l": [1, 2]}


def test_base_lists_and_duplicate_keys(tmp_path):
    (tmp_path / "b1.py").write_text("x = dict(a=1, b=2)\n_private = 5\n")
    (tmp_path / "b2.py").write_text("y = [1, 2]\n")
    (tmp_path / "c.py").write_text("_base_ = ['b1.py', 'b2.py']\nimport os\nx = dict(b=3)\n"
                                   "z = (1, 2)\n")
    assert read_config_file(str(tmp_path / "c.py")) == {"x": {"a": 1, "b": 3}, "y": [1, 2],
                                                        "z": (1, 2)}
    (tmp_path / "dup.py").write_text("_base_ = ['b1.py', 'b1.py']\n")
    with pytest.raises(ConfigError, match="Duplicate key"):
        read_config_file(str(tmp_path / "dup.py"))
    (tmp_path / "loop.py").write_text("_base_ = 'loop.py'\n")
    with pytest.raises(ConfigError, match="circular"):
        read_config_file(str(tmp_path / "loop.py"))
    (tmp_path / "missing.py").write_text("_base_ = 'nope.py'\n")
    with pytest.raises(ConfigError, match="nope.py"):
        read_config_file(str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/dformer/no_such_file.py")


# ============================================================================ translation

@pytest.mark.parametrize("fname", sorted(OFFICIAL))
def test_official_files_translate_to_the_class_configs(fname):
    mine = load_config(osp.join("configs", "dformer", fname))
    theirs = load_config("local_configs." + OFFICIAL[fname])
    assert mine.keys() == theirs.keys()
    diff = {k: (mine[k], theirs[k]) for k in mine if not same(mine[k], theirs[k])}
    assert not diff, diff
    # and the class config itself is unchanged by the reader (run fields aside)
    raw = load_class_config("local_configs." + OFFICIAL[fname])
    assert all(same(raw[k], theirs[k]) for k in raw)
    assert set(theirs) - set(raw) == set(RUN_DEFAULTS)


def test_file_names_follow_the_official_values():
    names = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py"))
    assert set(OFFICIAL) | {QUICK_START} == set(names)
    readme = open(osp.join(CONFIGS, "README.md")).read()
    assert "global batch" in readme
    for fname in names:
        assert fname in readme, fname
        cfg = load_config(osp.join("configs", "dformer", fname))
        model = {"DFormer-Tiny": "dformer_tiny", "DFormer-Small": "dformer_small",
                 "DFormer-Base": "dformer_base", "DFormer-Large": "dformer_large",
                 "DFormerv2_S": "dformerv2_s", "DFormerv2_B": "dformerv2_b",
                 "DFormerv2_L": "dformerv2_l"}[cfg.backbone]
        want = (f"{model}_8xb{cfg.batch_size}-{cfg.nepochs}e_{cfg.dataset_name.lower()}-"
                f"{cfg.image_height}x{cfg.image_width}.py")
        assert fname == want
    assert "dformer_large_8xb8-500e_nyudepthv2-480x640.py" in names


def test_quick_start_file_matches_the_synthetic_class_config():
    mine = load_config(osp.join("configs", "dformer", QUICK_START))
    theirs = load_config("local_configs.SynthRGBD.DFormer_Tiny")
    assert mine.pop("synthetic_counts") == (400, 100)
    assert mine.keys() == theirs.keys()
    assert all(same(mine[k], theirs[k]) for k in mine)


def test_mission_overrides_on_a_configs_file():
    cfg = load_config(NYU_L, [
        "train_cfg.max_iters=1", "train_cfg.val_interval=1", "train_dataloader.batch_size=1",
        "train_dataloader.dataset.file_length=1", "val_dataloader.batch_size=1",
        "val_dataloader.dataset.file_length=1", "*.dataset.data_root=/data/nyu",
        "model.pretrained=None", "work_dir=runs/w", "load_from=runs/x.pkl",
        "randomness.seed=7"])
    assert (cfg.max_iters, cfg.val_interval, cfg.batch_size, cfg.num_train_imgs) == (1, 1, 1, 1)
    assert (cfg.val_batch_size, cfg.val_file_length, cfg.niters_per_epoch) == (1, 1, 2)
    assert cfg.pretrained_model is None and cfg.seed == 7
    assert (cfg.work_dir, cfg.load_from) == ("runs/w", "runs/x.pkl")
    assert cfg.dataset_path == "/data/nyu" and cfg.root_dir == "/data"
    assert cfg.rgb_root_folder == "/data/nyu/RGB" and cfg.gt_root_folder == "/data/nyu/Label"
    assert cfg.train_source == "/data/nyu/train.txt" and cfg.eval_source == "/data/nyu/test.txt"
    # the schedule stays the file's: 500 epochs, warm-up 10 epochs (of the new length)
    assert (cfg.nepochs, cfg.warm_up_epoch) == (500, 10)


def test_max_iters_follows_the_schedule_unless_given():
    cfg = load_config(NYU_L, ["train_dataloader.batch_size=2"])
    assert cfg.niters_per_epoch == 795 // 2 + 1 and cfg.max_iters is None
    cfg = load_config(NYU_L, ["train_cfg.max_iters=50000", "train_dataloader.batch_size=2"])
    assert cfg.max_iters == 50000
    with pytest.raises(ConfigError, match="train_cfg.max_iters=50001"):
        load_config(NYU_L, ["train_cfg.max_iters=50001"])
    cfg = load_config(NYU_L, ["param_scheduler.1.end=1000", "param_scheduler.0.end=1"])
    assert (cfg.nepochs, cfg.warm_up_epoch, cfg.max_iters) == (1000, 1, None)  # follows
    cfg = load_config(NYU_L, ["param_scheduler.1.end=1000", "train_cfg.max_iters=50000"])
    assert (cfg.nepochs, cfg.max_iters) == (1000, 50000)
    cfg = load_config(NYU_L, ["param_scheduler.0.by_epoch=False", "param_scheduler.0.end=300",
                              "param_scheduler.0.convert_to_iter_based=False"])
    assert cfg.warm_up_epoch == 3


@pytest.mark.parametrize("option, message", [
    ("train_cfg.max_iter=1", "train_cfg.max_iter"),
    ("model.backbone.depths=[1,2]", "model.backbone.depths"),
    ("optim_wrapper.optimizer.type=Adam", "optim_wrapper.optimizer.type='Adam'"),
    ("optim_wrapper.type=AmpOptimWrapper", "optim_wrapper.type"),
    ("param_scheduler.0.type=CosineAnnealingLR", "cannot be expressed"),
    ("param_scheduler.0.start_factor=1e-6", "start_factor=0"),
    ("param_scheduler.1.eta_min=1e-6", "eta_min"),
    ("param_scheduler.1.begin=10", "begin"),
    ("param_scheduler.0.end=7.5", "end"),
    ("param_scheduler.0.by_epoch=False", "whole number of epochs"),
    ("train_cfg.type=EpochBasedTrainLoop", "train_cfg.type"),
    ("default_hooks.logger.interval=5", "default_hooks.logger"),
    ("default_hooks.checkpoint.interval=5", "by_epoch=True"),
    ("val_dataloader.dataset.type=SUNRGBD", "disagrees"),
    ("val_dataloader.num_workers=2", "val_dataloader.num_workers"),
    ("model.decode_head.num_classes=3", "num_classes=3"),
    ("env_cfg.cudnn_benchmark=True", "env_cfg.cudnn_benchmark"),
    ("train_dataloader.batch_size=0", "train_dataloader.batch_size"),
])
def test_unknown_or_unexpressible_keys_are_errors_naming_them(option, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(NYU_L, [option])


def test_supported_mmengine_settings():
    cfg = load_config(NYU_L, ["default_hooks.checkpoint.by_epoch=False",
                              "default_hooks.checkpoint.interval=5", "train_cfg.val_interval=0",
                              "optim_wrapper.optimizer.type=SGD",
                              "optim_wrapper.optimizer.momentum=0.8",
                              "optim_wrapper.optimizer.betas=None",
                              "optim_wrapper.optimizer.eps=None",
                              "model.data_preprocessor.bgr_to_rgb=True",
                              "tta.scales=[1.0]", "tta.flip=False"])
    assert (cfg.checkpoint_interval, cfg.val_interval) == (5, 0)
    assert (cfg.optimizer, cfg.momentum, cfg.color_order) == ("SGDM", 0.8, "RGB")
    assert (cfg.eval_scale_array, cfg.eval_flip) == ([1.0], False)


def _aux(weight):
    return ["model.auxiliary_head.type=FCNHead", f"model.auxiliary_head.loss_weight={weight}"]


def test_decode_head_keys_the_engine_fixes_are_errors_unless_equal():
    """UPerHead / NLHead / DeepLabV3+ have fixed widths and always carry the FCN auxiliary
    head at 0.4; LightHamHead's width and auxiliary weight are free; MLPDecoder has none."""
    cfg = load_config(NYU_L, ["model.decode_head.type=UPerHead", "model.decode_head.channels=512",
                              *_aux(0.4)])
    assert (cfg.decoder, cfg.decoder_embed_dim, cfg.aux_rate) == ("UPernet", 512, 0.4)
    cfg = load_config(NYU_L, ["model.decode_head.channels=256",
                              *_aux(0.3)])
    assert (cfg.decoder, cfg.decoder_embed_dim, cfg.aux_rate) == ("ham", 256, 0.3)
    bad = [(["model.decode_head.type=UPerHead", "model.decode_head.channels=1024"], "channels=1024"),
           (["model.decode_head.type=NLHead", "model.decode_head.channels=512"],
            "auxiliary_head=None"),
           (["model.decode_head.type=DepthwiseSeparableASPPHead", "model.decode_head.channels=256",
             *_aux(0.2)], "loss_weight=0.4"),
           (["model.decode_head.type=MLPDecoder",
             *_aux(0.4)], "set it to None")]
    for options, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(NYU_L, options)


# ============================================================================ class configs

def test_class_config_flat_fields_and_aliases():
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Large",
                      ["lr=1e-4", "batch_size=2", "dataset_path=/d/NYU", "train_cfg.max_iters=3",
                       "model.pretrained=None", "val_dataloader.dataset.file_length=1"])
    assert (cfg.lr, cfg.batch_size, cfg.niters_per_epoch) == (1e-4, 2, 795 // 2 + 1)
    assert cfg.rgb_root_folder == "/d/NYU/RGB" and cfg.eval_source == "/d/NYU/test.txt"
    assert cfg.root_dir == "/d" and cfg.max_iters == 3 and cfg.pretrained_model is None
    assert cfg.val_file_length == 1
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Large", ["val_interval=5"])
    assert cfg.val_interval == 5
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Large", ["train_cfg.val_interval=reference"])
    assert cfg.val_interval is None
    cfg = load_config("local_configs/NYUDepthv2/DFormer_Large.py",
                      ["root_dir=/r", "*.dataset.data_root=/r/NYUDepthv2"])
    assert cfg.x_root_folder == "/r/NYUDepthv2/Depth"
    cfg = load_config("local_configs.NYUDepthv2.DFormer_Large", ["root_dir=/r"])
    assert cfg.dataset_path == "/r/NYUDepthv2" and cfg.train_source == "/r/NYUDepthv2/train.txt"


def test_class_config_errors():
    name = "local_configs.NYUDepthv2.DFormer_Large"
    with pytest.raises(ConfigError, match="'lrr'"):
        load_config(name, ["lrr=1"])
    with pytest.raises(ConfigError, match="model.backbone.type"):
        load_config(name, ["model.backbone.type=x"])
    with pytest.raises(ConfigError, match="derived"):
        load_config(name, ["niters_per_epoch=3"])
    with pytest.raises(ConfigError, match="beyond the schedule"):
        load_config(name, ["max_iters=50001"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("local_configs.NYUDepthv2.Nope")
    assert set(CLASS_ALIASES.values()) <= set(load_config(name))


def test_synthetic_class_config_sizes_follow_its_counts():
    # class configs: num_train_imgs/num_eval_imgs are also the generated sizes (as before);
    # configs/ files say them apart (synthetic.num_train / file_length)
    cfg = load_config("local_configs.SynthRGBD.DFormer_Tiny", ["num_train_imgs=8"])
    assert "synthetic_counts" not in cfg and cfg.niters_per_epoch == 2


def test_override_config_and_every_class_config_loads():
    cfg = override_config(load_config("local_configs.NYUDepthv2.DFormer_Tiny"), ["lr=0.5"])
    assert cfg.lr == 0.5
    for name in list_configs():
        assert load_config(name).keys() >= set(RUN_DEFAULTS)


# ============================================================================ mmengine's features

NYU_T = "configs/dformer/dformer_tiny_8xb8-500e_nyudepthv2-480x640.py"


def train_tool_config(argv):
    """The internal config tools/train.py runs with for ``argv`` (its parser and loader)."""
    import importlib
    tool = importlib.import_module("tools.train")
    return tool.load(tool.parse_args(argv))


def changed(cfg, reference):
    assert cfg.keys() == reference.keys()
    return {k: cfg[k] for k in cfg if not same(cfg[k], reference[k])}


def test_mmengine_substitutions_and_base_references(tmp_path, monkeypatch):
    """``{{_base_.x}}``, ``_base_.x``, ``{{fileDirname}}`` and ``{{$ENV:default}}`` in a file,
    through tools/train.py --cfg-options (``x=1,`` a list) and mmengine's Config.fromfile."""
    path = tmp_path / "features.py"
    path.write_text(f"""_base_ = {osp.join(REPO, NYU_T)!r}
_root = '{{{{fileDirname}}}}/data/NYU'
model = dict(test_cfg=dict(crop_size=_base_.model.test_cfg.crop_size[::-1]))
train_dataloader = dict(dataset=dict(data_root=_root))
val_dataloader = dict(batch_size={{{{_base_.train_dataloader.batch_size}}}},
                      dataset=dict(data_root=_root))
test_dataloader = dict(dataset=dict(data_root=_root))
randomness = dict(seed={{{{'$DFORMER_TEST_SEED:7'}}}})
""")
    reference = load_config(NYU_T, ["*.dataset.data_root=/d/NYU"])
    for env, seed in ((None, 7), ("11", 11)):
        if env:
            monkeypatch.setenv("DFORMER_TEST_SEED", env)
        mm = Config.fromfile(str(path))
        assert (mm.val_dataloader.batch_size, mm.model.test_cfg.crop_size) == (8, (640, 480))
        assert mm.test_dataloader.dataset.data_root == f"{tmp_path}/data/NYU"
        assert mm.randomness.seed == seed
        cfg = train_tool_config([str(path), "--cfg-options", "tta.scales=1.0,"])
        root = str(tmp_path / "data" / "NYU")
        assert changed(cfg, reference) == {
            "val_batch_size": 8, "eval_crop_size": [640, 480], "seed": seed,
            "eval_scale_array": [1.0], "dataset_path": root, "root_dir": osp.dirname(root),
            "rgb_root_folder": root + "/RGB", "x_root_folder": root + "/Depth",
            "gt_root_folder": root + "/Label", "train_source": root + "/train.txt",
            "eval_source": root + "/test.txt"}


def test_read_base_config_equals_its_base_style_twin(tmp_path):
    """A pure-Python ``read_base()`` config (mmengine's lazy import) of NYU DFormer-Tiny."""
    shutil.copytree(osp.join(REPO, "configs", "_base_"), tmp_path / "_base_")
    (tmp_path / "dformer").mkdir()
    path = tmp_path / "dformer" / "tiny.py"
    path.write_text("""from mmengine.config import read_base

with read_base():
    from .._base_.models.dformer import *
    from .._base_.datasets.nyudepthv2 import *
    from .._base_.schedules.schedule_500e import *
    from .._base_.default_runtime import *

model.update(pretrained='checkpoints/pretrained/DFormer_Tiny.pth.tar',
             backbone=dict(type='DFormer-Tiny', drop_path_rate=0.1))
""")
    assert Config.fromfile(str(path)).model.backbone.type == "DFormer-Tiny"
    options = ["train_dataloader.batch_size=2", "model.pretrained=None"]
    reference = load_config(NYU_T, options)
    assert not changed(train_tool_config([str(path), "--cfg-options", *options]), reference)
    assert not changed(load_config(dump_config(str(path), options, str(tmp_path / "w"))),
                       reference)


def test_dump_pretty_text_yaml_and_json_reload_to_the_same_run(tmp_path):
    """Config.dump (.py: pretty_text), YAML and JSON configs: each reloads to the internal
    config of the run it was dumped from; train_cfg.max_iters says where the run stops."""
    options = ["train_dataloader.batch_size=2", "tta.flip=False"]
    reference = load_config(NYU_T, options)
    path = dump_config(NYU_T, options, str(tmp_path / "work"))
    assert path == str(tmp_path / "work" / osp.basename(NYU_T))
    dumped = Config.fromfile(path)
    assert dumped.train_cfg.max_iters == 500 * (795 // 2 + 1) and dumped.tta.flip is False
    assert not changed(load_config(path), reference)
    for suffix in ("yaml", "json"):
        dumped.dump(str(tmp_path / f"c.{suffix}"))
        assert not changed(load_config(str(tmp_path / f"c.{suffix}")), reference), suffix
    assert dump_config("local_configs.NYUDepthv2.DFormer_Tiny", None, str(tmp_path)) is None


def test_mmengine_errors_are_one_line_config_errors(tmp_path):
    (tmp_path / "bad.py").write_text("x = dict(a=1\n")
    (tmp_path / "name.py").write_text(f"_base_ = {osp.join(REPO, NYU_T)!r}\nx = undefined\n")
    (tmp_path / "extra.py").write_text(f"_base_ = {osp.join(REPO, NYU_T)!r}\n"
                                       "custom_imports = dict(imports=['no_such_module'])\n")
    for name, message in (("bad.py", "SyntaxError"), ("name.py", "NameError"),
                          ("extra.py", "unknown or unsupported key custom_imports")):
        with pytest.raises(ConfigError, match=message) as info:
            load_config(str(tmp_path / name))
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unbalanced brackets"):
        load_config(NYU_T, ["tta.scales=[1,2"])
