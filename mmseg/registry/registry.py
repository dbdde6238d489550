"""A small mmengine-like ``Registry`` and the populated registries (module doc in __init__)."""
import copy
import functools
import inspect

import numpy as np

__all__ = ["Registry", "MODELS", "DATASETS", "TRANSFORMS", "METRICS", "VISUALIZERS", "HOOKS",
           "backbone_name", "decoder_name", "dataset_name"]


class Registry:
    """Name -> object table with mmengine's ``register_module`` / ``get`` / ``build``.

    ``build(cfg)`` pops ``type`` from a dict and calls the registered object with the
    remaining keys. Each entry may carry ``info`` (a dict of facts such as the
    internal decoder string), read with :meth:`info`.
    """

    def __init__(self, name, scope="mmseg"):
        self.name = name
        self.scope = scope
        self._module_dict = {}
        self._info = {}

    def __repr__(self):
        return f"Registry(name={self.name!r}, items={len(self)})"

    def __len__(self):
        return len(self._module_dict)

    def __contains__(self, key):
        return self.get(key) is not None

    @property
    def module_dict(self):
        return dict(self._module_dict)

    def keys(self):
        return list(self._module_dict)

    @staticmethod
    def _strip_scope(key):
        if isinstance(key, str) and "." in key:
            scope, _, rest = key.partition(".")
            if scope in ("mmseg", "mmengine", "mmcv", "mmpretrain", "dformer"):
                return rest
        return key

    def get(self, key):
        """The registered object, or None (``mmseg.Foo`` scoped names are accepted)."""
        if not isinstance(key, str):
            return key if callable(key) else None
        return self._module_dict.get(self._strip_scope(key))

    def info(self, key):
        return dict(self._info.get(self._strip_scope(key), {}))

    def register_module(self, name=None, force=False, module=None, info=None):
        """Register ``module`` (or decorate): ``name`` may be a string or a list of aliases."""
        def add(obj):
            names = name if isinstance(name, (list, tuple)) else [name or obj.__name__]
            for key in names:
                if key in self._module_dict and not force:
                    raise KeyError(f"{key} is already registered in {self.name}")
                self._module_dict[key] = obj
                self._info[key] = dict(info or {})
            return obj
        if module is not None:
            return add(module)
        return add

    def build(self, cfg, **default_args):
        """Build ``cfg`` (a dict with ``type``): the other keys go to the registered object
        by name; a key it does not take is a :class:`KeywordError` (a ``ConfigError`` and a
        ``TypeError``, as mmseg raises) naming it."""
        from utils.errors import ConfigError, KeywordError
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise ConfigError(f"{self.name}: a config dict with a 'type' key is needed, got {cfg!r}")
        args = copy.deepcopy(dict(cfg))
        kind = args.pop("type")
        obj = self.get(kind)
        if obj is None:
            raise ConfigError(f"{self.name}: unknown type {kind!r}; registered: "
                              + ", ".join(sorted(self._module_dict)))
        for key, value in default_args.items():
            args.setdefault(key, value)
        check_keys(obj, args, kind)
        try:
            return obj(**args)
        except TypeError as exc:  # a key a nested **kwargs constructor misses or does not take
            problem = _keyword_problem(exc)
            if problem is None:
                raise
            raise KeywordError(f"{kind}: {problem}") from None


def _accepted(obj):
    """Keyword names ``obj`` takes, or None when it takes any (``**kwargs``)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [name for name, p in params.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_keys(obj, args, owner):
    """KeywordError naming the first key of ``args`` that ``obj`` does not take, or the
    first required one ``args`` lacks."""
    from utils.errors import KeywordError
    accepted = _accepted(obj)
    if accepted is None:
        return
    unknown = sorted(k for k in args if k not in accepted)
    if unknown:
        raise KeywordError(f"{owner}: unknown or unsupported key {unknown[0]!r} (accepted: "
                          f"{', '.join(accepted)})")
    target = obj.__init__ if inspect.isclass(obj) else obj
    for name, p in inspect.signature(target).parameters.items():
        if name != "self" and p.default is p.empty and name not in args and \
                p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise KeywordError(f"{owner}: required key {name!r} is missing")


def _keyword_problem(exc):
    """'unknown or unsupported key 'k'' / 'required key 'k' is missing' of a call's TypeError."""
    import re
    text = str(exc)
    found = re.search(r"unexpected keyword argument '(\w+)'", text)
    if found:
        return f"unknown or unsupported key {found.group(1)!r}"
    found = re.search(r"missing \d+ required (?:positional|keyword-only) arguments?: '(\w+)'", text)
    if found:
        return f"required key {found.group(1)!r} is missing"
    return None


