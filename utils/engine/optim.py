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
no parameter copies) so a resumed run continues bit for bit. Their plain steps run in
the parameters' dtype (float64 included: every constant is made in that dtype, as Jittor
would round a Python float to float32), with Jittor's order of operations.

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
from models.ops import scalar

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
                    var.update(jt.array(np.asarray(value), dtype=str(var.dtype)).stop_grad())
        self.n_step = int(state["n_step"])
        self.lr = float(state["lr"])

    def set_lr(self, lr):
        """Same lr for every group (the reference's schedule)."""
        self.lr = float(lr)
        for g in self.param_groups:
            g["lr"] = float(lr)

    def current_lr(self):
        return float(self.param_groups[0].get("lr", self.lr))


def _constants(values, like):
    """The step's scalars as constants of ``like``'s dtype (see the module docstring)."""
    return [scalar(v, like) for v in values]


# One OpenMP kernel updates _ADAMW_CHUNK tensors of a group: Jittor's own step
# builds ~10 operators per tensor in Python and runs each tensor's update as a
# single-threaded kernel (about 30 ms of Python and 20 ms of kernels per step for
# DFormer-T's 500 tensors). Inputs: the step's scalars, then the parameters,
# gradients, first and second moments of NT tensors; outputs: their new values.
# Jittor compiles one kernel per number of inputs and rank of each, and a 257-input
# source takes g++ 4-6 s: every tensor goes in flattened and the last chunk of a group is
# filled up with a one-element dummy, so that one kernel serves every chunk of every
# model (DFormer-T's first step compiled six of them, ~25 of its ~85 s).
#
# The arithmetic is that of Jittor's AdamW.step as g++ -Ofast compiles it (scalar
# code, checked in its assembly): m1 = fma(g, 1-b0, b0*m), v1 = fma(v, b1, (g*g)*(1-b1)),
# p1 = p*(1-lr*wd) rounded on its own, IEEE sqrt and divisions. With AVX-512 the
# kernel spells each operation out (intrinsics with explicit rounding cannot be
# contracted or turned into reciprocal approximations), so the results are the same
# bit for bit; elsewhere a plain loop gives them to float rounding.
_ADAMW_CHUNK = 64
# Jittor puts the kernel's macros (in0_type, ...) after the header's last #include, so
# that line must not sit inside a conditional: the AVX-512 include comes first.
_ADAMW_HEADER = r"""
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <vector>
#include <algorithm>
__attribute__((optimize("no-fast-math", "fp-contract=off")))
static inline void adamw_span(const float* __restrict__ p, const float* __restrict__ g,
                              const float* __restrict__ m, const float* __restrict__ v,
                              float* __restrict__ po, float* __restrict__ mo,
                              float* __restrict__ vo, long long lo, long long hi, const float* S) {
    const float decay = S[0], b0 = S[1], one_b0 = S[2], b1 = S[3], one_b1 = S[4];
    const float sqrt_bc2 = S[5], eps = S[6], step_size = S[7];
    long long i = lo;
#if defined(__AVX512F__)
#define ADAMW_R _MM_FROUND_CUR_DIRECTION
    const __m512 vdecay = _mm512_set1_ps(decay), vb0 = _mm512_set1_ps(b0);
    const __m512 vone_b0 = _mm512_set1_ps(one_b0), vb1 = _mm512_set1_ps(b1);
    const __m512 vone_b1 = _mm512_set1_ps(one_b1), vsbc2 = _mm512_set1_ps(sqrt_bc2);
    const __m512 veps = _mm512_set1_ps(eps), vstep = _mm512_set1_ps(step_size);
    for (; i < hi; i += 16) {
        const __mmask16 k = hi - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (hi - i)) - 1);
        const __m512 pv = _mm512_maskz_loadu_ps(k, p + i), gv = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 mv = _mm512_maskz_loadu_ps(k, m + i), vv = _mm512_maskz_loadu_ps(k, v + i);
        const __m512 p1 = _mm512_mul_round_ps(pv, vdecay, ADAMW_R);
        const __m512 m1 = _mm512_fmadd_ps(gv, vone_b0, _mm512_mul_round_ps(mv, vb0, ADAMW_R));
        const __m512 gg = _mm512_mul_round_ps(_mm512_mul_round_ps(gv, gv, ADAMW_R), vone_b1,
                                              ADAMW_R);
        const __m512 v1 = _mm512_fmadd_ps(vv, vb1, gg);
        const __m512 denom = _mm512_add_round_ps(
            _mm512_div_round_ps(_mm512_sqrt_round_ps(v1, ADAMW_R), vsbc2, ADAMW_R), veps, ADAMW_R);
        const __m512 q = _mm512_div_round_ps(_mm512_mul_round_ps(m1, vstep, ADAMW_R), denom,
                                             ADAMW_R);
        _mm512_mask_storeu_ps(mo + i, k, m1);
        _mm512_mask_storeu_ps(vo + i, k, v1);
        _mm512_mask_storeu_ps(po + i, k, _mm512_sub_round_ps(p1, q, ADAMW_R));
    }
#undef ADAMW_R
#else
    // -Ofast would let g++ regroup these; each operation is rounded on its own instead.
    #pragma GCC ivdep
    for (; i < hi; i++) {
        const float p1 = p[i] * decay;
        const float m1 = std::fma(g[i], one_b0, m[i] * b0);
        const float v1 = std::fma(v[i], b1, g[i] * g[i] * one_b1);
        const float denom = std::sqrt(v1) / sqrt_bc2 + eps;
        mo[i] = m1;
        vo[i] = v1;
        po[i] = p1 - step_size * m1 / denom;
    }
#endif
}
"""
_ADAMW_SRC = r"""
const float* P[NT] = {PARAMS};
const float* G[NT] = {GRADS};
const float* M[NT] = {MOMS};
const float* V[NT] = {VARS};
float* PO[NT] = {PARAMS_OUT};
float* MO[NT] = {MOMS_OUT};
float* VO[NT] = {VARS_OUT};
const long long NUM[NT] = {SIZES};
// blocks of at most 16384 elements, never spanning two tensors
std::vector<std::pair<int, long long>> blocks;
for (int t = 0; t < NT; t++)
    for (long long s = 0; s < NUM[t]; s += 16384) blocks.emplace_back(t, s);
const long long nb = (long long)blocks.size();
#pragma omp parallel for schedule(static) if (nb > 1)
for (long long k = 0; k < nb; k++) {
    const int t = blocks[k].first;
    const long long lo = blocks[k].second, hi = std::min(NUM[t], lo + 16384);
    adamw_span(P[t], G[t], M[t], V[t], PO[t], MO[t], VO[t], lo, hi, in0_p);
}
"""


