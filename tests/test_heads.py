"""PSA, CC and PointRend decode heads: parity with mmsegmentation's own code
(fixtures), mmseg's constructor arguments (honoured or refused), attention ops
against loop-based numpy computations, selection through ``C.decoder``, one
training step and odd-size inference on DFormer-Tiny (the heads smoke's checks)."""
import numpy as np
import pytest

import jittor as jt
from tools import mmseg_heads_smoke as smoke
from utils.errors import ConfigError


@pytest.mark.parametrize("name", smoke.MMSEG_FIXTURES)
def test_head_matches_mmsegmentation(name):
    # strict load of mmseg's state dict, mmseg's keys/shapes, outputs within 1e-4*max(1,|ref|)
    smoke.check_mmseg_fixture(name)


def _point_model_and_mmseg_state():
    """The DFormer ``point`` segmentor and its state dict in mmseg's cascade layout
    (floating values + 1)."""
    from models.decoders.point_head import MMSEG_KEY_MAP
    from utils.checkpoint import build_model, model_state_numpy
    model = build_model(smoke.tiny_config("point"), sync_bn=False)
    state = model_state_numpy(model)
    ours_to_mmseg = [("decode_head." + new, old) for old, new in MMSEG_KEY_MAP]
    mmseg_state = {}
    for key, value in state.items():
        for ours, theirs in ours_to_mmseg:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        mmseg_state[key] = value + 1.0 if value.dtype.kind == "f" else value
    return model, state, mmseg_state


def test_pointrend_mmseg_checkpoint_loads_into_the_segmentor():
    """mmseg's cascade layout (neck., decode_head.0., decode_head.1.) loads strictly
    into the DFormer ``point`` segmentor through the DFormer checkpoint loader."""
    from utils.checkpoint import load_state_dict
    model, state, mmseg_state = _point_model_and_mmseg_state()
    assert any(k.startswith("neck.") for k in mmseg_state)
    assert any(k.startswith("decode_head.1.fcs.0.conv.") for k in mmseg_state)
    report = load_state_dict(model, mmseg_state, strict=True)
    assert report.ok and not report.harmless
    got = model.decode_head.point_head.fc_seg.bias.numpy()
    assert np.allclose(got, state["decode_head.point_head.fc_seg.bias"] + 1.0)


