"""mmsegmentation 1.x ``BaseDecodeHead`` arguments for the heads ported from mmseg
(``FCNHead``, ``PSAHead``, ``CCHead``, ``FPNHead``, ``PointHead``).

The constructor takes mmseg's parameter names with mmseg's meaning; a value this
project cannot honour (another norm or activation type, a sampler, a sigmoid
loss, ...) is a :class:`~models.errors.ConfigError` naming the option, never
dropped. ``norm_cfg`` / ``act_cfg`` / ``conv_cfg`` are read once here.
"""
import math

import numpy as np
import jittor as jt
from jittor import nn

from ..errors import ConfigError
from ..layers import Conv2d, ConvModule, Dropout2d
from ..ops import resize
from .ham_head import configure_norms

__all__ = ["DecodeHead", "norm_settings", "check_act_cfg", "check_conv_cfg", "build_conv_module",
           "bn_kwargs", "loss_weight_of", "mmseg_init", "normal_init", "DEFAULT_LOSS"]

DEFAULT_LOSS = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
DEFAULT_INIT = dict(type="Normal", std=0.01, override=dict(name="conv_seg"))
INPUT_TRANSFORMS = (None, "resize_concat", "multiple_select")


def norm_settings(norm_cfg, owner):
    """mmcv ``norm_cfg`` -> None (no norm) or dict(eps, momentum, sync) for BatchNorm2d."""
    if norm_cfg is None:
        return None
    cfg = dict(norm_cfg)
    kind = cfg.pop("type", None)
    if kind not in ("BN", "BN2d", "SyncBN"):
        raise ConfigError(f"{owner}: norm_cfg type {kind!r} is not supported; "
                          "use dict(type='BN') or dict(type='SyncBN'), or None")
    if cfg.pop("requires_grad", True) is not True:
        raise ConfigError(f"{owner}: norm_cfg requires_grad=False (frozen norms) is not "
                          "supported; remove it")
    eps, momentum = cfg.pop("eps", 1e-5), cfg.pop("momentum", 0.1)
    if momentum is None:
        raise ConfigError(f"{owner}: norm_cfg momentum=None (cumulative average) is not "
                          "supported; give a number")
    if cfg:
        raise ConfigError(f"{owner}: norm_cfg keys {sorted(cfg)} are not supported; "
                          "only type, eps, momentum, requires_grad")
    return dict(eps=float(eps), momentum=float(momentum), sync=kind == "SyncBN")


def bn_kwargs(norm_cfg, owner):
    """mmcv ``norm_cfg`` -> ``bn_eps`` / ``bn_momentum`` / ``sync_bn`` of the DFormer heads
    (LightHamHead, UPerHead, ...), which always have BatchNorm."""
    norm = norm_settings(norm_cfg, owner)
    if norm is None:
        raise ConfigError(f"{owner}: norm_cfg=None is not supported (this head always has "
                          "BatchNorm); use dict(type='BN') or dict(type='SyncBN')")
    return dict(bn_eps=norm["eps"], bn_momentum=norm["momentum"], sync_bn=norm["sync"])


def check_act_cfg(act_cfg, owner):
    """mmcv ``act_cfg`` -> "relu" or None; ReLU (``inplace`` is immaterial) only."""
    if act_cfg is None:
        return None
    cfg = dict(act_cfg)
    kind = cfg.pop("type", None)
    cfg.pop("inplace", None)
    if kind != "ReLU" or cfg:
        raise ConfigError(f"{owner}: act_cfg {dict(act_cfg)!r} is not supported; "
                          "use dict(type='ReLU') or None")
    return "relu"


def check_conv_cfg(conv_cfg, owner, allowed=(None,)):
    if conv_cfg not in allowed:
        raise ConfigError(f"{owner}: conv_cfg {conv_cfg!r} is not supported; use "
                          + " or ".join(repr(a) for a in allowed))


def build_conv_module(in_channels, out_channels, kernel_size, norm, act, padding=0,
                      dilation=1):
    """mmcv ``ConvModule`` (conv, optional BN, optional ReLU; bias only without norm)."""
    m = ConvModule(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                   norm=norm is not None, act=act,
                   bn_eps=norm["eps"] if norm is not None else 1e-5)
    if norm is not None:
        configure_norms(m, momentum=norm["momentum"], sync=norm["sync"])
    return m


