"""DFormer-Tiny on SUNRGBD (published single-model mIoU 48.8%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.SUNRGBD import dataset_config

C = dataset_config()
C.backbone = "DFormer-Tiny"
C.pretrained_model = "checkpoints/pretrained/DFormer_Tiny.pth.tar"
C.drop_path_rate = 0.1
finalize(C)
config = C
