"""DFormer-Base on NYUDepthv2 (published single-model mIoU 55.6%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.NYUDepthv2 import dataset_config

C = dataset_config()
C.backbone = "DFormer-Base"
C.pretrained_model = "checkpoints/pretrained/DFormer_Base.pth.tar"
C.decoder_embed_dim = 512
C.lr = 6e-05
C.batch_size = 8
C.nepochs = 500
C.drop_path_rate = 0.1
C.num_workers = 16
C.checkpoint_start_epoch = 250
C.eval_crop_size = [480, 640]
finalize(C)
config = C
