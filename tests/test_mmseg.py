"""The mmseg-style façade: structures, registry, device handling, and the API and
compatibility smokes (which check inference_model == utils.api == the evaluator,
MMSegInferencer outputs and tools/mmseg_infer.py)."""
import warnings

import numpy as np
import pytest

from mmseg.registry import (DATASETS, METRICS, MODELS, VISUALIZERS, backbone_name, dataset_name,
                            decoder_name)
from mmseg.structures import PixelData, SegDataSample
from tools import compat_smoke, mmseg_api_smoke


# ----------------------------------------------------------------------------- structures

def test_pixel_data_and_seg_data_sample():
    sample = SegDataSample(metainfo=dict(img_path="a.png", ori_shape=(3, 4)))
    sample.pred_sem_seg = PixelData(data=np.zeros((3, 4), np.int64))
    sample.seg_logits = PixelData(data=np.zeros((5, 3, 4), np.float32))
    assert sample.pred_sem_seg.data.shape == (1, 3, 4)  # (H, W) gets a channel axis
    assert sample.pred_sem_seg.shape == (3, 4)
    assert sample.metainfo == {"img_path": "a.png", "ori_shape": (3, 4)}
    assert "pred_sem_seg" in sample and "gt_sem_seg" not in sample
    assert sample.keys() == ["pred_sem_seg", "seg_logits"]
    assert sample.cpu().numpy() is sample and sample.to("cpu") is sample
    with pytest.raises(ValueError, match="cuda"):
        sample.to("cuda")
    with pytest.raises(TypeError):
        sample.pred_sem_seg = np.zeros((3, 4))
    with pytest.raises(ValueError):
        PixelData(data=np.zeros(4))
    with pytest.raises(AttributeError):
        sample.gt_sem_seg  # noqa: B018
    assert "SegDataSample" in repr(sample)


# ----------------------------------------------------------------------------- registry

def test_registry_names_map_to_internal_names():
    from models.decoders import DECODERS
    for kind in ("LightHamHead", "MLPDecoder", "UPerHead", "DepthwiseSeparableASPPHead", "NLHead",
                 "PSAHead", "CCHead", "PointHead"):
        assert kind in MODELS and decoder_name(kind) in DECODERS, kind
    assert decoder_name("FCNHead") == "fcn"
    assert backbone_name("DFormer", "large") == "DFormer-Large"
    assert backbone_name("DFormerv2", "S") == "DFormerv2_S"
    assert backbone_name("mmseg.DFormer-Tiny") == "DFormer-Tiny"
    for kind in ("EncoderDecoder", "CascadeEncoderDecoder", "FPN", "FPNHead", "SegDataPreProcessor",
                 "RGBDDataPreprocessor", "CrossEntropyLoss"):
        assert kind in MODELS
    assert dataset_name("NYUDepthv2Dataset") == "NYUDepthv2" and "SUNRGBDDataset" in DATASETS
    from utils.errors import ConfigError
    with pytest.raises(ConfigError):
        backbone_name("DFormer", "huge")
    with pytest.raises(ConfigError):
        MODELS.build({"type": "NoSuchHead"})


BN = dict(type="BN", eps=1e-3, momentum=0.1)
STAGES = [8, 16, 32, 64]
_CONCAT = dict(in_channels=STAGES[1:], in_index=[1, 2, 3], input_transform="resize_concat")

