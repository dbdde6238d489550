"""PSA, CC and PointRend decode heads: attention ops against loop-based numpy
computations, selection through ``C.decoder``, one training step and odd-size
inference on DFormer-Tiny (the heads smoke's checks, one test each)."""
import numpy as np
import pytest

import jittor as jt
from tools import mmseg_heads_smoke as smoke


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
        head = PSAHead([4], 3, channels=8, in_index=(0,), mask_size=(7, 9), psa_type=kind)
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
    assert capsys.readouterr().out.strip().splitlines()[-1] == "4 passed, 0 failed"
