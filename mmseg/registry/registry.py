"""A small mmengine-like ``Registry`` and the populated registries (module doc in __init__)."""
import copy
import inspect

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
        """Build ``cfg`` (a dict with ``type``)."""
        from utils.errors import ConfigError
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
        return obj(**args)


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


def _make_backbone_factory(fixed=None, archs=None):
    def build(arch=None, drop_path_rate=0.1, sync_bn=False, **unused):
        from models.encoders import build_backbone
        name = fixed or archs[str(arch).lower()]
        return build_backbone(name, drop_path_rate=drop_path_rate, sync_bn=sync_bn)
    return build


MODELS.register_module("DFormer", module=_make_backbone_factory(archs=_DFORMER_ARCHS),
                       info={"archs": _DFORMER_ARCHS})
MODELS.register_module("DFormerv2", module=_make_backbone_factory(archs=_DFORMERV2_ARCHS),
                       info={"archs": _DFORMERV2_ARCHS})
for _name in ("DFormer-Tiny", "DFormer-Small", "DFormer-Base", "DFormer-Large",
              "DFormerv2_S", "DFormerv2_B", "DFormerv2_L"):
    _aliases = [_name, _name.replace("-", "_")] if "-" in _name else [_name]
    MODELS.register_module(_aliases, module=_make_backbone_factory(fixed=_name),
                           info={"backbone": _name})


def _head_factory(module_path, class_name):
    def build(**kwargs):
        import importlib
        cls = getattr(importlib.import_module(module_path), class_name)
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return cls(**kwargs)  # heads with mmseg's arguments check every key themselves
        accepted = {k: v for k, v in kwargs.items() if k in params}
        return cls(**accepted)
    build.__name__ = class_name
    return build


_HEADS = [
    # (registered names, internal decoder string, module, class)
    (["LightHamHead", "HamHead"], "ham", "models.decoders.ham_head", "LightHamHead"),
    (["MLPDecoder", "SegformerHead"], "MLPDecoder", "models.decoders.mlp_decoder", "MLPDecoder"),
    (["UPerHead"], "UPernet", "models.decoders.uper_head", "UPerHead"),
    (["DepthwiseSeparableASPPHead", "DeepLabV3PlusHead"], "deeplabv3+",
     "models.decoders.deeplabv3plus", "DeepLabV3Plus"),
    (["NLHead"], "nl", "models.decoders.nl_head", "NLHead"),
    (["FCNHead"], "fcn", "models.decoders.fcn_head", "FCNHead"),
    (["PSAHead"], "psa", "models.decoders.psa_head", "PSAHead"),
    (["CCHead"], "cc", "models.decoders.cc_head", "CCHead"),
    (["PointHead", "PointRendHead"], "point", "models.decoders.point_head", "PointRendHead"),
]
for _names, _decoder, _module, _cls in _HEADS:
    MODELS.register_module(_names, module=_head_factory(_module, _cls), info={"decoder": _decoder})
# Parts of the PointRend cascade (mmseg: neck=FPN, decode_head=[FPNHead, PointHead]);
# the ``point`` decoder holds both, so they have no decoder string of their own.
MODELS.register_module("FPN", module=_head_factory("models.decoders.point_head", "FPN"),
                       info={"part_of": "point"})
MODELS.register_module("FPNHead", module=_head_factory("models.decoders.point_head", "FPNHead"),
                       info={"part_of": "point"})


def _build_segmentor(backbone=None, decode_head=None, auxiliary_head=None, num_classes=None,
                     pretrained=None, **unused):
    """``EncoderDecoder`` from an mmseg-style model dict (random weights, no file read)."""
    from local_configs._base_ import base_config
    from models.builder import EncoderDecoder
    from utils.errors import ConfigError
    if not backbone or not decode_head:
        raise ConfigError("EncoderDecoder needs 'backbone' and 'decode_head' dicts")
    heads = decode_head if isinstance(decode_head, (list, tuple)) else [decode_head]
    cfg = base_config()
    cfg.backbone = backbone_name(backbone["type"], backbone.get("arch"))
    cfg.drop_path_rate = backbone.get("drop_path_rate", 0.1)
    cfg.decoder = decoder_name(heads[-1]["type"])
    cfg.num_classes = int(num_classes or heads[-1].get("num_classes", 0))
    if cfg.num_classes <= 0:
        raise ConfigError("EncoderDecoder: decode_head.num_classes is required")
    cfg.decoder_embed_dim = int(heads[0].get("channels", 512))
    aux = auxiliary_head[0] if isinstance(auxiliary_head, (list, tuple)) else auxiliary_head
    if aux and cfg.decoder == "ham":
        cfg.aux_rate = float(aux.get("loss_decode", {}).get("loss_weight", 0.4))
    cfg.pretrained_model = None
    model = EncoderDecoder(cfg, load_pretrained=False, sync_bn=False)
    model.cfg = cfg
    return model


MODELS.register_module(["EncoderDecoder", "CascadeEncoderDecoder", "DFormerSegmentor"],
                       module=_build_segmentor, info={"segmentor": True})


def _data_preprocessor(**kwargs):
    """Settings holder: this project's preprocessing is ``utils.api.preprocess``."""
    return dict(kwargs)


MODELS.register_module(["SegDataPreProcessor", "RGBDDataPreProcessor"], module=_data_preprocessor)


def _cross_entropy(ignore_index=255, loss_weight=1.0, **unused):
    from models.losses import CrossEntropyLoss
    return CrossEntropyLoss(ignore_index=ignore_index)


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
    def build(split="val", data_root=None, cfg_options=None, **unused):
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

def _iou_metric(iou_metrics=("mIoU",), num_classes=None, ignore_index=255, **unused):
    from utils.metrics import ConfusionMatrix
    if num_classes is None:
        from utils.errors import ConfigError
        raise ConfigError("IoUMetric needs num_classes here")
    return ConfusionMatrix(num_classes, ignore_index=ignore_index)


METRICS.register_module("IoUMetric", module=_iou_metric)


def _visualizer(**kwargs):
    from mmseg.visualization import SegLocalVisualizer
    return SegLocalVisualizer(**kwargs)


VISUALIZERS.register_module("SegLocalVisualizer", module=_visualizer)

# Pipeline steps of mmseg configs; the project runs its own fixed evaluation/training
# transforms (utils.dataloader.transforms), so these names only record the settings.
for _name in ("LoadImageFromFile", "LoadDepthFromFile", "LoadAnnotations", "RandomResize",
              "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "Resize", "PackSegInputs",
              "LoadRGBDFromFile", "PackRGBDSegInputs"):
    TRANSFORMS.register_module(_name, module=(lambda n: (lambda **kw: dict(type=n, **kw)))(_name))
