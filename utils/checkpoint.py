"""Checkpoint reading, key mapping, strict loading and atomic saving, in one place; and
:func:`build_model`, the segmentor with its weights (the models themselves read no files).

Formats read (no torch needed):

* PyTorch files ``.pth`` / ``.pt`` / ``.pth.tar`` / ``.bin`` through Jittor's own
  PyTorch reader (``.pth.tar`` is routed to it under a ``.pth`` alias),
* Jittor pickles ``.pkl`` (what :func:`save_checkpoint` writes).

Layouts understood:

* trained segmentor checkpoints: ``{"model": sd, ...}``, ``{"state_dict": sd}`` or a bare
  state dict, optionally with a ``module.`` prefix (DDP);
* ImageNet-pretrained backbones: ``state_dict_ema`` (preferred), ``state_dict`` or
  ``model`` entries, keys with or without ``backbone.`` / ``module.`` prefixes;
* other key layouts a model declares in ``checkpoint_key_map()`` (mmseg's PointRend
  cascade, next to the head). Load errors name the checkpoint's keys, not the model's.
"""
import os
import tempfile
from collections import OrderedDict

import numpy as np

import jittor as jt

PYTORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar", ".bin")


from utils.errors import CheckpointError  # noqa: E402  (re-exported)


def _to_numpy(value):
    if isinstance(value, jt.Var):
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor, if the caller passed one
        return value.detach().cpu().numpy()
    return np.asarray(value)


def read_checkpoint(path):
    """Read a checkpoint file into a Python object (dicts of numpy arrays for tensors)."""
    if not path:
        raise CheckpointError("No checkpoint path given.")
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"Checkpoint file is empty: {path}")
    try:
        if path.endswith(".pkl"):
            obj = jt.load(path)
        elif path.endswith(PYTORCH_SUFFIXES):
            obj = _read_pytorch(path)
        else:
            raise CheckpointError(f"Unknown checkpoint extension for {path}; expected one of "
                                  f"{', '.join(PYTORCH_SUFFIXES + ('.pkl',))}")
    except CheckpointError:
        raise
    except Exception as exc:  # jittor raises assorted types on corrupt files
        first = (str(exc).strip().splitlines() or [""])[0]  # Jittor's texts span lines
        raise CheckpointError(f"Could not read checkpoint {path}: {type(exc).__name__}: {first}. "
                              "The file may be truncated or not a checkpoint.") from exc
    if obj is None:
        raise CheckpointError(f"Could not read checkpoint {path}.")
    return _dict_to_numpy(obj)


def _read_pytorch(path):
    from jittor_utils.load_pytorch import load_pytorch
    if path.endswith((".pth", ".pt", ".bin")):
        return load_pytorch(path)
    # Jittor's reader dispatches on the suffix; give it a .pth alias.
    with tempfile.TemporaryDirectory() as tmp:
        alias = os.path.join(tmp, "checkpoint.pth")
        os.symlink(os.path.abspath(path), alias)
        return load_pytorch(alias)


def _dict_to_numpy(obj):
    if isinstance(obj, dict):
        return type(obj)((k, _dict_to_numpy(v)) for k, v in obj.items()) \
            if isinstance(obj, OrderedDict) else {k: _dict_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, jt.Var):
        return obj.numpy()
    return obj


def _is_state_dict(obj):
    return isinstance(obj, dict) and obj and all(
        isinstance(v, np.ndarray) or np.isscalar(v) for v in obj.values())


def _unwrap(obj, entries, source):
    """The first of ``entries`` present in ``obj`` (else ``obj`` itself), checked to be a state dict."""
    for key in entries:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not _is_state_dict(obj):
        raise CheckpointError(f"{source}: no state dict found (expected one of the entries "
                              f"{', '.join(map(repr, entries))}, or a bare state dict).")
    return obj