MODELS = Registry("model")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
METRICS = Registry("metric")
VISUALIZERS = Registry("visualizer")
HOOKS = Registry("hook")


# ----------------------------------------------------------------------------- models

_DFORMER_ARCHS = {"tiny": "DFormer-Tiny", "t": "DFormer-Tiny", "small": "DFormer-Small",
                  "s": "DFormer-Small", "base": "DFormer-Base", "b": "DFormer-Base",
                  "large": "DFormer-Large", "l": "DFormer-Large"}
_DFORMERV2_ARCHS = {"small": "DFormerv2_S", "s": "DFormerv2_S", "base": "DFormerv2_B",
                    "b": "DFormerv2_B", "large": "DFormerv2_L", "l": "DFormerv2_L"}


def backbone_name(kind, arch=None):
    """Internal backbone name (``C.backbone``) of a backbone ``type`` (+ ``arch``)."""
    from utils.errors import ConfigError
    info = MODELS.info(kind)
    if "backbone" in info:
        return info["backbone"]
    table = info.get("archs")
    if table is None:
        raise ConfigError(f"{kind!r} is not a registered backbone type")
    key = str(arch or "").lower().replace("dformerv2_", "").replace("dformer-", "")
    if key not in table:
        raise ConfigError(f"backbone {kind}: unknown arch {arch!r}; use one of "
                          + ", ".join(sorted(set(table))))
    return table[key]


def decoder_name(kind):
    """Internal decoder string (``C.decoder``) of a decode-head ``type``."""
    from utils.errors import ConfigError
    info = MODELS.info(kind)
    if "decoder" not in info:
        raise ConfigError(f"{kind!r} is not a registered decode-head type")
    return info["decoder"]


def _backbone_factory(fixed=None, archs=None):
    """Factory of one backbone type; ``arch`` only for the types that take it
    (``DFormer`` / ``DFormerv2``), ``sync_bn`` synchronises its BatchNorm under MPI."""
    def build_fixed(drop_path_rate=0.1, sync_bn=False):
        from models.encoders import build_backbone
        return build_backbone(fixed, drop_path_rate=drop_path_rate, sync_bn=sync_bn)

    def build_arch(arch, drop_path_rate=0.1, sync_bn=False):
        from models.encoders import build_backbone
        kind = "DFormer" if "DFormer-Tiny" in archs.values() else "DFormerv2"
        return build_backbone(backbone_name(kind, arch), drop_path_rate=drop_path_rate,
                              sync_bn=sync_bn)
    return build_fixed if fixed else build_arch


MODELS.register_module("DFormer", module=_backbone_factory(archs=_DFORMER_ARCHS),
                       info={"archs": _DFORMER_ARCHS})
MODELS.register_module("DFormerv2", module=_backbone_factory(archs=_DFORMERV2_ARCHS),
                       info={"archs": _DFORMERV2_ARCHS})
for _name in ("DFormer-Tiny", "DFormer-Small", "DFormer-Base", "DFormer-Large",
              "DFormerv2_S", "DFormerv2_B", "DFormerv2_L"):
    _aliases = [_name, _name.replace("-", "_")] if "-" in _name else [_name]
    MODELS.register_module(_aliases, module=_backbone_factory(fixed=_name),
                           info={"backbone": _name})


# ----------------------------------------------------------------------------- heads
#
# Two kinds of decode head. The heads ported from mmseg (FCNHead, PSAHead, CCHead, FPN,
# FPNHead, PointHead) take mmseg's parameters themselves: the registry hands every key
# over by name. DFormer's own heads (LightHamHead, MLPDecoder, UPerHead,
# DepthwiseSeparableASPPHead, NLHead) have the reference's constructors; their factories
# below take mmseg's names and translate them. Either way a key that cannot be honoured
# is a ConfigError naming it.

def _class(module_path, class_name):
    import importlib
    return getattr(importlib.import_module(module_path), class_name)


