"""DFormerv2_B on NYUDepthv2 (published single-model mIoU 57.7%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormerv2_B"
C.pretrained_model = "checkpoints/pretrained/DFormerv2_Base_pretrained.pth"
C.decoder_embed_dim = 512
C.lr = 6e-05
C.batch_size = 8
C.nepochs = 500
C.drop_path_rate = 0.2
C.num_workers = 0
C.checkpoint_start_epoch = 250
C.eval_crop_size = [480, 640]
finalize(C)
config = C
