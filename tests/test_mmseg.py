"""The mmseg-style façade: structures, registry, device handling, and the API and
compatibility smokes (which check inference_model == utils.api == the evaluator,
MMSegInferencer outputs and tools/mmseg_infer.py)."""
import warnings

import numpy as np
import pytest

from mmseg.registry import DATASETS, MODELS, backbone_name, dataset_name, decoder_name
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
    assert sample.cpu().numpy() is sample
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
                 "CrossEntropyLoss"):
        assert kind in MODELS
    assert dataset_name("NYUDepthv2Dataset") == "NYUDepthv2" and "SUNRGBDDataset" in DATASETS
    from utils.errors import ConfigError
    with pytest.raises(ConfigError):
        backbone_name("DFormer", "huge")
    with pytest.raises(ConfigError):
        MODELS.build({"type": "NoSuchHead"})


def test_registry_builds_a_segmentor_and_a_head():
    model = MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type="DFormer", arch="tiny"),
        decode_head=dict(type="CCHead", num_classes=5, channels=32)))
    assert model.cfg.backbone == "DFormer-Tiny" and model.cfg.decoder == "cc"
    assert type(model.decode_head).__name__ == "CCHead"
    head = MODELS.build(dict(type="PSAHead", in_channels=8, num_classes=3, channels=8,
                             in_index=0, mask_size=(5, 5)))
    assert type(head).__name__ == "PSAHead" and head.channels == 8
    cascade = MODELS.build(dict(
        type="CascadeEncoderDecoder", num_stages=2, backbone=dict(type="DFormerv2", arch="small"),
        neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=256),
        decode_head=[dict(type="FPNHead", num_classes=4), dict(type="PointHead", num_classes=4)]))
    assert cascade.cfg.backbone == "DFormerv2_S" and cascade.cfg.decoder == "point"


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
