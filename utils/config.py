"""The one config reader used by every entry point.

``load_config(source, cfg_options=None)`` returns the internal config: a flat EasyDict
with the fields of ``local_configs`` (``lr``, ``batch_size``, ``dataset_path`` ...).
``source`` may be

* a ``local_configs`` dotted name (``local_configs.NYUDepthv2.DFormer_Large``) or a
  ``local_configs/.../*.py`` path: a *class config*;
* an mmengine config file (``configs/dformer/*.py``, or ``.yaml`` / ``.json``): plain
  dicts ``model``, ``train_dataloader``, ``optim_wrapper``, ``param_scheduler``,
  ``train_cfg`` ... It is read by mmengine's own ``mmengine.config.Config`` (the torch-free
  ``mmengine-lite`` package: ``_base_`` inheritance, ``{{_base_.x}}`` / ``_base_.x``
  references, ``{{fileDirname}}``, ``{{$ENV:default}}``, ``read_base()`` configs) and
  translated by :func:`translate`, through one explicit table; a key the table does not
  know, or a value it cannot express, is a :class:`ConfigError` naming the key;
* a dict (an internal config, copied).

``cfg_options`` (``["key=value", ...]`` from ``--cfg-options``, or a dict): values are
parsed by mmengine's ``DictAction`` and merged by ``Config.merge_from_dict``. Ours on top:
a ``*`` key component (:func:`apply_cfg_options`), one-line errors for paths that cannot
be set, and a key under a ``None`` value making it a dict. For class configs the options
set the flat fields (an unknown field is an error) or one of the mmengine keys of
:data:`CLASS_ALIASES`; fields derived from others (iterations per epoch, the paths under
``dataset_path``, ``log_dir``) are re-derived afterwards, so an override cannot leave
the config inconsistent.

Besides the class-config fields, every internal config carries the *run fields*
:data:`RUN_DEFAULTS` (``max_iters``, ``val_interval`` ...), None unless set.
"""
import copy
import fnmatch
import os
import os.path as osp
import re

from utils.errors import ConfigError

__all__ = ["ConfigError", "RUN_DEFAULTS", "add_cfg_options_argument", "apply_cfg_options",
           "dump_config", "is_mmengine_file", "load_config", "override_config",
           "parse_cfg_options", "parse_option_value", "read_config_file", "translate"]

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Run settings that are no experiment hyper-parameter; present (None = default) in every
# internal config, whatever its source.
RUN_DEFAULTS = {
    "max_iters": None,            # stop after this many iterations (None: whole schedule)
    "val_interval": None,         # None: the reference's epoch schedule; k: every k iters; 0: never
    "checkpoint_interval": None,  # also write latest.pkl every k iterations (None/0: epoch ends)
    "val_batch_size": None,       # None: the reference's rule (utils.dataloader)
    "val_file_length": None,      # evaluate the first N samples of the split (None: all)
    "test_batch_size": None,
    "test_file_length": None,
    "work_dir": None,             # None: <log_dir>/<timestamp>
    "load_from": None,            # weights to start from (train) / to evaluate (test)
}

# Paths derived from ``dataset_path`` in a class config (local_configs._base_.dataset_paths).
_PATH_FIELDS = ("rgb_root_folder", "gt_root_folder", "x_root_folder", "train_source",
                "eval_source")


# ============================================================================ --cfg-options

CONFIG_HELP = ("configs/**.py (.yaml, .json) file, local_configs dotted name or "
               "local_configs/**.py path")


def add_config_arguments(parser):
    """Let ``parser`` take the config as a positional CONFIG or as ``--config``."""
    action = parser._option_string_actions.get("--config")
    if action is None:
        parser.add_argument("--config", default=None, help=CONFIG_HELP)
    else:
        action.required, action.help = False, CONFIG_HELP
    parser.add_argument("config_path", nargs="?", default=None, metavar="CONFIG",
                        help="the config, as --config")
    return parser


def resolve_config_argument(parser, args):
    """Set ``args.config`` from CONFIG or --config; giving neither or two different is an error."""
    if args.config and args.config_path and args.config != args.config_path:
        parser.error(f"two configs given: {args.config_path} and --config {args.config}")
    args.config = args.config or args.config_path
    if not args.config:
        parser.error("a config is required (positional CONFIG or --config)")
    return args


def add_cfg_options_argument(parser):
    """Add ``--cfg-options KEY=VALUE ...`` (the same flag on every entry point)."""
    parser.add_argument(
        "--cfg-options", "--cfg_options", dest="cfg_options", nargs="+", metavar="KEY=VALUE",
        default=None,
        help="override config settings, as mmengine's --cfg-options: dotted keys into the "
             "dicts of a configs/ file (train_cfg.max_iters=1 model.pretrained=None "
             "train_dataloader.dataset.data_root=/data/NYUDepthv2; '*' matches every key of "
             "its level), flat fields of a local_configs class config (lr=1e-4 "
             "batch_size=4). Values: int, float, true/false, None, a,b,c or [a,b] (list), "
             "(a,b) (tuple), else text (a space inside an item is an error)")
    return parser


