"""Parameter groups, optimisers and the learning-rate schedule of the reference.

Parameter groups (as the reference builds them)
-----------------------------------------------
The reference optimiser sees two groups, both at the base lr:

* ``decay`` (the config's weight decay): the ``weight`` of every Linear / Conv module;
* ``no_decay`` (weight decay 0): the ``bias`` of those modules and ``weight``/``bias``
  of every standard norm layer (BatchNorm, GroupNorm, ``nn.LayerNorm``).

Every other trainable tensor is in no group and is **never updated**: DFormer's
channels-last LayerNorms and layer scales, DFormerv2's ``Geo.weight`` and
``gamma_1/2``. The published numbers come from that, so it is the default here;
``C.train_all_params = True`` adds the leftovers (ndim >= 2 with decay, the rest without).

Membership is decided by module *type*, as in the reference. In this port that means
``jittor.nn`` Linear / Conv / ConvTranspose (and the encoders' own depth-wise conv
classes, which stand for PyTorch ``nn.Conv2d(groups=C)``) and ``models.layers.BatchNorm2d`` /
``jittor.nn.LayerNorm`` (hence ``models.layers.LayerNorm``) / ``BatchNorm`` / ``GroupNorm``.
A module class may also declare ``param_group_kind = "conv" | "norm" | None`` to say
which PyTorch type it stands for.

Optimisers
----------
:class:`AdamW` and :class:`SGDM` subclass Jittor's optimisers, whose update rules were
checked against PyTorch's (decoupled decay ``p *= 1 - lr*wd`` then the bias-corrected Adam
step for AdamW; ``buf = m*buf + (g + wd*p)``, ``p -= lr*buf`` for SGD with momentum).
They add a compact, checked ``state_dict`` (numpy moments, step count, per-group lr/wd;
no parameter copies) so a resumed run continues bit for bit.

Learning-rate schedule (the reference's linear warm-up, then poly decay)
------------------------------------------------------------------------
``f(t) = base * t / W`` for ``t < W`` and ``base * (1 - t / T) ** power`` otherwise.
The reference sets the lr to ``f(t)`` *after* the step of iteration ``t``, so the step
of iteration ``t`` uses ``f(t - 1)``, and iteration 0 uses the constructor's lr = base.
Hence: full lr on the very first step, lr 0 on the second, and a small drop at ``t = W``
(poly runs over the whole run, not over ``T - W``). :meth:`WarmUpPolyLR.lr_for_step`
returns exactly that; we set it *before* each step, which is equivalent and makes the
lr a pure function of the iteration (nothing extra to restore on resume).
"""
import numpy as np

import jittor as jt
from jittor import nn

from models.layers import BatchNorm2d

# ----------------------------------------------------------------------------- param groups

