"""Fused CPU operations of the model zoo, each with its plain-Jittor twin.

One module per operation holds the OpenMP C++ source (helpers shared through
``_common.HEADER``), the ``jt.Function`` with its exact gradient, the plain
formulation (what CUDA runs), a ``can_use`` check and the public function that
picks the path. Model code calls only the public functions below.

``fused_kernels(False)`` (also a context manager) or ``DFORMER_FUSED_KERNELS=0``
turns every fused path off, oneDNN's channels-last depthwise convolution included.
"""
from ._common import ENV_VAR, fused_kernels, fused_kernels_enabled, scalar
from .activation import gelu
from .batch_norm import batch_norm_train, batch_norm_train_synced
from .concat import concat, stack, unstack
from .denormals import flush_to_zero
from .depthwise import depthwise_conv
from .geometry_attention import COLS, FULL, ROWS, StageGeometry, geo_attention
from .interpolate import interp_matrix, resize
from .pointwise import pointwise_conv
from .normalization import layer_norm
from .softmax import softmax

__all__ = ["ENV_VAR", "fused_kernels", "fused_kernels_enabled", "scalar", "gelu",
           "batch_norm_train", "batch_norm_train_synced", "concat", "stack", "unstack",
           "flush_to_zero",
           "depthwise_conv", "geo_attention", "StageGeometry", "ROWS", "COLS", "FULL",
           "resize", "interp_matrix", "layer_norm", "pointwise_conv",
           "softmax"]
