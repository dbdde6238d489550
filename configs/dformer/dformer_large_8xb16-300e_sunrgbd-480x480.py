# DFormer-Large on SUNRGBD (local_configs.SUNRGBD.DFormer_Large); published single-model mIoU 52.5%
# (5 scales + flip, sliding window).
_base_ = [
    '../_base_/models/dformer.py',
    '../_base_/datasets/sunrgbd.py',
    '../_base_/schedules/schedule_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    pretrained='checkpoints/pretrained/DFormer_Large.pth.tar',
    backbone=dict(type='DFormer-Large', drop_path_rate=0.2),
    decode_head=dict(num_classes=37),
    test_cfg=dict(crop_size=(480, 480)))
