"""Planted bugs: each one, patched into the code in memory, must make a training-parity
check fail (tests/train_parity.py's verdicts, the ones tests/test_train_parity.py asserts).

The float32 rule tolerates a flipped near-zero decision (it gates on the losses and the
whole step-0 gradient, not on single tensors), so this shows what it still catches, and
which check catches what it lets through:

| bug | caught by |
|---|---|
| backbone LayerNorm eps 1e-5 instead of 1e-6 | float64 (step-0 gradients; too small for float32) |
| auxiliary loss weight 10% off | float64 and float32 (losses) |
| drop path without its 1 / keep_prob | float64 and float32 (losses) |
| wrong sign in the fused GELU backward | float32 with the fused kernels (global gradient) |
| wrong sign in the fused depthwise-conv backward | float32 with the fused kernels (global gradient) |
| AdamW weight decay on the no-decay group | float64 (state after the steps; not visible at step 0) |

The fused kernels are float32 code, so float64 never runs them: a bug in one is caught by
the float32 check here and by its op test against the plain formulation (tests/test_ops.py,
test_pointwise.py, test_depthwise.py, ...), which float64 then proves equal to the official
code.
"""
import contextlib
import os

import pytest

from train_parity import FIXTURES, bundled_verdict, run_case

TINY = os.path.join(FIXTURES, "train_parity", "NYUDepthv2", "DFormer_Tiny", "train_case0")
TINY_AUX = os.path.join(FIXTURES, "train_parity", "NYUDepthv2", "DFormer_Tiny", "train_case_aux1")
TINY_DROP = os.path.join(FIXTURES, "train_parity_stochastic", "NYUDepthv2", "DFormer_Tiny",
                         "train_case0")


@contextlib.contextmanager
def patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def layer_norm_eps():
    from models.encoders import dformer
    norm = dformer.layer_norm
    return patched(dformer, "layer_norm",
                   lambda x, w, b, eps: norm(x, w, b, 1e-5 if eps == 1e-6 else eps))


def aux_loss_weight():
    from models import builder
    build = builder.build_decode_head

    def build_with_heavier_aux(*args, **kwargs):
        head, aux, rate = build(*args, **kwargs)
        return head, aux, rate * 1.1
    return patched(builder, "build_decode_head", build_with_heavier_aux)


def drop_path_unscaled():
    import jittor as jt
    from models.layers import DropPath

    def execute(self, x):
        if self.p == 0.0 or not self.is_training():
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * (jt.rand(shape) < 1.0 - self.p).cast(x.dtype)
    return patched(DropPath, "execute", execute)


def gelu_backward_sign():
    from models.ops import activation
    grad = activation._FusedGELU.grad

    def wrong(self, g):
        out = grad(self, g)
        return (-out[0], out[1]) if isinstance(out, tuple) else -out
    return patched(activation._FusedGELU, "grad", wrong)


def depthwise_backward_sign():
    from models.ops import depthwise
    grad = depthwise._FusedDepthwiseConv.grad

    def wrong(self, dy):
        dx, gw, gb = grad(self, dy)
        return -dx, gw, gb
    return patched(depthwise._FusedDepthwiseConv, "grad", wrong)


def adamw_decay_on_no_decay():
    from utils.engine.optim import ParamGroups
    groups = ParamGroups.optimizer_groups

    def decay_everything(self, weight_decay):
        return [dict(g, weight_decay=float(weight_decay)) for g in groups(self, weight_decay)]
    return patched(ParamGroups, "optimizer_groups", decay_everything)


# (bug, case, dtype, fused kernels): every check that catches the bug, measured
CAUGHT = [
    (layer_norm_eps, TINY, "float64", True),
    (aux_loss_weight, TINY_AUX, "float64", True),
    (aux_loss_weight, TINY_AUX, "float32", True),
    (drop_path_unscaled, TINY_DROP, "float64", True),
    (drop_path_unscaled, TINY_DROP, "float32", True),
    (gelu_backward_sign, TINY, "float32", True),
    (depthwise_backward_sign, TINY, "float32", True),
    (adamw_decay_on_no_decay, TINY, "float64", True),
]


@pytest.mark.parametrize("bug,folder,dtype,fused", [
    pytest.param(*c, id=f"{c[0].__name__}-{os.path.basename(os.path.dirname(c[1]))}/"
                        f"{os.path.basename(c[1])}-{c[2]}") for c in CAUGHT])
def test_planted_bug_is_caught(bug, folder, dtype, fused, tmp_path):
    with bug():
        ours = run_case(folder, dtype, fused, work_dir=str(tmp_path))
    failures = bundled_verdict(ours, dtype)
    print("\n".join(failures))
    assert failures, f"{bug.__name__} passed the {dtype} check of {folder}"
