"""models/ops/pointwise.py and models.layers.Conv2d: 1x1 convolutions as matrix products."""
import numpy as np
import pytest

import jittor as jt
from models import ops
from models.layers import Conv2d
from models.ops import pointwise
from test_ops import _assert_paths_agree, _random


@pytest.mark.parametrize("batch, bias", [(1, True), (2, True), (3, False)])
def test_pointwise_conv_matches_the_convolution(batch, bias):
    rng = np.random.RandomState(batch)
    arrays = [_random(rng, (batch, 24, 5, 7)), _random(rng, (40, 24, 1, 1))]
    if bias:
        arrays.append(_random(rng, (40,)))
    _assert_paths_agree(pointwise.pointwise_conv, arrays,
                        lambda t: pointwise.can_use(t[0], t[1]))


def test_conv2d_takes_the_product_path_only_for_plain_1x1(monkeypatch):
    calls = []
    real = pointwise.pointwise_conv

    def spy(*args):
        calls.append(args[1].shape)
        return real(*args)
    monkeypatch.setattr("models.layers.pointwise_conv", spy)
    x = jt.array(_random(np.random.RandomState(0), (2, 8, 6, 6)))
    layers = [Conv2d(8, 4, 1), Conv2d(8, 4, 3, padding=1), Conv2d(8, 4, 1, stride=2),
              Conv2d(8, 8, 1, groups=2), Conv2d(8, 4, 1, padding=1)]
    outs = [m(x) for m in layers]
    assert calls == [[4, 8, 1, 1]]
    assert [list(o.shape) for o in outs] == [[2, 4, 6, 6], [2, 4, 6, 6], [2, 4, 3, 3],
                                             [2, 8, 6, 6], [2, 4, 8, 8]]
    with ops.fused_kernels(False):
        plain = layers[0](x).numpy()
    np.testing.assert_allclose(outs[0].numpy(), plain, rtol=1e-5, atol=1e-5)
    assert sorted(layers[0].state_dict()) == ["bias", "weight"]