def _lazy_class(module_path, class_name):
    """Factory that imports the head class when first built (keeps the registry light)."""
    def build(**kwargs):
        cls = _class(module_path, class_name)
        check_keys(cls, kwargs, class_name)
        return cls(**kwargs)
    build.__name__ = class_name
    return build


def _dformer_head(owner, norm_cfg, act_cfg, loss_decode, ignore_index):
    """Checks shared by DFormer's heads; the constructor keywords for the BN settings.
    The head computes no loss: ``loss_decode`` must be a plain cross-entropy of weight 1
    (an ``EncoderDecoder`` applies its decode / auxiliary head's weight itself) and
    ``ignore_index`` is recorded for the segmentor's loss, as mmseg's heads do."""
    from models.decoders.decode_head import bn_kwargs, check_act_cfg, loss_weight_of
    from utils.errors import ConfigError
    if check_act_cfg(act_cfg, owner) != "relu":
        raise ConfigError(f"{owner}: act_cfg must be dict(type='ReLU') (the head's activation)")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ConfigError(f"{owner}: ignore_index must be an int (got {ignore_index!r})")
    weight = loss_weight_of(loss_decode, owner)
    if weight != 1.0:
        raise ConfigError(f"{owner}: loss_decode loss_weight={weight} is not supported on a head "
                          "alone (it has no loss); an EncoderDecoder applies it")
    return bn_kwargs(norm_cfg, owner)


def _seq(value):
    """An int stays an int (mmseg's single input); a tuple becomes a list."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _need(value, allowed, key, owner):
    from utils.errors import ConfigError
    if value not in allowed:
        raise ConfigError(f"{owner}: {key}={value!r} is not supported (this head: "
                          + " or ".join(repr(a) for a in allowed) + ")")


_DEFAULT_LOSS = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
_RELU = dict(type="ReLU")


def _light_ham_head(in_channels, in_index, num_classes, channels=512, ham_channels=512,
                    ham_kwargs=None, dropout_ratio=0.1, norm_cfg=None, act_cfg=_RELU,
                    align_corners=False, input_transform="multiple_select",
                    loss_decode=_DEFAULT_LOSS, ignore_index=255):
    """mmseg ``LightHamHead`` (selected maps resized to the first and concatenated)."""
    owner = "LightHamHead"
    norm = _dformer_head(owner, norm_cfg, act_cfg, loss_decode, ignore_index)
    _need(input_transform, ("multiple_select",), "input_transform", owner)
    nmf = dict(ham_kwargs or {})
    nmf_args = {}
    for key, ours in (("MD_S", "S"), ("MD_R", "R"), ("train_steps", "train_steps"),
                      ("eval_steps", "eval_steps")):
        if key in nmf:
            nmf_args[ours] = nmf.pop(key)
    _need(nmf.pop("rand_init", True), (True,), "ham_kwargs.rand_init", owner)
    nmf.pop("inv_t", None)  # mmseg's NMF2D sets inv_t = 1 whatever is given; so does ours
    if nmf:
        from utils.errors import ConfigError
        raise ConfigError(f"{owner}: ham_kwargs key {sorted(nmf)[0]!r} is not supported (MD_S, "
                          "MD_R, train_steps, eval_steps, inv_t, rand_init)")
    head = _class("models.decoders.ham_head", "LightHamHead")(
        _seq(in_channels), num_classes, channels=channels, in_index=_seq(in_index),
        ham_channels=ham_channels, dropout_ratio=dropout_ratio, align_corners=align_corners,
        nmf_kwargs=nmf_args or None, **norm)
    head.ignore_index = ignore_index
    return head


def _nl_head(in_channels, in_index, num_classes, channels=512, reduction=2, use_scale=True,
             mode="embedded_gaussian", dropout_ratio=0.1, norm_cfg=None, act_cfg=_RELU,
             align_corners=False, input_transform="resize_concat", loss_decode=_DEFAULT_LOSS,
             ignore_index=255):
    """DFormer's non-local head (selected maps resized and concatenated, squeezed, one
    embedded-Gaussian non-local block, aligned, classified)."""
    owner = "NLHead"
    norm = _dformer_head(owner, norm_cfg, act_cfg, loss_decode, ignore_index)
    _need(input_transform, ("resize_concat",), "input_transform", owner)
    _need(mode, ("embedded_gaussian",), "mode", owner)
    head = _class("models.decoders.nl_head", "NLHead")(
        _seq(in_channels), num_classes, channels=channels, in_index=_seq(in_index),
        dropout_ratio=dropout_ratio, align_corners=align_corners, reduction=reduction,
        use_scale=use_scale, **norm)
    head.ignore_index = ignore_index
    return head


def _all_stages(in_index, owner):
    _need(list(in_index), ([0, 1, 2, 3],), "in_index", owner)


def _mlp_decoder(in_channels, num_classes, channels=768, in_index=(0, 1, 2, 3),
                 dropout_ratio=0.1, norm_cfg=None, act_cfg=_RELU, align_corners=False,
                 input_transform="multiple_select", loss_decode=_DEFAULT_LOSS, ignore_index=255):
    """DFormer's MLP decoder (SegFormer-style; ``channels`` is its embedding width)."""
    owner = "MLPDecoder"
    norm = _dformer_head(owner, norm_cfg, act_cfg, loss_decode, ignore_index)
    _all_stages(in_index, owner)
    _need(input_transform, ("multiple_select",), "input_transform", owner)
    head = _class("models.decoders.mlp_decoder", "MLPDecoder")(
        list(in_channels), num_classes, dropout_ratio=dropout_ratio, embed_dim=channels,
        align_corners=align_corners, **norm)
    head.ignore_index = ignore_index
    return head


