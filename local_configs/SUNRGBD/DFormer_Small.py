"""DFormer-Small on SUNRGBD (published single-model mIoU 50.0%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.SUNRGBD import dataset_config

C = dataset_config()
C.backbone = "DFormer-Small"
C.pretrained_model = "checkpoints/pretrained/DFormer_Small.pth.tar"
C.drop_path_rate = 0.1
finalize(C)
config = C