# One valid dict per registered decode head / neck, at tiny widths.
HEADS = {
    "LightHamHead": dict(in_channels=STAGES[1:], in_index=[1, 2, 3], channels=16,
                         ham_channels=16, num_classes=3, norm_cfg=BN),
    "NLHead": dict(in_channels=STAGES[1:], in_index=[1, 2, 3], channels=16, num_classes=3,
                   norm_cfg=BN),
    "MLPDecoder": dict(in_channels=STAGES, channels=16, num_classes=3, norm_cfg=BN),
    "UPerHead": dict(in_channels=STAGES, channels=16, num_classes=3, norm_cfg=BN),
    "DepthwiseSeparableASPPHead": dict(in_channels=STAGES, num_classes=3, norm_cfg=BN),
    "FCNHead": dict(in_channels=64, in_index=3, channels=16, num_classes=3, norm_cfg=BN),
    "PSAHead": dict(_CONCAT, channels=16, num_classes=3, norm_cfg=BN, mask_size=(5, 5)),
    "CCHead": dict(_CONCAT, channels=16, num_classes=3, norm_cfg=BN),
    "FPN": dict(in_channels=STAGES, out_channels=8, num_outs=4),
    "FPNHead": dict(in_channels=[8] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
                    channels=8, num_classes=3),
    "PointHead": dict(in_channels=[8], in_index=[0], channels=8, num_classes=3),
}

# Every other registered name with a valid dict (the segmentors are checked below).
OTHERS = [
    (MODELS, "DFormer", dict(arch="tiny")),
    (MODELS, "DFormer-Tiny", dict(drop_path_rate=0.0)),
    (MODELS, "DFormerv2", dict(arch="s")),
    (MODELS, "SegDataPreProcessor", dict(mean=[0, 0, 0], std=[1, 1, 1])),
    (MODELS, "RGBDDataPreprocessor", dict(pad_sunrgbd=True)),
    (MODELS, "CrossEntropyLoss", dict(loss_weight=2.0)),
    (METRICS, "IoUMetric", dict(num_classes=3)),
    (VISUALIZERS, "SegLocalVisualizer", dict(alpha=0.5)),
]


def _conv_seg(head):
    layer = (getattr(head, "conv_seg", None) or getattr(head, "linear_pred", None)
             or getattr(head, "fc_seg", None))
    if layer is None:  # DFormer's DeepLabV3+: the classifier ends its block
        layer = head.block[-1]
    return layer


def _bn(head):
    from models.layers import BatchNorm2d
    return next(m for m in head.modules() if isinstance(m, BatchNorm2d))


