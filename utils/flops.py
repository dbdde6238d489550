"""Parameter and FLOP counting for the model zoo, in two conventions.

Counts are analytic (from tensor shapes). The counting forward runs on Jittor's
lazy graph and nothing is ever fetched, so no kernel is executed: counting
DFormer-Large at 480x640 takes well under a second.

Conventions
-----------
``paper`` (thop 0.1.1, as the reference's ``utils/benchmark.py`` runs it; the
numbers in the DFormer / DFormerv2 tables):
    one multiply-add counts as ONE op, and only calls of module types thop
    knows are counted, through forward hooks on those modules:

    ==========================  ==================================================
    thop rule (torch module)     count
    ==========================  ==================================================
    Conv1/2/3d                   out.numel * (in_ch / groups) * prod(kernel), no bias
    Linear                       out.numel * in_features, no bias
    BatchNorm*/SyncBN/LayerNorm  2 * in.numel, doubled when affine
    AdaptiveAvgPool*             int((prod(in_hw / out_hw) + 1) * out.numel)
    AvgPool*                     out.numel
    Upsample (bilinear)          11 * out.numel (nearest 1, linear 5, bicubic 259)
    Softmax (module)             rows * (3 * n - 1)
    ReLU, Dropout, Sequential    0
    anything else                0 (GELU, DropPath, custom classes, all functional ops:
                                 matmul/bmm, F.interpolate, F.softmax, F.layer_norm)
    ==========================  ==================================================

``full`` (torch ``FlopCounterMode``, as in the parity manifest's ``flops``):
    one multiply-add counts as TWO FLOPs; every convolution (``convolution``),
    every Linear (``linear``, torch's addmm) and every other matrix product
    (``matmul``, torch's bmm: attention, NMF) is counted; elementwise ops, norms,
    softmax, pooling and interpolation are not.

Mapping our modules onto what the reference counted
---------------------------------------------------
Our implementation differs from the reference in places, so counting follows
what the *reference* computes:

* ``dformer.DepthwiseConv2d`` (channels-last oneDNN conv) is the reference's
  ``nn.Conv2d(groups=dim)``: conv rule.
* ``dformer.ChannelsLastLayerNorm`` is the reference DFormer's own
  ``LayerNorm`` class, unknown to thop: 0 ops, params not in thop's count.
  ``layers.LayerNorm`` (DFormerv2) is ``nn.LayerNorm``: counted.
* ``layers.BatchNorm2d`` is ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm``.
* A Linear whose weight is used functionally (DFormerv2 calls
  ``nn.matmul_transpose(x, layer.weight)``) is counted as a call of that
  Linear, because the reference calls the module.
* ``dformer.Attention``: the reference pools the queries with an
  ``nn.AdaptiveAvgPool2d((7, 7))`` module (thop counts it) and runs one
  (win^2 x N x C/head) product pair per head; ours pools by a matrix product and
  evaluates all heads in one masked product. The rule counts the reference's
  pooling (paper) and its per-head products, 2 * B * win^2 * N * C FLOPs (full);
  the products inside are not counted again.
* ``ham_head.NMF2D``: our update loop reuses ``x^T bases`` between rounds; the
  rule counts the reference's products:
  per matrix ``N D R (2 s + 3) + (N R^2 + D R^2)(2 s + 1)`` multiply-adds with
  ``s`` = eval (or train) steps.
* Bilinear resizing and adaptive pooling (``models.ops.interpolate.separable``) are
  matrix products here but ``F.interpolate`` / pooling in the reference: never
  counted.
* DFormerv2 ``DWConv2d`` is counted as the reference's ``nn.Conv2d`` child
  call, whatever kernel ours runs (oneDNN, a fused CPU kernel or Jittor ops).
* DFormerv2 ``DecomposedGSA`` / ``FullGSA``: the attention products (row, then
  column attention; or full attention) are counted from the input shape,
  4 B C h w (h + w) and 4 B (h w)^2 C FLOPs, because ours may run them as
  fused kernels; their projections (Linear weights used functionally) and the
  LePE conv are counted as modules.
* Other functional products outside these modules (e.g. the NL head's
  attention) are counted from their operand shapes in ``full``, as torch
  counts the same products.

The counts therefore do not depend on the device or on which kernels our
modules choose.

Rules are looked up along the class MRO, so subclasses inherit them; use
:func:`register_rule` to add one.
"""
from collections import OrderedDict

import jittor as jt
from jittor import nn