def test_pointrend_load_errors_name_the_checkpoints_keys():
    """Missing, unexpected and ill-shaped tensors of an mmseg PointRend checkpoint are
    reported by mmseg's key names (the user's), not by the head's internal ones."""
    from utils.checkpoint import CheckpointError, load_state_dict
    model, _, mmseg_state = _point_model_and_mmseg_state()
    bad = dict(mmseg_state)
    del bad["decode_head.1.fc_seg.bias"]
    bad["decode_head.1.fcs.0.conv.bias"] = np.zeros(7, np.float32)
    bad["decode_head.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(model, bad, strict=True, source="pointrend.pth")
    message = str(info.value)
    assert "missing: decode_head.1.fc_seg.bias" in message
    assert "unexpected: decode_head.0.extra.weight" in message
    assert "decode_head.1.fcs.0.conv.bias checkpoint (7,)" in message
    assert "point_head" not in message and "coarse_head" not in message
    both = dict(mmseg_state, **{"decode_head.point_head.fc_seg.bias": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="'decode_head.1.fc_seg.bias' and "
                                              "'decode_head.point_head.fc_seg.bias'"):
        load_state_dict(model, both, strict=True, source="pointrend.pth")


def _psa(**kw):
    from models.decoders import PSAHead
    args = dict(mask_size=(5, 5), in_channels=8, in_index=0, channels=4, num_classes=3)
    args.update(kw)
    return PSAHead(**args)


def test_mmseg_arguments_are_honoured():
    from models.decoders import CCHead, FCNHead, PointHead, PointRendHead
    head = _psa(channels=32, normalization_factor=None, norm_cfg=dict(type="BN", eps=1e-3,
                                                                      momentum=0.3))
    assert head.conv_seg.weight.shape == [3, 32, 1, 1] and head.normalization_factor == 25.0
    assert head.reduce.bn.eps == 1e-3 and head.reduce.bn.momentum == 0.3
    assert head.reduce.bn.sync is False and head.reduce.conv.bias is None
    assert _psa(norm_cfg=dict(type="SyncBN")).reduce.bn.sync is True
    plain = _psa()  # mmseg's default norm_cfg=None: convs with bias, no norm
    assert plain.reduce.bn is None and plain.reduce.conv.bias is not None
    assert plain.proj.conv.padding == (1, 1)
    assert _psa(act_cfg=None).reduce.act is None
    fcn = FCNHead(num_convs=3, kernel_size=5, dilation=2, concat_input=False, in_channels=8,
                  in_index=2, channels=6, num_classes=4)
    assert len(fcn.convs) == 3 and not hasattr(fcn, "conv_cat")
    assert fcn.convs[0].conv.dilation == (2, 2) and fcn.convs[0].conv.padding == (4, 4)
    assert fcn.convs[0].conv.weight.shape == [6, 8, 5, 5]
    assert tuple(fcn([None, None, jt.randn(1, 8, 9, 7)]).shape) == (1, 4, 9, 7)
    cc = CCHead(recurrence=3, in_channels=[4, 8], in_index=[0, 1],
                input_transform="resize_concat", channels=16, num_classes=3)
    assert cc.recurrence == 3 and cc.convs[0].conv.weight.shape == [16, 12, 3, 3]
    point = PointRendHead.build([4, 6, 8, 10], 5, train_cfg=dict(num_points=7),
                                test_cfg=dict(subdivision_steps=1, scale_factor=3))
    assert (point.num_points, point.subdivision_steps, point.scale_factor) == (7, 1, 3)
    assert point.point_head.fcs[0].conv.weight.shape == [256, 256 + 5, 1]
    assert point.point_head.fc_seg.weight.shape == [5, 256 + 5, 1]
    weighted = PointHead(loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.5),
                         in_channels=[4], in_index=[0], channels=4, num_classes=3)
    assert weighted.loss_weight == 0.5


@pytest.mark.parametrize("kwargs,error", [
    (dict(nonsense=1), TypeError),
    (dict(norm_cfg=dict(type="GN", num_groups=2)), ConfigError),
    (dict(norm_cfg=dict(type="BN", affine=False)), ConfigError),
    (dict(act_cfg=dict(type="GELU")), ConfigError),
    (dict(conv_cfg=dict(type="Conv1d")), ConfigError),
    (dict(loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=True)), ConfigError),
    (dict(loss_decode=dict(type="DiceLoss")), ConfigError),
    (dict(loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)), ConfigError),
    (dict(sampler=dict(type="OHEMPixelSampler")), ConfigError),
    (dict(out_channels=1), ConfigError),
    (dict(psa_type="both"), ConfigError),
    (dict(mask_size=7), ConfigError),
    (dict(in_channels=[8]), ConfigError),  # a list needs an input_transform
    (dict(input_transform="concat"), ConfigError),
])
def test_psa_refuses_what_it_cannot_honour(kwargs, error):
    with pytest.raises(error):
        _psa(**kwargs)


def test_mask_size_is_required_and_other_heads_refuse_too():
    from models.decoders import FPN, CCHead, FPNHead, PointHead, PointRendHead, PSAHead
    with pytest.raises(TypeError):
        PSAHead(in_channels=8, in_index=0, channels=4, num_classes=3)
    with pytest.raises(TypeError):  # CCHead fixes num_convs at 2, as mmseg
        CCHead(num_convs=1, in_channels=8, in_index=0, channels=8, num_classes=3)
    with pytest.raises(ConfigError):
        PointHead(norm_cfg=dict(type="BN"), in_channels=[8], in_index=[0], channels=8,
                  num_classes=3)
    with pytest.raises(ConfigError):
        FPN([4, 8], 8, num_outs=2, add_extra_convs=True)
    for cls, extra in ((FPNHead, dict(feature_strides=[4])), (PointHead, {})):
        with pytest.raises(TypeError, match="input_transform") as info:
            cls(input_transform="resize_concat", in_channels=[8], in_index=[0], channels=8,
                num_classes=3, **extra)
        assert isinstance(info.value, ConfigError)  # one line under the entry points
    with pytest.raises(ConfigError):
        PointRendHead.build([4, 6, 8, 10], 3, test_cfg=dict(mode="slide"))
    with pytest.raises(ConfigError):
        PointRendHead.build([4, 6, 8, 10], 3, train_cfg=dict(num_point=7))


def test_pointrend_init_is_mmsegs():
    from models.decoders import PointRendHead
    jt.set_global_seed(0)
    head = PointRendHead.build([64, 64, 64, 64], 19).init_weights()
    fc = head.point_head.fc_seg.weight.numpy()
    assert 0.009 < fc.std() < 0.011 and not head.point_head.fc_seg.bias.numpy().any()
    fcs = head.point_head.fcs[0].conv
    assert np.isclose(fcs.weight.numpy().std(), np.sqrt(2.0 / 256), rtol=0.05)  # fan_out
    assert not fcs.bias.numpy().any()
    lateral = head.neck.lateral_convs[0].conv.weight.numpy()  # Xavier uniform, (256, 64, 1, 1)
    bound = np.sqrt(6.0 / (64 + 256))
    assert np.abs(lateral).max() <= bound and np.abs(lateral).max() > 0.95 * bound


