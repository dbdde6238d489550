"""DFormerv2_S on NYUDepthv2 (published single-model mIoU 56.0%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormerv2_S"
C.pretrained_model = "checkpoints/pretrained/DFormerv2_Small_pretrained.pth"
C.batch_size = 16
C.drop_path_rate = 0.25
C.num_workers = 0
finalize(C)
config = C