def _adamw_source(nt):
    def refs(kind, first):
        return ", ".join(f"{kind}{first + i}_p" for i in range(nt))
    sizes = ", ".join(f"in{1 + i}->num" for i in range(nt))
    return (f"#define NT {nt}\n" + _ADAMW_SRC
            .replace("{PARAMS}", "{" + refs("in", 1) + "}")
            .replace("{GRADS}", "{" + refs("in", 1 + nt) + "}")
            .replace("{MOMS}", "{" + refs("in", 1 + 2 * nt) + "}")
            .replace("{VARS}", "{" + refs("in", 1 + 3 * nt) + "}")
            .replace("{PARAMS_OUT}", "{" + refs("out", 0) + "}")
            .replace("{MOMS_OUT}", "{" + refs("out", nt) + "}")
            .replace("{VARS_OUT}", "{" + refs("out", 2 * nt) + "}")
            .replace("{SIZES}", "{" + sizes + "}"))


def adamw_fused_applies(optimizer):
    """True when AdamW's step runs as fused OpenMP kernels (CPU, float32 tensors, switch on)."""
    from models.ops._common import fused_for
    tensors = [t for pg in optimizer.param_groups
               for key in ("params", "grads", "m", "values") for t in pg.get(key, [])]
    return fused_for(*tensors)