__all__ = ["FlopCounter", "FlopReport", "count_flops", "count_params", "register_rule",
           "PAPER_CONVENTION", "FULL_CONVENTION", "OPS"]

PAPER_CONVENTION = ("thop 0.1.1 as run by the reference's utils/benchmark.py: 1 multiply-add = 1 op, "
                    "module layers only (no attention/NMF matmuls, no interpolation); the "
                    "convention of the DFormer/DFormerv2 papers' FLOPs columns")
FULL_CONVENTION = ("every convolution, Linear and matrix product (attention, NMF), "
                   "1 multiply-add = 2 FLOPs (torch FlopCounterMode); interpolation, "
                   "pooling, norms and elementwise ops not counted")
OPS = ("convolution", "linear", "matmul")


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def _shape(x):
    return tuple(int(s) for s in x.shape)


def _numel(x):
    return _prod(_shape(x))


def _first_var(values):
    for v in values:
        if isinstance(v, jt.Var):
            return v
        if isinstance(v, (list, tuple)):
            found = _first_var(v)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------------------
# rules


class Rule:
    """How one module class is counted.

    fn(module, args, output) -> (paper_ops, {op: flops}) or (paper_ops, {op: flops},
    children): ``children`` are submodules the reference calls as modules but ours uses
    functionally (their parameters then enter thop's parameter count).
    scope: "leaf" (the rule accounts for everything computed inside, children
    included) or "composite" (the rule accounts for the functional products inside;
    child modules are still counted by their own rules).
    kind: "convolution" / "linear" when the module owns a weight whose functional
    use counts as a call of the module, else None.
    paper_params: the module is a type thop knows, so its parameters enter thop's
    parameter count once it has been called.
    """

    def __init__(self, fn, scope="leaf", kind=None, paper_params=True):
        assert scope in ("leaf", "composite")
        self.fn, self.scope, self.kind, self.paper_params = fn, scope, kind, paper_params


_RULES = {}
_DEFAULTS_LOADED = False


def register_rule(cls, fn, scope="leaf", kind=None, paper_params=True):
    """Count modules of ``cls`` (and subclasses) with ``fn``; see :class:`Rule`."""
    _RULES[cls] = Rule(fn, scope, kind, paper_params)


def _conv(m, args, out):
    macs = _numel(out) * _prod(m.weight.shape[1:])
    return macs, {"convolution": 2 * macs}


def _linear(m, args, out):
    macs = _numel(out) * int(m.weight.shape[1])
    return macs, {"linear": 2 * macs}


def _norm(m, args, out):
    affine = getattr(m, "weight", None) is not None and \
        getattr(m, "affine", getattr(m, "elementwise_affine", True)) is not False
    return (4 if affine else 2) * _numel(_first_var(args)), {}


def _adaptive_avg_pool(m, args, out):
    x = _first_var(args)
    kernel = 1.0
    for i, o in zip(_shape(x)[2:], _shape(out)[2:]):
        kernel *= i / o
    return int((kernel + 1) * _numel(out)), {}


def _avg_pool(m, args, out):
    return _numel(out), {}


_UPSAMPLE_OPS = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 259}


def _upsample(m, args, out):
    mode = str(getattr(m, "mode", "nearest")).lower()
    return _UPSAMPLE_OPS.get(mode, 0) * _numel(out), {}