def _probe_head(kind):
    """(key, new value, probe of the built head, probe's value for the new one) per head."""
    seg_in = lambda h: tuple(_conv_seg(h).weight.shape)  # noqa: E731
    eps = lambda h: _bn(h).eps  # noqa: E731
    momentum = lambda h: _bn(h).momentum  # noqa: E731
    sync = lambda h: _bn(h).sync  # noqa: E731
    drop = lambda h: getattr(getattr(h, "dropout", None), "p", None)  # noqa: E731
    common = [("norm_cfg", dict(BN, eps=1e-5), eps, 1e-5),
              ("norm_cfg", dict(BN, momentum=0.3), momentum, 0.3),
              ("norm_cfg", dict(BN, type="SyncBN"), sync, True),
              ("ignore_index", 0, lambda h: h.ignore_index, 0),
              ("num_classes", 5, lambda h: seg_in(h)[0], 5)]
    table = {
        "LightHamHead": [("channels", 24, seg_in, (3, 24, 1, 1)),
                         ("ham_channels", 8, lambda h: h.squeeze.conv.weight.shape[0], 8),
                         ("ham_kwargs", dict(MD_R=7), lambda h: h.hamburger.ham.R, 7),
                         ("ham_kwargs", dict(MD_S=2), lambda h: h.hamburger.ham.S, 2),
                         ("ham_kwargs", dict(train_steps=3), lambda h: h.hamburger.ham.train_steps, 3),
                         ("ham_kwargs", dict(eval_steps=4), lambda h: h.hamburger.ham.eval_steps, 4),
                         ("dropout_ratio", 0.3, drop, 0.3),
                         ("align_corners", True, lambda h: h.align_corners, True),
                         ("in_index", [0, 1, 2], lambda h: h.in_index, [0, 1, 2])],
        "NLHead": [("channels", 24, seg_in, (3, 24, 1, 1)),
                   ("reduction", 4, lambda h: h.nl_block.inter_channels, 4),
                   ("use_scale", False, lambda h: h.nl_block.use_scale, False),
                   ("dropout_ratio", 0.3, drop, 0.3),
                   ("align_corners", True, lambda h: h.align_corners, True)],
        "MLPDecoder": [("channels", 24, seg_in, (3, 24, 1, 1)),
                       ("dropout_ratio", 0.3, drop, 0.3),
                       ("align_corners", True, lambda h: h.align_corners, True)],
        "UPerHead": [("channels", 24, seg_in, (3, 24, 1, 1)),
                     ("pool_scales", (1, 2), lambda h: len(h.psp_modules.pool_scales), 2),
                     ("align_corners", True, lambda h: h.align_corners, True)],
        "DepthwiseSeparableASPPHead": [],
        "FCNHead": [("channels", 24, seg_in, (3, 24, 1, 1))],
        "PSAHead": [("channels", 24, seg_in, (3, 24, 1, 1)),
                    ("mask_size", (3, 7), lambda h: tuple(h.mask_size), (3, 7))],
        "CCHead": [("channels", 24, seg_in, (3, 24, 1, 1)),
                   ("recurrence", 1, lambda h: h.recurrence, 1)],
        "FPN": [("out_channels", 4, lambda h: h.fpn_convs[0].conv.weight.shape[0], 4)],
        "FPNHead": [("channels", 4, seg_in, (3, 4, 1, 1))],
        "PointHead": [("num_fcs", 2, lambda h: len(h.fcs), 2)],
    }
    norms = common if kind not in ("FPN", "PointHead", "FPNHead") else common[-2:]
    return table[kind] + (norms if kind != "FPN" else [])


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_every_honoured_head_key_changes_the_built_module(kind):
    """The registry hands each key to the head (a key that builds the same module would
    be a silently dropped one)."""
    base = MODELS.build(dict(type=kind, **HEADS[kind]))
    for key, value, probe, expected in _probe_head(kind):
        built = MODELS.build(dict(type=kind, **dict(HEADS[kind], **{key: value})))
        assert probe(built) == expected, (kind, key, probe(built))
        assert probe(base) != expected, (kind, key, "the probe cannot tell")


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_every_head_factory_rejects_an_unknown_key(kind):
    """A misspelled or missing key: a one-line ConfigError that is also a TypeError, which
    mmseg (and Python) raise."""
    from utils.errors import ConfigError
    args = dict(HEADS[kind])
    del args["in_channels"]
    for cfg, match in ((dict(HEADS[kind], bogus_key=1), "unknown or unsupported key 'bogus_key'"),
                       (args, "required key 'in_channels' is missing")):
        with pytest.raises(TypeError, match=match) as info:
            MODELS.build(dict(type=kind, **cfg))
        assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


def test_backbone_keys_change_the_built_backbone():
    from models.layers import BatchNorm2d, DropPath
    max_drop = lambda m: max(d.p for d in m.modules() if isinstance(d, DropPath))  # noqa: E731
    syncs = lambda m: {b.sync for b in m.modules() if isinstance(b, BatchNorm2d)}  # noqa: E731
    tiny = MODELS.build(dict(type="DFormer", arch="tiny"))
    assert list(MODELS.build(dict(type="DFormer", arch="small")).out_channels) != \
        list(tiny.out_channels)
    assert max_drop(tiny) == pytest.approx(0.1)
    assert max_drop(MODELS.build(dict(type="DFormer-Tiny", drop_path_rate=0.3))) == pytest.approx(0.3)
    assert syncs(tiny) == {False}
    assert syncs(MODELS.build(dict(type="DFormerv2_S", sync_bn=True))) == {True}


