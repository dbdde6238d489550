"""DFormer-Large on NYUDepthv2 (published single-model mIoU 57.2%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormer-Large"
C.pretrained_model = "checkpoints/pretrained/DFormer_Large.pth.tar"
C.drop_path_rate = 0.15
finalize(C)
config = C