_CONV_TYPES = (nn.Linear, nn.Conv, nn.Conv1d, nn.Conv3d, nn.ConvTranspose, nn.ConvTranspose3d)
_NORM_TYPES = (BatchNorm2d, nn.BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _extra_conv_types():
    """Encoder classes that replace a PyTorch ``nn.Conv2d`` (custom depth-wise kernels)."""
    types = []
    try:
        from models.encoders.dformer import DepthwiseConv2d
        types.append(DepthwiseConv2d)
    except ImportError:
        pass
    return tuple(types)


def module_kind(module):
    """"conv", "norm" or None: which reference optimiser rule covers ``module``."""
    declared = getattr(type(module), "param_group_kind", "undeclared")
    if declared != "undeclared":
        return declared
    if isinstance(module, _CONV_TYPES + _extra_conv_types()):
        return "conv"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    return None


def is_trainable(var):
    """True for a parameter (not a buffer), also while the model is in eval mode."""
    return isinstance(var, jt.Var) and not var.is_stop_grad()


def named_trainable(model):
    """(name, Var) of every trainable tensor, in ``state_dict`` order.

    Call it with the model in training mode: Jittor's ``eval()`` stops all gradients.
    """
    return [(k, v) for k, v in model.state_dict().items() if is_trainable(v)]


class ParamGroups:
    """The decay / no-decay / excluded split of a model's trainable tensors (by name)."""

    def __init__(self, decay, no_decay, excluded):
        self.decay = decay          # list of (name, Var)
        self.no_decay = no_decay
        self.excluded = excluded

    def counts(self):
        return {"decay": len(self.decay), "no_decay": len(self.no_decay),
                "excluded": len(self.excluded),
                "total": len(self.decay) + len(self.no_decay) + len(self.excluded),
                "excluded_scalars": int(sum(int(np.prod(v.shape)) for _, v in self.excluded))}

    def summary(self):
        c = self.counts()
        line = (f"Weight Decay: {c['decay']}, Weight No Decay: {c['no_decay']}, "
                f"Total: {c['total']}")
        if c["excluded"]:
            line += (f" ({c['excluded']} tensors / {c['excluded_scalars']} scalars never updated,"
                     " as in the reference; set C.train_all_params = True to train them)")
        return line

    def optimizer_groups(self, weight_decay):
        """Jittor optimiser groups: [{params, weight_decay}, {params, weight_decay: 0}]."""
        groups = [{"params": [v for _, v in self.decay], "names": [k for k, _ in self.decay],
                   "weight_decay": float(weight_decay)},
                  {"params": [v for _, v in self.no_decay],
                   "names": [k for k, _ in self.no_decay], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]


def group_parameters(model, train_all=False):
    """Split ``model``'s trainable tensors like the reference's ``group_weight``.

    With ``train_all`` the tensors the reference leaves out join the groups
    (``ndim >= 2`` with decay, the others without) and nothing is excluded.
    """
    names = {id(v): k for k, v in named_trainable(model)}
    decay, no_decay, seen = [], [], set()

    def take(var, bucket):
        if var is None or id(var) not in names or id(var) in seen:
            return
        seen.add(id(var))
        bucket.append((names[id(var)], var))

    for module in model.modules():
        kind = module_kind(module)
        if kind == "conv":
            take(getattr(module, "weight", None), decay)
            take(getattr(module, "bias", None), no_decay)
        elif kind == "norm":
            take(getattr(module, "weight", None), no_decay)
            take(getattr(module, "bias", None), no_decay)
    excluded = [(k, v) for k, v in named_trainable(model) if id(v) not in seen]
    if train_all:
        decay += [(k, v) for k, v in excluded if v.ndim >= 2]
        no_decay += [(k, v) for k, v in excluded if v.ndim < 2]
        excluded = []
    return ParamGroups(decay, no_decay, excluded)


# ----------------------------------------------------------------------------- optimisers

class _StateMixin:
    """Checked, compact state for Jittor optimisers whose per-tensor state lives in
    ``group[key]`` lists (``m``/``values``)."""

    STATE_KEYS = ()

    def state_dict(self):
        groups = []
        for g in self.param_groups:
            groups.append({
                "lr": float(g.get("lr", self.lr)),
                "weight_decay": float(g.get("weight_decay", 0.0)),
                "names": list(g.get("names", [])),
                "shapes": [tuple(p.shape) for p in g["params"]],
                **{key: [v.numpy() for v in g[key]] for key in self.STATE_KEYS},
            })
        return {"type": type(self).__name__, "n_step": int(self.n_step), "lr": float(self.lr),
                "param_groups": groups}

    def load_state_dict(self, state):
        """Restore moments, step count and lrs; the groups must match name for name."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')}, not "
                             f"{type(self).__name__} (was the config's optimizer changed?)")
        saved = state["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(saved)} parameter groups, this run "
                             f"{len(self.param_groups)} (was train_all_params changed?)")
        for i, (g, s) in enumerate(zip(self.param_groups, saved)):
            shapes = [tuple(p.shape) for p in g["params"]]
            if s["shapes"] != shapes or (s["names"] and s["names"] != g.get("names", s["names"])):
                raise ValueError(f"optimizer group {i} does not match the model "
                                 "(different model, config or train_all_params)")
        for g, s in zip(self.param_groups, saved):
            g["lr"], g["weight_decay"] = s["lr"], s["weight_decay"]
            for key in self.STATE_KEYS:
                for var, value in zip(g[key], s[key]):
                    var.update(jt.array(np.asarray(value, dtype=str(var.dtype))).stop_grad())
        self.n_step = int(state["n_step"])
        self.lr = float(state["lr"])

    def set_lr(self, lr):
        """Same lr for every group (the reference's schedule)."""
        self.lr = float(lr)
        for g in self.param_groups:
            g["lr"] = float(lr)

    def current_lr(self):
        return float(self.param_groups[0].get("lr", self.lr))


class AdamW(_StateMixin, jt.optim.AdamW):
    """PyTorch-equivalent AdamW (decoupled weight decay) with per-group weight decay."""

    STATE_KEYS = ("m", "values")


class SGDM(_StateMixin, jt.optim.SGD):
    """SGD with momentum and L2 weight decay (PyTorch ``SGD`` with dampening 0)."""

    STATE_KEYS = ("values",)


def build_optimizer(cfg, groups):
    """The config's optimiser ("AdamW" or "SGDM") over ``groups`` at the base lr."""
    name = str(cfg.get("optimizer", "AdamW"))
    pg = groups.optimizer_groups(cfg.weight_decay)
    if not pg:
        raise ValueError("no trainable parameters to optimise")
    if name == "AdamW":
        return AdamW(pg, lr=cfg.lr, eps=1e-8, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if name == "SGDM":
        return SGDM(pg, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {name!r} in config (expected 'AdamW' or 'SGDM')")


# ----------------------------------------------------------------------------- schedule

class WarmUpPolyLR:
    """The reference's warm-up + poly schedule, with its one-step lag (module docstring)."""

    def __init__(self, base_lr, power, total_iters, warmup_iters):
        self.base_lr = float(base_lr)
        self.power = float(power)
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)

    @classmethod
    def from_config(cls, cfg):
        n = int(cfg.niters_per_epoch)
        return cls(cfg.lr, cfg.lr_power, int(cfg.nepochs) * n, int(cfg.warm_up_epoch) * n)

    def get_lr(self, t):
        """f(t): the value the reference sets after the step of iteration ``t``."""
        if t < self.warmup_iters:
            return self.base_lr * (t / self.warmup_iters)
        return self.base_lr * ((1.0 - float(t) / self.total_iters) ** self.power)

    def lr_for_step(self, t):
        """The lr used by the optimiser step of global iteration ``t`` (0-based)."""
        return self.base_lr if t == 0 else self.get_lr(t - 1)

    def state_dict(self):
        return {"base_lr": self.base_lr, "power": self.power, "total_iters": self.total_iters,
                "warmup_iters": self.warmup_iters}

    def check_state(self, state):
        """Error when a checkpoint's schedule differs from this run's."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError("the checkpoint was trained with another schedule: "
                             + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
                             + " (same config, --epochs and --batch-size-override needed)")