class DecodeHead(nn.Module):
    """mmseg ``BaseDecodeHead``: input selection (``in_index`` / ``input_transform``),
    optional Dropout2d and the 1x1 classifier ``conv_seg``.

    ``input_transform``: None takes ``inputs[in_index]`` (ints); ``"resize_concat"``
    resizes the selected maps to the first one and concatenates them
    (``in_channels`` becomes their sum); ``"multiple_select"`` returns the list.
    ``loss_decode`` must be a single cross-entropy without sigmoid (the
    segmentor's pixel loss); its ``loss_weight`` scales the losses the head
    computes itself (PointRend's point loss) and must be 1 for the others.
    ``init_weights`` is mmseg's (:func:`mmseg_init`, ``Normal(std=0.01)`` for
    the classifier).
    """

    default_init_cfg = DEFAULT_INIT
    conv_cfgs = (None,)  # the conv_cfg values a head can build
    computes_own_loss = False  # True: the head computes (and weights) its loss itself

    def __init__(self, in_channels, channels, *, num_classes, out_channels=None, threshold=None,
                 dropout_ratio=0.1, conv_cfg=None, norm_cfg=None, act_cfg=dict(type="ReLU"),
                 in_index=-1, input_transform=None, loss_decode=DEFAULT_LOSS, ignore_index=255,
                 sampler=None, align_corners=False, init_cfg=DEFAULT_INIT):
        owner = type(self).__name__
        if out_channels not in (None, num_classes):
            raise ConfigError(f"{owner}: out_channels={out_channels} (binary sigmoid output) is "
                              "not supported; leave out_channels unset")
        if threshold is not None:
            raise ConfigError(f"{owner}: threshold is only for out_channels=1, which is not "
                              "supported; remove it")
        if sampler is not None:
            raise ConfigError(f"{owner}: pixel sampler {sampler!r} is not supported; remove it")
        if init_cfg not in (None, self.default_init_cfg):
            raise ConfigError(f"{owner}: init_cfg {init_cfg!r} is not supported; remove it")
        self.loss_weight = loss_weight_of(loss_decode, owner)
        if self.loss_weight != 1.0 and not self.computes_own_loss:
            raise ConfigError(f"{owner}: loss_decode loss_weight={self.loss_weight} is not "
                              "supported (the segmentor's pixel loss has weight 1); remove it")
        self._init_inputs(in_channels, in_index, input_transform, owner)
        self.channels = channels
        self.num_classes = num_classes
        self.out_channels = num_classes
        self.dropout_ratio = dropout_ratio
        self.conv_cfg = conv_cfg
        check_conv_cfg(conv_cfg, owner, allowed=self.conv_cfgs)
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.norm = norm_settings(norm_cfg, owner)
        self.act = check_act_cfg(act_cfg, owner)
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.conv_seg = Conv2d(channels, num_classes, 1)
        self.dropout = Dropout2d(dropout_ratio, is_train=True) if dropout_ratio > 0 else None

    def _init_inputs(self, in_channels, in_index, input_transform, owner):
        if input_transform not in INPUT_TRANSFORMS:
            raise ConfigError(f"{owner}: input_transform {input_transform!r} is not one of "
                              f"{INPUT_TRANSFORMS}")
        self.input_transform = input_transform
        if input_transform is None:
            if not isinstance(in_channels, int) or not isinstance(in_index, int):
                raise ConfigError(f"{owner}: without input_transform, in_channels and in_index "
                                  "must be ints; for several inputs set input_transform="
                                  "'resize_concat'")
            self.in_channels, self.in_index = in_channels, in_index
            return
        if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)) \
                or len(in_channels) != len(in_index):
            raise ConfigError(f"{owner}: input_transform={input_transform!r} needs in_channels "
                              "and in_index as lists of the same length")
        self.in_index = list(in_index)
        self.in_channels = (sum(in_channels) if input_transform == "resize_concat"
                            else list(in_channels))

    def conv_module(self, in_channels, out_channels, kernel_size, padding=0, dilation=1):
        """ConvModule with the head's ``norm_cfg`` / ``act_cfg``."""
        return build_conv_module(in_channels, out_channels, kernel_size, self.norm, self.act,
                                 padding=padding, dilation=dilation)

    def transform_inputs(self, inputs):
        """mmseg's ``_transform_inputs``."""
        if self.input_transform is None:
            return inputs[self.in_index]
        xs = [inputs[i] for i in self.in_index]
        if self.input_transform == "multiple_select":
            return xs
        size = xs[0].shape[2:]
        return jt.concat([resize(x, size, align_corners=self.align_corners) for x in xs], dim=1)

    def cls_seg(self, x):
        """Dropout2d (training only) then the 1x1 classifier."""
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)

    def init_weights(self):
        """mmseg's init (see :func:`mmseg_init`), ``Normal(std=0.01)`` for ``conv_seg``."""
        mmseg_init(self)
        normal_init(self.conv_seg, std=0.01)
        return self


def mmseg_init(module):
    """What mmcv's ``ConvModule`` does at construction: Kaiming normal (fan_out, ReLU)
    conv weights, zero biases, BN weight 1 / bias 0. Plain convs keep their default."""
    for m in module.modules():
        if isinstance(m, ConvModule):
            weight = m.conv.weight
            fan_out = weight.shape[0] * int(np.prod(weight.shape[2:]))
            weight.assign(jt.randn(weight.shape) * math.sqrt(2.0 / fan_out))
            if m.conv.bias is not None:
                m.conv.bias.assign(jt.zeros(m.conv.bias.shape))
            if m.bn is not None:
                m.bn.weight.assign(jt.ones(m.bn.weight.shape))
                m.bn.bias.assign(jt.zeros(m.bn.bias.shape))
    return module


def normal_init(module, std):
    """Weight ~ N(0, std), bias 0 (mmengine ``normal_init``)."""
    module.weight.assign(jt.randn(module.weight.shape) * std)
    if getattr(module, "bias", None) is not None:
        module.bias.assign(jt.zeros(module.bias.shape))


def loss_weight_of(loss_decode, owner):
    """The ``loss_weight`` of a plain cross-entropy ``loss_decode``; anything else is an error."""
    if not isinstance(loss_decode, dict):
        raise ConfigError(f"{owner}: loss_decode must be one dict (several losses are not "
                          "supported)")
    cfg = dict(loss_decode)
    kind = cfg.pop("type", None)
    weight = float(cfg.pop("loss_weight", 1.0))
    if kind != "CrossEntropyLoss":
        raise ConfigError(f"{owner}: loss_decode type {kind!r} is not supported; use "
                          "'CrossEntropyLoss'")
    unsupported = {k: v for k, v in cfg.items()
                   if (k, v) not in (("use_sigmoid", False), ("use_mask", False),
                                     ("avg_non_ignore", False), ("class_weight", None),
                                     ("reduction", "mean"), ("loss_name", "loss_ce"))}
    if unsupported:
        raise ConfigError(f"{owner}: loss_decode options {unsupported!r} are not supported "
                          "(plain softmax cross-entropy, mean over all pixels, only)")
    return weight