def parse_option_value(text):
    """Value of one ``key=value`` option, parsed by mmengine's ``DictAction``.

    ``1`` -> 1, ``1e-4`` -> 0.0001, ``True``/``false`` -> bool, ``None`` -> None,
    ``a,b`` / ``a,`` / ``[a,b]`` -> list, ``(a,b)`` -> tuple (nested brackets allowed), else
    str; quotes around the value and spaces around its items are removed. A space inside an
    item is an error (mmengine would drop it silently).
    """
    from mmengine.config import DictAction
    inner = re.search(r"[^\s,\[\]()'\"]\s+[^\s,\[\]()'\"]", text)
    if inner:
        # mmengine drops every space, which would turn a path "runs/my run" into "runs/myrun"
        raise ConfigError(
            f"--cfg-options: a space inside the value {text!r} ({inner.group(0)!r}): mmengine's "
            f"parser removes spaces, so it cannot be kept; use a value without spaces (for a "
            f"folder with spaces use --work-dir)")
    try:
        return DictAction._parse_iterable(text)
    except AssertionError:  # DictAction's check of the brackets
        raise ConfigError(f"--cfg-options: unbalanced brackets in option value {text!r}") \
            from None


def parse_cfg_options(options):
    """``["a.b=1", ...]`` (or a dict) -> ordered dict ``{"a.b": value}``.

    A dict's values are taken as they are (already Python objects).
    """
    if not options:
        return {}
    if isinstance(options, dict):
        return dict(options)
    if isinstance(options, str):
        options = [options]
    parsed = {}
    for option in options:
        key, sep, text = str(option).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--cfg-options: bad option {option!r}: expected KEY=VALUE")
        if any(not part for part in key.split(".")):
            raise ConfigError(f"--cfg-options: bad key {key!r} in {option!r}")
        parsed[key] = parse_option_value(text)
    return parsed


def apply_cfg_options(config, options):
    """Merge options into an mmengine ``Config`` (or a dict, wrapped into one) with
    mmengine's ``merge_from_dict``: dotted keys walk into dicts (missing ones are
    created), a numeric component indexes a list.

    Ours on top: a ``*`` component (``*.dataset.data_root``) stands for every key at that
    level under which the rest of the path exists; a path that cannot be set (a list
    indexed by a name or out of range, a tuple, a number) is a one-line ConfigError, where
    mmengine raises a TypeError or KeyError; a ``None`` on the way becomes a dict
    (``model.auxiliary_head.type=FCNHead`` on ``auxiliary_head=None``). Returns the Config.
    """
    from mmengine.config import Config, ConfigDict
    if not isinstance(config, Config):
        config = Config(copy.deepcopy(dict(config)))
    tree = config._cfg_dict
    options = _expand_wildcards(tree, parse_cfg_options(options))
    for key, value in options.items():
        parts = key.split(".")
        node = tree
        for depth, part in enumerate(parts):
            last, where = depth == len(parts) - 1, ".".join(parts[:depth])
            if isinstance(node, dict):
                if last:
                    break
                if part in node and node[part] is None:
                    node[part] = ConfigDict()  # mmengine: TypeError
                node = node.get(part, {})
                if not isinstance(node, (dict, list, tuple)):
                    raise ConfigError(f"--cfg-options {key}: {'.'.join(parts[:depth + 1])} "
                                      f"is {node!r}, not a dict")
            elif isinstance(node, tuple):
                raise ConfigError(f"--cfg-options {key}: {where} is a tuple; set the whole "
                                  "tuple instead")
            elif not part.isdigit():
                raise ConfigError(f"--cfg-options {key}: {where} is a list; index it with a "
                                  f"number, not {part!r}")
            elif int(part) >= len(node):
                raise ConfigError(f"--cfg-options {key}: index {part} out of range (the list "
                                  f"has {len(node)} items)")
            elif last and not isinstance(value, dict):
                raise ConfigError(f"--cfg-options {key}: mmengine sets a list item by index "
                                  f"from a dict only; set the whole list {where} instead")
            else:
                node = node[int(part)]
    config.merge_from_dict(copy.deepcopy(options))
    return config


def _resolves(node, parts):
    """True when ``parts`` (all but the leaf) lead through dicts/lists from ``node``."""
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return isinstance(node, (dict, list, tuple))


def _expand_wildcards(tree, options):
    out = {}
    for key, value in options.items():
        if "*" not in key.split("."):
            out[key] = value
            continue
        keys = [key]
        while any("*" in k.split(".") for k in keys):
            grown = []
            for k in keys:
                parts = k.split(".")
                if "*" not in parts:
                    grown.append(k)
                    continue
                i = parts.index("*")
                node = tree
                for part in parts[:i]:
                    node = node.get(part, {}) if isinstance(node, dict) else {}
                for name in (node if isinstance(node, dict) else {}):
                    candidate = parts[:i] + [str(name)] + parts[i + 1:]
                    if _resolves(tree, candidate[:-1]):
                        grown.append(".".join(candidate))
            keys = grown
        if not keys:
            raise ConfigError(f"--cfg-options {key}: matches no key of the config")
        for k in keys:
            out[k] = value
    return out


