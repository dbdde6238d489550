"""DFormerv2_S on the synthetic SynthRGBD dataset, with the DFormer_Tiny quick-start schedule
(not tuned further for this larger backbone)."""
import copy

from .._base_ import finalize
from .DFormer_Tiny import C as _quick_start

C = copy.deepcopy(_quick_start)
C.backbone = "DFormerv2_S"
finalize(C)
config = C