def _uper_head(in_channels, num_classes, channels=512, pool_scales=(1, 2, 3, 6),
               in_index=(0, 1, 2, 3), dropout_ratio=0, norm_cfg=None, act_cfg=_RELU,
               align_corners=False, input_transform="multiple_select",
               loss_decode=_DEFAULT_LOSS, ignore_index=255):
    """DFormer's UPerNet head (no dropout before ``conv_seg``, as in the reference)."""
    owner = "UPerHead"
    norm = _dformer_head(owner, norm_cfg, act_cfg, loss_decode, ignore_index)
    _all_stages(in_index, owner)
    _need(input_transform, ("multiple_select",), "input_transform", owner)
    _need(dropout_ratio, (0, -1), "dropout_ratio", owner)
    head = _class("models.decoders.uper_head", "UPerHead")(
        list(in_channels), num_classes, channels=channels, pool_scales=tuple(pool_scales),
        align_corners=align_corners, **norm)
    head.ignore_index = ignore_index
    return head


def _aspp_head(in_channels, num_classes, in_index=(0, 1, 2, 3), dilations=(1, 12, 24, 36),
               channels=256, c1_in_channels=None, c1_channels=48, dropout_ratio=0.1,
               norm_cfg=None, act_cfg=_RELU, align_corners=True,
               input_transform="multiple_select", loss_decode=_DEFAULT_LOSS, ignore_index=255):
    """DFormer's DeepLabV3+ head (not mmseg's depthwise-separable one, whose name it is
    registered under): widths, rates, dropout and resizing are fixed (256-channel ASPP
    with rates 12/24/36, 48-channel low-level branch on the first map, Dropout 0.1,
    align_corners=True); those values only."""
    owner = "DepthwiseSeparableASPPHead"
    norm = _dformer_head(owner, norm_cfg, act_cfg, loss_decode, ignore_index)
    _all_stages(in_index, owner)
    _need(input_transform, ("multiple_select",), "input_transform", owner)
    _need(tuple(dilations), ((1, 12, 24, 36),), "dilations", owner)
    _need(channels, (256,), "channels", owner)
    _need(c1_in_channels, (None, list(in_channels)[0]), "c1_in_channels", owner)
    _need(c1_channels, (48,), "c1_channels", owner)
    _need(dropout_ratio, (0.1,), "dropout_ratio", owner)
    _need(align_corners, (True,), "align_corners", owner)
    head = _class("models.decoders.deeplabv3plus", "DeepLabV3Plus")(
        list(in_channels), num_classes, **norm)
    head.ignore_index = ignore_index
    return head


_HEADS = [
    # (registered names, internal decoder string, factory)
    (["LightHamHead"], "ham", _light_ham_head),
    (["MLPDecoder"], "MLPDecoder", _mlp_decoder),
    (["UPerHead"], "UPernet", _uper_head),
    (["DepthwiseSeparableASPPHead"], "deeplabv3+", _aspp_head),
    (["NLHead"], "nl", _nl_head),
    (["FCNHead"], "fcn", _lazy_class("models.decoders.fcn_head", "FCNHead")),
    (["PSAHead"], "psa", _lazy_class("models.decoders.psa_head", "PSAHead")),
    (["CCHead"], "cc", _lazy_class("models.decoders.cc_head", "CCHead")),
    (["PointHead"], "point", _lazy_class("models.decoders.point_head", "PointHead")),
]
for _names, _decoder, _factory in _HEADS:
    MODELS.register_module(_names, module=_factory, info={"decoder": _decoder})
