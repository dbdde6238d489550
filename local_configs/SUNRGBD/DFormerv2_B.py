"""DFormerv2_B on SUNRGBD (published single-model mIoU 52.8%, MS+flip)."""
from .._base_ import finalize
from .._base_.datasets.SUNRGBD import dataset_config

C = dataset_config()
C.backbone = "DFormerv2_B"
C.pretrained_model = "checkpoints/pretrained/DFormerv2_Base_pretrained.pth"
C.decoder_embed_dim = 1024
C.drop_path_rate = 0.1
# Released SUNRGBD DFormerv2 models were trained on RGB order and are evaluated
# padded (bottom/right) to 531x730; every other config feeds BGR, unpadded.
C.color_order = "RGB"
C.pad_SUNRGBD = True
finalize(C)
config = C