def test_every_registered_name_rejects_an_unknown_key():
    """All registries: a key no factory takes is a ConfigError naming it (the segmentors,
    datasets and pipeline steps are refused before anything is built)."""
    from utils.errors import ConfigError
    from mmseg.registry import HOOKS, TRANSFORMS
    seen = set()
    cases = [(MODELS, kind, args) for kind, args in HEADS.items()] + OTHERS
    for registry, kind, args in cases:
        registry.build(dict(type=kind, **args))  # valid as given
        with pytest.raises(ConfigError, match="bogus_key") as info:
            registry.build(dict(type=kind, bogus_key=1, **args))
        assert isinstance(info.value, TypeError), (kind, info.value)
        seen.add((registry.name, registry.get(kind)))
    for registry in (MODELS, DATASETS, METRICS, VISUALIZERS, TRANSFORMS, HOOKS):
        for kind in registry.keys():
            if (registry.name, registry.get(kind)) in seen:
                continue
            with pytest.raises(ConfigError, match="bogus_key|cannot be built"):
                registry.build(dict(type=kind, bogus_key=1))


def test_dformer_heads_refuse_what_they_cannot_build():
    from utils.errors import ConfigError
    bad = [("LightHamHead", dict(ham_kwargs=dict(rand_init=False)), "rand_init"),
           ("LightHamHead", dict(ham_kwargs=dict(MD_D=3)), "MD_D"),
           ("LightHamHead", dict(norm_cfg=None), "norm_cfg"),
           ("LightHamHead", dict(act_cfg=dict(type="GELU")), "act_cfg"),
           ("LightHamHead", dict(loss_decode=dict(type="FocalLoss")), "FocalLoss"),
           ("UPerHead", dict(loss_decode=dict(type="CrossEntropyLoss", loss_weight=2.0)),
            "loss_weight"),  # a head alone has no loss to weight (the segmentor's test)
           ("NLHead", dict(mode="dot_product"), "mode"),
           ("UPerHead", dict(dropout_ratio=0.1), "dropout_ratio"),
           ("MLPDecoder", dict(in_index=[1, 2, 3]), "in_index"),
           ("DepthwiseSeparableASPPHead", dict(dilations=(1, 6, 12, 18)), "dilations"),
           ("DepthwiseSeparableASPPHead", dict(channels=512), "channels")]
    for kind, change, word in bad:
        with pytest.raises(ConfigError, match=word):
            MODELS.build(dict(type=kind, **dict(HEADS[kind], **change)))


def test_data_preprocessor_is_the_data_path():
    """mean/std (0..255) and bgr_to_rgb give exactly utils.api.preprocess with the
    matching config; settings the data path does not have are errors."""
    from easydict import EasyDict
    from utils.api import preprocess
    from utils.errors import ConfigError
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    depth = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    for bgr_to_rgb, order in ((False, "BGR"), (True, "RGB")):
        pre = MODELS.build(dict(type="SegDataPreProcessor", mean=mean, std=std,
                                bgr_to_rgb=bgr_to_rgb))
        want = preprocess(bgr, depth, EasyDict(norm_mean=[0.485, 0.456, 0.406],
                                               norm_std=[0.229, 0.224, 0.225],
                                               color_order=order))
        got = pre(bgr, depth)
        assert np.allclose(got[0], want[0], atol=1e-6) and np.array_equal(got[1], want[1])
    imagenet = dict(type="SegDataPreProcessor", mean=mean, std=std)
    flipped = MODELS.build(dict(imagenet, bgr_to_rgb=True))(bgr, depth)[0]
    assert not np.allclose(flipped, MODELS.build(imagenet)(bgr, depth)[0])
    other_mean = MODELS.build(dict(imagenet, mean=[0, 0, 0]))(bgr, depth)[0]
    assert np.allclose(other_mean[0, 0], bgr[:, :, 0] / 255.0 / 0.229, atol=1e-5)
    with pytest.raises(ConfigError, match="'mean' is missing"):  # mmseg: no normalisation
        MODELS.build(dict(type="SegDataPreProcessor", std=std))
    ours = MODELS.build(dict(type="RGBDDataPreprocessor", bgr_to_rgb=True))  # configs/: 0..1 scale
    assert np.allclose(ours(bgr, depth)[0], flipped, atol=1e-6)
    for key, value in (("pad_val", 1), ("seg_pad_val", 0), ("size", (64, 64)),
                       ("size_divisor", 32), ("rgb_to_bgr", True), ("test_cfg", dict(size_divisor=32))):
        with pytest.raises(ConfigError, match=key):
            MODELS.build(dict(imagenet, **{key: value}))