# Parts of the PointRend cascade (mmseg: neck=FPN, decode_head=[FPNHead, PointHead]).
MODELS.register_module("FPN", module=_lazy_class("models.decoders.point_head", "FPN"),
                       info={"part_of": "point"})
MODELS.register_module("FPNHead", module=_lazy_class("models.decoders.point_head", "FPNHead"),
                       info={"part_of": "point"})


# ----------------------------------------------------------------------------- segmentors

# Inputs each decoder reads in the engine (models.decoders): the defaults of
# ``in_channels`` / ``in_index`` / ``input_transform`` when a head dict leaves them out.
_LAYOUTS = {
    "ham": lambda c: dict(in_channels=c[1:], in_index=[1, 2, 3]),
    "nl": lambda c: dict(in_channels=c[1:], in_index=[1, 2, 3]),
    "MLPDecoder": lambda c: dict(in_channels=c),
    "UPernet": lambda c: dict(in_channels=c),
    "deeplabv3+": lambda c: dict(in_channels=c),
    "psa": lambda c: dict(in_channels=c[1:], in_index=[1, 2, 3], input_transform="resize_concat"),
    "cc": lambda c: dict(in_channels=c[1:], in_index=[1, 2, 3], input_transform="resize_concat"),
    "fcn": lambda c: dict(in_channels=c[-1], in_index=3),
    "aux": lambda c: dict(in_channels=c[2], in_index=2),
}


def _with_layout(head, layout, stages):
    """``head`` with the engine's inputs for it, unless it names its inputs itself."""
    if any(k in head for k in ("in_channels", "in_index", "input_transform")):
        return head
    return dict(_LAYOUTS[layout](list(stages)), **head)


def _need_none(value, key, hint=""):
    from utils.errors import ConfigError
    if value not in (None, {}, dict()):
        raise ConfigError(f"EncoderDecoder: {key}={value!r} is not supported{hint}")


class _PixelLoss:
    """mmseg's ``CrossEntropyLoss`` (softmax): the sum over labelled pixels divided by
    all pixels (``avg_non_ignore=False``), times ``loss_weight``. The segmentor sets
    ``ignore_index`` (its decode head's)."""

    def __init__(self, loss_weight=1.0, ignore_index=255):
        self.loss_weight = float(loss_weight)
        self.ignore_index = ignore_index

    def __call__(self, logits, label):
        from models.losses.cross_entropy import cross_entropy
        total = cross_entropy(logits, label, self.ignore_index, "sum")
        return total * (self.loss_weight / float(np.prod(label.shape)))


@functools.lru_cache(maxsize=None)
def _segmentor_class():
    """The segmentor class, defined on first use (models import Jittor)."""
    from models.builder import EncoderDecoder

    class MMSegEncoderDecoder(EncoderDecoder):
        """The engine's segmentor with mmseg's losses: each head's ``loss_decode``
        (``decode_loss`` / ``aux_loss``) instead of the reference's one criterion."""

        def execute(self, rgb, depth, label=None):
            if label is None or depth is None:
                return super().execute(rgb, depth, label)
            out, aux = self.encode_decode(rgb, depth)
            loss = self.decode_loss(out, label)
            extra_loss = getattr(self.decode_head, "extra_loss", None)
            if extra_loss is not None:  # PointRend's point loss
                loss = loss + extra_loss(label)
            if aux is not None:
                loss = loss + self.aux_loss(aux, label)
            return loss
    return MMSegEncoderDecoder


def _loss_of(head):
    """The loss a segmentor computes for ``head`` (its ``loss_decode`` and ``ignore_index``)
    and the head's dict without the weight (that loss applies it, not the head)."""
    loss = MODELS.build(head.get("loss_decode", dict(type="CrossEntropyLoss")))
    loss.ignore_index = head.get("ignore_index", 255)
    if "loss_decode" in head:
        head = dict(head, loss_decode=dict(head["loss_decode"], loss_weight=1.0))
    return loss, head


