"""DFormerv2_B on NYUDepthv2 (published single-model mIoU 57.7%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormerv2_B"
C.pretrained_model = "checkpoints/pretrained/DFormerv2_Base_pretrained.pth"
C.drop_path_rate = 0.2
C.num_workers = 0
finalize(C)
config = C