def override_config(cfg, options):
    """Set flat fields of an internal config from ``["key=value", ...]`` (or a dict).

    Only fields that already exist may be set (a typo fails, naming it); derived fields
    are re-derived. Returns ``cfg``. See :func:`load_config` for mmengine-style keys.
    """
    _apply_class_options(cfg, parse_cfg_options(options))
    return cfg


# ============================================================================ class configs

# mmengine keys that also work on class configs (the settings users change most).
CLASS_ALIASES = {
    "train_cfg.max_iters": "max_iters",
    "train_cfg.val_interval": "val_interval",
    "default_hooks.checkpoint.interval": "checkpoint_interval",
    "train_dataloader.batch_size": "batch_size",
    "train_dataloader.num_workers": "num_workers",
    "train_dataloader.dataset.file_length": "num_train_imgs",
    "val_dataloader.batch_size": "val_batch_size",
    "val_dataloader.dataset.file_length": "val_file_length",
    "test_dataloader.batch_size": "test_batch_size",
    "test_dataloader.dataset.file_length": "test_file_length",
    "train_dataloader.dataset.data_root": "dataset_path",
    "val_dataloader.dataset.data_root": "dataset_path",
    "test_dataloader.dataset.data_root": "dataset_path",
    "model.pretrained": "pretrained_model",
    "model.backbone.drop_path_rate": "drop_path_rate",
    "optim_wrapper.optimizer.lr": "lr",
    "optim_wrapper.optimizer.weight_decay": "weight_decay",
    "randomness.seed": "seed",
}


def _with_run_defaults(cfg):
    for key, value in RUN_DEFAULTS.items():
        cfg.setdefault(key, value)
    return cfg


def _apply_class_options(cfg, options):
    """Set flat fields (or :data:`CLASS_ALIASES`) of a class config, then re-derive."""
    _with_run_defaults(cfg)
    before = {k: copy.deepcopy(cfg.get(k)) for k in ("root_dir", "dataset_path") + _PATH_FIELDS}
    explicit = set()
    expanded = {}
    for key, value in options.items():
        if "*" in key:
            matches = [a for a in CLASS_ALIASES if fnmatch.fnmatchcase(a, key)]
            if not matches:
                raise ConfigError(f"--cfg-options {key}: matches none of the mmengine keys a "
                                  "class config takes: " + ", ".join(sorted(CLASS_ALIASES)))
            expanded.update({m: value for m in matches})
        else:
            expanded[key] = value
    for key, value in expanded.items():
        field = CLASS_ALIASES.get(key, key)
        if field not in cfg:
            if "." in key:
                raise ConfigError(f"--cfg-options {key}: a class config has flat fields; the "
                                  "mmengine keys it also takes are: "
                                  + ", ".join(sorted(CLASS_ALIASES)))
            raise ConfigError(f"--cfg-options {key}: unknown config field {key!r}")
        if field in ("niters_per_epoch", "log_dir"):
            raise ConfigError(f"--cfg-options {key}: {field} is derived from other fields; set "
                              "those instead (batch_size, num_train_imgs / dataset_name, backbone)")
        if field in explicit and cfg[field] != value:
            raise ConfigError(f"--cfg-options {key}: {field} set twice with different values")
        explicit.add(field)
        if field == "val_interval" and value == "reference":
            value = None  # the reference's epoch schedule, as in configs/ files
        cfg[field] = value
    _rederive_class(cfg, before, explicit)
    return cfg


def _rederive_class(cfg, before, explicit):
    """Re-derive what depends on overridden fields (paths, iterations, log_dir)."""
    if "dataset_path" not in explicit and "root_dir" in explicit and before["dataset_path"]:
        rel = osp.relpath(before["dataset_path"], before["root_dir"])
        cfg.dataset_path = osp.join(cfg.root_dir, rel)
    elif "dataset_path" in explicit and "root_dir" not in explicit and cfg.dataset_path:
        cfg.root_dir = osp.dirname(osp.normpath(cfg.dataset_path))
    old_root = before["dataset_path"]
    if old_root and cfg.get("dataset_path") != old_root:
        for field in _PATH_FIELDS:
            old = before.get(field)
            if field in explicit or not isinstance(old, str):
                continue
            rel = osp.relpath(old, old_root)
            if not rel.startswith(".."):
                cfg[field] = osp.join(cfg.dataset_path, rel)
    _finalize(cfg)


