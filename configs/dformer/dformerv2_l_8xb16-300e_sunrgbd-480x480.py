# DFormerv2_L on SUNRGBD (local_configs.SUNRGBD.DFormerv2_L); published single-model mIoU 53.3%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/sunrgbd.py',
    '../_base_/schedules/schedule_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormerv2_Large_pretrained.pth',
    backbone=dict(type='DFormerv2_L', drop_path_rate=0.27),
    decode_head=dict(channels=1024, num_classes=37),
    # released SUN RGB-D DFormerv2 models: RGB order, evaluated padded to 531x730
    data_preprocessor=dict(bgr_to_rgb=True, pad_sunrgbd=True),
    test_cfg=dict(crop_size=(480, 480)))
