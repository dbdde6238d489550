# DFormerv2_S on SUNRGBD (local_configs.SUNRGBD.DFormerv2_S); published single-model mIoU 51.5%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/sunrgbd.py',
    '../_base_/schedules/schedule_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormerv2_Small_pretrained.pth',
    backbone=dict(type='DFormerv2_S', drop_path_rate=0.1),
    decode_head=dict(channels=1024, num_classes=37),
    # released SUN RGB-D DFormerv2 models: RGB order, evaluated padded to 531x730
    data_preprocessor=dict(bgr_to_rgb=True, pad_sunrgbd=True),
    test_cfg=dict(crop_size=(480, 480)))
