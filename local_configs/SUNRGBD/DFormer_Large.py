"""DFormer-Large on SUNRGBD (published single-model mIoU 52.5%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.SUNRGBD import dataset_config

C = dataset_config()
C.backbone = "DFormer-Large"
C.pretrained_model = "checkpoints/pretrained/DFormer_Large.pth.tar"
C.drop_path_rate = 0.2
finalize(C)
config = C
