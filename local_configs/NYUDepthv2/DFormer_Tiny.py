"""DFormer-Tiny on NYUDepthv2 (published single-model mIoU 51.8%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormer-Tiny"
C.pretrained_model = "checkpoints/pretrained/DFormer_Tiny.pth.tar"
C.drop_path_rate = 0.1
finalize(C)
config = C
