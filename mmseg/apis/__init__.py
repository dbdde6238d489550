"""mmseg 1.x's high-level API: ``init_model``, ``inference_model``, ``show_result_pyplot``,
``MMSegInferencer`` (RGB-D inputs; see :mod:`mmseg`)."""
from utils import runtime  # noqa: F401  (configures Jittor before it is imported)

from .inference import inference_model, init_model, show_result_pyplot
from .mmseg_inferencer import MMSegInferencer

__all__ = ["init_model", "inference_model", "show_result_pyplot", "MMSegInferencer"]