def test_cross_entropy_loss_weight_and_mmseg_average():
    """loss_weight scales the loss; the mean is over all pixels, ignored ones counting 0
    (mmseg's avg_non_ignore=False); what the loss cannot do is an error."""
    import jittor as jt
    from utils.errors import ConfigError
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    label = rng.integers(0, 4, (2, 3, 5)).astype(np.int32)
    label[0, 0] = 255
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    valid = label != 255
    picked = np.take_along_axis(logp, np.where(valid, label, 0)[:, None], 1)[:, 0]
    want = -(picked * valid).sum() / label.size
    for weight in (1.0, 2.5):
        loss = MODELS.build(dict(type="CrossEntropyLoss", loss_weight=weight))
        got = float(loss(jt.array(logits), jt.array(label)).item())
        assert got == pytest.approx(weight * want, rel=1e-5)
    for key, value in (("use_sigmoid", True), ("class_weight", [1.0] * 4), ("reduction", "sum"),
                       ("avg_non_ignore", True)):
        with pytest.raises(ConfigError, match=key):
            MODELS.build(dict(type="CrossEntropyLoss", **{key: value}))


def test_segmentor_builds_what_its_dict_says():
    """EncoderDecoder: the heads are built from their dicts (channels=32 gives a 32-channel
    classifier), the losses are the heads' loss_decode, the data pre-processor sets the
    input settings, the auxiliary head and its weight follow auxiliary_head."""
    import jittor as jt
    from utils.errors import ConfigError
    model = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="DFormer", arch="tiny", drop_path_rate=0.0),
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
        decode_head=dict(type="CCHead", num_classes=5, channels=32, norm_cfg=BN, recurrence=1,
                         loss_decode=dict(type="CrossEntropyLoss", loss_weight=2.0)),
        auxiliary_head=dict(type="FCNHead", channels=16, num_classes=5, norm_cfg=BN,
                            loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.25))))
    assert model.cfg.backbone == "DFormer-Tiny" and model.cfg.decoder == "cc"
    assert type(model.decode_head).__name__ == "CCHead" and model.decode_head.recurrence == 1
    assert tuple(model.decode_head.conv_seg.weight.shape) == (5, 32, 1, 1)
    assert tuple(model.aux_head.conv_seg.weight.shape) == (5, 16, 1, 1)
    assert model.aux_head.in_index == 2 and model.aux_rate == 0.25
    assert (model.decode_loss.loss_weight, model.decode_head.loss_weight) == (2.0, 1.0)
    assert model.cfg.color_order == "RGB" and model.cfg.pad_SUNRGBD is False
    # the loss is decode (x2) + aux (x0.25), each over all pixels
    model.train()
    for m in model.modules():   # no random masks: the two passes below must compute the same
        if isinstance(m, (jt.nn.Dropout, jt.nn.Dropout2d)):
            m.p = 0.0
    rgb, depth = jt.randn(1, 3, 32, 32), jt.randn(1, 3, 32, 32)
    label = jt.array(np.random.default_rng(0).integers(0, 5, (1, 32, 32)).astype(np.int32))
    total = float(model(rgb, depth, label).item())
    out, aux = model.encode_decode(rgb, depth)
    plain = MODELS.build(dict(type="CrossEntropyLoss"))
    want = 2.0 * float(plain(out, label).item()) + 0.25 * float(plain(aux, label).item())
    assert total == pytest.approx(want, rel=1e-4)
    without_aux = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"),
        decode_head=dict(type="LightHamHead", num_classes=4, channels=24, ham_channels=32,
                         norm_cfg=BN)))
    assert without_aux.aux_head is None and without_aux.aux_rate == 0.0
    assert without_aux.decode_loss.ignore_index == 255 and without_aux.cfg.background == 255
    ignore0 = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"),
        decode_head=dict(type="LightHamHead", num_classes=4, channels=8, ham_channels=8,
                         norm_cfg=BN, ignore_index=0)))
    assert ignore0.decode_loss.ignore_index == 0 and ignore0.cfg.background == 0
    configs_style = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"),
        data_preprocessor=dict(type="RGBDDataPreprocessor", pad_sunrgbd=True),
        decode_head=dict(type="LightHamHead", num_classes=4, channels=8, ham_channels=8,
                         norm_cfg=BN),
        test_cfg=dict(crop_size=(96, 128), stride_rate=0.5)))
    assert configs_style.cfg.pad_SUNRGBD is True and configs_style.cfg.color_order == "BGR"
    assert configs_style.cfg.eval_crop_size == [96, 128]
    assert configs_style.cfg.eval_stride_rate == 0.5
    assert tuple(without_aux.decode_head.conv_seg.weight.shape) == (4, 24, 1, 1)
    # mmseg's single-input form (int in_channels / in_index) is taken as written
    single = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"),
        decode_head=dict(type="PSAHead", in_channels=512, in_index=3, channels=8, num_classes=4,
                         mask_size=(3, 3), norm_cfg=BN)))
    assert (single.decode_head.in_channels, single.decode_head.in_index) == (512, 3)
    assert single.decode_head.input_transform is None
    head = dict(type="LightHamHead", num_classes=4, norm_cfg=BN)
    for key, value in (("test_cfg", dict(mode="slide", crop_size=(8, 8), stride=(4, 4))),
                       ("train_cfg", dict(sampler=1)), ("init_cfg", dict(type="Pretrained"))):
        with pytest.raises(ConfigError, match=key):
            MODELS.build(dict(type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"),
                              decode_head=head, **{key: value}))
    with pytest.raises(FileNotFoundError, match="no_such_backbone.pth"):  # pretrained is read
        MODELS.build(dict(type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"),
                          decode_head=head, pretrained="no_such_backbone.pth"))
    for where in ("backbone", "decode_head"):
        cfg = dict(type="EncoderDecoder", backbone=dict(type="DFormer-Tiny"), decode_head=head)
        cfg[where] = dict(cfg[where], bogus_key=1)
        with pytest.raises(ConfigError, match="bogus_key"):
            MODELS.build(cfg)