def _sliding_window(test_cfg, cfg):
    """``test_cfg``: ``mode='whole'`` (the default pass) and this project's sliding-window
    settings ``crop_size`` / ``stride_rate`` (used with ``sliding=True``, configs/ files)."""
    from utils.errors import ConfigError
    mode = test_cfg.pop("mode", "whole")
    if "crop_size" in test_cfg:
        cfg.eval_crop_size = [int(v) for v in test_cfg.pop("crop_size")]
    if "stride_rate" in test_cfg:
        cfg.eval_stride_rate = float(test_cfg.pop("stride_rate"))
    if mode != "whole" or test_cfg:
        what = f"mode={mode!r}" if mode != "whole" else f"key {sorted(test_cfg)[0]!r}"
        raise ConfigError(f"EncoderDecoder: test_cfg {what} is not supported: whole images, and "
                          "sliding windows with inference_model(..., sliding=True) over "
                          "test_cfg crop_size / stride_rate")


def _build_segmentor(backbone, decode_head, auxiliary_head=None, neck=None, num_stages=None,
                     data_preprocessor=None, train_cfg=None, test_cfg=None, pretrained=None,
                     init_cfg=None):
    """``EncoderDecoder`` / ``CascadeEncoderDecoder`` (PointRend) from an mmseg model dict.

    The backbone, heads, neck and data pre-processor are built from their dicts through
    this registry (every key honoured or an error); heads that leave ``in_channels`` /
    ``in_index`` out read the stages the engine uses for them. ``pretrained`` loads the
    ImageNet backbone file. Random weights otherwise (no checkpoint is read).
    """
    from local_configs._base_ import base_config
    from utils.errors import ConfigError
    if not isinstance(backbone, dict) or not decode_head:
        raise ConfigError("EncoderDecoder needs 'backbone' and 'decode_head' dicts")
    _need_none(init_cfg, "init_cfg", " (use pretrained=<backbone file>)")
    heads = list(decode_head) if isinstance(decode_head, (list, tuple)) else [decode_head]
    cascade = len(heads) > 1 or neck is not None
    if cascade and (len(heads) != 2 or heads[-1].get("type") != "PointHead" or neck is None):
        raise ConfigError("CascadeEncoderDecoder: only PointRend is supported: neck=FPN, "
                          "decode_head=[FPNHead, PointHead]")
    if num_stages not in (None, len(heads)):
        raise ConfigError(f"CascadeEncoderDecoder: num_stages={num_stages} but decode_head "
                          f"has {len(heads)} heads")
    cfg = base_config()
    backbone_module = MODELS.build(backbone)
    cfg.backbone = backbone_name(backbone["type"], backbone.get("arch"))
    cfg.drop_path_rate = backbone.get("drop_path_rate", 0.1)
    cfg.decoder = "point" if cascade else decoder_name(heads[0]["type"])
    cfg.num_classes = heads[-1].get("num_classes")
    if not isinstance(cfg.num_classes, int) or cfg.num_classes < 1:
        raise ConfigError("EncoderDecoder: decode_head.num_classes (an int >= 1) is required")
    cfg.background = heads[-1].get("ignore_index", 255)
    if data_preprocessor is not None:
        MODELS.build(data_preprocessor).apply_to(cfg)
    if not cascade:  # (PointRend's train_cfg / test_cfg go to its head)
        _need_none(train_cfg, "train_cfg")
        _sliding_window(dict(test_cfg or {}), cfg)
    cfg.pretrained_model = pretrained
    model = _segmentor_class()(cfg, sync_bn=False)
    model.backbone = backbone_module
    stages = list(backbone_module.out_channels)
    model.decode_loss, first = _loss_of(heads[0])  # (PointHead weights its point loss itself)
    if cascade:
        point_rend = _class("models.decoders.point_head", "PointRendHead")
        fpn = MODELS.build(dict({"in_channels": stages}, **neck))
        model.decode_head = point_rend(fpn, MODELS.build(first), MODELS.build(heads[1]),
                                       train_cfg=train_cfg, test_cfg=test_cfg)
    else:
        model.decode_head = MODELS.build(_with_layout(first, cfg.decoder, stages))
    aux = auxiliary_head
    if isinstance(aux, (list, tuple)):
        if len(aux) > 1:
            raise ConfigError("EncoderDecoder: one auxiliary_head at most is supported")
        aux = aux[0] if aux else None
    model.aux_head = model.aux_loss = None
    if aux:
        model.aux_loss, aux = _loss_of(aux)
        model.aux_head = MODELS.build(_with_layout(aux, "aux", stages))
    cfg.aux_rate = model.aux_rate = model.aux_loss.loss_weight if aux else 0.0
    model.init_weights()
    if pretrained:
        from utils.checkpoint import load_pretrained
        load_pretrained(model, pretrained)
    model.cfg = cfg
    return model