def _finalize(cfg):
    """Derived fields and value checks shared by both config styles."""
    for key in ("batch_size", "num_train_imgs"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer (got {cfg.get(key)!r})")
    for key in ("max_iters", "val_batch_size", "val_file_length", "test_batch_size",
                "test_file_length"):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ConfigError(f"{key} must be a positive integer or None (got {value!r})")
    for key in ("val_interval", "checkpoint_interval"):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise ConfigError(f"{key} must be an integer >= 0 or None (got {value!r})")
    cfg.niters_per_epoch = int(cfg.num_train_imgs) // int(cfg.batch_size) + 1
    cfg.eval_crop_size = list(cfg.get("eval_crop_size") or [cfg.image_height, cfg.image_width])
    cfg.log_dir = osp.join("checkpoints", f"{cfg.dataset_name}_{cfg.backbone}")
    total = int(cfg.nepochs) * cfg.niters_per_epoch
    if cfg.get("max_iters") is not None and cfg.max_iters > total:
        raise ConfigError(f"max_iters {cfg.max_iters} is beyond the schedule ({cfg.nepochs} "
                          f"epochs x {cfg.niters_per_epoch} iterations = {total}); lengthen "
                          "the schedule instead")
    return cfg


# ============================================================================ mmengine files

def is_mmengine_file(source):
    """True for a config file path (.py, .yaml, .yml, .json) outside local_configs/."""
    if not isinstance(source, str) or not source.endswith((".py", ".yaml", ".yml", ".json")):
        return False
    return "local_configs" not in osp.normpath(source).replace("\\", "/").split("/")


def _resolve_path(source):
    if osp.isfile(source):
        return osp.abspath(source)
    if not osp.isabs(source) and osp.isfile(osp.join(REPO, source)):
        return osp.join(REPO, source)
    raise ConfigError(f"config file not found: {source}")


def _read_file(source):
    """mmengine's ``Config.fromfile``, its errors as one-line ConfigErrors.

    ``custom_imports`` are not imported: the translation rejects the key, naming it.
    """
    from mmengine.config import Config
    path = _resolve_path(source)
    _check_base_chain(path)
    try:
        return Config.fromfile(path, import_custom_modules=False)
    except Exception as exc:  # mmengine raises KeyError, TypeError, SyntaxError, OSError ...
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        message = f"{type(exc).__name__}: " + " ".join(str(text).split())
    # raised here, not in the handler: mmengine's frames hold its open temporary files,
    # which the error's context would keep alive
    raise ConfigError(f"cannot read config file {source}: {message}")


def _check_base_chain(path, chain=()):
    """A circular ``_base_`` chain is an error naming it (mmengine recurses until Python's
    recursion limit, a thousand temporary files later). Bases found by mmengine's helpers."""
    from mmengine.config import Config
    if path in chain:
        raise ConfigError("circular _base_ chain: " + " -> ".join(chain + (path,)))
    try:
        bases = [Config._get_cfg_path(b, path)[0] for b in Config._get_base_files(path)]
    except Exception:  # reported by the reading itself
        return
    for base in bases:
        if osp.isfile(base):
            _check_base_chain(osp.abspath(base), chain + (path,))


def _settings(config):
    """The plain dicts of a Config without its ``_``-prefixed helper variables."""
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_")}


def read_config_file(path):
    """The settings of a config file as plain dicts (``_base_`` resolved, helpers dropped)."""
    return _settings(_read_file(path))


def _load_file(source, options):
    """``(Config with the options, internal config)`` of a config file.

    A ``train_cfg.max_iters`` that follows the schedule (README) is written into the Config
    as the run's length, so a dump of it reruns the same run.
    """
    config = _read_file(source)
    total = _file_total_iters(_settings(config))
    apply_cfg_options(config, options)
    cfg = translate(_settings(config), source, explicit=set(options), file_total_iters=total)
    if cfg.max_iters is None:
        config.train_cfg.max_iters = cfg.nepochs * cfg.niters_per_epoch
    return config, cfg


def dump_config(source, cfg_options, work_dir):
    """Write the config file with its options into ``work_dir`` as mmengine's runner does
    (``Config.dump`` under the file's name). Returns the path; None for class configs,
    which are no mmengine config (the run's config.json holds them)."""
    if not is_mmengine_file(source):
        return None
    config, _ = _load_file(source, parse_cfg_options(cfg_options))
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, osp.basename(config.filename))
    config.dump(path)
    return path


# ============================================================================ translation