def test_cascade_builds_point_rend_from_its_dicts():
    cascade = MODELS.build(dict(
        type="CascadeEncoderDecoder", num_stages=2, backbone=dict(type="DFormerv2", arch="small"),
        neck=dict(type="FPN", out_channels=16, num_outs=4),
        decode_head=[dict(type="FPNHead", in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                          feature_strides=[4, 8, 16, 32], channels=8, num_classes=4, norm_cfg=BN),
                     dict(type="PointHead", in_channels=[16], in_index=[0], channels=8,
                          num_classes=4)],
        train_cfg=dict(num_points=64),
        test_cfg=dict(mode="whole", subdivision_steps=1, subdivision_num_points=32)))
    head = cascade.decode_head
    assert cascade.cfg.backbone == "DFormerv2_S" and cascade.cfg.decoder == "point"
    assert head.num_points == 64 and head.subdivision_steps == 1
    assert head.subdivision_num_points == 32
    assert head.neck.fpn_convs[0].conv.weight.shape[0] == 16
    assert tuple(head.coarse_head.conv_seg.weight.shape) == (4, 8, 1, 1)


def test_transforms_and_unknown_types_are_errors():
    from mmseg.registry import TRANSFORMS
    from utils.errors import ConfigError
    with pytest.raises(ConfigError, match="fixed"):
        TRANSFORMS.build(dict(type="RandomFlip", prob=0.5))
    with pytest.raises(ConfigError, match="SegformerHead"):
        MODELS.build(dict(type="SegformerHead"))
    assert METRICS.build(dict(type="IoUMetric", num_classes=7)).hist.shape == (7, 7)
    with pytest.raises(ConfigError, match="iou_metrics"):
        METRICS.build(dict(type="IoUMetric", num_classes=7, iou_metrics=["mDice"]))


