"""DFormerv2_L on NYUDepthv2 (published single-model mIoU 58.4%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormerv2_L"
C.pretrained_model = "checkpoints/pretrained/DFormerv2_Large_pretrained.pth"
C.decoder_embed_dim = 1024
C.batch_size = 12
C.drop_path_rate = 0.3
C.num_workers = 0
finalize(C)
config = C
