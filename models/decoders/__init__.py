"""Decode heads and the config ``decoder`` string -> head registry."""
from .ham_head import BaseDecodeHead, Hamburger, LightHamHead, NMF2D, init_decoder_weights
from .mlp_decoder import MLPDecoder
from .decode_head import DecodeHead
from .fcn_head import FCNHead, DFormerFCNHead
from .uper_head import UPerHead
from .deeplabv3plus import DeepLabV3Plus
from .nl_head import NLHead
from .psa_head import PSAHead, default_mask_size
from .cc_head import CCHead
from .point_head import FPN, FPNHead, PointHead, PointRendHead
from ..errors import ConfigError

__all__ = ["BaseDecodeHead", "DecodeHead", "Hamburger", "LightHamHead", "NMF2D", "MLPDecoder",
           "FCNHead", "DFormerFCNHead", "UPerHead", "DeepLabV3Plus", "NLHead", "PSAHead", "CCHead",
           "FPN", "FPNHead", "PointHead", "PointRendHead",
           "DECODERS", "AUX_INDEX", "build_decode_head",
           "init_decoder_weights"]

# Stage index the auxiliary FCN head reads (the reference's ``aux_index``).
AUX_INDEX = 2


# Logits of the auxiliary head: the reference calls ``FCNHead(channels[2], cfg.num_classes,
# norm_layer=...)``, whose second positional parameter is the hidden width, so its auxiliary
# head is ``num_classes`` wide inside and keeps FCNHead's default of 40 output classes
# (reproduced: official checkpoints with ``aux_head.*`` load, the auxiliary loss is the same;
# tests/fixtures/train_parity/NYUDepthv2/DFormer_Tiny/train_case_aux1).
REFERENCE_AUX_CLASSES = 40


def _aux_fcn(channels, cfg, norm):
    """Auxiliary FCN head on backbone stage ``AUX_INDEX``, shaped as the reference's."""
    if cfg.num_classes > REFERENCE_AUX_CLASSES:
        raise ConfigError(
            f"num_classes {cfg.num_classes}: the reference's auxiliary FCN head has "
            f"{REFERENCE_AUX_CLASSES} output classes; set aux_rate = 0 or use at most "
            f"{REFERENCE_AUX_CLASSES} classes")
    return DFormerFCNHead(channels[AUX_INDEX], channels=cfg.num_classes,
                          num_classes=REFERENCE_AUX_CLASSES, in_index=AUX_INDEX, **norm)


def _build_ham(cfg, channels, norm):
    head = LightHamHead(channels[1:], cfg.num_classes, channels=cfg.decoder_embed_dim,
                        in_index=(1, 2, 3), **norm)
    aux_rate = cfg.get("aux_rate", 0) or 0
    if aux_rate != 0:
        return head, _aux_fcn(channels, cfg, norm), aux_rate
    return head, None, 0.0


def _build_mlp(cfg, channels, norm):
    return MLPDecoder(channels, cfg.num_classes, embed_dim=cfg.decoder_embed_dim, **norm), None, 0.0


def _build_uper(cfg, channels, norm):
    head = UPerHead(channels, cfg.num_classes, channels=512, **norm)
    return head, _aux_fcn(channels, cfg, norm), 0.4


def _build_deeplab(cfg, channels, norm):
    return DeepLabV3Plus(channels, cfg.num_classes, **norm), _aux_fcn(channels, cfg, norm), 0.4


def _build_nl(cfg, channels, norm):
    head = NLHead(channels[1:], cfg.num_classes, channels=512, in_index=(1, 2, 3), **norm)
    return head, _aux_fcn(channels, cfg, norm), 0.4


def _norm_cfg(norm):
    """The builder's BN settings as an mmcv ``norm_cfg`` (for the heads ported from mmseg)."""
    return dict(type="SyncBN" if norm["sync_bn"] else "BN", eps=norm["bn_eps"],
                momentum=norm["bn_momentum"])


def _mmseg_head_args(cfg, channels, norm):
    """Stages 1-3 resized to stride 8 and concatenated, 512 channels, as the DFormer heads."""
    return dict(in_channels=channels[1:], in_index=[1, 2, 3], input_transform="resize_concat",
                channels=512, num_classes=cfg.num_classes, norm_cfg=_norm_cfg(norm),
                ignore_index=cfg.get("background", 255))


def _build_psa(cfg, channels, norm):
    mask = cfg.get("psa_mask_size") or default_mask_size(cfg)
    head = PSAHead(mask_size=tuple(int(v) for v in mask),
                   psa_type=cfg.get("psa_type", "bi-direction"),
                   **_mmseg_head_args(cfg, channels, norm))
    return head, _aux_fcn(channels, cfg, norm), 0.4


def _build_cc(cfg, channels, norm):
    head = CCHead(recurrence=cfg.get("cc_recurrence", 2), **_mmseg_head_args(cfg, channels, norm))
    return head, _aux_fcn(channels, cfg, norm), 0.4


def _build_point(cfg, channels, norm):
    head = PointRendHead.build(
        channels, cfg.num_classes, norm_cfg=_norm_cfg(norm),
        ignore_index=cfg.get("background", 255),
        train_cfg=dict(num_points=cfg.get("point_num_points", 2048)),
        test_cfg=dict(subdivision_steps=cfg.get("point_subdivision_steps", 2),
                      subdivision_num_points=cfg.get("point_subdivision_num_points", 8196)))
    return head, None, 0.0


def _build_fcn(cfg, channels, norm):
    head = DFormerFCNHead(channels[-1], kernel_size=3, num_classes=cfg.num_classes, in_index=-1,
                          **norm)
    return head, None, 0.0


# Config ``decoder`` strings the reference builder accepts; any other value
# falls back to the FCN head on the last stage ("FCN-32s").
DECODERS = {
    "ham": _build_ham,
    "MLPDecoder": _build_mlp,
    "UPernet": _build_uper,
    "deeplabv3+": _build_deeplab,
    "nl": _build_nl,
    "psa": _build_psa,
    "cc": _build_cc,
    "point": _build_point,
}


def build_decode_head(cfg, in_channels, sync_bn=True):
    """Build the decode head (and auxiliary head) the reference builds for ``cfg.decoder``.

    Args:
        cfg (EasyDict): needs ``decoder``, ``num_classes``, ``decoder_embed_dim``
            (ham, MLPDecoder), ``aux_rate`` (ham), ``bn_eps``, ``bn_momentum``.
        in_channels (Sequence[int]): widths of the 4 backbone stages.
        sync_bn (bool): synchronise head BN statistics under MPI.

    Returns:
        (decode_head, aux_head or None, aux_rate). The auxiliary head is an
        :class:`DFormerFCNHead` meant for backbone stage 2 (``AUX_INDEX``); it accepts
        the feature list or that single map. ``aux_rate`` is 0.0 without it.
        The heads are initialised once, by ``EncoderDecoder.init_weights``.
    """
    norm = dict(bn_eps=cfg.get("bn_eps", 1e-3), bn_momentum=cfg.get("bn_momentum", 0.1),
                sync_bn=sync_bn)
    builder = DECODERS.get(cfg.decoder, _build_fcn)
    head, aux, aux_rate = builder(cfg, list(in_channels), norm)
    return head, aux, float(aux_rate)