def test_dataset_names_give_classes_and_palettes():
    from mmseg.utils import get_classes, get_palette
    from mmseg.visualization import SegLocalVisualizer
    from utils.errors import ConfigError
    from utils.visualize import nyu_palette
    classes = get_classes("NYUDepthv2")
    assert len(classes) == 40 and classes[0] == "wall"
    assert get_palette("NYUDepthv2")[:40] == nyu_palette()[:40].tolist()
    vis = SegLocalVisualizer(dataset_name="SUNRGBD", classes=["a"] * 37)
    assert vis.dataset_meta["classes"] == ("a",) * 37
    assert vis.dataset_meta["palette"] == get_palette("SUNRGBD")
    with pytest.raises(ConfigError, match="dataset_name"):
        get_classes("Cityscapes")
    with pytest.raises(ConfigError, match="WandbVisBackend"):
        SegLocalVisualizer(vis_backends=[dict(type="WandbVisBackend")])


def test_visualization_does_not_import_the_apis():
    """The dependency runs one way: mmseg.apis uses mmseg.visualization, never back."""
    import ast
    import os
    import mmseg.visualization as vis
    folder = os.path.dirname(vis.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    assert not (node.module or "").startswith("mmseg.apis"), name
                elif isinstance(node, ast.Import):
                    assert not any(a.name.startswith("mmseg.apis") for a in node.names), name


# ----------------------------------------------------------------------------- devices

def test_device_strings():
    import jittor as jt
    from mmseg.apis.inference import parse_device
    from utils.errors import ConfigError
    assert parse_device("cpu") is False
    if not jt.has_cuda:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from mmseg.apis import inference as inf
            inf._WARNED_CPU.clear()
            assert parse_device("cuda:0") is False
            assert parse_device("cuda") is False
        assert len([w for w in caught if "no usable GPU" in str(w.message)]) == 1
    with pytest.raises(ConfigError):
        parse_device("tpu")
    with pytest.raises(ConfigError):
        parse_device("cuda:x")


# ----------------------------------------------------------------------------- smokes

def _last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_api_smoke(capsys):
    """init_model / inference_model (== utils.api == evaluator) / show_result_pyplot /
    MMSegInferencer / tools/mmseg_infer.py on random RGB-D PNGs."""
    status = mmseg_api_smoke.main([])
    assert _last_line(capsys) == "8 passed, 0 failed"
    assert status == 0


def test_compat_smoke(capsys):
    """Every module imports; the 7 backbones give the right stage shapes at 64x64."""
    status = compat_smoke.main([])
    assert _last_line(capsys) == "14 passed, 0 failed"
    assert status == 0


def test_project_config_files_build_through_the_registry():
    """The configs/ files' model dict is an mmseg model dict: MODELS builds it, with the
    decode head's norm settings as the flat-config translation reads them."""
    from utils.config import load_config, read_config_file
    path = "configs/dformer/dformer_tiny_8xb8-10e_synthrgbd-160x160.py"
    model = MODELS.build(read_config_file(path)["model"])
    flat = load_config(path)
    bns = [m for m in model.decode_head.modules() if type(m).__name__ == "BatchNorm2d"]
    assert bns and all(m.eps == flat.bn_eps == 1e-3 for m in bns)