class _Reader:
    """Takes values out of the merged dicts by dotted path; what is left is unknown."""

    def __init__(self, tree, source):
        self.source = source
        self.leaves = {}
        self._flatten(tree, "")
        self.used = set()
        self.out = {}
        self.origin = {}

    def _flatten(self, node, prefix):
        if isinstance(node, dict) and not (prefix in _LIST_OF_DICTS):
            for key, value in node.items():
                self._flatten(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            self.leaves[prefix] = node

    def has(self, path):
        return path in self.leaves or any(k.startswith(path + ".") for k in self.leaves)

    def get(self, path, default=KeyError):
        if path not in self.leaves:
            if default is KeyError:
                raise ConfigError(f"{self.source}: required key {path} is missing")
            return default
        self.used.add(path)
        return self.leaves[path]

    def expect(self, path, allowed, default=KeyError):
        value = self.get(path, default)
        if value not in allowed:
            raise ConfigError(f"{self.source}: {path}={value!r} is not supported (supported: "
                              + ", ".join(repr(a) for a in allowed) + ")")
        return value

    def take_choice(self, path, field, table, hint=""):
        """Set ``field`` to ``table[value of path]``; a value not in the table is an error."""
        value = self.get(path)
        if value not in table:
            raise ConfigError(f"{self.source}: {path}={value!r} is not supported "
                              f"(supported: {', '.join(table)}){hint}")
        self.put(field, table[value], path)
        return value

    def put(self, field, value, path):
        """Set an internal field; two keys setting it must agree."""
        if field in self.out and self.out[field] != value:
            raise ConfigError(f"{self.source}: {path}={value!r} disagrees with "
                              f"{self.origin[field]}={self.out[field]!r} (both set {field})")
        self.out[field] = value
        self.origin.setdefault(field, path)

    def take(self, path, field, convert=None, default=KeyError):
        if path not in self.leaves and default is not KeyError:
            if default is not _SKIP:
                self.put(field, default, path)
            return
        value = self.get(path)
        self.put(field, convert(value, path) if convert else value, path)

    def unknown(self):
        return [k for k in self.leaves if k not in self.used]


_SKIP = object()
_LIST_OF_DICTS = ("param_scheduler",)

DECODE_HEADS = {"LightHamHead": "ham", "MLPDecoder": "MLPDecoder", "UPerHead": "UPernet",
                "DepthwiseSeparableASPPHead": "deeplabv3+", "NLHead": "nl"}
# Heads whose width the engine fixes (models.decoders): ``channels`` must be that value.
FIXED_HEAD_CHANNELS = {"UPernet": 512, "nl": 512, "deeplabv3+": 256}
# Heads the engine always pairs with the auxiliary FCN head at this loss weight.
FIXED_AUX_RATE = {"UPernet": 0.4, "nl": 0.4, "deeplabv3+": 0.4}
OPTIMIZERS = {"AdamW": "AdamW", "SGD": "SGDM"}
LOADERS = ("train", "val", "test")


def _int(value, path):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path} must be an integer (got {value!r})")
    return value


def _pos_int(value, path):
    value = _int(value, path)
    if value < 1:
        raise ConfigError(f"{path} must be >= 1 (got {value})")
    return value


def _opt_pos_int(value, path):
    return None if value is None else _pos_int(value, path)


def _number(value, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path} must be a number (got {value!r})")
    return value


def _bool(value, path):
    if not isinstance(value, bool):
        raise ConfigError(f"{path} must be True or False (got {value!r})")
    return value


def _str(value, path):
    if not isinstance(value, str):
        raise ConfigError(f"{path} must be a string (got {value!r})")
    return value


def _opt_str(value, path):
    return None if value is None else _str(value, path)


def _num_list(value, path):
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{path} must be a list of numbers (got {value!r})")
    return list(value)


def _hw(value, path):
    value = _num_list(value, path)
    if len(value) != 2 or any(int(v) != v or v < 1 for v in value):
        raise ConfigError(f"{path} must be (height, width) (got {value!r})")
    return [int(v) for v in value]