def test_psa_mask_op_matches_loops():
    smoke.check_psa_mask()


def test_psa_aggregation_matches_loops():
    smoke.check_psa_aggregate()


def test_criss_cross_matches_loops():
    smoke.check_criss_cross()


def test_point_sampling_and_test_points_match_loops():
    smoke.check_point_ops()


def test_psa_mask_index_is_a_rearrangement():
    from models.decoders.psa_head import psa_mask_index
    h, w, mh, mw = 4, 5, 7, 9  # window covers the whole map: every pair appears once
    for kind in ("collect", "distribute"):
        index = psa_mask_index(h, w, mh, mw, kind)
        assert index.shape == (h * w * h * w,)
        assert len(np.unique(index)) == index.size  # no zero slot used, no repeats
        assert index.max() < mh * mw * h * w


def test_psa_single_direction_types_and_odd_shrink():
    from models.decoders.psa_head import PSAHead
    feats = [jt.randn(1, 4, 7, 9)]
    for kind in ("collect", "distribute"):
        head = PSAHead(mask_size=(7, 9), psa_type=kind, in_channels=4, in_index=0, channels=8,
                       num_classes=3)
        head.eval()
        assert tuple(head(feats).shape) == (1, 3, 7, 9)


def test_criss_cross_block_starts_as_identity():
    from models.decoders.cc_head import CrissCrossAttention
    block = CrissCrossAttention(16)
    x = jt.randn(1, 16, 3, 5)
    assert np.allclose(block(x).numpy(), x.numpy())


def test_point_train_points_shape_and_range():
    from models.decoders.point_head import get_points_train
    jt.set_global_seed(0)
    points = get_points_train(jt.randn(2, 5, 6, 7), 20, oversample_ratio=3,
                              importance_sample_ratio=0.75).numpy()
    assert points.shape == (2, 20, 2) and points.min() >= 0 and points.max() <= 1


@pytest.mark.parametrize("decoder,cls", [("psa", "PSAHead"), ("cc", "CCHead"), ("point", "PointRendHead")])
def test_decoder_string_selects_head(decoder, cls):
    from models.decoders import build_decode_head
    cfg = smoke.tiny_config(decoder)
    head, aux, rate = build_decode_head(cfg, [32, 64, 128, 256], sync_bn=False)
    assert type(head).__name__ == cls
    assert (aux is None) == (decoder == "point") and rate == (0.0 if decoder == "point" else 0.4)


@pytest.mark.parametrize("decoder", smoke.HEADS)
def test_head_train_step_and_odd_size_inference(decoder):
    detail = smoke.check_head_step(decoder)
    assert float(detail.split()[-1]) > 0


def test_heads_smoke_command_ops(capsys):
    assert smoke.main(["--backbones"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{len(smoke.MMSEG_FIXTURES) + 4} passed, 0 failed"


def test_ham_and_nl_heads_take_mmsegs_single_input():
    """``in_channels=C, in_index=i`` (ints, mmseg's single-input config) is ``feats[i]``."""
    from models.decoders import LightHamHead, NLHead
    feats = [None, None, jt.randn(1, 16, 5, 6)]
    single = LightHamHead(16, 3, channels=8, in_index=2, ham_channels=8)
    listed = LightHamHead([16], 3, channels=8, in_index=[2], ham_channels=8)
    listed.load_state_dict(single.state_dict())
    bases = np.random.default_rng(0).random((1, 8, 64))
    for head in (single, listed):
        head.eval()
        head.hamburger.ham.fixed_bases = bases
    assert np.allclose(single(feats).numpy(), listed(feats).numpy())
    nl = NLHead(16, 3, channels=8, in_index=2)
    nl.eval()
    assert tuple(nl(feats).shape) == (1, 3, 5, 6)
    with pytest.raises(ConfigError):
        LightHamHead(16, 3, in_index=[2])


def test_norm_cfg_for_the_dformer_heads():
    from models.decoders import LightHamHead
    from models.decoders.decode_head import bn_kwargs
    kw = bn_kwargs(dict(type="BN", eps=1e-3, momentum=0.05), "LightHamHead")
    head = LightHamHead(16, 3, channels=8, in_index=2, ham_channels=8, **kw)
    bn = head.squeeze.bn
    assert (bn.eps, bn.momentum, bn.sync) == (1e-3, 0.05, False)
    assert bn_kwargs(dict(type="SyncBN"), "LightHamHead")["sync_bn"] is True
    with pytest.raises(ConfigError):
        bn_kwargs(None, "LightHamHead")
