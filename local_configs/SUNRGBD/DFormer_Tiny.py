"""DFormer-Tiny on SUNRGBD (published single-model mIoU 48.8%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.SUNRGBD import dataset_config

C = dataset_config()
C.backbone = "DFormer-Tiny"
C.pretrained_model = "checkpoints/pretrained/DFormer_Tiny.pth.tar"
C.decoder_embed_dim = 512
C.lr = 8e-05
C.batch_size = 16
C.nepochs = 300
C.drop_path_rate = 0.1
C.num_workers = 16
C.checkpoint_start_epoch = 200
C.eval_crop_size = [480, 480]
finalize(C)
config = C