def translate(tree, source="config", explicit=(), file_total_iters=None):
    """Internal (flat) config of the merged mmengine-style dicts ``tree``.

    This function *is* the table between the two styles (README, "Config styles"):
    every key is read here once, and any key left over is an error naming it.
    ``explicit``: the option keys given on the command line. ``file_total_iters``: the
    schedule length of the file before the options; a ``train_cfg.max_iters`` equal to it
    and not given explicitly follows the schedule when options change its length.
    """
    from easydict import EasyDict
    from local_configs._base_ import base_config
    r = _Reader(tree, source)
    defaults = base_config()

    # -- model
    r.expect("model.type", ("EncoderDecoder",))
    r.take("model.backbone.type", "backbone", _str)
    r.take("model.backbone.drop_path_rate", "drop_path_rate", _number)
    r.take("model.pretrained", "pretrained_model", _opt_str)
    head = r.take_choice("model.decode_head.type", "decoder", DECODE_HEADS)
    decoder = DECODE_HEADS[head]
    if decoder in FIXED_HEAD_CHANNELS:
        channels = _pos_int(r.get("model.decode_head.channels"), "model.decode_head.channels")
        if channels != FIXED_HEAD_CHANNELS[decoder]:
            raise ConfigError(f"{source}: model.decode_head.channels={channels} is not supported "
                              f"for {head} (its width is fixed: {FIXED_HEAD_CHANNELS[decoder]})")
        r.put("decoder_embed_dim", channels, "model.decode_head.channels")
    else:
        r.take("model.decode_head.channels", "decoder_embed_dim", _pos_int)
    r.take("model.decode_head.num_classes", "num_classes", _pos_int)
    r.take("model.decode_head.ignore_index", "background", _int)
    # the engine's decode-head norm is BatchNorm, synchronised under MPI (--syncbn)
    r.expect("model.decode_head.norm_cfg.type", ("SyncBN",), default="SyncBN")
    r.take("model.decode_head.norm_cfg.eps", "bn_eps", _number)
    r.take("model.decode_head.norm_cfg.momentum", "bn_momentum", _number)
    _translate_aux(r, source, head, decoder)
    r.expect("model.data_preprocessor.type", ("RGBDDataPreprocessor",))
    r.take("model.data_preprocessor.mean", "norm_mean", _num_list)
    r.take("model.data_preprocessor.std", "norm_std", _num_list)
    r.put("color_order", "RGB" if _bool(r.get("model.data_preprocessor.bgr_to_rgb"),
                                        "model.data_preprocessor.bgr_to_rgb") else "BGR",
          "model.data_preprocessor.bgr_to_rgb")
    r.take("model.data_preprocessor.pad_sunrgbd", "pad_SUNRGBD", _bool, default=False)
    r.take("model.test_cfg.crop_size", "eval_crop_size", _hw)
    r.take("model.test_cfg.stride_rate", "eval_stride_rate", _number)

    # -- data
    for split in LOADERS:
        if not r.has(f"{split}_dataloader"):
            raise ConfigError(f"{source}: required key {split}_dataloader is missing")
        d = f"{split}_dataloader.dataset"
        r.take(f"{d}.type", "dataset_name", _str)
        root = r.get(f"{d}.data_root")
        if not isinstance(root, str) or not root:
            raise ConfigError(f"{d}.data_root must be a folder path (got {root!r})")
        root = osp.normpath(root)
        r.put("dataset_path", root, f"{d}.data_root")
        for kind, field in (("rgb", "rgb_root_folder"), ("depth", "x_root_folder"),
                            ("label", "gt_root_folder")):
            r.put(field, osp.join(root, _str(r.get(f"{d}.data_prefix.{kind}"),
                                             f"{d}.data_prefix.{kind}")), f"{d}.data_prefix.{kind}")
        r.take(f"{d}.rgb_suffix", "rgb_format", _str)
        r.take(f"{d}.depth_suffix", "x_format", _str)
        r.take(f"{d}.label_suffix", "gt_format", _str)
        r.take(f"{d}.reduce_zero_label", "gt_transform", _bool)
        r.take(f"{d}.metainfo.classes", "class_names", lambda v, p: list(v))
        r.take(f"{d}.metainfo.palette", "palette")
        r.take(f"{d}.metainfo.num_test_images", "num_eval_imgs", _pos_int)
        ann = _str(r.get(f"{d}.ann_file"), f"{d}.ann_file")
        r.put("train_source" if split == "train" else "eval_source", osp.join(root, ann),
              f"{d}.ann_file")
        if r.has(f"{d}.synthetic"):
            s = f"{d}.synthetic"
            r.put("synthetic", True, s)
            r.take(f"{s}.seed", "synthetic_seed", _int)
            r.take(f"{s}.size", "synthetic_size", lambda v, p: tuple(_hw(v, p)))
            r.put("synthetic_counts", (_pos_int(r.get(f"{s}.num_train"), f"{s}.num_train"),
                                       _pos_int(r.get(f"{s}.num_test"), f"{s}.num_test")), s)
        if split == "train":
            r.take("train_dataloader.batch_size", "batch_size", _pos_int)
            r.take("train_dataloader.num_workers", "num_workers", _int)
            r.take(f"{d}.file_length", "num_train_imgs", _pos_int)
            r.expect(f"{d}.pipeline.type", ("RGBDTrainTransform",))
            crop = _hw(r.get(f"{d}.pipeline.crop_size"), f"{d}.pipeline.crop_size")
            r.put("image_height", crop[0], f"{d}.pipeline.crop_size")
            r.put("image_width", crop[1], f"{d}.pipeline.crop_size")
            r.take(f"{d}.pipeline.scales", "train_scale_array", _num_list)
        else:
            r.take(f"{split}_dataloader.batch_size", f"{split}_batch_size", _opt_pos_int,
                   default=None)
            r.take(f"{d}.file_length", f"{split}_file_length", _opt_pos_int, default=None)
            r.expect(f"{d}.pipeline.type", ("RGBDEvalTransform",))
            if r.has(f"{split}_dataloader.num_workers"):
                raise ConfigError(f"{source}: {split}_dataloader.num_workers is not supported: "
                                  "every loader uses train_dataloader.num_workers")
    r.put("root_dir", osp.dirname(r.out["dataset_path"]), "train_dataloader.dataset.data_root")
    for split in ("val", "test"):
        r.expect(f"{split}_evaluator.type", ("IoUMetric",))
        metrics = r.get(f"{split}_evaluator.iou_metrics", ["mIoU"])
        if list(metrics) != ["mIoU"]:
            raise ConfigError(f"{source}: {split}_evaluator.iou_metrics={metrics!r} is not "
                              "supported (the evaluator reports mIoU, mAcc, mF1 and pixel "
                              "accuracy together: use ['mIoU'])")
    r.expect("val_cfg.type", ("ValLoop",))
    r.expect("test_cfg.type", ("TestLoop",))

    # -- optimisation
    r.expect("optim_wrapper.type", ("OptimWrapper",))
    opt = r.take_choice("optim_wrapper.optimizer.type", "optimizer", OPTIMIZERS,
                        "; mixed precision: use --amp")
    r.take("optim_wrapper.optimizer.lr", "lr", _number)
    r.take("optim_wrapper.optimizer.weight_decay", "weight_decay", _number)
    if opt == "AdamW":
        betas = r.get("optim_wrapper.optimizer.betas", (0.9, 0.999))
        eps = r.get("optim_wrapper.optimizer.eps", 1e-8)
        if tuple(betas) != (0.9, 0.999) or eps != 1e-8:
            raise ConfigError(f"{source}: optim_wrapper.optimizer betas={betas!r} eps={eps!r} "
                              "are not supported (AdamW runs with betas (0.9, 0.999), eps 1e-8)")
        r.put("momentum", defaults.momentum, "optim_wrapper.optimizer")
    else:
        r.take("optim_wrapper.optimizer.momentum", "momentum", _number)
        for key in ("betas", "eps"):
            if r.get(f"optim_wrapper.optimizer.{key}", None) is not None:
                raise ConfigError(f"{source}: optim_wrapper.optimizer.{key} is not an SGD "
                                  "setting: set it to None")
    r.take("optim_wrapper.paramwise_cfg.train_all_params", "train_all_params", _bool,
           default=False)
    if r.get("optim_wrapper.clip_grad", None) is not None:
        raise ConfigError(f"{source}: optim_wrapper.clip_grad is not supported (the reference "
                          "does not clip gradients); remove it or set it to None")
    _translate_schedule(r, source)

    # -- loops, hooks, runtime
    r.expect("train_cfg.type", ("IterBasedTrainLoop",))
    interval = r.get("train_cfg.val_interval")
    if interval == "reference":
        r.put("val_interval", None, "train_cfg.val_interval")
    else:
        r.put("val_interval", _int(interval, "train_cfg.val_interval"), "train_cfg.val_interval")
        if interval < 0:
            raise ConfigError("train_cfg.val_interval must be >= 0 or 'reference'")
    r.take("train_cfg.checkpoint_start_epoch", "checkpoint_start_epoch", _int)
    r.expect("default_hooks.checkpoint.type", ("CheckpointHook",))
    hook = "default_hooks.checkpoint"
    by_epoch = _bool(r.get(f"{hook}.by_epoch"), f"{hook}.by_epoch")
    ck = _int(r.get("default_hooks.checkpoint.interval"), "default_hooks.checkpoint.interval")
    if by_epoch and ck != 1:
        raise ConfigError(f"{source}: default_hooks.checkpoint.interval={ck} with by_epoch=True "
                          "is not supported (latest.pkl is written after every epoch; use "
                          "by_epoch=False for an interval in iterations)")
    r.put("checkpoint_interval", None if by_epoch else ck, "default_hooks.checkpoint.interval")
    r.take("randomness.seed", "seed", _int)
    r.take("tta.scales", "eval_scale_array", _num_list)
    r.take("tta.flip", "eval_flip", _bool)
    r.take("work_dir", "work_dir", _opt_str, default=None)
    r.take("load_from", "load_from", _opt_str, default=None)

    max_iters = _pos_int(r.get("train_cfg.max_iters"), "train_cfg.max_iters")
    left = r.unknown()
    if left:
        raise ConfigError(f"{source}: unknown or unsupported key {left[0]}"
                          + (f" (and {len(left) - 1} more: {', '.join(left[1:4])})"
                             if len(left) > 1 else "")
                          + "; see configs/README.md for the keys this project reads")

    cfg = EasyDict(r.out)
    # settings no mmengine key expresses (unused by the reference, fixed here)
    cfg.checkpoint_step = defaults.checkpoint_step
    cfg.x_is_single_channel = True
    if len(cfg.class_names) != cfg.num_classes:
        raise ConfigError(f"{source}: model.decode_head.num_classes={cfg.num_classes} but "
                          f"metainfo.classes lists {len(cfg.class_names)} names")
    _finalize_mm(cfg, r, source, max_iters, explicit, file_total_iters)
    return cfg