def _softmax(m, args, out):
    x = _first_var(args)
    dim = getattr(m, "dim", None)
    if dim is None:      # jittor's nn.Softmax is a make_module wrapper holding args / kw
        dim = getattr(m, "kw", {}).get("dim", (list(getattr(m, "args", ())) + [-1])[0])
    n = _shape(x)[dim]
    return (_numel(x) // n) * (3 * n - 1), {}


def _zero(m, args, out):
    return 0, {}


def _dformer_attention(m, args, out):
    """Reference DFormer ``attention``: its AdaptiveAvgPool2d (paper) and per-head products (full)."""
    if not m.window:
        return 0, {}
    b, h, w, c = _shape(args[0])
    cells = m.window * m.window
    pooled = b * (c + c // 2) * cells                    # AdaptiveAvgPool2d output numel
    paper = int(((h / m.window) * (w / m.window) + 1) * pooled)
    # The reference calls its ``kv`` Linear on every token; ours multiplies by the two
    # halves of kv's weight directly (see Attention.pooled_attention).
    kv = b * h * w * c * c
    # (cells x C/2/heads) @ (C/2/heads x N) and (cells x N) @ (N x C/2/heads) per head
    return paper + kv, {"matmul": 2 * 2 * b * cells * h * w * (c // 2), "linear": 2 * kv}, [m.kv]


def _wrapped_conv(m, args, out):
    """DFormerv2 ``DWConv2d``: the reference calls its ``dwconv`` (nn.Conv2d) child."""
    macs = _numel(out) * _prod(m.dwconv.weight.shape[1:])
    return macs, {"convolution": 2 * macs}


def _gsa_qk_macs(b, h, w, c):
    """The reference's q_proj and k_proj Linears; ours runs both as one product with
    the concatenated weights (see dformerv2._GSA._project)."""
    return 2 * b * h * w * c * c


def _decomposed_gsa(m, args, out):
    """Reference ``Decomposed_GSA``: q k^T and attn v along rows (L = w), then columns (L = h)."""
    b, h, w, c = _shape(args[0])
    qk = _gsa_qk_macs(b, h, w, c)
    return qk, {"matmul": 2 * 2 * b * h * w * (h + w) * c, "linear": 2 * qk}, [m.q_proj, m.k_proj]


def _full_gsa(m, args, out):
    """Reference ``Full_GSA``: q k^T and attn v over all N = h w tokens."""
    b, h, w, c = _shape(args[0])
    qk = _gsa_qk_macs(b, h, w, c)
    return qk, {"matmul": 2 * 2 * b * (h * w) ** 2 * c, "linear": 2 * qk}, [m.q_proj, m.k_proj]


def _nmf2d(m, args, out):
    """Products of the reference's NMF2D forward (bmm), at the module's current mode."""
    b, c, h, w = _shape(args[0])
    mats, d, n, r = b * m.S, c // m.S, h * w, m.R
    steps = m.train_steps if m.is_training() else m.eval_steps
    macs = n * d * r * (2 * steps + 3) + (n * r * r + d * r * r) * (2 * steps + 1)
    return 0, {"matmul": 2 * mats * macs}


def _load_default_rules():
    """Register the built-in rules (once; rules registered earlier by the user win)."""
    global _DEFAULTS_LOADED
    if _DEFAULTS_LOADED:
        return
    _DEFAULTS_LOADED = True
    from models import layers
    from models.encoders import dformer, dformerv2
    from models.decoders import ham_head
    defaults = [(nn.Conv, _conv, "leaf", "convolution", True),
                (nn.Conv1d, _conv, "leaf", "convolution", True),
                (nn.Conv3d, _conv, "leaf", "convolution", True),
                (dformer.DepthwiseConv2d, _conv, "leaf", "convolution", True),
                (nn.Linear, _linear, "leaf", "linear", True),
                (layers.BatchNorm2d, _norm, "leaf", None, True),
                (dformer.Attention, _dformer_attention, "composite", None, False),
                (dformerv2.DWConv2d, _wrapped_conv, "leaf", None, True),
                (dformerv2.DecomposedGSA, _decomposed_gsa, "composite", None, False),
                (dformerv2.FullGSA, _full_gsa, "composite", None, False),
                (ham_head.NMF2D, _nmf2d, "composite", None, False)]
    for name, fn in (("BatchNorm", _norm), ("BatchNorm1d", _norm), ("BatchNorm3d", _norm),
                     ("LayerNorm", _norm), ("InstanceNorm2d", _norm),
                     ("AdaptiveAvgPool2d", _adaptive_avg_pool), ("AvgPool2d", _avg_pool),
                     ("Upsample", _upsample), ("Softmax", _softmax), ("ReLU", _zero),
                     ("Dropout", _zero)):
        if hasattr(nn, name):
            defaults.append((getattr(nn, name), fn, "leaf", None, True))
    for cls, fn, scope, kind, paper_params in defaults:
        _RULES.setdefault(cls, Rule(fn, scope, kind, paper_params))


def _rule_for(cls):
    for klass in cls.__mro__:
        rule = _RULES.get(klass)
        if rule is not None:
            return rule
    return None


# ---------------------------------------------------------------------------
# functional products


def _broadcast(a, b):
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        out.append(max(x, y))
    return out[::-1]


def _matmul_macs(a, b):
    """Multiply-adds of ``a @ b`` (torch.matmul broadcasting rules) from shapes."""
    if len(b) == 1:
        return _prod(a)
    if len(a) == 1:
        return _prod(b)
    (n, m), k = a[-2:], b[-1]
    return _prod(_broadcast(a[:-2], b[:-2])) * n * m * k


def _t(shape):
    return shape[:-2] + (shape[-1], shape[-2]) if len(shape) >= 2 else shape


def _mm(args, kw, out):
    return _matmul_macs(_shape(args[0]), _shape(args[1])), (args[0], args[1]), "matmul"


def _mm_t(args, kw, out):
    return _matmul_macs(_shape(args[0]), _t(_shape(args[1]))), (args[0], args[1]), "matmul"


def _baddbmm(args, kw, out):
    return _matmul_macs(_shape(args[1]), _shape(args[2])), (args[1], args[2]), "matmul"


def _conv_fn(args, kw, out):
    weight = args[1] if len(args) > 1 else kw["weight"]
    return _numel(out) * _prod(weight.shape[1:]), (weight,), "convolution"


_PRODUCT_FUNCTIONS = (
    (jt, "matmul", _mm), (nn, "matmul", _mm), (nn, "bmm", _mm), (jt, "bmm", _mm),
    (nn, "matmul_transpose", _mm_t), (nn, "bmm_transpose", _mm_t), (nn, "linear", _mm_t),
    (nn, "baddbmm", _baddbmm), (jt.Var, "matmul", _mm), (jt.Var, "__matmul__", _mm),
    (nn, "conv2d", _conv_fn), (nn, "conv", _conv_fn),
)

# Functions computing what the reference does with F.interpolate / pooling.
_UNCOUNTED_FUNCTIONS = (("models.ops.interpolate", "separable"),)


# ---------------------------------------------------------------------------
# counter


class FlopReport:
    """Result of a count. FLOP numbers are integers (not G)."""

    def __init__(self, shape, batch):
        self.shape = tuple(shape)
        self.batch = batch
        self.paper_ops = 0
        self.by_op = OrderedDict((op, 0) for op in OPS)
        self.by_module = OrderedDict()        # top-level child -> {"paper", "flops", op...}
        self.functional = 0                   # full FLOPs of products counted from operand shapes
        self.paper_params = 0

    @property
    def flops(self):
        return sum(self.by_op.values())

    def add(self, where, paper, flops):
        self.paper_ops += paper
        entry = self.by_module.setdefault(where, OrderedDict(
            [("paper", 0), ("flops", 0)] + [(op, 0) for op in OPS]))
        entry["paper"] += paper
        for op, value in flops.items():
            self.by_op[op] += value
            entry[op] += value
            entry["flops"] += value

    def as_dict(self):
        return {"shape": list(self.shape), "batch": self.batch, "paper_ops": self.paper_ops,
                "flops": self.flops, "by_op": dict(self.by_op),
                "by_module": {k: dict(v) for k, v in self.by_module.items()},
                "functional_flops": self.functional, "paper_params": self.paper_params}


class FlopCounter:
    """Context manager that counts every module call and product of ``model``.

    Inside the ``with`` block each module's ``execute`` is wrapped (instance
    attribute, removed on exit) and the functional products of Jittor are
    patched; run exactly one forward inside it. Not re-entrant, not thread-safe.
    """

    def __init__(self, model, shape=(0, 0), batch=1):
        _load_default_rules()
        self.model = model
        self.report = FlopReport(shape, batch)
        self._names = {id(m): name for name, m in model.named_modules()}
        self._stack = []            # (module name, rule or None)
        self._leaf = 0              # depth of leaf-rule scopes
        self._suppress = 0          # depth of composite-rule / uncounted scopes
        self._in_product = False
        self._called = {}           # id(module) -> module, for thop's parameter count
        self._weights = {}          # id(weight) -> (module, rule) for functional use
        self._saved = []

    # -- bookkeeping ------------------------------------------------------
    def _where(self, name=None):
        if name is None:
            name = next((n for n, _ in reversed(self._stack) if n), "")
        return name.split(".")[0] if name else "(root)"

    def _module_counted(self, module, name, rule, args, out):
        paper, flops, *used = rule.fn(module, args, out)
        self.report.add(self._where(name or None), paper, flops)
        if rule.paper_params:
            self._called[id(module)] = module
        for child in (used[0] if used else ()):  # children the reference calls as modules
            self._called[id(child)] = child

    def _product(self, calc, args, kw, out):
        if self._leaf:
            return
        macs, operands, category = calc(args, kw, out)
        owner = next((self._weights[id(v)] for v in operands if id(v) in self._weights), None)
        if owner is not None:
            module, rule = owner
            self.report.add(self._where(self._names.get(id(module))), macs, {rule.kind: 2 * macs})
            self._called[id(module)] = module
        elif not self._suppress:
            self.report.add(self._where(), 0, {category: 2 * macs})
            self.report.functional += 2 * macs

    # -- wrappers ---------------------------------------------------------
    def _wrap_module(self, module):
        rule = _rule_for(type(module))
        name = self._names.get(id(module), "")
        original = module.execute
        counter = self

        def execute(*args, **kw):
            if counter._leaf:
                return original(*args, **kw)
            scope = rule.scope if rule is not None else None
            counter._stack.append((name, rule))
            counter._leaf += scope == "leaf"
            counter._suppress += scope == "composite"
            try:
                out = original(*args, **kw)
            finally:
                counter._stack.pop()
                counter._leaf -= scope == "leaf"
                counter._suppress -= scope == "composite"
            if rule is not None:
                counter._module_counted(module, name, rule, args, out)
            return out

        self._saved.append((module, "execute", module.__dict__.get("execute")))
        module.__dict__["execute"] = execute
        if rule is not None and rule.kind is not None and isinstance(getattr(module, "weight", None), jt.Var):
            self._weights[id(module.weight)] = (module, rule)

    def _patch(self, owner, attr, wrapper_factory):
        original = getattr(owner, attr)
        self._saved.append((owner, attr, original))
        setattr(owner, attr, wrapper_factory(original))

    def _product_wrapper(self, calc):
        def factory(fn):
            def wrapper(*args, **kw):
                if self._in_product:
                    return fn(*args, **kw)
                self._in_product = True
                try:
                    out = fn(*args, **kw)
                finally:
                    self._in_product = False
                self._product(calc, args, kw, out)
                return out
            return wrapper
        return factory

    def _uncounted_wrapper(self, fn):
        def wrapper(*args, **kw):
            self._suppress += 1
            try:
                return fn(*args, **kw)
            finally:
                self._suppress -= 1
        return wrapper

    def __enter__(self):
        import importlib
        try:
            for module in self.model.modules():
                self._wrap_module(module)
            for owner, attr, calc in _PRODUCT_FUNCTIONS:
                if hasattr(owner, attr):
                    self._patch(owner, attr, self._product_wrapper(calc))
            for module_name, attr in _UNCOUNTED_FUNCTIONS:
                self._patch(importlib.import_module(module_name), attr, self._uncounted_wrapper)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc):
        self._restore()
        trainable = _trainable_ids(self.model)
        self.report.paper_params = sum(
            _numel(p) for m in self._called.values() for p in m.parameters() if id(p) in trainable)
        return False

    def _restore(self):
        for owner, attr, value in reversed(self._saved):
            if attr == "execute" and isinstance(owner, nn.Module):
                if value is None:
                    owner.__dict__.pop("execute", None)
                else:
                    owner.__dict__["execute"] = value
            else:
                setattr(owner, attr, value)
        self._saved = []


# ---------------------------------------------------------------------------
# public helpers


def _trainable_ids(model):
    """ids of trainable tensors (Jittor's ``eval()`` marks every parameter stop_grad and
    keeps the previous state in ``backup_grad_state``)."""
    backup = getattr(model, "backup_grad_state", {})
    return {id(p) for p in model.parameters() if backup.get(id(p), not p.is_stop_grad())}


def count_params(model):
    """Trainable parameter counts: ``{"total", <top-level child>: n, ...}`` (buffers excluded)."""
    trainable = _trainable_ids(model)
    out = OrderedDict(total=0)
    seen = set()
    for name, value in model.state_dict().items():
        if id(value) in seen or id(value) not in trainable:
            continue
        seen.add(id(value))
        n = _numel(value)
        out["total"] += n
        top = name.split(".")[0]
        out[top] = out.get(top, 0) + n
    return out


def count_flops(model, shape=(480, 640), batch=1, inputs=None):
    """Count one eval-mode, no-grad forward of an RGB-D segmentor on ones inputs.

    ``model(rgb, depth)`` is called with two (batch, 3, H, W) tensors (or with
    ``inputs`` when given). The forward is only traced: no kernel runs.
    Returns a :class:`FlopReport`; the model's train/eval flags are restored.
    """
    h, w = int(shape[0]), int(shape[1])
    modes = [(m, m.__dict__.get("is_train")) for m in model.modules()]
    for m, _ in modes:
        m.is_train = False
    try:
        if inputs is None:
            x = jt.ones((batch, 3, h, w), dtype="float32")
            inputs = (x, x)
        with jt.no_grad(), FlopCounter(model, (h, w), batch) as counter:
            out = model(*inputs)
            del out
    finally:
        for m, flag in modes:
            if flag is None:
                m.__dict__.pop("is_train", None)
            else:
                m.is_train = flag
    return counter.report