def segmentor_state_dict(obj, source="checkpoint"):
    """The segmentor state dict inside a trained checkpoint (``model`` > ``state_dict`` > bare)."""
    obj = _unwrap(obj, ("model", "state_dict"), source)
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def backbone_state_dict(obj, source="checkpoint"):
    """The backbone state dict inside an ImageNet-pretrained (or trained) checkpoint."""
    obj = _unwrap(obj, ("state_dict_ema", "state_dict", "model"), source)
    out = OrderedDict()
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith("backbone."):
            k = k[len("backbone."):]
        elif k.startswith(("decode_head.", "aux_head.", "head.")):
            continue  # a full segmentor or a classifier head: keep the backbone part
        out[k] = v
    return out


def remap_keys(state_dict, table, source="checkpoint"):
    """(``state_dict`` with each key's leading ``old`` prefix replaced by ``new`` (first
    matching ``(old, new)`` pair of ``table``; other keys unchanged, order kept),
    ``{new key: old key}`` of the renamed keys). Two keys on one name are an error."""
    out, origin = OrderedDict(), {}
    for key, value in state_dict.items():
        name = key
        for old, new in table:
            if key.startswith(old):
                name = new + key[len(old):]
                break
        if name in out:
            raise CheckpointError(f"{source}: the keys {origin.get(name, name)!r} and {key!r} "
                                  "are the same tensor in two layouts; keep one")
        out[name] = value
        if name != key:
            origin[name] = key
    return out, origin


def _checkpoint_namer(origin, table):
    """Model key -> the checkpoint's name for it: its source key when the checkpoint has it,
    else (a missing key) the name in the layout the checkpoint uses for that prefix."""
    used = [(old, new) for old, new in table
            if any(k.startswith(new) and v.startswith(old) for k, v in origin.items())]

    def name(key, present=True):
        if present or key in origin:
            return origin.get(key, key)
        for old, new in used:
            if key.startswith(new):
                return old + key[len(new):]
        return key
    return name


class LoadReport:
    """What happened when a state dict was loaded into a module: ``loaded`` in the model's
    key names; ``missing``, ``unexpected``, ``harmless`` and ``mismatched`` in the
    checkpoint's (its layout's name for a missing key)."""

    def __init__(self, loaded, missing, unexpected, harmless, mismatched):
        self.loaded = loaded
        self.missing = missing
        self.unexpected = unexpected
        self.harmless = harmless
        self.mismatched = mismatched

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self):
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.harmless:
            parts.append(f"{len(self.harmless)} known extra keys ignored ({', '.join(self.harmless)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {', '.join(self.missing[:10])}"
                         + (" ..." if len(self.missing) > 10 else ""))
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {', '.join(self.unexpected[:10])}"
                         + (" ..." if len(self.unexpected) > 10 else ""))
        if self.mismatched:
            parts.append("shape mismatch: " + "; ".join(
                f"{k} checkpoint {a} vs model {b}" for k, a, b in self.mismatched[:10]))
        return ", ".join(parts)


def _same_shape(ckpt_shape, model_shape):
    # PyTorch 0-d scalars (num_batches_tracked) are (1,) in Jittor.
    return tuple(ckpt_shape) == tuple(model_shape) or (
        tuple(ckpt_shape) in ((), (1,)) and tuple(model_shape) in ((), (1,)))