def _translate_aux(r, source, head, decoder):
    """``model.auxiliary_head`` -> ``aux_rate``: free for LightHamHead, none for MLPDecoder,
    and for the other heads the engine's fixed FCN head at 0.4 (anything else an error)."""
    path = "model.auxiliary_head"
    present = r.has(path) and not (path in r.leaves and r.leaves[path] is None)
    if not present:
        r.get(path, None)
        if decoder in FIXED_AUX_RATE:
            raise ConfigError(f"{source}: {path}=None is not supported for {head}: the engine "
                              "always adds the auxiliary FCN head; write "
                              f"dict(type='FCNHead', loss_weight={FIXED_AUX_RATE[decoder]})")
        r.put("aux_rate", 0.0, path)
        return
    r.expect(f"{path}.type", ("FCNHead",))
    rate = _number(r.get(f"{path}.loss_weight"), f"{path}.loss_weight")
    if decoder == "ham":
        r.put("aux_rate", rate, f"{path}.loss_weight")
    elif decoder in FIXED_AUX_RATE and rate == FIXED_AUX_RATE[decoder]:
        r.put("aux_rate", rate, f"{path}.loss_weight")  # the rate the engine uses
    else:
        fixed = FIXED_AUX_RATE.get(decoder)
        raise ConfigError(f"{source}: {path} is not supported for {head} ("
                          + ("no auxiliary head: set it to None" if fixed is None else
                             f"the engine's auxiliary FCN head has loss_weight={fixed}") + ")")