class AdamW(_StateMixin, jt.optim.AdamW):
    """PyTorch-equivalent AdamW (decoupled weight decay) with per-group weight decay.

    On the CPU the update of float32 tensors runs as fused OpenMP kernels
    (``_ADAMW_SRC``) with Jittor's arithmetic; elsewhere (CUDA, fused kernels off,
    float64) :meth:`_plain_step` runs Jittor's ``AdamW.step`` in the tensors' dtype.
    """

    STATE_KEYS = ("m", "values")

    def _scalars(self, pg, dtype):
        """The step's scalars for group ``pg`` in ``dtype`` (float32: as Jittor rounds the
        Python floats of its step): 1 - lr * wd, b0, 1 - b0, b1, 1 - b1, sqrt(1 - b1^n),
        eps and lr / (1 - b0^n)."""
        n = float(self.n_step)
        lr = pg.get("lr", self.lr)
        weight_decay = pg.get("weight_decay", self.weight_decay)
        b0, b1 = pg.get("betas", self.betas)
        sqrt_bc2 = np.sqrt(np.dtype(dtype).type(1 - b1 ** n))
        return np.array([1 - lr * weight_decay, b0, 1 - b0, b1, 1 - b1, sqrt_bc2,
                         pg.get("eps", self.eps), lr / (1 - b0 ** n)], dtype=dtype)

    def _plain_step(self):
        for pg in self.param_groups:
            consts = {}
            for p, g, v, m in zip(pg["params"], pg["grads"], pg["values"], pg["m"]):
                if p.is_stop_grad():
                    continue
                dtype = str(p.dtype)
                if dtype not in consts:
                    consts[dtype] = _constants(self._scalars(pg, dtype), p)
                decay, b0, one_b0, b1, one_b1, sqrt_bc2, eps, step_size = consts[dtype]
                p.update(p * decay)
                m.update(b0 * m + one_b0 * g)
                v.update(b1 * v + one_b1 * g * g)
                denom = jt.sqrt(v) / sqrt_bc2 + eps
                p.update(p - step_size * m / denom)

    def _fused_step(self):
        nt = _ADAMW_CHUNK
        dummy = None
        for pg in self.param_groups:
            scalars = jt.array(self._scalars(pg, "float32")).stop_grad()
            items = [(p, g, m, v) for p, g, v, m in zip(pg["params"], pg["grads"], pg["values"],
                                                        pg["m"]) if not p.is_stop_grad()]
            for start in range(0, len(items), nt):
                chunk = items[start:start + nt]
                columns = [[t.reshape(-1) for t in column] for column in zip(*chunk)]
                if len(chunk) < nt:
                    if dummy is None:
                        dummy = jt.zeros((1,), "float32").stop_grad()
                    for column in columns:
                        column += [dummy] * (nt - len(chunk))
                shapes = [tuple(p.shape) for p in columns[0]]
                outs = jt.code(shapes * 3, ["float32"] * (3 * nt),
                               [scalars] + columns[0] + columns[1] + columns[2] + columns[3],
                               cpu_header=_ADAMW_HEADER, cpu_src=_adamw_source(nt))
                for i, (p, _, m, v) in enumerate(chunk):
                    m.update(outs[nt + i].reshape(m.shape))
                    v.update(outs[2 * nt + i].reshape(v.shape))
                    p.update(outs[i].reshape(p.shape))

    def step(self, loss=None, retain_graph=False):
        self.pre_step(loss, retain_graph)    # the gradients first: the fused check sees them
        if adamw_fused_applies(self):
            self._fused_step()
        else:
            self._plain_step()
        self.post_step()


class SGDM(_StateMixin, jt.optim.SGD):
    """SGD with momentum and L2 weight decay (PyTorch ``SGD`` with dampening 0):
    Jittor's ``SGD.step`` in the tensors' dtype."""

    STATE_KEYS = ("values",)

    def step(self, loss=None, retain_graph=False):
        self.pre_step(loss, retain_graph)
        for pg in self.param_groups:
            lr = pg.get("lr", self.lr)
            momentum = pg.get("momentum", self.momentum)
            weight_decay = pg.get("weight_decay", self.weight_decay)
            dampening = pg.get("dampening", self.dampening)
            nesterov = pg.get("nesterov", self.nesterov)
            consts = {}
            for p, g, v in zip(pg["params"], pg["grads"], pg["values"]):
                if p.is_stop_grad():
                    continue
                dtype = str(p.dtype)
                if dtype not in consts:
                    consts[dtype] = _constants([weight_decay, momentum, 1 - dampening, lr], p)
                c_wd, c_momentum, undamped, c_lr = consts[dtype]
                dp = p * c_wd + g
                v.update(c_momentum * v + dp * undamped)
                if nesterov:
                    p.update(p - (dp + c_momentum * v) * c_lr)
                else:
                    p.update(p - v * c_lr)
        self.post_step()


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
