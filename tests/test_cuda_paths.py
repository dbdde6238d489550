"""The code CUDA runs, run on the CPU: under CUDA every fused CPU kernel must step aside
(``can_use`` false) so that the plain Jittor formulation runs, for the model and the
optimiser alike. ``on_cuda`` is what the checks ask; the GPU itself is not needed."""
import importlib
from types import SimpleNamespace

import numpy as np
import jittor as jt
import pytest

from utils.engine import optim

# the op modules (models.ops and models.losses export functions of the same names)
(_common, activation, batch_norm, concat, denormals, depthwise, geometry_attention, interpolate,
 normalization, pointwise, softmax) = (importlib.import_module("models.ops." + name) for name in (
    "_common", "activation", "batch_norm", "concat", "denormals", "depthwise",
    "geometry_attention", "interpolate", "normalization", "pointwise", "softmax"))
cross_entropy = importlib.import_module("models.losses.cross_entropy")


def _x(*shape):
    return jt.array(np.random.RandomState(0).rand(*shape).astype(np.float32))


CASES = {
    "activation": lambda: activation.can_use(_x(2, 16, 4, 4)),
    "batch_norm": lambda: batch_norm.can_use(_x(2, 16, 4, 4)),
    "concat": lambda: concat.can_use(_x(2, 3), _x(2, 5)),
    "denormals": lambda: denormals.can_use(),
    "depthwise": lambda: depthwise.can_use(_x(2, 16, 8, 8), _x(16, 1, 3, 3)),
    "geometry_attention": lambda: geometry_attention.can_use(_x(1, 2, 16, 16), _x(1, 2, 16, 32),
                                                             _x(2)),
    "interpolate": lambda: interpolate.can_use(_x(1, 4, 8, 8)),
    "normalization": lambda: normalization.can_use(_x(8, 32)),
    "pointwise": lambda: pointwise.can_use(_x(1, 16, 4, 4), _x(8, 16, 1, 1)),
    "softmax": lambda: softmax.can_use(_x(4, 32)),
    "cross_entropy": lambda: cross_entropy.can_use(_x(2, 8, 4, 4)),
    "adamw": lambda: optim.adamw_fused_applies(SimpleNamespace(param_groups=[
        {"params": [_x(16)], "grads": [_x(16)], "m": [_x(16)], "values": [_x(16)]}])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_kernel_steps_aside_on_cuda(name, monkeypatch):
    assert CASES[name]() is True          # the inputs qualify on the CPU ...
    monkeypatch.setattr(_common, "on_cuda", lambda: True)
    assert not CASES[name]()             # ... and are refused under CUDA


def test_every_fused_op_is_covered():
    import glob
    import os
    folder = os.path.dirname(_common.__file__)
    with_check = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(folder, "*.py"))
                  if "\ndef can_use(" in open(p).read()}
    assert with_check and with_check <= set(CASES)