def _translate_schedule(r, source):
    """LinearLR (from 0) + PolyLR over the whole run -> warm_up_epoch, nepochs, lr_power."""
    scheds = r.get("param_scheduler")
    if isinstance(scheds, dict):
        scheds = [scheds]
    if not isinstance(scheds, (list, tuple)) or not all(isinstance(s, dict) for s in scheds):
        raise ConfigError(f"{source}: param_scheduler must be a list of dicts")
    types = [s.get("type") for s in scheds]
    if types not in (["LinearLR", "PolyLR"], ["PolyLR"]):
        raise ConfigError(f"{source}: param_scheduler {types} cannot be expressed: the schedule "
                          "is the reference's warm-up + poly, written [LinearLR(start_factor=0, "
                          "begin=0, end=W), PolyLR(power=0.9, eta_min=0, begin=0, end=T)]")
    r.pending_schedule = []
    for i, s in enumerate(scheds):
        p = f"param_scheduler.{i}"
        allowed = {"type", "begin", "end", "by_epoch", "convert_to_iter_based", "power",
                   "eta_min", "start_factor", "end_factor"}
        extra = [k for k in s if k not in allowed]
        if extra:
            raise ConfigError(f"{source}: unknown or unsupported key {p}.{extra[0]}")
        by_epoch = s.get("by_epoch", True)
        if by_epoch and not s.get("convert_to_iter_based", False):
            raise ConfigError(f"{source}: {p}: by_epoch=True needs convert_to_iter_based=True "
                              "(the lr changes every iteration, as in the reference)")
        if s.get("begin", 0) != 0:
            raise ConfigError(f"{source}: {p}.begin={s.get('begin')} cannot be expressed: both "
                              "schedulers start at 0 (poly runs over the whole run)")
        end = _pos_int(s.get("end"), f"{p}.end")
        if s["type"] == "LinearLR":
            if s.get("start_factor") != 0 or s.get("end_factor", 1.0) != 1.0:
                raise ConfigError(f"{source}: {p}: the warm-up rises linearly from 0 to the "
                                  "base lr: start_factor=0, end_factor=1.0")
        else:
            if s.get("eta_min", 0) != 0:
                raise ConfigError(f"{source}: {p}.eta_min={s.get('eta_min')} cannot be expressed "
                                  "(poly decays to 0)")
            r.put("lr_power", _number(s.get("power", 1.0), f"{p}.power"), f"{p}.power")
        r.pending_schedule.append((s["type"], end, bool(by_epoch), p))


def _finalize_mm(cfg, r, source, max_iters, explicit, file_total_iters):
    """Epoch counts from the schedule, iterations, and the run's stop point."""
    niters = int(cfg.num_train_imgs) // int(cfg.batch_size) + 1

    def epochs(end, by_epoch, path):
        if by_epoch:
            return end
        if end % niters:
            raise ConfigError(f"{source}: {path}.end={end} iterations is not a whole number of "
                              f"epochs ({niters} iterations each): use by_epoch=True, "
                              "convert_to_iter_based=True with epochs")
        return end // niters

    cfg.warm_up_epoch = 0
    for kind, end, by_epoch, path in r.pending_schedule:
        if kind == "LinearLR":
            cfg.warm_up_epoch = epochs(end, by_epoch, path)
        else:
            cfg.nepochs = epochs(end, by_epoch, path)
    if cfg.warm_up_epoch > cfg.nepochs:
        raise ConfigError(f"{source}: the warm-up ({cfg.warm_up_epoch} epochs) is longer than "
                          f"the run ({cfg.nepochs} epochs)")
    total = cfg.nepochs * niters
    if "train_cfg.max_iters" not in explicit and max_iters == file_total_iters:
        max_iters = total  # follows the schedule when batch size or length were overridden
    if max_iters > total:
        raise ConfigError(f"{source}: train_cfg.max_iters={max_iters} is beyond the schedule "
                          f"(PolyLR end: {cfg.nepochs} epochs x {niters} iterations = {total}); "
                          "lengthen param_scheduler too")
    cfg.max_iters = None if max_iters == total else max_iters
    _finalize(cfg)


def _file_total_iters(tree):
    """Schedule length of the file as written (before options), or None."""
    try:
        loader = tree["train_dataloader"]
        niters = int(loader["dataset"]["file_length"]) // int(loader["batch_size"]) + 1
        poly = [s for s in tree["param_scheduler"] if s.get("type") == "PolyLR"][0]
        return int(poly["end"]) * niters if poly.get("by_epoch", True) else int(poly["end"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None


# ============================================================================ entry point

def load_config(source, cfg_options=None):
    """Internal config of ``source`` with ``cfg_options`` (``["key=value", ...]`` or a dict).

    Raises :class:`ConfigError` (one line, naming the file or key) on any problem.
    """
    from easydict import EasyDict
    options = parse_cfg_options(cfg_options)
    if isinstance(source, dict):
        cfg = EasyDict(copy.deepcopy(dict(source)))
        _with_run_defaults(cfg)
        return _apply_class_options(cfg, options) if options else cfg
    if not isinstance(source, str) or not source:
        raise ConfigError(f"config must be a name or a path, got {source!r}")
    if is_mmengine_file(source):
        return _load_file(source, options)[1]
    import local_configs
    try:
        cfg = local_configs.load_config(source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _with_run_defaults(cfg)
    if options:
        _apply_class_options(cfg, options)
    return cfg