MODELS.register_module(["EncoderDecoder", "CascadeEncoderDecoder"], module=_build_segmentor,
                       info={"segmentor": True})


# ----------------------------------------------------------------------------- data, loss

class SegDataPreProcessor:
    """mmseg's ``SegDataPreProcessor`` settings, checked against this project's data path.

    ``mean`` / ``std`` (0..255 scale, as mmseg) and ``bgr_to_rgb`` become the config's
    ``norm_mean`` / ``norm_std`` (0..1 scale) and ``color_order``; the padding values
    must be the data path's (0 for images, 255 for labels); batch padding (``size``,
    ``size_divisor``, ``test_cfg``) and batch augments are not supported (the data path
    crops to a fixed size). ``mean`` / ``std`` are required: mmseg's default (None, no
    normalisation) is not a data path here. Calling it preprocesses one RGB-D pair exactly
    as evaluation.
    """

    scale = 255.0  # of mean / std

    def __init__(self, mean, std, bgr_to_rgb=False, rgb_to_bgr=False, pad_val=0, seg_pad_val=255, size=None,
                 size_divisor=None, test_cfg=None, batch_augments=None):
        from utils.errors import ConfigError
        owner = type(self).__name__
        if rgb_to_bgr:
            raise ConfigError(f"{owner}: rgb_to_bgr=True is not supported (images are read as "
                              "BGR; bgr_to_rgb=True feeds RGB)")
        for key, value, allowed in (("pad_val", pad_val, 0), ("seg_pad_val", seg_pad_val, 255)):
            if value != allowed:
                raise ConfigError(f"{owner}: {key}={value} is not supported (the data path pads "
                                  f"with {allowed})")
        for key, value in (("size", size), ("size_divisor", size_divisor), ("test_cfg", test_cfg),
                           ("batch_augments", batch_augments)):
            if value is not None:
                raise ConfigError(f"{owner}: {key}={value!r} is not supported (crops have the "
                                  "config's fixed size; no batch padding); remove it")
        for key, value in (("mean", mean), ("std", std)):
            if len(value) != 3:
                raise ConfigError(f"{owner}: {key} needs 3 values (got {value!r})")
        self.norm_mean = [float(v) / self.scale for v in mean]
        self.norm_std = [float(v) / self.scale for v in std]
        self.color_order = "RGB" if bgr_to_rgb else "BGR"
        self.pad_sunrgbd = False

    def apply_to(self, cfg):
        """Write the settings into an internal config."""
        cfg.norm_mean, cfg.norm_std = list(self.norm_mean), list(self.norm_std)
        cfg.color_order = self.color_order
        cfg.pad_SUNRGBD = self.pad_sunrgbd
        return cfg

    def __call__(self, rgb_bgr, depth):
        """Network inputs (1, 3, H, W) for an 8-bit BGR image and depth map."""
        from easydict import EasyDict
        from utils.api import preprocess
        return preprocess(rgb_bgr, depth, self.apply_to(EasyDict(background=255)))


class RGBDDataPreprocessor(SegDataPreProcessor):
    """The pre-processor of this project's ``configs/`` files: ``mean`` / ``std`` on the
    0..1 scale (as ``configs/_base_/models/dformer.py`` writes them), and ``pad_sunrgbd``
    (evaluate SUN RGB-D padded to 531x730)."""

    scale = 1.0

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), bgr_to_rgb=False,
                 pad_sunrgbd=False):
        super().__init__(mean=mean, std=std, bgr_to_rgb=bgr_to_rgb)
        self.pad_sunrgbd = bool(pad_sunrgbd)


MODELS.register_module("SegDataPreProcessor", module=SegDataPreProcessor)
MODELS.register_module("RGBDDataPreprocessor", module=RGBDDataPreprocessor)


