"""An mmsegmentation-style façade over DFormer-Jittor's own engine.

Code written against mmseg 1.x's high-level API runs here unchanged for RGB-D input::

    from mmseg.apis import init_model, inference_model, show_result_pyplot, MMSegInferencer

Every call goes through the project's single model / preprocessing / evaluation path
(``utils.api``, ``utils.engine.evaluator``, ``models.builder``); nothing here builds
a second pipeline. This package is *not* mmsegmentation: installing the real
``mmsegmentation`` in the same environment would clash with this package name
(whichever comes first on ``sys.path`` wins).

RGB-D inputs: ``{'img': rgb, 'modal_x': depth}`` or ``(rgb, depth)``, each a path or
an array (RGB in OpenCV's BGR order, depth 8-bit); a missing depth is an error.
"""
from utils import runtime

runtime.setup()  # an entry point: set up CPU/CUDA and oneDNN before jittor loads

__version__ = "1.2.2+dformer.jittor"

__all__ = ["__version__"]