def load_state_dict(module, state_dict, strict=True, source="checkpoint"):
    """Copy ``state_dict`` into ``module``.

    Keys are first renamed by the module's ``checkpoint_key_map()`` (when it has one).
    Every model tensor must be present with the right shape, and every checkpoint key
    must be used, except the known harmless extras that the module's own
    ``checkpoint_filter(state_dict)`` (when it has one) removes first: those are
    reported, not silently dropped.
    ``strict=False`` turns missing/unexpected keys into a report instead of an error;
    a shape mismatch is always an error.
    """
    own = module.state_dict()
    table = module.checkpoint_key_map() if hasattr(module, "checkpoint_key_map") else []
    state_dict, origin = remap_keys(state_dict, table, source)
    harmless = []
    if hasattr(module, "checkpoint_filter"):
        state_dict, harmless = module.checkpoint_filter(state_dict)
    loaded, unexpected, mismatched = [], [], []
    for key, value in state_dict.items():
        if key not in own:
            unexpected.append(key)
            continue
        value = np.asarray(_to_numpy(value))
        target = own[key]
        if not _same_shape(value.shape, target.shape):
            mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            continue
        loaded.append(key)
    missing = [k for k in own if k not in state_dict]
    name = _checkpoint_namer(origin, table)
    report = LoadReport(loaded, [name(k, present=False) for k in missing],
                        [name(k) for k in unexpected], [name(k) for k in harmless],
                        [(name(k), a, b) for k, a, b in mismatched])
    if mismatched or (strict and not report.ok):
        hint = ""
        if mismatched or len(missing) > len(own) // 2:
            hint = (" The checkpoint was probably made for another model variant or dataset: "
                    "check --config against the checkpoint.")
        raise CheckpointError(f"{source} does not fit the model: {report.summary()}.{hint}")
    for key in loaded:
        target = own[key]
        value = np.asarray(_to_numpy(state_dict[key])).reshape(target.shape)
        was_stopped = target.is_stop_grad()
        # dtype= explicitly: Jittor makes float32 Vars of float64 arrays otherwise, and a
        # float64 model (EncoderDecoder.to_dtype) must stay float64
        target.update(jt.array(value.astype(str(target.dtype), copy=False),
                               dtype=str(target.dtype)))
        if was_stopped:
            target.stop_grad()
    # Materialise the loaded values now: a pending ``array`` op of a one-element parameter
    # (e.g. CCHead's ``cca.gamma.scale``) fused into a broadcasting kernel fails to compile.
    jt.sync_all()
    return report


def load_trained_weights(model, path, strict=True):
    """Load a trained segmentor checkpoint (official ``.pth`` or ours) into ``model``."""
    obj = read_checkpoint(path)
    return load_state_dict(model, segmentor_state_dict(obj, path), strict=strict, source=path)


def build_model(cfg, checkpoint=None, strict=True, sync_bn=True, dtype="float32",
                with_pretrained=True):
    """The segmentor of ``cfg`` (``models.builder.EncoderDecoder``) with its weights:
    ``checkpoint`` (official ``.pth`` or ours; ``model.load_report``), else the
    ImageNet-pretrained backbone ``cfg.pretrained_model`` when set and ``with_pretrained``
    (see :func:`load_pretrained`). With a checkpoint the pretrained file is not needed (the
    trained weights replace it), unlike the reference which always reads it.
    ``dtype="float64"`` gives the verification path (``EncoderDecoder.to_dtype``).
    """
    from models.builder import EncoderDecoder
    model = EncoderDecoder(cfg, sync_bn=sync_bn)
    if checkpoint is not None:
        model.load_report = load_trained_weights(model, checkpoint, strict=strict)
    elif with_pretrained and cfg.get("pretrained_model"):
        load_pretrained(model, cfg.get("pretrained_model"))
    return model.to_dtype(dtype)


def load_pretrained(model, path):
    """The ImageNet-pretrained backbone file ``path`` into the segmentor ``model``
    (``model.pretrained_report``). A path that does not exist is an error: training
    silently from random weights would be a much worse surprise than a message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Pretrained backbone not found: {path}. Download the official ImageNet-pretrained "
            "file into checkpoints/pretrained/ (see README), or set C.pretrained_model = None "
            "in the config to train from scratch.")
    model.pretrained_report = load_pretrained_backbone(model.backbone, path)
    return model.pretrained_report


def load_pretrained_backbone(backbone, path):
    """Load ImageNet-pretrained weights into ``backbone`` (all backbone keys must match)."""
    obj = read_checkpoint(path)
    sd = backbone_state_dict(obj, path)
    own = backbone.state_dict()
    # BN counters are not needed to initialise a backbone; everything else must be there.
    sd = OrderedDict(sd)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = np.zeros((1,), dtype=np.int64)
    return load_state_dict(backbone, sd, strict=True, source=path)


def model_state_numpy(module):
    """``module.state_dict()`` as an ordered dict of numpy arrays."""
    return OrderedDict((k, v.numpy()) for k, v in module.state_dict().items())


def atomic_save(obj, path):
    """Write ``obj`` with ``jt.save`` to a temporary file, then rename over ``path``.

    A crash while writing leaves the previous file untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pkl", dir=folder)
    os.close(fd)
    try:
        jt.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