def _cross_entropy(use_sigmoid=False, use_mask=False, reduction="mean", class_weight=None,
                   loss_weight=1.0, loss_name="loss_ce", avg_non_ignore=False):
    """mmseg's ``CrossEntropyLoss`` as far as this project has it (see :class:`_PixelLoss`)."""
    from utils.errors import ConfigError
    for key, value, allowed in (("use_sigmoid", use_sigmoid, False), ("use_mask", use_mask, False),
                                ("class_weight", class_weight, None),
                                ("reduction", reduction, "mean"),
                                ("avg_non_ignore", avg_non_ignore, False),
                                ("loss_name", loss_name, "loss_ce")):
        if value != allowed:
            raise ConfigError(f"CrossEntropyLoss: {key}={value!r} is not supported (only "
                              f"{allowed!r})")
    return _PixelLoss(loss_weight)


MODELS.register_module("CrossEntropyLoss", module=_cross_entropy)


# ----------------------------------------------------------------------------- datasets

_DATASETS = [
    (["NYUDepthv2Dataset", "NYUDataset", "NYUDepthV2Dataset"], "NYUDepthv2"),
    (["SUNRGBDDataset", "SUNRGBD"], "SUNRGBD"),
    (["SynthRGBDDataset", "SynthRGBD"], "SynthRGBD"),
]


def dataset_name(kind):
    """Internal dataset name (``C.dataset_name``) of a dataset ``type``."""
    from utils.errors import ConfigError
    info = DATASETS.info(kind)
    if "dataset" not in info:
        raise ConfigError(f"{kind!r} is not a registered dataset type")
    return info["dataset"]


def _dataset_factory(name):
    def build(split="val", data_root=None, cfg_options=None):
        """The project's RGBXDataset of ``split`` for the dataset's default config."""
        import importlib
        from utils.dataloader import RGBXDataset
        module = importlib.import_module(f"local_configs._base_.datasets.{name}")
        cfg = module.dataset_config()
        if data_root:
            import os
            old_root = cfg.dataset_path
            for key in ("dataset_path", "rgb_root_folder", "gt_root_folder", "x_root_folder",
                        "train_source", "eval_source"):
                cfg[key] = os.path.join(data_root, os.path.relpath(cfg[key], old_root))
        for key, value in dict(cfg_options or {}).items():
            cfg[key] = value
        cfg.setdefault("batch_size", 1)
        cfg.setdefault("niters_per_epoch", 1)
        return RGBXDataset(cfg, split, augment=False)
    return build


for _names, _dataset in _DATASETS:
    DATASETS.register_module(_names, module=_dataset_factory(_dataset), info={"dataset": _dataset})


# ----------------------------------------------------------------------------- others

def _iou_metric(num_classes, iou_metrics=("mIoU",), ignore_index=255):
    """The evaluator's confusion matrix. It reports mIoU, mAcc, mF1 and pixel accuracy
    together, so ``iou_metrics`` must be ``['mIoU']`` (as in the config translation)."""
    from utils.errors import ConfigError
    from utils.metrics import ConfusionMatrix
    if list(iou_metrics) != ["mIoU"]:
        raise ConfigError(f"IoUMetric: iou_metrics={list(iou_metrics)!r} is not supported (the "
                          "evaluator reports mIoU, mAcc, mF1 and pixel accuracy together: use "
                          "['mIoU'])")
    return ConfusionMatrix(num_classes, ignore_index=ignore_index)


METRICS.register_module("IoUMetric", module=_iou_metric)


VISUALIZERS.register_module("SegLocalVisualizer",
                             module=_lazy_class("mmseg.visualization", "SegLocalVisualizer"))


def _fixed_pipeline(name):
    def build(**kwargs):
        from utils.errors import ConfigError
        raise ConfigError(f"transform {name!r} cannot be built: the data pipeline is fixed "
                          "(utils.dataloader.transforms, the reference's); its settings are "
                          "config keys (crop size, scales: configs/README.md)")
    build.__name__ = name
    return build


# Pipeline steps of mmseg configs, known so that using one is a clear error.
for _name in ("LoadImageFromFile", "LoadDepthFromFile", "LoadAnnotations", "RandomResize",
              "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "Resize", "PackSegInputs",
              "LoadRGBDFromFile", "PackRGBDSegInputs"):
    TRANSFORMS.register_module(_name, module=_fixed_pipeline(_name))
